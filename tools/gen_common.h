// Shared by `flatquant generate` and `flatquant chat`: the model/tokenizer session (CPU reference decoder for
// an HF directory, the artifact runtime for a quantized artifact) and the sampling flags.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <random>
#include <string>

#include "core/fs.h"
#include "flatquant/error.h"
#include "io/tokenizer.h"
#include "model_source.h"
#include "runtime/generator.h"
#include "runtime/sampler.h"

namespace fq::cli {

struct SamplingFlags {
  double temperature = 1.0, top_p = 1.0, repetition_penalty = 1.0;
  int64_t top_k = 0, seed = -1, max_tokens = 256, ctx = 0;
  int threads = 0;
  std::string quant, device = "cpu";

  void add(CLI::App* sub) {
    sub->add_option("--temperature", temperature, "Sampling temperature (0: greedy)")->capture_default_str();
    sub->add_option("--top-k", top_k, "Keep the K most likely tokens (0: off)")->capture_default_str();
    sub->add_option("--top-p", top_p, "Nucleus sampling mass (1: off)")->capture_default_str();
    sub->add_option("--repetition-penalty", repetition_penalty, "HF repetition penalty (1: off)")
        ->capture_default_str();
    sub->add_option("--seed", seed, "RNG seed (default: random; the seed used is reported)");
    sub->add_option("--max-tokens", max_tokens, "Generate at most N tokens")->capture_default_str();
    sub->add_option("--ctx", ctx, "KV cache length in tokens (0: the model's, at most 4096)");
    sub->add_option("--threads", threads, "CPU threads (0: all cores)");
    add_quant_flag(sub, quant);
    add_device_flag(sub, device);
  }
  runtime::SamplerOptions sampler() const {
    runtime::SamplerOptions o;
    o.temperature = temperature;
    o.top_k = top_k;
    o.top_p = top_p;
    o.repetition_penalty = repetition_penalty;
    o.seed = seed >= 0 ? static_cast<uint64_t>(seed) : (static_cast<uint64_t>(std::random_device{}()) << 32) ^
                                                           std::random_device{}();
    return o;
  }
};

// Weights, tokenizer and decoder of one HF model directory or artifact.
struct ModelSession {
  std::unique_ptr<ModelSource> src;
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<runtime::DecoderModel> model;
  std::vector<int32_t> eos_ids;
  int n_threads = 0;

  ModelSession(const std::string& dir, const SamplingFlags& f) {
    FQ_CHECK(is_directory(dir), "{}: not a directory (expected an HF model directory or a flatquant artifact)", dir);
    FQ_CHECK(file_exists(path_join(dir, "config.json")),
             "{}: no config.json (expected an HF model directory or a flatquant artifact)", dir);
    FQ_CHECK(f.ctx >= 0, "--ctx must not be negative (found {})", f.ctx);
    src = std::make_unique<ModelSource>(dir, f.quant, f.device);
    const ModelConfig& cfg = src->cfg();
    tok = load_tokenizer(dir);
    FQ_CHECK(tok->n_vocab() <= cfg.n_vocab, "{}: the tokenizer has {} tokens but the model vocabulary has {}", dir,
             tok->n_vocab(), cfg.n_vocab);
    // The KV cache is allocated up front: cap the default so that 8k/128k-context models stay small.
    const int64_t ctx = f.ctx > 0 ? std::min(f.ctx, cfg.n_ctx) : std::min<int64_t>(cfg.n_ctx, 4096);
    model = src->decoder_model(ctx, f.threads, &n_threads);
    eos_ids = runtime::collect_eos_ids(dir, cfg, *tok);
  }
};

}  // namespace fq::cli
