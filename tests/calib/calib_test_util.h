// Helpers for the LibTorch calibration tests: relative errors, finite-difference gradient checks, paths.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <functional>
#include <string>

#include "flatquant/error.h"
#include "test_util.h"

namespace fq::test {

// max |a - b| / max |b| (both converted to fp64).
inline double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  auto a64 = a.detach().to(torch::kFloat64), b64 = b.detach().to(torch::kFloat64);
  return (a64 - b64).abs().max().item<double>() / std::max(b64.abs().max().item<double>(), 1e-300);
}

// Checks d<r, f(x)>/dx from autograd against central differences (fp64, every element of x). Returns the
// max relative error over x's elements (normalised by the largest gradient component).
inline double gradcheck(const std::function<torch::Tensor(const torch::Tensor&)>& f, const torch::Tensor& x0,
                        uint64_t seed = 7, double eps = 1e-6) {
  torch::manual_seed(seed);
  auto x = x0.detach().to(torch::kFloat64).contiguous().clone().set_requires_grad(true);
  auto y = f(x);
  auto r = torch::randn(y.sizes(), torch::kFloat64);
  auto g = torch::autograd::grad({(y * r).sum()}, {x})[0];
  auto num = torch::zeros(g.sizes(), torch::kFloat64);
  torch::NoGradGuard ng;
  auto xf = x.detach().clone().view({-1});
  auto nf = num.view({-1});
  for (int64_t i = 0; i < xf.numel(); ++i) {
    const double v = xf[i].item<double>();
    xf[i] = v + eps;
    const double fp = (f(xf.view(x.sizes())) * r).sum().item<double>();
    xf[i] = v - eps;
    const double fm = (f(xf.view(x.sizes())) * r).sum().item<double>();
    xf[i] = v;
    nf[i] = (fp - fm) / (2 * eps);
  }
  return rel_err(g, num);
}

inline std::string models_cache() {
  const char* env = std::getenv("FLATQUANT_MODELS");
  return env && *env ? std::string(env) : source_path(".cache/models");
}

}  // namespace fq::test
