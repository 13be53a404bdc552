#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "flatquant/error.h"
#include "ref/decoder.h"
#include "ref/random_model.h"

namespace fq {
namespace {

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = (int32_t)(g() % (uint64_t)vocab);
  return t;
}

std::vector<float> run_full(const ModelWeights& w, const std::vector<int32_t>& tok, int threads) {
  ref::RefDecoder dec(w, 0, threads);
  std::vector<float> logits(tok.size() * w.cfg.n_vocab);
  dec.forward(tok.data(), (int64_t)tok.size(), logits.data());
  EXPECT_EQ(dec.pos(), (int64_t)tok.size());
  return logits;
}

struct Variant {
  const char* name;
  ModelConfig cfg;
};

std::vector<Variant> variants() {
  std::vector<Variant> v;
  v.push_back({"gqa_hd8", test::tiny_config(4, 2, 8)});
  v.push_back({"mha_hd16_bias_tied", test::tiny_config(3, 3, 16, true, true)});
  v.push_back({"mqa_hd6", test::tiny_config(6, 1, 6)});
  ModelConfig l3 = test::tiny_config(4, 2, 16);
  l3.rope_theta = 500000.0;
  l3.rope_scaling.type = "llama3";
  l3.rope_scaling.factor = 8;
  l3.rope_scaling.original_max_position_embeddings = 16;
  v.push_back({"llama3_scaling", l3});
  return v;
}

TEST(RefDecoder, MatchesNaiveDoubleForward) {
  for (const Variant& v : variants()) {
    const ModelWeights w = test::random_model(v.cfg, 42);
    const auto tok = random_tokens(37, v.cfg.n_vocab, 9);
    const auto got = run_full(w, tok, 2);
    const auto want = test::naive_forward(w, tok);
    double max_err = 0, max_mag = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      max_err = std::max(max_err, std::fabs(got[i] - want[i]));
      max_mag = std::max(max_mag, std::fabs(want[i]));
    }
    EXPECT_LT(max_err, 1e-4) << v.name;
    EXPECT_GT(max_mag, 1.0) << v.name << ": logits should not be flat";
  }
}

// Token-by-token decoding with the cache computes every element with the same arithmetic as the full
// sequence (the matmul and attention orders do not depend on the batch), so the logits are bit-identical.
TEST(RefDecoder, IncrementalEqualsFullSequence) {
  for (const Variant& v : variants()) {
    const ModelWeights w = test::random_model(v.cfg, 1);
    const auto tok = random_tokens(29, v.cfg.n_vocab, 2);
    const auto full = run_full(w, tok, 1);
    ref::RefDecoder dec(w, 0, 2);
    std::vector<float> step(tok.size() * v.cfg.n_vocab);
    // Mixed chunk sizes: 1, then 5, then one at a time.
    dec.forward(tok.data(), 1, step.data());
    dec.forward(tok.data() + 1, 5, step.data() + 1 * v.cfg.n_vocab);
    for (size_t t = 6; t < tok.size(); ++t) dec.forward(tok.data() + t, 1, step.data() + t * v.cfg.n_vocab);
    EXPECT_EQ(full, step) << v.name;
  }
}

TEST(RefDecoder, ThreadCountInvariance) {
  const ModelWeights w = test::random_model(test::tiny_config(4, 2, 8), 3);
  const auto tok = random_tokens(50, w.cfg.n_vocab, 4);
  const auto a = run_full(w, tok, 1), b = run_full(w, tok, 2), c = run_full(w, tok, 5);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
}

TEST(RefDecoder, ResetStartsOver) {
  const ModelWeights w = test::random_model(test::tiny_config(), 5);
  const auto tok = random_tokens(10, w.cfg.n_vocab, 6);
  ref::RefDecoder dec(w, 16, 2);
  std::vector<float> a(10 * w.cfg.n_vocab), b(a.size());
  dec.forward(tok.data(), 10, a.data());
  dec.reset();
  EXPECT_EQ(dec.pos(), 0);
  dec.forward(tok.data(), 10, b.data());
  EXPECT_EQ(a, b);
  // Without logits the cache still advances.
  dec.reset();
  dec.forward(tok.data(), 9, nullptr);
  std::vector<float> last(w.cfg.n_vocab);
  dec.forward(tok.data() + 9, 1, last.data());
  EXPECT_EQ(last, std::vector<float>(a.end() - w.cfg.n_vocab, a.end()));
}

TEST(RefDecoder, ContextOverflowAndBadTokensThrow) {
  const ModelWeights w = test::random_model(test::tiny_config(), 5);
  ref::RefDecoder dec(w, 8, 1);
  const auto tok = random_tokens(8, w.cfg.n_vocab, 1);
  dec.forward(tok.data(), 6, nullptr);
  try {
    dec.forward(tok.data(), 3, nullptr);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("context overflow"), std::string::npos) << e.what();
  }
  EXPECT_EQ(dec.pos(), 6);
  const int32_t bad[2] = {1, (int32_t)w.cfg.n_vocab};
  EXPECT_THROW(dec.forward(bad, 2, nullptr), Error);
  const int32_t neg = -1;
  EXPECT_THROW(dec.forward(&neg, 1, nullptr), Error);
  EXPECT_EQ(dec.pos(), 6);
  dec.forward(tok.data(), 2, nullptr);
  EXPECT_EQ(dec.pos(), 8);
}

TEST(RefDecoder, RejectsInconsistentWeights) {
  ModelWeights w = test::random_model(test::tiny_config(), 5);
  w.layers[1].wk.pop_back();
  EXPECT_THROW(ref::RefDecoder(w, 8, 1), Error);
}

}  // namespace
}  // namespace fq
