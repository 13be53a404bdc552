// CUDA vs CPU reference for the quantization kernels: symmetric per-token int4 (src/kernels/cuda/quant.cu vs
// ref::quantize_sym_int4) and asymmetric KV int4 (kv_quant.cu vs ref::quantize_kv_asym_int4). Both use the
// same IEEE fp32 operations in the same order, so packed bytes and scales must match BIT FOR BIT. Outputs are
// poisoned with 0xFF first: an unwritten byte shows up as a mismatch with gpu=0xff, an unwritten scale as
// NaN.
#ifdef FLATQUANT_WITH_CUDA
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/quant.h"
#include "ops/ops_util.h"
#include "ref/quant.h"

namespace fq {
namespace {

using test::DeviceBuffer;

// Returns "" when equal, else a message naming the first differing byte and the count.
std::string first_byte_mismatch(const std::vector<uint8_t>& gpu, const std::vector<uint8_t>& cpu,
                                int64_t row_bytes, const char* what) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < cpu.size(); ++i)
    if (gpu[i] != cpu[i] && bad++ == 0) first = i;
  if (bad == 0) return "";
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "%s: %zu of %zu packed bytes differ; first at row %lld byte %lld: gpu=0x%02x cpu=0x%02x%s",
                what, bad, cpu.size(), static_cast<long long>(first / row_bytes),
                static_cast<long long>(first % row_bytes), gpu[first], cpu[first],
                gpu[first] == 0xFF ? " (0xff = poison: the kernel did not write it)" : "");
  return buf;
}

std::string first_float_mismatch(const std::vector<float>& gpu, const std::vector<float>& cpu,
                                 const char* what) {
  for (size_t i = 0; i < cpu.size(); ++i)
    if (std::memcmp(&gpu[i], &cpu[i], sizeof(float)) != 0) {
      char buf[256];
      std::snprintf(buf, sizeof buf, "%s[%zu]: gpu=%.9g cpu=%.9g (bit-exact match expected%s)", what, i,
                    gpu[i], cpu[i], std::isnan(gpu[i]) ? "; NaN = poison: not written" : "");
      return buf;
    }
  return "";
}

TEST(QuantSymInt4Cuda, MatchesReferenceBitForBit) {
  FQ_REQUIRE_CUDA();
  for (int64_t cols : {8, 172, 576, 3584, 4096, 18944}) {
    for (float clip : {1.0f, 0.9820138f, 0.6f}) {
      const int64_t rows = 7, stride = cols + 10;
      auto x = test::random_activations(static_cast<size_t>(rows * stride), static_cast<uint32_t>(cols + 7));
      for (int64_t c = 0; c < cols; ++c) x[static_cast<size_t>(3 * stride + c)] = 0.0f;  // an all-zero row
      std::vector<uint8_t> p_cpu(static_cast<size_t>(rows * cols / 2));
      std::vector<float> s_cpu(rows);
      ref::quantize_sym_int4(x.data(), rows, cols, stride, clip, clip * 0.9f, p_cpu.data(), s_cpu.data());

      DeviceBuffer<float> dx(x);
      DeviceBuffer<uint8_t> dp(p_cpu.size());
      DeviceBuffer<float> ds(s_cpu.size());
      ASSERT_EQ(fq::cuda::quantize_sym_int4(dx.get(), rows, cols, stride, clip, clip * 0.9f, dp.get(),
                                            ds.get(), nullptr),
                cudaSuccess);
      FQ_CUDA_CHECK(cudaDeviceSynchronize(), "quantize_sym_int4 kernel");
      const std::string ctx = "cols " + std::to_string(cols) + " clip " + std::to_string(clip);
      EXPECT_EQ(first_float_mismatch(ds.download(), s_cpu, "scales"), "") << ctx;
      EXPECT_EQ(first_byte_mismatch(dp.download(), p_cpu, cols / 2, "quantize_sym_int4"), "") << ctx;
    }
  }
}

TEST(QuantSymInt4Cuda, RejectsOddRowLengthWithoutLaunching) {
  // Argument checks happen before any CUDA call, so this runs without a device too.
  EXPECT_EQ(fq::cuda::quantize_sym_int4(nullptr, 2, 3, 3, 1.0f, 1.0f, nullptr, nullptr, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(
      fq::cuda::quantize_kv_asym_int4(nullptr, 2, 4, 7, 28, 1.0f, 1.0f, nullptr, nullptr, nullptr, nullptr),
      cudaErrorInvalidValue);
}

TEST(QuantKvAsymInt4Cuda, MatchesReferenceBitForBit) {
  FQ_REQUIRE_CUDA();
  for (int64_t n_head : {9, 28, 32}) {
    for (int64_t head_dim : {8, 64, 128}) {
      for (float clip : {1.0f, 0.95f}) {
        const int64_t n_tokens = 11, stride = n_head * head_dim + 6;
        auto x = test::random_activations(static_cast<size_t>(n_tokens * stride),
                                          static_cast<uint32_t>(n_head * 131 + head_dim));
        for (int64_t i = 0; i < head_dim; ++i)
          x[static_cast<size_t>(2 * stride + head_dim + i)] = 0.0f;  // zero head
        const size_t n_rows = static_cast<size_t>(n_tokens * n_head);
        std::vector<uint8_t> p_cpu(n_rows * static_cast<size_t>(head_dim / 2));
        std::vector<float> s_cpu(n_rows), z_cpu(n_rows);
        ref::quantize_kv_asym_int4(x.data(), n_tokens, n_head, head_dim, stride, clip, clip, p_cpu.data(),
                                   s_cpu.data(), z_cpu.data());

        DeviceBuffer<float> dx(x);
        DeviceBuffer<uint8_t> dp(p_cpu.size());
        DeviceBuffer<float> ds(n_rows), dz(n_rows);
        ASSERT_EQ(fq::cuda::quantize_kv_asym_int4(dx.get(), n_tokens, n_head, head_dim, stride, clip, clip,
                                                  dp.get(), ds.get(), dz.get(), nullptr),
                  cudaSuccess);
        FQ_CUDA_CHECK(cudaDeviceSynchronize(), "quantize_kv_asym_int4 kernel");
        const std::string ctx = "H " + std::to_string(n_head) + " d " + std::to_string(head_dim) + " clip " +
                                std::to_string(clip);
        EXPECT_EQ(first_float_mismatch(ds.download(), s_cpu, "scale"), "") << ctx;
        EXPECT_EQ(first_float_mismatch(dz.download(), z_cpu, "zero"), "") << ctx;
        EXPECT_EQ(first_byte_mismatch(dp.download(), p_cpu, head_dim / 2, "quantize_kv_asym_int4"), "")
            << ctx;
      }
    }
  }
}

}  // namespace
}  // namespace fq
#endif  // FLATQUANT_WITH_CUDA
