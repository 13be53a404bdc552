// The --model of ppl / eval / generate / chat: an HF model directory (fp32 reference decoder, or with
// --device cuda the FP16 CUDA engine) or a quantized artifact directory (ref::QuantDecoder, --quant
// fake|real; with --device cuda the W4A4KV4 CUDA engine, which is real quantization). One place decides
// which, so every command treats them alike.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "core/fs.h"
#include "eval/loglik.h"
#include "eval/quant_lm.h"
#include "eval/ref_lm.h"
#include "flatquant/error.h"
#include "model/artifact.h"
#include "model/weights.h"
#include "ref/quant_decoder.h"
#include "runtime/cuda_models.h"
#include "runtime/generator.h"
#include "runtime/quant_model.h"

namespace fq::cli {

// The --quant flag (empty when not given).
inline void add_quant_flag(CLI::App* sub, std::string& quant) {
  sub->add_option("--quant", quant,
                  "Artifact runtime: fake (fp32 weights, fake-quantized activations; default) "
                  "or real (integer GEMM)");
}

// The --device flag of ppl / generate / chat.
inline void add_device_flag(CLI::App* sub, std::string& device) {
  sub->add_option("--device", device,
                  "cpu (reference decoders) or cuda (CUDA engine: FP16 for HF models, W4A4KV4 for artifacts)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
}

class ModelSource {
 public:
  // device "cuda": the FP16 CUDA engine (HF directories; checked before anything is loaded).
  ModelSource(const std::string& dir, const std::string& quant_flag, const std::string& device = "cpu")
      : dir_(dir), cuda_(device == "cuda") {
    FQ_CHECK(is_directory(dir),
             "{}: not a directory (expected an HF model directory or a flatquant artifact)", dir);
    artifact_ = is_artifact_dir(dir);
    FQ_CHECK(!(cuda_ && artifact_ && quant_flag == "fake"),
             "--quant fake: the CUDA engine runs artifacts with real (integer) quantization; use --quant real "
             "or --device cpu");
    std::string why;
    FQ_CHECK(!cuda_ || runtime::cuda_engine_available(&why), "--device cuda: {}", why);
    if (artifact_) {
      art_ = load_artifact(dir);
      quant_ = quant_flag.empty() ? (cuda_ ? ref::QuantMode::kReal : ref::QuantMode::kFake)
                                  : ref::parse_quant_mode(quant_flag);
      cfg_ = art_.cfg;
    } else {
      FQ_CHECK(quant_flag.empty(),
               "--quant: {} is not a flatquant artifact (--quant applies to artifacts only)", dir);
      FQ_CHECK(file_exists(path_join(dir, "config.json")),
               "{}: no config.json (expected an HF model directory or a flatquant artifact)", dir);
      w_ = load_hf_weights(dir);
      cfg_ = w_.cfg;
    }
  }
  ModelSource(const ModelSource&) = delete;
  ModelSource& operator=(const ModelSource&) = delete;

  const std::string& dir() const { return dir_; }
  bool artifact() const { return artifact_; }
  const ModelConfig& cfg() const { return cfg_; }

  // The decoder behind each interface, and its thread count. For an artifact the decoder holds its own
  // prepared copy of the weights, so the loaded tensors are released afterwards (one decoder per source).
  // head_int8: the CUDA engine's int8 LM head (EngineOptions::head_int8); an error on the CPU.
  std::unique_ptr<eval::CausalLM> causal_lm(int64_t max_ctx, int threads, int* n_threads, bool head_int8 = false) {
    FQ_CHECK(!head_int8 || cuda_, "--head-int8: the int8 LM head is an option of the CUDA engine (add --device cuda)");
    if (artifact_ && cuda_) {
      *n_threads = 0;
      auto lm = std::make_unique<eval::CudaCausalLM>(art_, max_ctx, head_int8);
      release();
      return lm;
    }
    if (artifact_) {
      auto lm = std::make_unique<eval::QuantCausalLM>(art_, quant_, max_ctx, threads);
      *n_threads = lm->decoder().n_threads();
      release();
      return lm;
    }
    if (cuda_) {
      *n_threads = 0;
      return std::make_unique<eval::CudaCausalLM>(w_, max_ctx, head_int8);
    }
    auto lm = std::make_unique<eval::RefCausalLM>(w_, max_ctx, threads);
    *n_threads = lm->decoder().n_threads();
    return lm;
  }
  std::unique_ptr<eval::PrefixLM> prefix_lm(int64_t max_ctx, int threads, int* n_threads) {
    if (artifact_ && cuda_) {
      *n_threads = 0;
      auto lm = std::make_unique<eval::CudaPrefixLM>(art_, max_ctx);
      release();
      return lm;
    }
    if (artifact_) {
      auto lm = std::make_unique<eval::QuantPrefixLM>(art_, quant_, max_ctx, threads);
      *n_threads = lm->decoder().n_threads();
      release();
      return lm;
    }
    if (cuda_) {
      *n_threads = 0;
      return std::make_unique<eval::CudaPrefixLM>(w_, max_ctx);
    }
    auto lm = std::make_unique<eval::RefPrefixLM>(w_, max_ctx, threads);
    *n_threads = lm->decoder().n_threads();
    return lm;
  }
  std::unique_ptr<runtime::DecoderModel> decoder_model(int64_t max_ctx, int threads, int* n_threads) {
    if (artifact_ && cuda_) {
      *n_threads = 0;
      auto m = std::make_unique<runtime::CudaDecoderModel>(art_, max_ctx);
      release();
      return m;
    }
    if (artifact_) {
      auto m = std::make_unique<runtime::QuantDecoderModel>(art_, quant_, max_ctx, threads);
      *n_threads = m->n_threads();
      release();
      return m;
    }
    if (cuda_) {
      *n_threads = 0;
      return std::make_unique<runtime::CudaDecoderModel>(w_, max_ctx);
    }
    auto m = std::make_unique<runtime::RefDecoderModel>(w_, max_ctx, threads);
    *n_threads = m->n_threads();
    return m;
  }
  // Where it runs, for the timing lines: "N threads" or the CUDA engine.
  std::string compute(int n_threads) const {
    if (cuda_) return artifact_ ? "cuda w4a4kv4 engine" : "cuda fp16 engine";
    return fmt::format("{} threads", n_threads);
  }
  bool cuda() const { return cuda_; }

  // JSON fields of an artifact run (none for an HF directory, whose output stays as it was).
  void add_json(nlohmann::json& j) const {
    if (cuda_) j["device"] = "cuda";
    if (!artifact_) return;
    j["artifact"] = true;
    j["method"] = art_.method;
    j["recipe"] = art_.recipe.name;
    j["quant"] = ref::quant_mode_name(quant_);
  }
  // ", artifact: flatquant w4a4kv4, quant fake" (empty for an HF directory).
  std::string describe() const {
    if (!artifact_) return "";
    return fmt::format(", artifact: {} {}, quant {}", art_.method, art_.recipe.name,
                       ref::quant_mode_name(quant_));
  }

 private:
  void release() {
    Artifact keep;
    keep.cfg = art_.cfg;
    keep.recipe = art_.recipe;
    keep.method = art_.method;
    art_ = std::move(keep);
  }

  std::string dir_;
  bool cuda_ = false;
  bool artifact_ = false;
  ref::QuantMode quant_ = ref::QuantMode::kFake;
  ModelConfig cfg_;
  ModelWeights w_;
  Artifact art_;
};

}  // namespace fq::cli
