// Weight quantization after the fold (flatquant.md 1.8): RTN and GPTQ, symmetric per output channel, as the
// original's gptq_utils.py (GPTQ / QuaRot code) with its WeightQuantizer. docs/calibration.md, "GPTQ".
//
// Everything is computed in fp64 on W's device. The per-row scale is computed once from the whole (already
// LWC-clipped) W, before any column is quantized, and rounded to W's dtype; the codes are chosen against that
// rounded scale, so dequant == code * scale holds exactly in W's dtype:
//   qmax = 2^(bits-1) - 1, scale = max(|min(row, 0)|, max(row, 0)).clamp(1e-5) / qmax,
//   code = clamp(round_half_even(w / scale), -(qmax + 1), qmax).
// With `mse`, the WeightQuantizer grid search: for i = 0 .. int(maxshrink * grid) - 1 (p = 1 - i / grid) the
// scale p * xmax / qmax is tried and, per row, the first one minimising sum |dequant(w) - w|^norm is kept
// (grid 100, maxshrink 0.8, norm 2.4; i = 0 is the plain absmax scale, so it never does worse in that norm).
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace fq::calib {

// H = 2/n sum_rows x x^T over every row seen (a running average, as GPTQ's add_batch), accumulated in fp64 on
// the device of the first batch. A row is one input vector: x [..., in] contributes x.numel() / in rows.
// (The original counts x.shape[0] of a [batch, seq, in] input, i.e. sequences, not tokens; that differs
// by the constant factor seq, to which GPTQ's result is invariant.)
class HessianAccumulator {
 public:
  void add(const torch::Tensor& x);
  torch::Tensor hessian() const;  // [in, in] fp64; throws fq::Error before the first add
  int64_t rows() const { return n_; }

 private:
  torch::Tensor h_;
  int64_t n_ = 0;
};

struct GptqOptions {
  int bits = 4;             // 2..8
  int64_t blocksize = 128;  // columns per lazy-batch block
  double percdamp = 0.01;   // damp = percdamp * mean(diag H)
  bool act_order = false;   // columns in descending diag(H) order (stable sort)
  bool mse = false;         // grid-searched scales (see above) instead of absmax
};

struct GptqResult {
  torch::Tensor codes;    // [out, in] int8, -(qmax + 1) .. qmax
  torch::Tensor scales;   // [out], W's dtype
  torch::Tensor dequant;  // [out, in], W's dtype: codes * scales[:, None]
};

// The per-row scales described above ([out], W's dtype). W: [out, in] fp32 or fp64.
torch::Tensor weight_scales(const torch::Tensor& w, int bits, bool mse);

// Round-to-nearest with weight_scales(w, bits, mse).
GptqResult rtn_quantize_weight(const torch::Tensor& w, int bits, bool mse = false);

// GPTQ (Frantar et al.): W [out, in] (fp32/fp64, already clipped), H [in, in] (e.g. HessianAccumulator).
// Dead inputs (H_ii == 0) get H_ii = 1 and a zero weight column (after the scales were taken); optional
// act-order permutation; H += percdamp * mean(diag H) * I; U = upper Cholesky factor of H^{-1} (via the
// Cholesky factor of H); for each block of `blocksize` columns and each column i in it:
//   q = quant(w_i), err = (w_i - q) / U_ii, W[:, i:block end] -= err U[i, i:block end],
// then the remaining columns get W[:, block end:] -= Err_block U[block, block end:]. Unpermuted at the end.
GptqResult gptq_quantize(const torch::Tensor& w, const torch::Tensor& h, const GptqOptions& opt);

}  // namespace fq::calib
