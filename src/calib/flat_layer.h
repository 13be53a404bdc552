// One Llama-family decoder layer (RMSNorm, q/k/v with optional bias, RoPE incl. llama3 scaling, GQA causal
// attention, SwiGLU) in LibTorch, with FlatQuant's transforms placed as the original places them
// (flatquant.md 1.1, 1.4):
//   ln_trans       Kron(n_embd), shared input transform of q/k/v (diag -> input RMSNorm weight on merge)
//   vcache_trans   Single(head_dim), merged into v_proj's rows: each head's V becomes V Pv
//   o_trans        Single(n_head), online before o_proj: per token attn[H, d] <- Po^T attn;
//                  W_o <- W_o (Po^{-T} kron Pv^{-T}), undoing Po and Pv
//   kcache_trans   Single(head_dim), after RoPE: q <- q Pk^{-T}, k <- k Pk (then K quantization)
//   up_gate_trans  Kron(n_embd), shared input transform of up/gate (diag -> post-attention RMSNorm weight)
//   down_trans     Kron(n_ff), input of down_proj (diag -> up_proj's rows on merge)
// Every linear layer has its own activation quantizer (LAC pair) and weight quantizer (LWC per row).
//
// Modes:
//   Fp     plain layer: no transform, no quantization (the calibration target).
//   Train  transforms applied on the fly, weights W P^{-T} -> LWC -> [v: Pv on rows] -> fake quant, inputs
//          transformed -> fake quant (STE); differentiable in all transform and clipping parameters.
//   Eval   merged weights (merge() in fp64: norms *= s, W P^{-T}, LWC, up rows *= s_down, fake quant), the
//          online transforms without diag. Call merge() after the parameters change.
// Shapes: x [batch, n_tokens, n_embd] -> [batch, n_tokens, n_embd]; positions 0..n_tokens-1.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "calib/quantizer.h"
#include "calib/transforms.h"
#include "model/config.h"
#include "model/weights.h"

namespace fq::calib {

// Bits >= 16 switch a quantizer off.
struct LayerQuantConfig {
  int w_bits = 4, a_bits = 4, k_bits = 4, v_bits = 4;
  bool w_sym = true, a_sym = true, k_sym = false, v_sym = false;
  int64_t w_group = -1;  // per-channel when <= 0
  bool lwc = true, lac = true;
  bool add_diag = true;           // per-channel scales on the Kron transforms
  TransParam param = TransParam::Svd;
  // Which transforms exist: the original creates them only when quantization needs them.
  bool transforms = true;         // ln / up_gate / down / o / v
  bool kcache_transform = true;   // kcache
  uint64_t seed = 0;
  // The original's rule: transforms when w or a bits < 16; kcache when k bits < 16.
  void set_transforms_auto() {
    transforms = w_bits < 16 || a_bits < 16;
    kcache_transform = k_bits < 16;
  }
};

enum class LayerMode { Fp, Train, Eval };

// Per-channel max |x| at each Kron transform's input, accumulated over FP passes (SmoothQuant-style init).
struct ActStats {
  torch::Tensor ln, up_gate, down;  // [n_embd], [n_embd], [n_ff]; undefined until the first pass
};

class FlatLayerImpl : public torch::nn::Module {
 public:
  // Copies the layer's weights (fp32) as buffers (never trained). Throws fq::Error when a weight's size does
  // not match cfg.
  FlatLayerImpl(const ModelConfig& cfg, const LayerWeights& w, const LayerQuantConfig& q);

  torch::Tensor forward(const torch::Tensor& x);
  // FP forward that also folds max |x| per channel of the three Kron inputs into `stats`.
  torch::Tensor forward_fp(const torch::Tensor& x, ActStats* stats);

  void set_mode(LayerMode m) { mode_ = m; }
  LayerMode mode() const { return mode_; }
  // Computes the merged weights of Eval mode from the current parameters (fp64, cast to the layer dtype).
  // quantize_weights=false keeps them clipped but unquantized (the export quantizes them with RTN or GPTQ
  // and installs the result with set_eval_weight).
  void merge(bool quantize_weights = true);
  // The merged, clipped, unquantized weight of a linear ("q", "k", "v", "o", "up", "gate", "down") in fp64,
  // from the last merge().
  const torch::Tensor& merged_weight64(const std::string& name) const;
  // Replaces the Eval-mode weight of a linear (e.g. by its GPTQ-quantized values).
  void set_eval_weight(const std::string& name, const torch::Tensor& w);
  // Eval mode calls this with each linear's input as the linear sees it (transformed and fake-quantized);
  // names as merged_weight64. GPTQ collects its Hessians here.
  std::function<void(const std::string& name, const torch::Tensor& x)> capture;

  struct Merged {
    torch::Tensor attn_norm, ffn_norm, wq, wk, wv, bv, wo, w_up, w_gate, w_down;
  };
  const Merged& merged() const { return merged_; }
  // The unmerged q/k biases (undefined without biases); v's bias after merge is merged().bv.
  const torch::Tensor& bias_q() const { return bq_; }
  const torch::Tensor& bias_k() const { return bk_; }
  // SmoothQuant-style diag init: s = clamp(wmax^(1-alpha) / xmax^alpha, min 1e-5), wmax = per-input-
  // channel max |W| over the consumers ([q;k;v], [up;gate], down). No-op without diag scales.
  void init_diag_scales(const ActStats& stats, double alpha);

  // The parameters in the optimizer's three groups.
  std::vector<torch::Tensor> transform_params();  // U/V raw, sigma, direct matrices
  std::vector<torch::Tensor> diag_params();       // diag scales
  std::vector<torch::Tensor> clip_params();       // LWC and LAC logits

  const LayerQuantConfig& quant() const { return q_; }

  KronTransform ln_trans{nullptr}, up_gate_trans{nullptr}, down_trans{nullptr};
  SingleTransform vcache_trans{nullptr}, o_trans{nullptr}, kcache_trans{nullptr};
  ActQuantizer aq_q{nullptr}, aq_k{nullptr}, aq_v{nullptr}, aq_o{nullptr}, aq_up{nullptr}, aq_gate{nullptr},
      aq_down{nullptr}, kq{nullptr}, vq{nullptr};
  WeightQuantizer wq_q{nullptr}, wq_k{nullptr}, wq_v{nullptr}, wq_o{nullptr}, wq_up{nullptr}, wq_gate{nullptr},
      wq_down{nullptr};

 private:
  torch::Tensor& eval_weight(const std::string& name);
  torch::Tensor rope(const torch::Tensor& x, int64_t n_tokens) const;  // x [B, heads, T, d]
  torch::Tensor rmsnorm(const torch::Tensor& x, const torch::Tensor& w) const;
  torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) const;
  torch::Tensor fp_forward(const torch::Tensor& x, ActStats* stats);
  torch::Tensor quant_forward(const torch::Tensor& x);
  torch::Tensor v_out_trans(const torch::Tensor& w_rows) const;  // [n_head_kv*d, ...] rows per head -> Pv

  int64_t E_, H_, KV_, d_, F_;
  double eps_;
  LayerQuantConfig q_;
  LayerMode mode_ = LayerMode::Fp;
  std::vector<float> inv_freq_;  // fp32, as ref::rope_inv_freq
  // Base weights (buffers).
  torch::Tensor attn_norm_, ffn_norm_, wq_, wk_, wv_, wo_, bq_, bk_, bv_, w_gate_, w_up_, w_down_;
  Merged merged_;
  std::map<std::string, torch::Tensor> merged64_;
};
TORCH_MODULE(FlatLayer);

}  // namespace fq::calib
