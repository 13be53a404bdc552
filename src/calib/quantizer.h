// Fake quantizers with straight-through rounding (flatquant.md 1.5), LibTorch autograd.
//
// round_ste(x) = (round(x) - x).detach() + x: forward rounds, backward is the identity. Clamps are ordinary
// clamps (zero gradient outside the range). Scales are NOT detached, so gradients reach the clipping
// parameters (LWC / LAC) through the scale. round() is torch's: half to even, like the original.
//
// Symmetric, b bits: qmax = 2^(b-1) - 1, scale = max(|xmin|, xmax) / qmax, q = clamp(round_ste(x/scale),
//   -(qmax+1), qmax), dequant scale*q. (4 bits: qmax 7, range [-8, 7].)
// Asymmetric, b bits: qmax = 2^b - 1, scale = (xmax - xmin)/qmax, zero = round(-xmin/scale) (plain round: no
//   gradient), q = clamp(round_ste(x/scale) + zero, 0, qmax), dequant scale*(q - zero).
// xmin = min(rowmin, 0), xmax = max(rowmax, 0) over the quantization group.
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace fq::calib {

torch::Tensor round_ste(const torch::Tensor& x);

// Fake-quantizes x group-wise along the last dim: x is viewed as [..., G] with G = group (the last dim when
// group <= 0; must divide it). clip_max / clip_min (undefined = 1) multiply xmax / xmin (already sigmoid-ed;
// broadcast against the [..., 1] group statistics).
// Activation rules (`act` true): sym scale = 1 where it would be 0; asym: groups with xmin == xmax == 0 use
// xmin = -1, xmax = 1. Weight rules (`act` false, the GPTQ/QuaRot WeightQuantizer): sym xmax clamped to
// >= 1e-5 before the division; asym the same xmin == xmax == 0 rule.
torch::Tensor fake_quant(const torch::Tensor& x, int bits, bool sym, int64_t group, bool act,
                         const torch::Tensor& clip_max = {}, const torch::Tensor& clip_min = {});

// Dynamic per-token (per last-dim row) activation quantizer with learnable activation clipping: one scalar
// pair (clip_max, clip_min), logits initialised to 4.0 (sigmoid = 0.982), per quantizer instance. For the
// KV cache it is applied to [..., head_dim] tensors, i.e. per (token, head). bits >= 16: identity.
class ActQuantizerImpl : public torch::nn::Module {
 public:
  ActQuantizerImpl(int bits, bool sym, bool lac);
  torch::Tensor forward(const torch::Tensor& x) const;
  int bits() const { return bits_; }
  torch::Tensor clip_max, clip_min;  // parameters "clip_factor_a_max" / "clip_factor_a_min" [1], or undefined

 private:
  int bits_;
  bool sym_;
};
TORCH_MODULE(ActQuantizer);

// Per-output-channel (or per-group) weight quantizer with learnable weight clipping (LWC): on the already
// transformed weight W [out, in], clip(W) = clamp(W, rowmin(W)*sigmoid(c_min), rowmax(W)*sigmoid(c_max))
// per row with c [out, 1] initialised to 4.0; then fake-quantize. bits >= 16: identity (no LWC parameters,
// as the original creates none without weight quantization).
class WeightQuantizerImpl : public torch::nn::Module {
 public:
  WeightQuantizerImpl(int64_t out_features, int bits, bool sym, int64_t group, bool lwc);
  torch::Tensor clip(const torch::Tensor& w) const;       // LWC only (identity without lwc)
  torch::Tensor quantize(const torch::Tensor& w) const;   // fake quant only (identity for bits >= 16)
  torch::Tensor forward(const torch::Tensor& w) const { return quantize(clip(w)); }
  int bits() const { return bits_; }
  torch::Tensor clip_max, clip_min;  // parameters "clip_factor_w_max" / "clip_factor_w_min" [out, 1]

 private:
  int bits_;
  bool sym_;
  int64_t group_;
};
TORCH_MODULE(WeightQuantizer);

}  // namespace fq::calib
