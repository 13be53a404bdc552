// Helpers for the LibTorch calibration tests: relative errors, finite-difference gradient checks, paths.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>

#include "calib/calibrate.h"
#include "core/fs.h"
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

// A fresh directory under the system temp dir, removed with its contents (test_util.cpp's TempDir is not
// linked into this binary).
struct TmpDir {
  std::string path;
  TmpDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "fq_calib_XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path = tmpl;
  }
  ~TmpDir() { remove_tree(path); }
  TmpDir(const TmpDir&) = delete;
  TmpDir& operator=(const TmpDir&) = delete;
  std::string file(const std::string& n) const { return path_join(path, n); }
};

// The fq::Error message of f(), or "" when it does not throw.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// stories260K (converted by scripts/test.sh) and a WikiText-2 slice; false when either is missing.
struct CalibPaths {
  std::string model, data;
};
inline bool calib_paths(CalibPaths& p) {
  p.model = models_cache() + "/stories260K";
  p.data = data_path("wikitext2_raw/wiki.valid.nonempty.first100KB.txt");
  return file_exists(p.model + "/config.json") && file_exists(p.data);
}

// A tiny calibration schedule (1 epoch, 4 samples x 64 tokens, batch 2: 2 steps per layer).
inline calib::CalibrateOptions tiny_calibration(const CalibPaths& p, const std::string& out) {
  calib::CalibrateOptions o;
  o.model = p.model;
  o.calib_data = p.data;
  o.out = out;
  o.sets = {"calib.epochs=1", "calib.nsamples=4", "calib.seqlen=64", "calib.bsz=2"};
  o.progress = false;
  return o;
}

}  // namespace fq::test
