// `flatquant bench --random llama-3-8b|qwen2.5-7b|HF_DIR | --model HF_DIR --engine fp16 [--batch 1,16]
//                  [--prefill 2048] [--decode 256] [--repeat 3] [--profile] [--no-graphs] [--no-gemv]
//                  [--head-int8]
//                  [--int8-prefill-rows 128] [--int8-acc-mb 256] [--fused-split 0] [--no-staged-decode-gemm]
//                  [--json]`
// Inference speed of the CUDA engine (docs/runtime.md): per batch size, the prefill of `prefill` tokens per
// sequence (ms, median of `repeat` runs after a warm-up) and `decode` greedy tokens after it, one CUDA-graph
// replay per step with the argmax fed back on the device (ms/token). --random builds random weights on the
// device with the shapes of a preset or of an HF config.json (no checkpoint needed, as the seeds'
// --random_mode); --model uploads a real checkpoint.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "commands.h"
#include "core/fs.h"
#include "flatquant/error.h"
#include "model/config.h"
#include "model/weights.h"
#include "runtime/cuda_engine.h"
#include "runtime/sampler.h"

namespace fq::cli {

namespace {

struct Options {
  std::string random, model, engine = "fp16", batches = "1,16";
  int64_t prefill = 2048, decode = 256, repeat = 3;
  int64_t int8_prefill_rows = runtime::EngineOptions{}.int8_prefill_rows;
  bool no_fused_prefill_transform = false, no_wgmma_prefill = false, no_staged_decode_gemm = false;
  int64_t int8_acc_mb = runtime::EngineOptions{}.int8_acc_mb;
  int64_t fused_split = 0, wgmma_cluster = 0;
  uint64_t seed = 0;
  bool json = false, profile = false, no_graphs = false, no_gemv = false, head_int8 = false;
};

// Shapes of the models the issue benchmarks (values of their HF config.json files).
ModelConfig preset(const std::string& name) {
  ModelConfig c;
  c.torch_dtype = "float16";
  c.hidden_act = "silu";
  if (name == "llama-3-8b") {
    c.architecture = "LlamaForCausalLM";
    c.model_type = "llama";
    c.n_vocab = 128256, c.n_embd = 4096, c.n_layer = 32, c.n_head = 32, c.n_head_kv = 8, c.head_dim = 128;
    c.n_ff = 14336, c.n_ctx = 8192, c.rms_eps = 1e-5, c.rope_theta = 500000.0;
    c.rope_scaling.type = "llama3";
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 8192;
    c.bos_id = 128000;
    c.eos_ids = {128001};
    return c;
  }
  if (name == "qwen2.5-7b") {
    c.architecture = "Qwen2ForCausalLM";
    c.model_type = "qwen2";
    c.n_vocab = 152064, c.n_embd = 3584, c.n_layer = 28, c.n_head = 28, c.n_head_kv = 4, c.head_dim = 128;
    c.n_ff = 18944, c.n_ctx = 32768, c.rms_eps = 1e-6, c.rope_theta = 1000000.0, c.attn_bias = true;
    c.bos_id = 151643;
    c.eos_ids = {151643};
    return c;
  }
  FQ_CHECK(is_directory(name) && file_exists(path_join(name, "config.json")),
           "--random {}: neither a preset (llama-3-8b, qwen2.5-7b) nor an HF directory with config.json",
           name);
  return ModelConfig::load(path_join(name, "config.json"));
}

std::vector<int64_t> parse_batches(const std::string& s) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    int64_t b = 0;
    try {
      size_t used = 0;
      b = std::stoll(item, &used);
      FQ_CHECK(used == item.size(), "--batch: '{}' is not an integer", item);
    } catch (const std::logic_error&) {
      fail("--batch: '{}' is not an integer (expected a list like 1,16)", item);
    }
    FQ_CHECK(b >= 1 && b <= 1024, "--batch: {} outside [1, 1024]", b);
    v.push_back(b);
  }
  FQ_CHECK(!v.empty(), "--batch: empty list");
  return v;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int run(const Options& o) {
  FQ_CHECK(o.random.empty() != o.model.empty(), "bench: give exactly one of --random and --model");
  const bool wq_engine = o.engine == "w4a16" || o.engine == "w8a8" || o.engine == "w4a8";
  FQ_CHECK(o.engine == "fp16" || o.engine == "w4a4kv4" || wq_engine,
           "--engine: expected fp16, w4a4kv4, w4a16, w8a8 or w4a8, found \"{}\"", o.engine);
  FQ_CHECK(!wq_engine || o.random.empty(), "--engine {}: needs --model ARTIFACT_DIR (no random weights)",
           o.engine);
  FQ_CHECK(o.prefill >= 1 && o.decode >= 1 && o.repeat >= 1,
           "bench: --prefill, --decode and --repeat must be positive (found {}, {}, {})", o.prefill, o.decode,
           o.repeat);
  const std::vector<int64_t> batches = parse_batches(o.batches);
  std::string why;
  FQ_CHECK(runtime::cuda_engine_available(&why), "bench: {}", why);

  runtime::EngineOptions eo;
  eo.max_batch = *std::max_element(batches.begin(), batches.end());
  eo.max_ctx = o.prefill + o.decode;
  eo.max_tokens = eo.max_batch * o.prefill;  // the whole prefill in one pass, as the PyTorch baseline
  eo.max_logit_rows = eo.max_batch;
  eo.cuda_graphs = !o.no_graphs;
  eo.gemv = !o.no_gemv;
  eo.head_int8 = o.head_int8;
  eo.int8_prefill_rows = o.int8_prefill_rows;
  eo.fused_prefill_transform = !o.no_fused_prefill_transform;
  eo.wgmma_prefill = !o.no_wgmma_prefill;
  eo.staged_decode_gemm = !o.no_staged_decode_gemm;
  eo.wgmma_cluster = o.wgmma_cluster;
  eo.int8_acc_mb = o.int8_acc_mb;
  eo.fused_split = o.fused_split;
  std::unique_ptr<runtime::CudaEngine> eng;
  std::string name;
  const double t_load = now_s();
  if (!o.random.empty()) {
    ModelConfig cfg = preset(o.random);
    eng = std::make_unique<runtime::CudaEngine>(cfg, o.seed, eo, o.engine == "w4a4kv4");
    name = "random:" + o.random;
  } else if (is_artifact_dir(o.model)) {
    const Artifact a = load_artifact(o.model);
    eng = std::make_unique<runtime::CudaEngine>(a, eo);
    const std::string backend = eng->info().backend;
    FQ_CHECK(o.engine == backend, "--model {}: this artifact (recipe {}) runs with --engine {}", o.model,
             a.recipe.name, backend);
    name = o.model;
  } else {
    FQ_CHECK(o.engine == "fp16",
             "--model {}: an HF model runs with --engine fp16 (w4a4kv4 needs an artifact)", o.model);
    const ModelWeights w = load_hf_weights(o.model);
    eng = std::make_unique<runtime::CudaEngine>(w, eo);
    name = o.model;
  }
  const double load_s = now_s() - t_load;
  const ModelConfig& cfg = eng->config();
  const int64_t V = cfg.n_vocab;

  nlohmann::json results = nlohmann::json::array();
  for (int64_t B : batches) {
    std::mt19937 rng(static_cast<uint32_t>(o.seed * 7919 + static_cast<uint64_t>(B)));
    std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
    std::vector<int32_t> prompt(static_cast<size_t>(B * o.prefill));
    for (auto& t : prompt) t = tok(rng);
    std::vector<float> logits(static_cast<size_t>(B * V));

    std::vector<double> pre_ms;
    for (int64_t r = 0; r <= o.repeat; ++r) {  // r = 0 is the warm-up
      eng->reset();
      const double t0 = now_s();
      eng->prefill(prompt.data(), B, o.prefill, 0, logits.data(), false);  // synchronous
      if (r > 0) pre_ms.push_back((now_s() - t0) * 1e3);
    }
    std::vector<int32_t> first(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) first[static_cast<size_t>(b)] = runtime::argmax(logits.data() + b * V, V);

    // Warm-up (captures the graph of this batch size), then back to the end of the prompt and time.
    const int64_t warm = std::min<int64_t>(o.decode, 8);
    eng->decode_greedy(first.data(), B, warm, nullptr);
    for (int64_t b = 0; b < B; ++b) eng->rewind(b, o.prefill);
    std::vector<int32_t> out(static_cast<size_t>(B * o.decode));
    const double t0 = now_s();
    eng->decode_greedy(first.data(), B, o.decode, out.data());
    const double dec_ms = (now_s() - t0) * 1e3 / static_cast<double>(o.decode);

    const runtime::EngineInfo info = eng->info();
    // KV bytes one step reads, averaged over the decode (K and V: fp16, or 4-bit codes + fp32 scale and zero
    // per (token, head)).
    const double kv_head_bytes = o.engine == "w4a4kv4" ? cfg.head_dim / 2.0 + 8.0 : cfg.head_dim * 2.0;
    const double kv_step = static_cast<double>(B) * cfg.n_layer * 2.0 * cfg.n_head_kv * kv_head_bytes *
                           (static_cast<double>(o.prefill) + 0.5 * static_cast<double>(o.decode));
    nlohmann::json r;
    r["batch"] = B;
    r["prefill_ms"] = median(pre_ms);
    r["prefill_ms_min"] = *std::min_element(pre_ms.begin(), pre_ms.end());
    r["prefill_tok_s"] = static_cast<double>(B * o.prefill) / (median(pre_ms) * 1e-3);
    r["decode_ms_per_step"] = dec_ms;
    r["decode_tok_s"] = static_cast<double>(B) * 1e3 / dec_ms;
    r["weights_TBps"] = static_cast<double>(info.step_weight_bytes) / (dec_ms * 1e-3) / 1e12;
    r["weights_kv_TBps"] = (static_cast<double>(info.step_weight_bytes) + kv_step) / (dec_ms * 1e-3) / 1e12;
    r["kv_bytes_per_step"] = kv_step;
    r["gpu_mem_used_bytes"] = info.device_mem_used;
    r["first_tokens"] =
        std::vector<int32_t>(out.begin(), out.begin() + std::min<int64_t>(B * 4, B * o.decode));
    if (o.profile) {
      // Weight bytes the decode step's streaming ops read (all layers), for their achieved TB/s against the
      // measured 3.05 TB/s read ceiling (../shared/reference/hardware.md). Events around each op include the
      // launch gaps of an un-captured step, so these are lower bounds.
      const double wb = o.engine == "fp16"   ? 2.0
                        : o.engine == "w8a8" ? 1.0
                                             : 0.5,
                   Ld = static_cast<double>(cfg.n_layer);
      const double E = static_cast<double>(cfg.n_embd), F = static_cast<double>(cfg.n_ff),
                   HD = static_cast<double>(cfg.n_head * cfg.head_dim),
                   KVD = static_cast<double>(cfg.n_head_kv * cfg.head_dim);
      const std::map<std::string, double> step_bytes = {
          {"qkv_gemm", Ld * (HD + 2 * KVD) * E * wb},
          {"o_gemm", Ld * E * HD * wb},
          {"gate_up_gemm", Ld * 2 * F * E * wb},
          {"down_gemm", Ld * E * F * wb},
          {"lm_head", static_cast<double>(V) * E * (o.head_int8 ? 1.0 : 2.0)}};
      auto table = [&](const std::vector<runtime::OpTime>& ops, double* total, bool step) {
        nlohmann::json pj = nlohmann::json::array();
        *total = 0;
        for (const auto& t : ops) *total += t.ms;
        for (const auto& t : ops) {
          nlohmann::json e = {{"op", t.name},
                              {"ms", t.ms},
                              {"calls", t.calls},
                              {"pct", 100.0 * t.ms / std::max(*total, 1e-12)}};
          const auto it = step_bytes.find(t.name);
          if (step && it != step_bytes.end() && t.ms > 0) {
            e["weight_TBps"] = it->second / (t.ms * 1e-3) / 1e12;
            e["pct_of_3.05TBps"] = 100.0 * e["weight_TBps"].get<double>() / 3.05;
          }
          pj.push_back(e);
        }
        return pj;
      };
      double total = 0;
      for (int64_t b = 0; b < B; ++b) eng->rewind(b, o.prefill);
      r["profile_uncaptured_step"] = table(eng->profile_step(first.data(), B), &total, true);
      r["profile_total_ms"] = total;
      eng->reset();
      r["profile_prefill"] = table(eng->profile_prefill(prompt.data(), B, o.prefill), &total, false);
      r["profile_prefill_total_ms"] = total;
    }
    results.push_back(r);
    if (!o.json)
      fmt::print(
          "batch {:>3}: prefill {} x {} tokens {:8.2f} ms ({:.0f} tok/s); decode {:6.3f} ms/step ({:.0f} "
          "tok/s, "
          "weights {:.2f} TB/s, weights+KV {:.2f} TB/s)\n",
          B, B, o.prefill, r["prefill_ms"].get<double>(), r["prefill_tok_s"].get<double>(), dec_ms,
          r["decode_tok_s"].get<double>(), r["weights_TBps"].get<double>(),
          r["weights_kv_TBps"].get<double>());
    if (!o.json && o.profile)
      for (const char* key : {"profile_uncaptured_step", "profile_prefill"}) {
        fmt::print("  {}:\n", key);
        for (const auto& p : r[key])
          fmt::print("    {:<20} {:8.3f} ms {:5.1f}% ({} calls){}\n", p["op"].get<std::string>(),
                     p["ms"].get<double>(), p["pct"].get<double>(), p["calls"].get<int64_t>(),
                     p.contains("weight_TBps")
                         ? fmt::format("  weights {:.2f} TB/s", p["weight_TBps"].get<double>())
                         : std::string());
      }
  }

  const runtime::EngineInfo info = eng->info();
  char date[32];
  const std::time_t t = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  nlohmann::json j;
  j["bench"] = "engine";
  j["engine"] = o.engine;
  j["model"] = name;
  j["gpu"] = info.device_name;
  j["date_utc"] = date;
  j["cuda_graphs"] = !o.no_graphs;
  j["gemv"] = !o.no_gemv;
  j["head_int8"] = o.head_int8;
  j["int8_prefill_rows"] = o.int8_prefill_rows;
  j["int8_acc_mb"] = o.int8_acc_mb;
  j["fused_split"] = o.fused_split;
  j["int8_gemms"] = info.int8_gemms;  // GEMMs that took the int8 prefill route (0: none did)
  j["fused_prefill_transforms"] = info.fused_prefill_transforms;
  j["fused_prefill_transform"] = !o.no_fused_prefill_transform;
  j["wgmma_gemms"] = info.wgmma_gemms;  // of int8_gemms, those on our sm_90a kernel
  j["wgmma_prefill"] = !o.no_wgmma_prefill;
  j["wgmma_cluster"] = o.wgmma_cluster;
  j["staged_decode_gemm"] = !o.no_staged_decode_gemm;
  j["config"] = {{"n_layer", cfg.n_layer},     {"n_embd", cfg.n_embd},       {"n_head", cfg.n_head},
                 {"n_head_kv", cfg.n_head_kv}, {"head_dim", cfg.head_dim},   {"n_ff", cfg.n_ff},
                 {"n_vocab", cfg.n_vocab},     {"attn_bias", cfg.attn_bias}, {"rope", cfg.rope_scaling.type}};
  j["prefill_tokens"] = o.prefill;
  j["decode_tokens"] = o.decode;
  j["max_ctx"] = eo.max_ctx;
  j["weight_bytes"] = info.weight_bytes;
  j["step_weight_bytes"] = info.step_weight_bytes;
  j["kv_cache_bytes"] = info.kv_bytes;
  j["workspace_bytes"] = info.workspace_bytes;
  j["gpu_mem_used_bytes"] = info.device_mem_used;
  j["gpu_mem_total_bytes"] = info.device_mem_total;
  j["init_s"] = load_s;
  j["results"] = results;
  if (o.json) {
    fmt::print("{}\n", j.dump());
  } else {
    fmt::print(
        "{} on {}: weights {:.2f} GB (a step reads {:.2f} GB), KV cache {:.2f} GB, workspace {:.2f} GB, "
        "GPU memory in use {:.2f} GB\n",
        name, info.device_name, info.weight_bytes / 1e9, info.step_weight_bytes / 1e9, info.kv_bytes / 1e9,
        info.workspace_bytes / 1e9, info.device_mem_used / 1e9);
  }
  return 0;
}

}  // namespace

Runner register_bench(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* sub =
      app.add_subcommand("bench", "Prefill / decode speed of the CUDA engine (random or real weights)");
  auto* r =
      sub->add_option("--random", o->random,
                      "Random weights with the shapes of llama-3-8b, qwen2.5-7b or an HF directory's config");
  auto* m = sub->add_option("--model", o->model, "HF model directory (real weights)");
  r->excludes(m);
  sub->add_option("--engine", o->engine,
                  "fp16 (FP16 weights and KV), w4a4kv4 (random packed weights, or --model ARTIFACT_DIR), or "
                  "w4a16 / w8a8 / w4a8 (--model ARTIFACT_DIR of that recipe)")
      ->capture_default_str();
  sub->add_option("--batch", o->batches, "Comma-separated batch sizes")->capture_default_str();
  sub->add_option("--prefill", o->prefill, "Prompt tokens per sequence")->capture_default_str();
  sub->add_option("--decode", o->decode, "Greedy tokens decoded after the prompt")->capture_default_str();
  sub->add_option("--repeat", o->repeat, "Timed prefill runs (median reported)")->capture_default_str();
  sub->add_option("--seed", o->seed, "Seed of the random weights and prompts")->capture_default_str();
  sub->add_flag("--profile", o->profile, "Per-op device time of one un-captured decode step");
  sub->add_flag("--no-graphs", o->no_graphs,
                "Launch every kernel of a step instead of replaying a CUDA graph");
  sub->add_flag("--no-gemv", o->no_gemv, "cuBLASLt for every GEMM (default: our FP16 GEMV for batch <= 4)");
  sub->add_flag("--head-int8", o->head_int8, "The LM head as per-row int8 (EngineOptions::head_int8)");
  sub->add_option("--int8-prefill-rows", o->int8_prefill_rows,
                  "W4A4KV4: prefill GEMMs of at least this many rows on cuBLASLt's int8 GEMM (0: never; "
                  "EngineOptions::int8_prefill_rows)")
      ->capture_default_str();
  sub->add_flag(
      "--no-fused-prefill-transform", o->no_fused_prefill_transform,
      "W4A4KV4 int8 prefill route: the Kronecker transform as two cuBLAS GEMMs and a separate quantizer "
      "(default: one fused kernel, EngineOptions::fused_prefill_transform)");
  sub->add_flag(
      "--no-wgmma-prefill", o->no_wgmma_prefill,
      "W4A4KV4 int8 prefill route: cuBLASLt s8 GEMMs (weights unpacked per call, int32 sums, epilogue "
      "kernels) instead of our sm_90a wgmma kernel (EngineOptions::wgmma_prefill)");
  sub->add_flag("--no-staged-decode-gemm", o->no_staged_decode_gemm,
                "W4A4KV4 decode GEMMs: the weights streamed into registers instead of shared memory by bulk "
                "copies (EngineOptions::staged_decode_gemm)");
  sub->add_option("--wgmma-cluster", o->wgmma_cluster,
                  "CTAs per cluster sharing each tile of codes in that kernel: 0 automatic, 1, 2 or 4 "
                  "(EngineOptions::wgmma_cluster)")
      ->check(CLI::IsMember({0, 1, 2, 4}));
  sub->add_option("--int8-acc-mb", o->int8_acc_mb,
                  "The int8 prefill route's int32 sums buffer (MB; EngineOptions)")
      ->capture_default_str();
  sub->add_option("--fused-split", o->fused_split,
                  "W4A4KV4 decode: CTAs per token of the fused transform kernel (1, 2, 4, 8; 0: automatic)")
      ->capture_default_str();
  sub->add_flag("--json", o->json, "Print one JSON object to stdout");
  return [o]() -> int { return run(*o); };
}

}  // namespace fq::cli
