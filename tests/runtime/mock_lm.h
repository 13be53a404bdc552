// Test doubles for the generator: a scripted model (the argmax token is a function of the cache contents)
// and a tokenizer whose pieces are arbitrary byte strings (so partial UTF-8 can be produced at will).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "runtime/generator.h"

namespace fq::test {

class PieceTokenizer : public Tokenizer {
 public:
  explicit PieceTokenizer(std::vector<std::string> pieces) : pieces_(std::move(pieces)) {}
  std::vector<int32_t> encode(std::string_view) const override { return {}; }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) s += pieces_.at(id);
    return s;
  }
  std::string piece(int32_t id) const override { return pieces_.at(id); }
  int32_t n_vocab() const override { return (int32_t)pieces_.size(); }

 private:
  std::vector<std::string> pieces_;
};

class ScriptedModel : public runtime::DecoderModel {
 public:
  using Next = std::function<int32_t(const std::vector<int32_t>& cache)>;
  ScriptedModel(int64_t n_vocab, int64_t max_ctx, Next next) : n_vocab_(n_vocab), max_ctx_(max_ctx), next_(next) {}
  int64_t n_vocab() const override { return n_vocab_; }
  int64_t max_ctx() const override { return max_ctx_; }
  void reset() override {
    cache.clear();
    ++resets;
  }
  void append(const int32_t* t, int64_t n, float* logits) override {
    cache.insert(cache.end(), t, t + n);
    appended += n;
    if ((int64_t)cache.size() > max_ctx_) throw Error("context overflow in the mock");
    std::fill(logits, logits + n_vocab_, 0.0f);
    logits[next_(cache)] = 10.0f;
  }
  std::vector<int32_t> cache;
  int64_t appended = 0, resets = 0;

 private:
  int64_t n_vocab_, max_ctx_;
  Next next_;
};

}  // namespace fq::test
