#include "calib/quantizer.h"

namespace fq::calib {

torch::Tensor round_ste(const torch::Tensor& x) { return (torch::round(x) - x).detach() + x; }

torch::Tensor fake_quant(const torch::Tensor& x, int bits, bool sym, int64_t group, bool act,
                         const torch::Tensor& clip_max, const torch::Tensor& clip_min) {
  if (bits >= 16) return x;
  TORCH_CHECK(bits >= 2, "fake_quant: bits must be in [2, 16]");
  const int64_t last = x.size(-1);
  const int64_t g = group > 0 ? group : last;
  TORCH_CHECK(last % g == 0, "fake_quant: group size ", g, " does not divide the row length ", last);
  auto shape = x.sizes().vec();
  std::vector<int64_t> gshape(shape.begin(), shape.end() - 1);
  gshape.push_back(last / g);
  gshape.push_back(g);
  auto xg = x.reshape(gshape);
  auto zero0 = torch::zeros({}, x.options());
  auto xmax = torch::maximum(std::get<0>(xg.max(-1, true)), zero0);
  auto xmin = torch::minimum(std::get<0>(xg.min(-1, true)), zero0);
  if (clip_max.defined()) xmax = xmax * clip_max;
  if (clip_min.defined()) xmin = xmin * clip_min;
  torch::Tensor y;
  if (sym) {
    const double qmax = static_cast<double>((int64_t{1} << (bits - 1)) - 1);
    auto m = torch::maximum(xmin.abs(), xmax);
    torch::Tensor scale;
    if (act) {
      scale = m / qmax;
      scale = torch::where(m == 0, torch::ones_like(scale), scale);
    } else {
      scale = torch::clamp_min(m, 1e-5) / qmax;
    }
    y = scale * torch::clamp(round_ste(xg / scale), -(qmax + 1), qmax);
  } else {
    const double qmax = static_cast<double>((int64_t{1} << bits) - 1);
    auto both0 = (xmin == 0) & (xmax == 0);
    xmin = torch::where(both0, -torch::ones_like(xmin), xmin);
    xmax = torch::where(both0, torch::ones_like(xmax), xmax);
    auto scale = (xmax - xmin) / qmax;
    auto zero = torch::round(-xmin / scale).detach();
    y = scale * (torch::clamp(round_ste(xg / scale) + zero, 0.0, qmax) - zero);
  }
  return y.reshape(shape);
}

ActQuantizerImpl::ActQuantizerImpl(int bits, bool sym, bool lac) : bits_(bits), sym_(sym) {
  if (lac && bits < 16) {
    clip_max = register_parameter("clip_factor_a_max", torch::full({1}, 4.0, torch::kFloat32));
    clip_min = register_parameter("clip_factor_a_min", torch::full({1}, 4.0, torch::kFloat32));
  }
}

torch::Tensor ActQuantizerImpl::forward(const torch::Tensor& x) const {
  if (bits_ >= 16) return x;
  const bool lac = clip_max.defined();
  return fake_quant(x, bits_, sym_, -1, true, lac ? torch::sigmoid(clip_max) : torch::Tensor(),
                    lac ? torch::sigmoid(clip_min) : torch::Tensor());
}

WeightQuantizerImpl::WeightQuantizerImpl(int64_t out_features, int bits, bool sym, int64_t group, bool lwc)
    : bits_(bits), sym_(sym), group_(group) {
  if (lwc && bits < 16) {
    clip_max = register_parameter("clip_factor_w_max", torch::full({out_features, 1}, 4.0, torch::kFloat32));
    clip_min = register_parameter("clip_factor_w_min", torch::full({out_features, 1}, 4.0, torch::kFloat32));
  }
}

torch::Tensor WeightQuantizerImpl::clip(const torch::Tensor& w) const {
  if (!clip_max.defined()) return w;
  auto wmax = std::get<0>(w.max(1, true)) * torch::sigmoid(clip_max);
  auto wmin = std::get<0>(w.min(1, true)) * torch::sigmoid(clip_min);
  // clamp with tensor bounds, written as min/max so the gradient reaches the bounds where W is clipped.
  return torch::maximum(torch::minimum(w, wmax), wmin);
}

torch::Tensor WeightQuantizerImpl::quantize(const torch::Tensor& w) const {
  return fake_quant(w, bits_, sym_, group_, false);
}

}  // namespace fq::calib
