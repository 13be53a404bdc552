// Helpers shared by the CUDA engine tests (test_cuda_engine.cpp, test_cuda_quant_engine.cpp).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/fs.h"
#include "runtime/cuda_engine.h"
#include "runtime/sampler.h"
#include "test_util.h"

namespace fq {

#define FQ_REQUIRE_GPU()                                                    \
  do {                                                                      \
    std::string fq_why_;                                                    \
    if (!runtime::cuda_engine_available(&fq_why_)) GTEST_SKIP() << fq_why_; \
  } while (0)

inline std::string model_dir(const std::string& name) {
  const char* e = std::getenv("FLATQUANT_MODELS");
  return path_join(e && *e ? e : test::source_path(".cache/models"), name);
}

inline double norm_err(const float* got, const float* ref, size_t n) {
  double md = 0, mr = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = std::fabs(double(got[i]) - double(ref[i]));
    md = std::isfinite(got[i]) ? std::max(md, d) : INFINITY;
    mr = std::max(mr, std::fabs(double(ref[i])));
  }
  return md / std::max(mr, 1e-30);
}

// The reference's argmax must be the engine's unless the reference's top two are within margin * max |logit|
// (a tie that fp16 rounding may legitimately break the other way).
inline void expect_same_greedy(const float* got, const float* ref, int64_t V, const std::string& where,
                               double margin = 2e-3) {
  const int32_t a = runtime::argmax(ref, V), b = runtime::argmax(got, V);
  if (a == b) return;
  double mr = 0;
  for (int64_t i = 0; i < V; ++i) mr = std::max(mr, std::fabs(double(ref[i])));
  EXPECT_LT(ref[a] - ref[b], margin * mr) << where << ": greedy token " << b << " instead of " << a;
}

inline std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<int32_t> d(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = d(g);
  return t;
}

}  // namespace fq
