#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "eval/perplexity.h"
#include "eval/ref_lm.h"
#include "flatquant/error.h"
#include "ref/random_model.h"

namespace fq {
namespace {

// A context-free model whose logits are logit[v] = 0.1 * v at every position; it records what it is fed.
class FakeLM : public eval::CausalLM {
 public:
  FakeLM(int64_t vocab, int64_t ctx) : vocab_(vocab), ctx_(ctx) {}
  int64_t n_vocab() const override { return vocab_; }
  int64_t max_ctx() const override { return ctx_; }
  void reset() override {
    windows.emplace_back();
    pos_ = 0;
  }
  void forward(const int32_t* tokens, int64_t n, float* logits) override {
    EXPECT_LE(pos_ + n, ctx_);
    calls.push_back(n);
    windows.back().insert(windows.back().end(), tokens, tokens + n);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t v = 0; v < vocab_; ++v) logits[t * vocab_ + v] = 0.1f * (float)v;
    pos_ += n;
  }
  std::vector<std::vector<int32_t>> windows;
  std::vector<int64_t> calls;

 private:
  int64_t vocab_, ctx_, pos_ = 0;
};

std::vector<int32_t> stream_of(int64_t n, int64_t vocab) {
  std::vector<int32_t> s(n);
  for (int64_t i = 0; i < n; ++i) s[i] = (int32_t)((i * 7 + 3) % vocab);
  return s;
}

TEST(Perplexity, WindowsRemainderAndTargets) {
  FakeLM lm(10, 4096);
  const auto s = stream_of(1000, 10);
  eval::PplOptions opt;
  opt.seq_len = 128;
  opt.chunk = 50;
  const auto r = eval::perplexity(lm, s, opt, "data.txt");
  EXPECT_EQ(r.windows, 7);  // 1000 / 128, the last 104 tokens dropped
  EXPECT_EQ(r.tokens, 7 * 127);
  EXPECT_EQ(r.seq_len, 128);
  ASSERT_EQ(lm.windows.size(), 7u);
  for (int w = 0; w < 7; ++w) EXPECT_EQ(lm.windows[w], std::vector<int32_t>(s.begin() + w * 128, s.begin() + (w + 1) * 128));
  EXPECT_EQ(std::vector<int64_t>(lm.calls.begin(), lm.calls.begin() + 3), (std::vector<int64_t>{50, 50, 28}));
  // Expected mean NLL: every window predicts tokens 1..127 of itself with log p(v) = 0.1 v - lse.
  double lse = 0;
  for (int v = 0; v < 10; ++v) lse += std::exp(0.1 * v);
  lse = std::log(lse);
  double nll = 0;
  for (int w = 0; w < 7; ++w)
    for (int i = 1; i < 128; ++i) nll += lse - 0.1 * s[w * 128 + i];
  EXPECT_NEAR(r.mean_nll, nll / (7 * 127), 1e-6);
  EXPECT_NEAR(r.ppl, std::exp(nll / (7 * 127)), 1e-5);
}

TEST(Perplexity, LimitWindowsAndContextCap) {
  FakeLM lm(10, 64);  // seq_len 128 is capped to the model context
  const auto s = stream_of(1000, 10);
  eval::PplOptions opt;
  opt.seq_len = 128;
  opt.limit_windows = 3;
  const auto r = eval::perplexity(lm, s, opt, "data.txt");
  EXPECT_EQ(r.seq_len, 64);
  EXPECT_EQ(r.windows, 3);
  EXPECT_EQ(r.tokens, 3 * 63);
}

TEST(Perplexity, LogprobCallbackCoversEveryPredictedRow) {
  FakeLM lm(5, 4096);
  const auto s = stream_of(40, 5);
  eval::PplOptions opt;
  opt.seq_len = 16;
  opt.chunk = 6;
  std::vector<int> seen(2 * 15, 0);
  opt.on_logprobs = [&](int64_t w, int64_t first, int64_t n, const float* lp) {
    for (int64_t r = 0; r < n; ++r) {
      seen[w * 15 + first + r]++;
      double z = 0;
      for (int v = 0; v < 5; ++v) z += std::exp((double)lp[r * 5 + v]);
      EXPECT_NEAR(z, 1.0, 1e-6);
    }
  };
  eval::perplexity(lm, s, opt, "x");
  for (int c : seen) EXPECT_EQ(c, 1);
}

TEST(Perplexity, ErrorsNameTheFileAndCounts) {
  FakeLM lm(10, 4096);
  eval::PplOptions opt;
  opt.seq_len = 2048;
  try {
    eval::perplexity(lm, {}, opt, "wiki.txt");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("wiki.txt: empty dataset"), std::string::npos) << e.what();
  }
  try {
    eval::perplexity(lm, stream_of(100, 10), opt, "wiki.txt");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("wiki.txt: 100 tokens are fewer than one window of seq_len 2048"),
              std::string::npos)
        << e.what();
  }
  std::vector<int32_t> bad = stream_of(64, 10);
  bad[40] = 10;
  opt.seq_len = 32;
  EXPECT_THROW(eval::perplexity(lm, bad, opt, "wiki.txt"), Error);
  EXPECT_THROW(eval::plan_windows(10, 1, "x"), Error);
  const auto p = eval::plan_windows(100, 32, "x");
  EXPECT_EQ(p.windows, 3);
  EXPECT_EQ(p.dropped, 4);
}

// A real decoder whose LM head is zero produces uniform logits: ppl is exactly the vocabulary size.
TEST(Perplexity, UniformModelHasPplVocab) {
  ModelWeights w = test::random_model(test::tiny_config(), 8);
  std::fill(w.lm_head.begin(), w.lm_head.end(), 0.0f);
  eval::RefCausalLM lm(w, 32, 2);
  eval::PplOptions opt;
  opt.seq_len = 32;
  const auto r = eval::perplexity(lm, stream_of(100, w.cfg.n_vocab), opt, "x");
  EXPECT_EQ(r.windows, 3);
  EXPECT_NEAR(r.ppl, (double)w.cfg.n_vocab, 1e-9 * w.cfg.n_vocab);
}

// With a real model the ppl must equal exp(mean NLL) computed from full-window logits by hand.
TEST(Perplexity, MatchesHandComputedNllOnRandomModel) {
  ModelWeights w = test::random_model(test::tiny_config(), 9);
  const auto s = stream_of(70, w.cfg.n_vocab);
  eval::RefCausalLM lm(w, 64, 1);
  eval::PplOptions opt;
  opt.seq_len = 30;
  opt.chunk = 7;
  const auto r = eval::perplexity(lm, s, opt, "x");
  ref::RefDecoder dec(w, 64, 1);
  double nll = 0;
  std::vector<float> logits(30 * w.cfg.n_vocab);
  for (int win = 0; win < 2; ++win) {
    dec.reset();
    dec.forward(s.data() + win * 30, 30, logits.data());
    for (int i = 0; i < 29; ++i) {
      double z = 0;
      for (int v = 0; v < w.cfg.n_vocab; ++v) z += std::exp((double)logits[i * w.cfg.n_vocab + v]);
      nll += std::log(z) - logits[i * w.cfg.n_vocab + s[win * 30 + i + 1]];
    }
  }
  EXPECT_NEAR(r.mean_nll, nll / 58, 1e-9);
  EXPECT_GT(r.ppl, 1.5);  // a random model is far from certain
}

}  // namespace
}  // namespace fq
