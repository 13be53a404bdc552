#include "calib/transforms.h"

#include <cmath>
#include <random>
#include <vector>

#include "ref/kron.h"

namespace fq::calib {

uint64_t mix_seed(uint64_t seed, uint64_t stream) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (stream + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

torch::Tensor random_orthogonal(int64_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  // Box-Muller on 53-bit uniforms: portable across standard libraries (std::normal_distribution is not).
  auto uniform = [&g]() { return (static_cast<double>(g() >> 11) + 0.5) * (1.0 / 9007199254740992.0); };
  std::vector<double> v(static_cast<size_t>(n * n));
  for (size_t i = 0; i < v.size(); i += 2) {
    const double r = std::sqrt(-2.0 * std::log(uniform())), t = 2.0 * M_PI * uniform();
    v[i] = r * std::cos(t);
    if (i + 1 < v.size()) v[i + 1] = r * std::sin(t);
  }
  auto a = torch::from_blob(v.data(), {n, n}, torch::kFloat64).clone();
  auto qr = torch::linalg_qr(a);
  auto q = std::get<0>(qr), r = std::get<1>(qr);
  // Sign fix makes the factorisation unique (Haar-distributed Q).
  auto sign = torch::sign(torch::diagonal(r));
  sign = torch::where(sign == 0, torch::ones_like(sign), sign);
  return (q * sign.unsqueeze(0)).contiguous();
}

torch::Tensor cayley(const torch::Tensor& w) {
  const int64_t n = w.size(-1);
  auto low = torch::tril(w, -1);
  auto a = low - low.transpose(-2, -1);
  auto eye = torch::eye(n, w.options());
  return at::linalg_solve(eye - 0.5 * a, eye + 0.5 * a);
}

torch::Tensor kron_matmul(const torch::Tensor& x, const torch::Tensor& a, const torch::Tensor& b) {
  const int64_t L = a.size(0), R = b.defined() ? b.size(0) : x.size(-1) / L;
  auto shape = x.sizes().vec();
  auto xr = x.reshape({-1, L, R});
  auto y = torch::matmul(a.t(), xr);
  if (b.defined()) y = torch::matmul(y, b);
  return y.reshape(shape);
}

FactorImpl::FactorImpl(int64_t n, TransParam param, uint64_t seed) : n_(n), param_(param) {
  TORCH_CHECK(n >= 1, "transform factor size must be positive");
  if (param == TransParam::Svd) {
    u_raw = register_parameter("u_raw", random_orthogonal(n, mix_seed(seed, 0)).to(torch::kFloat32));
    v_raw = register_parameter("v_raw", random_orthogonal(n, mix_seed(seed, 1)).to(torch::kFloat32));
    sigma = register_parameter("sigma", torch::ones({n}, torch::kFloat32));
  } else {
    m = register_parameter("matrix", random_orthogonal(n, mix_seed(seed, 0)).to(torch::kFloat32));
  }
}

torch::Tensor FactorImpl::matrix() const {
  if (param_ == TransParam::Direct) return m;
  return torch::matmul(cayley(u_raw) * sigma.unsqueeze(0), cayley(v_raw).t());
}

torch::Tensor FactorImpl::inv_t() const {
  if (param_ == TransParam::Direct) return m.to(torch::kFloat64).inverse().to(m.scalar_type()).t();
  return torch::matmul(cayley(u_raw) * sigma.reciprocal().unsqueeze(0), cayley(v_raw).t());
}

KronTransformImpl::KronTransformImpl(int64_t n, TransParam param, bool diag, uint64_t seed) : n_(n) {
  const ref::KronDims d = ref::decompose_dim(n);
  left = register_module("left", Factor(d.left, param, mix_seed(seed, 10)));
  right = register_module("right", Factor(d.right, param, mix_seed(seed, 11)));
  if (diag) diag_scale = register_parameter("diag_scale", torch::ones({n}, torch::kFloat32));
}

torch::Tensor KronTransformImpl::forward_no_diag(const torch::Tensor& x) const {
  return kron_matmul(x, left->matrix(), right->matrix());
}

torch::Tensor KronTransformImpl::forward(const torch::Tensor& x) const {
  return forward_no_diag(has_diag() ? x * diag_scale : x);
}

torch::Tensor KronTransformImpl::weight_inv_no_diag(const torch::Tensor& w) const {
  return kron_matmul(w, left->inv_t(), right->inv_t());
}

torch::Tensor KronTransformImpl::weight_inv(const torch::Tensor& w) const {
  return weight_inv_no_diag(has_diag() ? w / diag_scale : w);
}

torch::Tensor KronTransformImpl::dense() const {
  auto k = torch::kron(left->matrix(), right->matrix());
  return has_diag() ? diag_scale.unsqueeze(1) * k : k;
}

SingleTransformImpl::SingleTransformImpl(int64_t n, TransParam param, uint64_t seed) {
  f = register_module("f", Factor(n, param, seed));
}

}  // namespace fq::calib
