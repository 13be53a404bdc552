// QuantDecoder: the CPU runtime of a quantized artifact (src/model/artifact.h), the reference every other
// artifact runtime (CUDA) is checked against. Per layer (docs/artifact_format.md, "CPU runtime"):
//   h = rmsnorm(x) * attn_norm;  t = ln_trans ? h (left ⊗ right) : h
//   q, k, v = Q_a(t; clip of q / k / v) W^T + b     (Q_a: per-token symmetric a_bits quantizer when < 16)
//   rope(q), rope(k);  kcache_trans: q <- q inv_t, k <- k matrix (per head)
//   k, v <- Q_kv(k), Q_kv(v) per (token, head), asymmetric k_bits / v_bits (< 16), stored as fp32 values
//   a = attention(q, K, V);  x += Q_a(o_trans ? head_mix(a, Po) : a) W_o^T
//   h = rmsnorm(x) * ffn_norm;  t = up_gate_trans ? h (left ⊗ right) : h
//   z = silu(Q_a(t) W_gate^T) * (Q_a(t) W_up^T)
//   x += Q_a(down_trans ? z (left ⊗ right) : z) W_down^T
//   logits = rmsnorm(x) * norm · head^T
// Two modes:
//   kFake: weights dequantized to fp32 once at load, activations fake-quantized (q * scale in fp32), fp32
//          linear() — FlatQuant's own fake-quant evaluation of the merged model (flatquant.md 1.5).
//   kReal: weights and activations both quantized (w_bits, a_bits < 16): integer codes, int32 accumulation,
//          then float(acc) * s_x * s_w (ref::qgemm_epilogue) + bias — the deployment kernels' arithmetic
//          (for W4A4 bit-identical to ref::qgemm_w4a4 on the packed data). A recipe with 16-bit weights or
//          activations has no integer GEMM; it runs as kFake.
// Results are bit-identical for any thread count.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/artifact.h"
#include "ref/parallel.h"
#include "ref/rope.h"

namespace fq::ref {

enum class QuantMode { kFake, kReal };
const char* quant_mode_name(QuantMode m);
// "fake" | "real"; throws fq::Error otherwise.
QuantMode parse_quant_mode(const std::string& s);

class QuantDecoder {
 public:
  // The weights are prepared (dequantized or unpacked) here; `a` is not referenced afterwards. max_ctx <= 0
  // means cfg.n_ctx; n_threads <= 0 means all cores.
  QuantDecoder(const Artifact& a, QuantMode mode, int64_t max_ctx = 0, int n_threads = 0);
  ~QuantDecoder();

  // As RefDecoder::forward: n tokens at positions pos() .. pos()+n-1; logits_out [n, n_vocab] or nullptr.
  void forward(const int32_t* tokens, int64_t n, float* logits_out);
  void reset() { pos_ = 0; }
  void rewind(int64_t p) { pos_ = p < 0 ? 0 : (p < pos_ ? p : pos_); }
  int64_t pos() const { return pos_; }
  int64_t max_ctx() const { return max_ctx_; }
  const ModelConfig& config() const { return cfg_; }
  int n_threads() const { return pool_->size(); }
  // The mode that actually runs (kReal falls back to kFake when weights or activations are 16-bit).
  QuantMode mode() const { return mode_; }
  QuantMode requested_mode() const { return requested_; }

  struct Linear;  // a prepared linear layer (quant_decoder.cpp)
  struct Layer;

 private:
  void layer(int il, int64_t n);
  void run_linear(const Linear& l, const float* x, int64_t n, float* y);
  void ensure_scratch(int64_t n);

  ModelConfig cfg_;
  Recipe recipe_;
  QuantMode requested_, mode_;
  int64_t max_ctx_ = 0, pos_ = 0;
  std::unique_ptr<ThreadPool> pool_;
  RopeTable rope_;
  std::vector<float> tok_embd_, norm_, lm_head_;
  std::vector<Layer> layers_;
  std::vector<float> k_cache_, v_cache_;  // [n_layer][max_ctx][n_head_kv*head_dim], dequantized values
  int64_t scratch_n_ = 0;
  std::vector<float> x_, h_, t_, q_, att_, gate_, up_, aq_;
  std::vector<int8_t> codes8_;
  std::vector<int16_t> codes_;
  std::vector<float> ascale_;
};

}  // namespace fq::ref
