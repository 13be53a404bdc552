// The W4A4KV4 backend of the CUDA engine (CudaEngine(const Artifact&), docs/runtime.md) against the CPU artifact
// runtime ref::QuantDecoder on the same artifact: all-position prefill logits (the two-GEMM transform route,
// and chunked prefill through the few-token route with p0 > 0), teacher-forced decode steps, batch 3 at
// different positions, graph replay == eager launches, random quantized weights, recipe errors, and the CLI.
// Artifacts: stories260K and a tiny GQA model with q/k/v biases, each folded with random invertible transforms
// (tests/ref/fold_model.h) and with a different activation clip per linear (so q/k/v and gate/up need their own
// quantized copies). The error measure is norm_err = max |gpu - cpu| / max |cpu| over the compared logits;
// both runtimes use integer GEMMs, but the GPU rounds q/k/v, gate/up and the prefill transform to fp16, which
// moves some 4-bit codes by one step. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "../ref/fold_model.h"
#include "engine_test_util.h"
#include "flatquant/error.h"
#include "model/weights.h"
#include "ref/quant_decoder.h"
#include "ref/random_model.h"

namespace fq {
namespace {

using ref::QuantDecoder;
using ref::QuantMode;
using runtime::CudaEngine;
using runtime::EngineOptions;

// Per-linear clips as a calibrated artifact has them.
void vary_clips(Artifact& a) {
  float f = 0.0f;
  for (auto& l : a.layers) {
    const float d = 0.01f * (f += 1.0f);
    l.q.act_clip_max = 0.93f - d, l.q.act_clip_min = 0.95f;
    l.k.act_clip_max = 0.97f, l.k.act_clip_min = 0.91f + d;
    l.v.act_clip_max = 1.0f, l.v.act_clip_min = 0.98f;
    l.gate.act_clip_max = 0.9f, l.gate.act_clip_min = 0.92f;
    l.up.act_clip_max = 0.96f - d, l.up.act_clip_min = 1.0f;
    l.o.act_clip_max = 0.94f, l.down.act_clip_max = 0.92f;
  }
}

Artifact make_quant_artifact(const ModelWeights& w, uint64_t seed) {
  test::ArtifactOptions opt;
  opt.act_clip = 0.95f;
  opt.kv_clip = 0.97f;
  Artifact a = test::make_artifact(w, test::random_transforms(w.cfg, seed), test::test_recipe("w4a4kv4", 4, 4, 4), opt);
  vary_clips(a);
  return a;
}

// Mean negative log-likelihood of tokens[1..n) under logits rows [0, n-1).
double mean_nll(const std::vector<float>& logits, const std::vector<int32_t>& tok, int64_t V) {
  double s = 0;
  for (size_t t = 0; t + 1 < tok.size(); ++t) {
    const float* r = logits.data() + t * static_cast<size_t>(V);
    double mx = r[0];
    for (int64_t i = 1; i < V; ++i) mx = std::max(mx, double(r[i]));
    double z = 0;
    for (int64_t i = 0; i < V; ++i) z += std::exp(double(r[i]) - mx);
    s += mx + std::log(z) - r[tok[t + 1]];
  }
  return s / static_cast<double>(tok.size() - 1);
}

struct Tolerances {
  double logits = 5e-2;  // norm_err of every logit row
  double ppl = 1e-2;     // relative perplexity difference over the prompt
  double margin = 3e-2;  // greedy ties: top two within this fraction of max |logit|
};

// Prefill n_prompt tokens in chunks of `chunk` (all logits), then n_steps teacher-forced steps; each compared
// with QuantDecoder (real mode: the same integer arithmetic) and the perplexity with fake mode too.
void check_against_cpu(const Artifact& a, int64_t n_prompt, int64_t n_steps, int64_t chunk, uint32_t seed,
                       const Tolerances& tol) {
  const int64_t V = a.cfg.n_vocab;
  const std::vector<int32_t> toks = random_tokens(n_prompt, V, seed);
  QuantDecoder real(a, QuantMode::kReal, n_prompt + n_steps, 2), fake(a, QuantMode::kFake, n_prompt, 2);
  ASSERT_EQ(real.mode(), QuantMode::kReal);
  std::vector<float> lr(static_cast<size_t>(n_prompt * V)), lf(lr.size()), got(lr.size());
  real.forward(toks.data(), n_prompt, lr.data());
  fake.forward(toks.data(), n_prompt, lf.data());

  EngineOptions o;
  o.max_ctx = n_prompt + n_steps;
  o.max_tokens = chunk;
  o.max_logit_rows = chunk;
  CudaEngine eng(a, o);
  EXPECT_EQ(eng.info().backend, "w4a4kv4");
  eng.prefill(toks.data(), 1, n_prompt, 0, got.data(), true);
  const double e = norm_err(got.data(), lr.data(), lr.size());
  const double pg = std::exp(mean_nll(got, toks, V)), pr = std::exp(mean_nll(lr, toks, V)),
               pf = std::exp(mean_nll(lf, toks, V));
  std::printf("  prefill %lld tokens (chunk %lld): norm_err vs real %.3e, vs fake %.3e; ppl gpu %.4f real %.4f fake %.4f\n",
              static_cast<long long>(n_prompt), static_cast<long long>(chunk), e,
              norm_err(got.data(), lf.data(), lf.size()), pg, pr, pf);
  EXPECT_LT(e, tol.logits);
  EXPECT_NEAR(pg / pf, 1.0, tol.ppl);
  EXPECT_NEAR(pg / pr, 1.0, tol.ppl);
  for (int64_t t = 0; t < n_prompt; ++t)
    expect_same_greedy(got.data() + t * V, lr.data() + t * V, V, "prefill position " + std::to_string(t), tol.margin);

  std::vector<float> r1(static_cast<size_t>(V)), g1(r1.size());
  int32_t next = runtime::argmax(lr.data() + (n_prompt - 1) * V, V);
  double worst = 0;
  for (int64_t s = 0; s < n_steps; ++s) {
    real.forward(&next, 1, r1.data());
    int32_t greedy = -1;
    eng.step(&next, 1, g1.data(), &greedy);
    const double es = norm_err(g1.data(), r1.data(), r1.size());
    worst = std::max(worst, es);
    EXPECT_LT(es, tol.logits) << "decode step " << s;
    expect_same_greedy(g1.data(), r1.data(), V, "decode step " + std::to_string(s), tol.margin);
    EXPECT_EQ(greedy, runtime::argmax(g1.data(), V));
    next = runtime::argmax(r1.data(), V);
  }
  std::printf("  %lld decode steps: worst norm_err vs real %.3e\n", static_cast<long long>(n_steps), worst);
  EXPECT_EQ(eng.pos(0), n_prompt + n_steps);
}

TEST(CudaQuantEngine, Stories260KMatchesCpuRuntime) {
  FQ_REQUIRE_GPU();
  const std::string dir = model_dir("stories260K");
  FQ_REQUIRE_FILE(path_join(dir, "config.json"));
  const Artifact a = make_quant_artifact(load_hf_weights(dir), 5);
  check_against_cpu(a, 48, 12, 64, 1, {});  // 48 rows: the two-GEMM transform route
  check_against_cpu(a, 48, 4, 12, 2, {});   // chunks of 12 rows: the few-token route, p0 > 0
}

TEST(CudaQuantEngine, GqaBiasChunkedPrefillMatchesCpuRuntime) {
  FQ_REQUIRE_GPU();
  ModelConfig c = test::tiny_config_for_artifact(6, 2, 16, true, false);
  c.n_embd = 48;
  c.n_ff = 72;
  const Artifact a = make_quant_artifact(test::random_model(c, 11), 12);
  check_against_cpu(a, 40, 8, 40, 3, {});
  check_against_cpu(a, 40, 8, 7, 4, {});
}

// Three slots at different positions decode in one batched step; each row equals its own CPU decoder.
TEST(CudaQuantEngine, Batch3AtDifferentPositions) {
  FQ_REQUIRE_GPU();
  const ModelConfig c = test::tiny_config_for_artifact(4, 2, 16, false, true);
  const Artifact a = make_quant_artifact(test::random_model(c, 21), 22);
  const int64_t V = c.n_vocab, lens[3] = {7, 19, 2};
  EngineOptions o;
  o.max_batch = 3;
  o.max_ctx = 32;
  CudaEngine eng(a, o);
  std::vector<std::unique_ptr<QuantDecoder>> cpu;
  std::vector<int32_t> next(3);
  for (int64_t s = 0; s < 3; ++s) {
    const auto t = random_tokens(lens[s], V, 30 + static_cast<uint32_t>(s));
    std::vector<float> lg(static_cast<size_t>(V)), lc(lg.size() * static_cast<size_t>(lens[s]));
    eng.prefill(t.data(), 1, lens[s], s, lg.data(), false);
    cpu.push_back(std::make_unique<QuantDecoder>(a, QuantMode::kReal, 32, 1));
    cpu.back()->forward(t.data(), lens[s], lc.data());
    next[static_cast<size_t>(s)] = runtime::argmax(lc.data() + (lens[s] - 1) * V, V);
  }
  std::vector<float> got(static_cast<size_t>(3 * V)), r(static_cast<size_t>(V));
  for (int step = 0; step < 6; ++step) {
    eng.step(next.data(), 3, got.data(), nullptr);
    for (int64_t s = 0; s < 3; ++s) {
      cpu[static_cast<size_t>(s)]->forward(&next[static_cast<size_t>(s)], 1, r.data());
      EXPECT_LT(norm_err(got.data() + s * V, r.data(), r.size()), 5e-2) << "slot " << s << " step " << step;
      next[static_cast<size_t>(s)] = runtime::argmax(r.data(), V);
    }
  }
  for (int64_t s = 0; s < 3; ++s) EXPECT_EQ(eng.pos(s), lens[s] + 6);
}

// Graph replays give bitwise the logits of eager launches; the on-device greedy loop the tokens of steps.
TEST(CudaQuantEngine, GraphReplayEqualsEagerAndGreedyLoopEqualsSteps) {
  FQ_REQUIRE_GPU();
  const ModelConfig c = test::tiny_config_for_artifact(4, 2, 16, true, false);
  const Artifact a = make_quant_artifact(test::random_model(c, 41), 42);
  const int64_t V = c.n_vocab;
  EngineOptions og, oe;
  og.max_ctx = oe.max_ctx = 40;
  oe.cuda_graphs = false;
  CudaEngine g(a, og), e(a, oe), loop(a, og);
  const auto t = random_tokens(9, V, 43);
  for (CudaEngine* m : {&g, &e, &loop}) m->prefill(t.data(), 1, 9, 0, nullptr, false);
  std::vector<float> lg(static_cast<size_t>(V)), le(lg.size());
  int32_t tok = 5;
  std::vector<int32_t> steps;
  for (int i = 0; i < 10; ++i) {
    int32_t ng = -1, ne = -1;
    g.step(&tok, 1, lg.data(), &ng);
    e.step(&tok, 1, le.data(), &ne);
    ASSERT_EQ(lg, le) << "step " << i;
    ASSERT_EQ(ng, ne);
    steps.push_back(ng);
    tok = ng;
  }
  int32_t first = 5;
  std::vector<int32_t> out(10);
  loop.decode_greedy(&first, 1, 10, out.data());
  EXPECT_EQ(out, steps);
}

// Random packed weights (bench --random --engine w4a4kv4): deterministic per seed, finite logits, and the
// context limit holds.
TEST(CudaQuantEngine, RandomQuantizedWeights) {
  FQ_REQUIRE_GPU();
  ModelConfig c = test::tiny_config(/*n_head=*/4, /*n_head_kv=*/2, /*head_dim=*/32, /*bias=*/true);
  c.n_embd = 128;
  c.n_ff = 224;
  c.n_vocab = 300;
  EngineOptions o;
  o.max_batch = 2;
  o.max_ctx = 24;
  CudaEngine a(c, 9, o, true), b(c, 9, o, true);
  EXPECT_EQ(a.info().backend, "w4a4kv4");
  const auto t = random_tokens(2 * 20, c.n_vocab, 50);
  std::vector<float> la(static_cast<size_t>(2 * c.n_vocab)), lb(la.size());
  a.prefill(t.data(), 2, 20, 0, la.data(), false);
  b.prefill(t.data(), 2, 20, 0, lb.data(), false);
  EXPECT_EQ(la, lb);
  for (float v : la) ASSERT_TRUE(std::isfinite(v));
  const int32_t first[2] = {1, 2};
  std::vector<int32_t> oa(8), ob(8);
  a.decode_greedy(first, 2, 4, oa.data());
  b.decode_greedy(first, 2, 4, ob.data());
  EXPECT_EQ(oa, ob);
  EXPECT_THROW(a.step(first, 2, nullptr, nullptr), Error);  // 24 positions used: overflow
}

TEST(CudaQuantEngine, UnsupportedRecipeIsAnError) {
  FQ_REQUIRE_GPU();
  const ModelConfig c = test::tiny_config_for_artifact(4, 2, 8, false, true);
  const Artifact a = test::make_artifact(test::random_model(c, 61), test::random_transforms(c, 62),
                                         test::test_recipe("w8a8", 8, 8, 16));
  try {
    CudaEngine e(a, EngineOptions{});
    FAIL() << "expected fq::Error";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("not supported by the CUDA engine"), std::string::npos) << err.what();
  }
}

}  // namespace
}  // namespace fq
