#include "calib/gptq.h"

#include <algorithm>
#include <limits>

#include "flatquant/error.h"

namespace fq::calib {
namespace {

using torch::indexing::Slice;

// The original WeightQuantizer's grid-search constants.
constexpr double kMseNorm = 2.4;
constexpr int kMseGrid = 100;
constexpr double kMseMaxShrink = 0.8;

void check_weight(const torch::Tensor& w, int bits, const char* fn) {
  FQ_CHECK(w.defined() && w.dim() == 2, "{}: weight must be a 2-D [out, in] tensor, got {} dims", fn,
           w.defined() ? w.dim() : 0);
  FQ_CHECK(w.scalar_type() == torch::kFloat32 || w.scalar_type() == torch::kFloat64,
           "{}: weight dtype must be float32 or float64, got {}", fn, c10::toString(w.scalar_type()));
  FQ_CHECK(bits >= 2 && bits <= 8, "{}: bits must be in 2..8 (int8 codes), got {}", fn, bits);
  FQ_CHECK(torch::isfinite(w).all().item<bool>(), "{}: weight [{}, {}] has non-finite values", fn, w.size(0),
           w.size(1));
}

double qmax_of(int bits) {
  return static_cast<double>((1 << (bits - 1)) - 1);
}

// clamp(round_half_even(x / s), -(qmax + 1), qmax), in x's dtype (fp64 here).
torch::Tensor codes_of(const torch::Tensor& x, const torch::Tensor& s, double qmax) {
  return torch::clamp(torch::round(x / s), -(qmax + 1), qmax);
}

GptqResult finish(const torch::Tensor& codes64, const torch::Tensor& scales, torch::ScalarType dtype) {
  GptqResult r;
  r.codes = codes64.to(torch::kInt8);
  r.scales = scales;
  r.dequant = r.codes.to(dtype) * scales.unsqueeze(1);
  return r;
}

}  // namespace

void HessianAccumulator::add(const torch::Tensor& x) {
  FQ_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) >= 1,
           "HessianAccumulator::add: input must be [..., in]");
  const int64_t in = x.size(-1);
  auto x2 = x.detach().reshape({-1, in});
  if (!h_.defined()) {
    h_ = torch::zeros({in, in}, x2.options().dtype(torch::kFloat64));
  } else {
    FQ_CHECK(h_.size(0) == in, "HessianAccumulator::add: input has {} features, earlier batches had {}", in,
             h_.size(0));
  }
  x2 = x2.to(h_.device(), torch::kFloat64);
  const int64_t m = x2.size(0);
  if (m == 0) return;
  // Running average as GPTQ's add_batch: rescale the old mean, then add 2/n X^T X of the new rows.
  h_.mul_(static_cast<double>(n_) / static_cast<double>(n_ + m));
  n_ += m;
  h_.addmm_(x2.t(), x2, /*beta=*/1.0, /*alpha=*/2.0 / static_cast<double>(n_));
}

torch::Tensor HessianAccumulator::hessian() const {
  FQ_CHECK(n_ > 0, "HessianAccumulator::hessian: no input rows were added");
  return h_;
}

torch::Tensor weight_scales(const torch::Tensor& w, int bits, bool mse) {
  check_weight(w, bits, "weight_scales");
  torch::NoGradGuard no_grad;
  const auto x = w.detach().to(torch::kFloat64);
  const double qmax = qmax_of(bits);
  const auto zero = torch::zeros({x.size(0)}, x.options());
  const auto xmin = torch::minimum(x.amin(1), zero);
  const auto xmax = torch::maximum(xmin.abs(), torch::maximum(x.amax(1), zero)).clamp_min(1e-5);
  auto scale = xmax / qmax;
  if (mse) {
    auto best = torch::full({x.size(0)}, std::numeric_limits<double>::infinity(), x.options());
    const int steps = static_cast<int>(kMseMaxShrink * kMseGrid);
    for (int i = 0; i < steps; ++i) {
      const double p = 1.0 - static_cast<double>(i) / kMseGrid;
      const auto s1 = (p * xmax) / qmax;
      const auto err = (codes_of(x, s1.unsqueeze(1), qmax) * s1.unsqueeze(1) - x).abs().pow(kMseNorm).sum(1);
      const auto take = err < best;  // strict: the first (largest) scale wins ties
      best = torch::where(take, err, best);
      scale = torch::where(take, s1, scale);
    }
  }
  return scale.to(w.scalar_type());
}

GptqResult rtn_quantize_weight(const torch::Tensor& w, int bits, bool mse) {
  torch::NoGradGuard no_grad;
  const auto scales = weight_scales(w, bits, mse);
  const auto codes =
      codes_of(w.detach().to(torch::kFloat64), scales.to(torch::kFloat64).unsqueeze(1), qmax_of(bits));
  return finish(codes, scales, w.scalar_type());
}

GptqResult gptq_quantize(const torch::Tensor& w, const torch::Tensor& h, const GptqOptions& opt) {
  check_weight(w, opt.bits, "gptq_quantize");
  const int64_t rows = w.size(0), cols = w.size(1);
  FQ_CHECK(h.defined() && h.dim() == 2 && h.size(0) == cols && h.size(1) == cols,
           "gptq_quantize: Hessian must be [{}, {}] (weight columns), got {}", cols, cols,
           h.defined() ? c10::str(h.sizes()) : std::string("undefined"));
  FQ_CHECK(opt.blocksize >= 1, "gptq_quantize: blocksize must be >= 1, got {}", opt.blocksize);
  FQ_CHECK(opt.percdamp >= 0, "gptq_quantize: percdamp must be >= 0, got {}", opt.percdamp);
  torch::NoGradGuard no_grad;
  const double qmax = qmax_of(opt.bits);

  // Scales from the whole clipped weight, before dead columns are zeroed (as the original's find_params(W)).
  const auto scales = weight_scales(w, opt.bits, opt.mse);
  const auto s = scales.to(torch::kFloat64);  // [rows]
  auto W = w.detach().to(torch::kFloat64).clone();
  auto H = h.detach().to(W.device(), torch::kFloat64).clone();
  FQ_CHECK(torch::isfinite(H).all().item<bool>(), "gptq_quantize: Hessian [{}, {}] has non-finite values",
           cols, cols);

  const auto dead = H.diagonal() == 0;
  H.diagonal().masked_fill_(dead, 1.0);
  W.masked_fill_(dead.unsqueeze(0), 0.0);

  torch::Tensor invperm;
  if (opt.act_order) {
    // Stable, so equal diagonal entries keep their order (the original's argsort is not stable).
    const auto perm = std::get<1>(torch::sort(H.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true));
    W = W.index_select(1, perm);
    H = H.index_select(0, perm).index_select(1, perm);
    invperm = torch::argsort(perm);
  }

  H.diagonal().add_(opt.percdamp * H.diagonal().mean());
  auto chol = torch::linalg_cholesky_ex(H);
  FQ_CHECK(std::get<1>(chol).item<int64_t>() == 0,
           "gptq_quantize: the damped Hessian [{}, {}] is not positive definite (percdamp {})", cols, cols,
           opt.percdamp);
  auto hinv = torch::cholesky_inverse(std::get<0>(chol));
  auto uchol = torch::linalg_cholesky_ex(hinv, /*upper=*/true);
  FQ_CHECK(std::get<1>(uchol).item<int64_t>() == 0,
           "gptq_quantize: the inverse Hessian [{}, {}] is not positive definite (percdamp {})", cols, cols,
           opt.percdamp);
  const auto U = std::get<0>(uchol);

  auto Q = torch::empty_like(W);  // codes, fp64
  for (int64_t i1 = 0; i1 < cols; i1 += opt.blocksize) {
    const int64_t i2 = std::min(i1 + opt.blocksize, cols), count = i2 - i1;
    auto W1 = W.index({Slice(), Slice(i1, i2)}).clone();
    auto Err1 = torch::empty({rows, count}, W.options());
    const auto U1 = U.index({Slice(i1, i2), Slice(i1, i2)});
    for (int64_t i = 0; i < count; ++i) {
      const auto col = W1.select(1, i);
      const auto code = codes_of(col, s, qmax);
      const auto err = (col - code * s) / U1[i][i];
      // Propagate the error to the not yet quantized columns of this block (col itself is done).
      W1.index({Slice(), Slice(i, count)}).sub_(torch::outer(err, U1[i].index({Slice(i, count)})));
      Q.select(1, i1 + i).copy_(code);
      Err1.select(1, i).copy_(err);
    }
    // Lazy batch update of every later column at once.
    if (i2 < cols)
      W.index({Slice(), Slice(i2, cols)}).sub_(Err1.mm(U.index({Slice(i1, i2), Slice(i2, cols)})));
  }
  if (opt.act_order) Q = Q.index_select(1, invperm);
  FQ_CHECK(torch::isfinite(Q).all().item<bool>(), "gptq_quantize: non-finite codes for weight [{}, {}]", rows,
           cols);
  return finish(Q, scales, w.scalar_type());
}

}  // namespace fq::calib
