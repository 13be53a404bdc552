// Shared helpers for the op tests: seeded activation-like random data, and (with CUDA) an RAII device buffer
// poisoned with 0xFF before a kernel runs, so that elements a kernel forgets to write fail the comparison.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#ifdef FLATQUANT_WITH_CUDA
#include <cuda_runtime_api.h>

#include "ops/cuda_check.h"
#endif

namespace fq::test {

// Normal(0,1) values with ~1% outliers scaled by 20 (activation-like: a few channels dominate the max).
// Random packed int4 bytes (every nibble value) and positive per-row scales, seeded.
inline std::vector<uint8_t> random_packed(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng() & 0xFF);
  return v;
}

inline std::vector<float> random_scales(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.001f, 0.2f);
  std::vector<float> v(n);
  for (auto& s : v) s = u(rng);
  return v;
}

inline std::vector<float> random_activations(size_t n, uint32_t seed, float outlier_scale = 20.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng) * (u(rng) < 0.01f ? outlier_scale : 1.0f);
  return v;
}

// A random orthogonal-ish well-conditioned matrix is not needed for these tests: any dense matrix exercises
// the transform. Entries Normal(0, 1/sqrt(n)) keep the output magnitude comparable to the input.
inline std::vector<float> random_matrix(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f / std::sqrt(static_cast<float>(n)));
  std::vector<float> m(static_cast<size_t>(n * n));
  for (auto& x : m) x = nd(rng);
  return m;
}

#ifdef FLATQUANT_WITH_CUDA
// GTEST_SKIP when there is no usable CUDA device (the dev machine compiles CUDA but has no GPU).
#define FQ_REQUIRE_CUDA()                                                     \
  do {                                                                        \
    int fq_n_dev_ = 0;                                                        \
    cudaError_t fq_e_ = cudaGetDeviceCount(&fq_n_dev_);                       \
    if (fq_e_ != cudaSuccess || fq_n_dev_ == 0) {                             \
      (void)cudaGetLastError();                                               \
      GTEST_SKIP() << "no CUDA device (" << cudaGetErrorString(fq_e_) << ")"; \
    }                                                                         \
  } while (0)

template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    FQ_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), bytes() ? bytes() : 1), "DeviceBuffer");
    poison();
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return p_; }
  size_t bytes() const { return n_ * sizeof(T); }
  void poison() { FQ_CUDA_CHECK(cudaMemset(p_, 0xFF, bytes()), "DeviceBuffer::poison"); }
  void upload(const std::vector<T>& host) {
    FQ_CUDA_CHECK(cudaMemcpy(p_, host.data(), bytes(), cudaMemcpyHostToDevice), "DeviceBuffer::upload");
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    FQ_CUDA_CHECK(cudaMemcpy(host.data(), p_, bytes(), cudaMemcpyDeviceToHost), "DeviceBuffer::download");
    return host;
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};
#endif

}  // namespace fq::test
