// FlatQuant's learnable invertible transforms (flatquant.md 1.2-1.4), LibTorch modules with autograd.
//
// Vocabulary: a transform P acts on row vectors, x -> x P (along the last dim); a consumer linear layer's
// weight W [out, in] becomes W P^{-T} so that (x P)(W P^{-T})^T = x W^T.
//
// Factor (one n x n matrix M and its inverse transpose M^{-T}):
//   SVD form (default):  M = U diag(sigma) V^T, U = Cayley(W_u), V = Cayley(W_v) with
//                        Cayley(W) = (I - A/2)^{-1} (I + A/2), A = tril(W,-1) - tril(W,-1)^T,
//                        W_u, W_v unconstrained (only their strict lower triangle matters), initialised
//                        to seeded random orthogonal matrices Q0 (as the original stores Q0 as the
//                        parametrization's "original"), sigma = 1. M^{-T} = U diag(1/sigma) V^T, analytic.
//   Direct form:         M a plain matrix initialised to a seeded random orthogonal Q0;
//                        M^{-T} = (M in fp64)^{-1}^T cast back to M's dtype.
// KronTransform (the original's *DecomposeTransMatrix, size n = L*R, L x R from decompose_dim):
//   forward   x -> vec(A^T reshape(x * s, L, R) B) = (x * s)(A kron B)
//   weight    W -> W diag(1/s) (A kron B)^{-T}, row by row with the same kron matmul on A^{-T}, B^{-T}
//   s (diag_scale, per channel) exists only when `diag` is set (init 1; see calibration's SmoothQuant init).
// SingleTransform (the original's *SingleTransMatrix, n x n): forward x -> x M, inverse x -> x M^{-T}.
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace fq::calib {

enum class TransParam { Svd, Direct };

// splitmix64: derives independent seeds for sub-objects from one user seed.
uint64_t mix_seed(uint64_t seed, uint64_t stream);

// A seeded random orthogonal n x n matrix in fp64 (QR of a standard normal matrix with R's diagonal made
// positive). The normal draws come from our own generator (mt19937_64 + Box-Muller), so the result does
// not depend on the LibTorch version or device.
torch::Tensor random_orthogonal(int64_t n, uint64_t seed);

// (I - A/2)^{-1}(I + A/2) with A = tril(w,-1) - tril(w,-1)^T: orthogonal for any square w; differentiable.
torch::Tensor cayley(const torch::Tensor& w);

// vec(A^T reshape(x, L, R) B) over the last dim of x ([..., L*R]); B may be undefined (identity).
torch::Tensor kron_matmul(const torch::Tensor& x, const torch::Tensor& a, const torch::Tensor& b);

class FactorImpl : public torch::nn::Module {
 public:
  FactorImpl(int64_t n, TransParam param, uint64_t seed);
  torch::Tensor matrix() const;  // M
  torch::Tensor inv_t() const;   // M^{-T}
  int64_t size() const { return n_; }
  TransParam param() const { return param_; }

  // Parameters (registered with the names below; the optimizer groups them by name).
  torch::Tensor u_raw, v_raw, sigma;  // Svd: "u_raw", "v_raw", "sigma"
  torch::Tensor m;                    // Direct: "matrix"

 private:
  int64_t n_;
  TransParam param_;
};
TORCH_MODULE(Factor);

class KronTransformImpl : public torch::nn::Module {
 public:
  // n = L*R with (L, R) = decompose_dim(n).
  KronTransformImpl(int64_t n, TransParam param, bool diag, uint64_t seed);
  torch::Tensor forward(const torch::Tensor& x) const;          // (x*s)(A kron B)
  torch::Tensor forward_no_diag(const torch::Tensor& x) const;  // x (A kron B): the online part after folding s
  torch::Tensor weight_inv(const torch::Tensor& w) const;       // W diag(1/s) (A kron B)^{-T}
  torch::Tensor weight_inv_no_diag(const torch::Tensor& w) const;
  bool has_diag() const { return diag_scale.defined(); }
  int64_t size() const { return n_; }
  // The explicit n x n matrix diag(s)(A kron B) (tests, small n only).
  torch::Tensor dense() const;

  Factor left{nullptr}, right{nullptr};
  torch::Tensor diag_scale;  // [n] or undefined; parameter "diag_scale"

 private:
  int64_t n_;
};
TORCH_MODULE(KronTransform);

class SingleTransformImpl : public torch::nn::Module {
 public:
  SingleTransformImpl(int64_t n, TransParam param, uint64_t seed);
  torch::Tensor forward(const torch::Tensor& x) const { return torch::matmul(x, f->matrix()); }
  torch::Tensor forward_inv_t(const torch::Tensor& x) const { return torch::matmul(x, f->inv_t()); }
  Factor f{nullptr};
};
TORCH_MODULE(SingleTransform);

}  // namespace fq::calib
