// The CUDA FP16 engine (src/runtime/cuda_engine.h) against the fp32 CPU reference decoder: all-position
// logits of a prefill (also chunked, so that prefill attention runs with p0 > 0), step-by-step decode logits
// and greedy tokens, batch 3 at different positions, batched prefill, graph replay == eager launches, the
// on-device greedy loop == host-driven steps, random device weights, and context overflow as fq::Error.
// Models: stories260K (real weights) and a random tiny model with GQA, q/k/v bias and llama3 RoPE scaling.
// Error measure: max |engine - ref| / max |ref| over the compared logits (fp16 weights and activations).
// Without a GPU the engine tests skip; the CLI test then checks the one-line --device cuda error instead.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/fs.h"
#include "flatquant/error.h"
#include "model/weights.h"
#include "ref/decoder.h"
#include "ref/random_model.h"
#include "runtime/cuda_engine.h"
#include "runtime/sampler.h"
#include "engine_test_util.h"
#include "test_util.h"

#ifdef FLATQUANT_WITH_CUDA
#include "../ops/ops_util.h"
#include "kernels/cuda/sampling.h"
#endif

namespace fq {
namespace {

using runtime::CudaEngine;
using runtime::EngineOptions;

constexpr double kTol = 2e-2;

// Reference logits of every position of `toks`.
std::vector<float> ref_all(const ModelWeights& w, const std::vector<int32_t>& toks) {
  ref::RefDecoder dec(w, static_cast<int64_t>(toks.size()), 1);
  std::vector<float> out(toks.size() * static_cast<size_t>(w.cfg.n_vocab));
  dec.forward(toks.data(), static_cast<int64_t>(toks.size()), out.data());
  return out;
}

ModelWeights gqa_llama3_model() {
  ModelConfig c = test::tiny_config(/*n_head=*/6, /*n_head_kv=*/2, /*head_dim=*/16, /*bias=*/true);
  c.n_ctx = 128;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings =
      16;  // small, so that all three bands occur for head_dim 16
  return test::random_model(c, 7);
}

// Prefill `n_prompt` tokens (all logits), then `n_steps` single steps fed with the reference's greedy
// tokens (teacher forcing, so the two never diverge); every logit row is compared.
void check_against_ref(const ModelWeights& w, int64_t n_prompt, int64_t n_steps, const EngineOptions& o,
                       uint32_t seed) {
  const int64_t V = w.cfg.n_vocab;
  std::vector<int32_t> toks = random_tokens(n_prompt, V, seed);
  ref::RefDecoder dec(w, n_prompt + n_steps, 1);
  std::vector<float> ref(static_cast<size_t>(n_prompt * V));
  dec.forward(toks.data(), n_prompt, ref.data());

  CudaEngine eng(w, o);
  std::vector<float> got(ref.size());
  eng.prefill(toks.data(), 1, n_prompt, 0, got.data(), true);
  EXPECT_EQ(eng.pos(0), n_prompt);
  const double e = norm_err(got.data(), ref.data(), ref.size());
  EXPECT_LT(e, kTol) << "prefill logits";
  for (int64_t t = 0; t < n_prompt; ++t)
    expect_same_greedy(got.data() + t * V, ref.data() + t * V, V, "prefill position " + std::to_string(t));

  std::vector<float> r1(static_cast<size_t>(V)), g1(static_cast<size_t>(V));
  int32_t next = runtime::argmax(ref.data() + (n_prompt - 1) * V, V);
  for (int64_t s = 0; s < n_steps; ++s) {
    dec.forward(&next, 1, r1.data());
    int32_t greedy = -1;
    eng.step(&next, 1, g1.data(), &greedy);
    EXPECT_LT(norm_err(g1.data(), r1.data(), r1.size()), kTol) << "decode step " << s;
    expect_same_greedy(g1.data(), r1.data(), V, "decode step " + std::to_string(s));
    EXPECT_EQ(greedy, runtime::argmax(g1.data(), V)) << "device argmax vs host argmax of the same logits";
    next = runtime::argmax(r1.data(), V);
  }
  EXPECT_EQ(eng.pos(0), n_prompt + n_steps);
}

TEST(CudaEngine, Stories260KMatchesReference) {
  FQ_REQUIRE_GPU();
  const std::string dir = model_dir("stories260K");
  FQ_REQUIRE_FILE(path_join(dir, "config.json"));
  const ModelWeights w = load_hf_weights(dir);
  EngineOptions o;
  o.max_ctx = 96;
  o.max_tokens = 64;
  o.max_logit_rows = 64;
  check_against_ref(w, 40, 12, o, 1);
}

TEST(CudaEngine, GqaBiasLlama3RopeChunkedPrefillMatchesReference) {
  FQ_REQUIRE_GPU();
  const ModelWeights w = gqa_llama3_model();
  EngineOptions o;
  o.max_ctx = 64;
  o.max_tokens = 5;  // 23 prompt tokens in chunks of 5: prefill attention at p0 = 5, 10, 15, 20
  o.max_logit_rows = 5;
  check_against_ref(w, 23, 10, o, 2);
}

TEST(CudaEngine, Batch3AtDifferentPositions) {
  FQ_REQUIRE_GPU();
  const ModelWeights w = gqa_llama3_model();
  const int64_t V = w.cfg.n_vocab;
  const int64_t lens[3] = {7, 19, 2};
  EngineOptions o;
  o.max_batch = 3;
  o.max_ctx = 40;
  CudaEngine eng(w, o);
  std::vector<std::unique_ptr<ref::RefDecoder>> refs;
  std::vector<int32_t> next(3);
  std::vector<float> r(static_cast<size_t>(V));
  for (int64_t s = 0; s < 3; ++s) {
    const std::vector<int32_t> toks = random_tokens(lens[s], V, 10 + static_cast<uint32_t>(s));
    refs.push_back(std::make_unique<ref::RefDecoder>(w, o.max_ctx, 1));
    std::vector<float> all(static_cast<size_t>(lens[s] * V));
    refs.back()->forward(toks.data(), lens[s], all.data());
    std::vector<float> last(static_cast<size_t>(V));
    eng.prefill(toks.data(), 1, lens[s], s, last.data(), false);
    EXPECT_LT(norm_err(last.data(), all.data() + (lens[s] - 1) * V, last.size()), kTol) << "slot " << s;
    next[static_cast<size_t>(s)] = runtime::argmax(all.data() + (lens[s] - 1) * V, V);
  }
  std::vector<float> got(static_cast<size_t>(3 * V));
  for (int step = 0; step < 6; ++step) {
    eng.step(next.data(), 3, got.data(), nullptr);
    for (int64_t s = 0; s < 3; ++s) {
      refs[static_cast<size_t>(s)]->forward(&next[static_cast<size_t>(s)], 1, r.data());
      EXPECT_LT(norm_err(got.data() + s * V, r.data(), r.size()), kTol) << "step " << step << " slot " << s;
      EXPECT_EQ(eng.pos(s), lens[s] + step + 1);
      next[static_cast<size_t>(s)] = runtime::argmax(r.data(), V);
    }
  }
}

TEST(CudaEngine, BatchedPrefillMatchesReference) {
  FQ_REQUIRE_GPU();
  const ModelWeights w = gqa_llama3_model();
  const int64_t V = w.cfg.n_vocab, T = 11;
  EngineOptions o;
  o.max_batch = 2;
  o.max_ctx = 32;
  o.max_tokens = 8;  // 2 x 11 tokens in chunks of 4 per sequence
  CudaEngine eng(w, o);
  const std::vector<int32_t> toks = random_tokens(2 * T, V, 20);
  std::vector<float> got(static_cast<size_t>(2 * V));
  eng.prefill(toks.data(), 2, T, 0, got.data(), false);
  for (int64_t s = 0; s < 2; ++s) {
    const std::vector<int32_t> seq(toks.begin() + s * T, toks.begin() + (s + 1) * T);
    const std::vector<float> ref = ref_all(w, seq);
    EXPECT_LT(norm_err(got.data() + s * V, ref.data() + (T - 1) * V, static_cast<size_t>(V)), kTol)
        << "seq " << s;
  }
}

TEST(CudaEngine, GraphReplayEqualsEagerAndGreedyLoopEqualsSteps) {
  FQ_REQUIRE_GPU();
  const ModelWeights w = gqa_llama3_model();
  const int64_t V = w.cfg.n_vocab, B = 2, P = 6, N = 9;
  EngineOptions o;
  o.max_batch = B;
  o.max_ctx = 32;
  EngineOptions eager = o;
  eager.cuda_graphs = false;
  CudaEngine g(w, o), e(w, eager), loop(w, o);
  const std::vector<int32_t> prompt = random_tokens(B * P, V, 30);
  std::vector<float> lg(static_cast<size_t>(B * V)), le(lg.size());
  g.prefill(prompt.data(), B, P, 0, lg.data(), false);
  e.prefill(prompt.data(), B, P, 0, le.data(), false);
  loop.prefill(prompt.data(), B, P, 0, nullptr, false);
  std::vector<int32_t> first(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) first[static_cast<size_t>(b)] = runtime::argmax(lg.data() + b * V, V);

  std::vector<int32_t> tok = first, tg(static_cast<size_t>(B)), te(static_cast<size_t>(B)), steps;
  for (int64_t s = 0; s < N; ++s) {  // step 0 is eager in `g` too, steps 1.. replay its graph
    g.step(tok.data(), B, lg.data(), tg.data());
    e.step(tok.data(), B, le.data(), te.data());
    ASSERT_EQ(lg, le) << "graph replay and eager launches differ at step " << s;
    ASSERT_EQ(tg, te);
    steps.insert(steps.end(), tg.begin(), tg.end());
    tok = tg;
  }
  std::vector<int32_t> out(static_cast<size_t>(N * B));
  loop.decode_greedy(first.data(), B, N, out.data());
  EXPECT_EQ(out, steps) << "on-device greedy feedback differs from host-driven steps";
  for (int64_t b = 0; b < B; ++b) EXPECT_EQ(loop.pos(b), P + N);
}

TEST(CudaEngine, ContextOverflowIsAnError) {
  FQ_REQUIRE_GPU();
  const ModelWeights w = gqa_llama3_model();
  EngineOptions o;
  o.max_batch = 2;
  o.max_ctx = 10;
  CudaEngine eng(w, o);
  const std::vector<int32_t> toks = random_tokens(11, w.cfg.n_vocab, 40);
  EXPECT_THROW(eng.prefill(toks.data(), 1, 11, 0, nullptr, false), Error);
  EXPECT_EQ(eng.pos(0), 0);
  eng.prefill(toks.data(), 1, 9, 0, nullptr, false);
  EXPECT_THROW(eng.prefill(toks.data(), 1, 2, 0, nullptr, false), Error);
  int32_t t2[2] = {1, 2};
  EXPECT_THROW(eng.decode_greedy(t2, 1, 2, nullptr), Error);  // 9 + 2 > 10
  eng.step(t2, 1, nullptr, nullptr);                          // position 9: the last one
  EXPECT_EQ(eng.pos(0), 10);
  EXPECT_THROW(eng.step(t2, 1, nullptr, nullptr), Error);
  EXPECT_THROW(eng.step(t2, 2, nullptr, nullptr), Error);  // slot 0 is full even though slot 1 is empty
  EXPECT_EQ(eng.pos(0), 10);
  EXPECT_EQ(eng.pos(1), 0);
  int32_t bad = static_cast<int32_t>(w.cfg.n_vocab);
  EXPECT_THROW(eng.prefill(&bad, 1, 1, 1, nullptr, false), Error);         // token id outside the vocabulary
  EXPECT_THROW(eng.prefill(toks.data(), 2, 1, 0, nullptr, false), Error);  // slots at different positions
  EXPECT_THROW(eng.step(t2, 3, nullptr, nullptr), Error);                  // batch above max_batch
  eng.reset();
  eng.step(t2, 2, nullptr, nullptr);
  EXPECT_EQ(eng.pos(1), 1);
}

TEST(CudaEngine, RandomDeviceWeightsAreDeterministic) {
  FQ_REQUIRE_GPU();
  ModelConfig c = test::tiny_config(8, 2, 32, /*bias=*/true);
  c.n_embd = 64;
  c.n_ff = 96;
  c.n_vocab = 300;
  EngineOptions o;
  o.max_batch = 2;
  o.max_ctx = 24;
  CudaEngine a(c, 5, o), b(c, 5, o), d(c, 6, o);
  const std::vector<int32_t> toks = random_tokens(2 * 8, c.n_vocab, 50);
  std::vector<float> la(static_cast<size_t>(2 * c.n_vocab)), lb(la.size()), ld(la.size());
  a.prefill(toks.data(), 2, 8, 0, la.data(), false);
  b.prefill(toks.data(), 2, 8, 0, lb.data(), false);
  d.prefill(toks.data(), 2, 8, 0, ld.data(), false);
  EXPECT_EQ(la, lb);
  EXPECT_NE(la, ld);
  for (float v : la) ASSERT_TRUE(std::isfinite(v));
  double mx = 0;
  for (float v : la) mx = std::max(mx, std::fabs(double(v)));
  EXPECT_GT(mx, 0.0);
  std::vector<int32_t> out(2 * 10);
  const int32_t first[2] = {1, 2};
  a.decode_greedy(first, 2, 10, out.data());
  for (int32_t t : out) EXPECT_TRUE(t >= 0 && t < c.n_vocab);
  const runtime::EngineInfo info = a.info();
  EXPECT_GT(info.step_weight_bytes, 0u);
  EXPECT_GE(info.weight_bytes, info.step_weight_bytes - c.n_vocab * c.n_embd * 2);
}

#ifdef FLATQUANT_WITH_CUDA
// step_sample draws inside the captured graph: temperature 0 is the argmax of step(), and sampled tokens equal
// cuda::sample run on the logits of a twin engine's step() with the same RNG step.
TEST(CudaEngine, DeviceSamplingInTheGraph) {
  FQ_REQUIRE_GPU();
  const ModelWeights w = gqa_llama3_model();
  const int64_t V = w.cfg.n_vocab;
  EngineOptions o;
  o.max_ctx = 40;
  CudaEngine a(w, o), b(w, o);
  const std::vector<int32_t> toks = random_tokens(6, V, 70);
  a.prefill(toks.data(), 1, 6, 0, nullptr, false);
  b.prefill(toks.data(), 1, 6, 0, nullptr, false);
  std::vector<float> lb(static_cast<size_t>(V));
  int32_t tok = 3, na = -1, nb = -1;
  runtime::DeviceSampling greedy;
  greedy.temperature = 0.0f;
  a.step_sample(&tok, 1, greedy, 0, &na);
  b.step(&tok, 1, lb.data(), &nb);
  EXPECT_EQ(na, nb);
  runtime::DeviceSampling sp;
  sp.temperature = 0.8f;
  sp.top_k = 20;
  sp.top_p = 0.9f;
  sp.seed = 1234;
  cuda::SampleParams p;
  p.temperature = sp.temperature;
  p.top_k = sp.top_k;
  p.top_p = sp.top_p;
  p.seed = sp.seed;
  test::DeviceBuffer<float> dl(lb.size());
  test::DeviceBuffer<int32_t> dout(1);
  tok = na;
  std::vector<int32_t> drawn;
  for (uint64_t step = 1; step <= 8; ++step) {
    a.step_sample(&tok, 1, sp, step, &na);
    b.step(&tok, 1, lb.data(), nullptr);
    dl.upload(lb);
    ASSERT_EQ(cuda::sample(dl.get(), DType::F32, 1, V, V, p, step, nullptr, dout.get(), nullptr), cudaSuccess);
    nb = dout.download()[0];
    EXPECT_EQ(na, nb) << "step " << step;
    drawn.push_back(na);
    tok = na;
  }
  EXPECT_EQ(a.pos(0), 6 + 9);
  runtime::DeviceSampling bad = sp;
  bad.top_p = 0.0f;
  EXPECT_THROW(a.step_sample(&tok, 1, bad, 9, &na), Error);
}
#endif

TEST(CudaEngine, ProfileStepLeavesTheStateUnchanged) {
  FQ_REQUIRE_GPU();
  const ModelWeights w = gqa_llama3_model();
  const int64_t V = w.cfg.n_vocab;
  EngineOptions o;
  o.max_ctx = 16;
  CudaEngine a(w, o), b(w, o);
  const std::vector<int32_t> toks = random_tokens(5, V, 60);
  a.prefill(toks.data(), 1, 5, 0, nullptr, false);
  b.prefill(toks.data(), 1, 5, 0, nullptr, false);
  const int32_t t = 3;
  const std::vector<runtime::OpTime> ops = a.profile_step(&t, 1);
  ASSERT_FALSE(ops.empty());
  bool has_attn = false;
  for (const auto& op : ops) has_attn |= op.name == "decode_attention" && op.calls == w.cfg.n_layer;
  EXPECT_TRUE(has_attn);
  EXPECT_EQ(a.pos(0), 5);
  std::vector<float> la(static_cast<size_t>(V)), lb(la.size());
  a.step(&t, 1, la.data(), nullptr);
  b.step(&t, 1, lb.data(), nullptr);
  EXPECT_EQ(la, lb);
}

// Without a usable GPU a `--device cuda` command must fail with one `--device cuda: ...` line; returns true then
// (the caller stops), false when a GPU is there.
bool no_gpu_one_line_error(const test::CliResult& r) {
  std::string why;
  if (runtime::cuda_engine_available(&why)) return false;
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--device cuda: "), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  return true;
}

// `--device cuda` through the CLI: the same perplexity as the CPU reference with a GPU, else a one-line
// error.
TEST(CudaEngineCli, PplDeviceCuda) {
  const std::string dir = model_dir("stories260K");
  FQ_REQUIRE_FILE(path_join(dir, "config.json"));
  test::TempDir tmp;
  const std::string data = tmp.file("text.txt");
  write_file_atomic(
      data,
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
      "One day she saw a big red ball under a tree and she ran to get it. Her mom smiled.\n");
  const std::string args = "ppl --model " + dir + " --data " + data + " --seq-len 32 --json";
  const test::CliResult gpu = test::run_cli(args + " --device cuda");
  if (no_gpu_one_line_error(gpu)) return;
  const test::CliResult cpu = test::run_cli(args + " --device cpu");
  ASSERT_EQ(cpu.exit_code, 0) << cpu.err;
  ASSERT_EQ(gpu.exit_code, 0) << gpu.err;
  const double p_cpu = nlohmann::json::parse(cpu.out)["ppl"].get<double>();
  const double p_gpu = nlohmann::json::parse(gpu.out)["ppl"].get<double>();
  EXPECT_NEAR(p_gpu / p_cpu, 1.0, 5e-3) << "cpu " << p_cpu << " cuda " << p_gpu;
}

// `eval --device cuda` (cached-prefix scoring on the engine) agrees with the CPU reference: every task's
// accuracy within one item (fp16 may swap two near-equal choices), or, without a GPU, a one-line error.
TEST(CudaEngineCli, EvalDeviceCuda) {
  const std::string dir = model_dir("stories260K");
  FQ_REQUIRE_FILE(path_join(dir, "config.json"));
  const std::string args = "eval --model " + dir + " --data-dir " + test::source_path("tests/data/qa") +
                           " --tasks piqa,hellaswag,arc_easy,winogrande,lambada_openai --json";
  const test::CliResult gpu = test::run_cli(args + " --device cuda");
  if (no_gpu_one_line_error(gpu)) return;
  const test::CliResult cpu = test::run_cli(args + " --device cpu");
  ASSERT_EQ(cpu.exit_code, 0) << cpu.err;
  ASSERT_EQ(gpu.exit_code, 0) << gpu.err;
  const auto jc = nlohmann::json::parse(cpu.out), jg = nlohmann::json::parse(gpu.out);
  EXPECT_EQ(jg["device"], "cuda");
  for (const auto& [task, r] : jc["tasks"].items()) {
    const double n = r["n"].get<double>();
    EXPECT_NEAR(jg["tasks"][task]["acc"].get<double>(), r["acc"].get<double>(), 1.0 / n + 1e-9) << task;
  }
}

}  // namespace
}  // namespace fq
