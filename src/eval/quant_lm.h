// The artifact CPU runtime (ref::QuantDecoder) behind the evaluators' interfaces, as ref_lm.h / loglik.h
// do for RefDecoder.
#pragma once
#include "eval/causal_lm.h"
#include "eval/loglik.h"
#include "ref/quant_decoder.h"

namespace fq::eval {

class QuantCausalLM : public CausalLM {
 public:
  QuantCausalLM(const Artifact& a, ref::QuantMode mode, int64_t max_ctx, int n_threads)
      : dec_(a, mode, max_ctx, n_threads) {}
  int64_t n_vocab() const override { return dec_.config().n_vocab; }
  int64_t max_ctx() const override { return dec_.max_ctx(); }
  void reset() override { dec_.reset(); }
  void forward(const int32_t* tokens, int64_t n, float* logits) override { dec_.forward(tokens, n, logits); }
  ref::QuantDecoder& decoder() { return dec_; }

 private:
  ref::QuantDecoder dec_;
};

class QuantPrefixLM : public PrefixLM {
 public:
  QuantPrefixLM(const Artifact& a, ref::QuantMode mode, int64_t max_ctx, int n_threads)
      : dec_(a, mode, max_ctx, n_threads) {}
  int64_t n_vocab() const override { return dec_.config().n_vocab; }
  int64_t max_ctx() const override { return dec_.max_ctx(); }
  int64_t pos() const override { return dec_.pos(); }
  void rewind(int64_t p) override { dec_.rewind(p); }
  void forward(const int32_t* tokens, int64_t n, float* logits) override { dec_.forward(tokens, n, logits); }
  ref::QuantDecoder& decoder() { return dec_; }

 private:
  ref::QuantDecoder dec_;
};

}  // namespace fq::eval
