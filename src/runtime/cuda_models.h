// The CUDA engine behind the model interfaces of the CLI: eval::CausalLM (ppl, all logits of a window),
// eval::PrefixLM (eval: cached prefixes) and runtime::DecoderModel (generate/chat: prefill, then one
// graph-replayed step per token). One sequence, cache slot 0. Logits come back to the host as fp32. Each takes
// an HF model (FP16 engine) or a quantized artifact (W4A4KV4 engine).
#pragma once
#include <algorithm>
#include <climits>
#include <memory>

#include "eval/causal_lm.h"
#include "eval/loglik.h"
#include "runtime/cuda_engine.h"
#include "runtime/generator.h"

namespace fq::runtime {

// Engine options for one sequence of up to max_ctx tokens whose every logit row may be requested.
inline EngineOptions single_sequence_options(int64_t max_ctx, bool head_int8 = false) {
  EngineOptions o;
  o.head_int8 = head_int8;
  o.max_batch = 1;
  o.max_ctx = max_ctx;
  o.max_tokens = std::min<int64_t>(max_ctx, 2048);
  o.max_logit_rows = o.max_tokens;
  return o;
}

class CudaDecoderModel : public DecoderModel {
 public:
  // `w` is uploaded (it may be freed afterwards).
  CudaDecoderModel(const ModelWeights& w, int64_t max_ctx) : eng_(w, single_sequence_options(max_ctx)) {}
  CudaDecoderModel(const Artifact& a, int64_t max_ctx) : eng_(a, single_sequence_options(max_ctx)) {}
  int64_t n_vocab() const override { return eng_.config().n_vocab; }
  int64_t max_ctx() const override { return eng_.options().max_ctx; }
  void reset() override { eng_.reset(); }
  void append(const int32_t* tokens, int64_t n, float* last_logits) override {
    if (n == 1)
      eng_.step(tokens, 1, last_logits, nullptr);
    else
      eng_.prefill(tokens, 1, n, 0, last_logits, false);
  }
  bool samples_on_device() const override { return true; }
  int32_t append_sample(int32_t token, const SamplerOptions& o, uint64_t step) override {
    DeviceSampling d;
    d.temperature = static_cast<float>(o.temperature);
    d.top_k = o.top_p <= 0.0 ? 1 : static_cast<int32_t>(std::min<int64_t>(o.top_k, INT32_MAX));
    d.top_p = o.top_p <= 0.0 ? 1.0f : static_cast<float>(std::min(o.top_p, 1.0));
    d.seed = o.seed;
    int32_t next = -1;
    eng_.step_sample(&token, 1, d, step, &next);
    return next;
  }
  CudaEngine& engine() { return eng_; }

 private:
  CudaEngine eng_;
};

}  // namespace fq::runtime

namespace fq::eval {

class CudaCausalLM : public CausalLM {
 public:
  CudaCausalLM(const ModelWeights& w, int64_t max_ctx, bool head_int8 = false)
      : eng_(w, runtime::single_sequence_options(max_ctx, head_int8)) {}
  CudaCausalLM(const Artifact& a, int64_t max_ctx, bool head_int8 = false)
      : eng_(a, runtime::single_sequence_options(max_ctx, head_int8)) {}
  int64_t n_vocab() const override { return eng_.config().n_vocab; }
  int64_t max_ctx() const override { return eng_.options().max_ctx; }
  void reset() override { eng_.reset(); }
  void forward(const int32_t* tokens, int64_t n, float* logits) override {
    eng_.prefill(tokens, 1, n, 0, logits, true);
  }
  runtime::CudaEngine& engine() { return eng_; }

 private:
  runtime::CudaEngine eng_;
};

class CudaPrefixLM : public PrefixLM {
 public:
  CudaPrefixLM(const ModelWeights& w, int64_t max_ctx) : eng_(w, runtime::single_sequence_options(max_ctx)) {}
  CudaPrefixLM(const Artifact& a, int64_t max_ctx) : eng_(a, runtime::single_sequence_options(max_ctx)) {}
  int64_t n_vocab() const override { return eng_.config().n_vocab; }
  int64_t max_ctx() const override { return eng_.options().max_ctx; }
  int64_t pos() const override { return eng_.pos(0); }
  void rewind(int64_t p) override { eng_.rewind(0, p); }
  void forward(const int32_t* tokens, int64_t n, float* logits) override {
    if (n > 0) eng_.prefill(tokens, 1, n, 0, logits, true);
  }
  runtime::CudaEngine& engine() { return eng_; }

 private:
  runtime::CudaEngine eng_;
};

}  // namespace fq::eval
