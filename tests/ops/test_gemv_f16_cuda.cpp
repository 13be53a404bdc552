// The FP16 decode GEMV (src/kernels/cuda/gemv_f16.cu) against a double-precision host product of the same
// fp16 values: M = 1..4, K with and without a tail of the 256-element lane stride, N odd (a half-filled last
// warp), fp16 output, fp32 output, and fp32 accumulation into an existing y (the residual add).
#ifdef FLATQUANT_WITH_CUDA
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "kernels/cuda/engine_kernels.h"
#include "ops/attn_test_util.h"
#include "ops/ops_util.h"

namespace fq {
namespace {

using test::DeviceBuffer;

TEST(GemvF16Cuda, MatchesHostProduct) {
  FQ_REQUIRE_CUDA();
  for (int64_t M = 1; M <= 4; ++M)
    for (int64_t K : {8, 200, 4096, 4104})
      for (int64_t N : {1, 37, 300}) {
        const std::vector<uint16_t> x = test::to_f16(test::random_activations(M * K, 1 + M, 1.0f));
        std::vector<float> wf = test::random_activations(N * K, 2 + K, 1.0f);
        for (auto& v : wf) v *= 0.05f;
        const std::vector<uint16_t> w = test::to_f16(wf);
        const std::vector<float> y0 = test::random_activations(M * N, 3, 1.0f);
        std::vector<double> ref(static_cast<size_t>(M * N));
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            double s = 0;
            for (int64_t k = 0; k < K; ++k)
              s += double(f16_to_f32(x[m * K + k])) * double(f16_to_f32(w[n * K + k]));
            ref[m * N + n] = s;
          }
        DeviceBuffer<uint16_t> dx(x), dw(w), dy16(static_cast<size_t>(M * N));
        DeviceBuffer<float> dy32(y0);
        ASSERT_EQ(cuda::gemv_f16(dx.get(), M, K, dw.get(), N, dy16.get(), false, false, nullptr),
                  cudaSuccess);
        ASSERT_EQ(cuda::gemv_f16(dx.get(), M, K, dw.get(), N, dy32.get(), true, true, nullptr), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const std::vector<uint16_t> y16 = dy16.download();
        const std::vector<float> y32 = dy32.download();
        double scale = 1e-6;
        for (double v : ref) scale = std::max(scale, std::fabs(v));
        for (size_t i = 0; i < ref.size(); ++i) {
          ASSERT_NEAR(f16_to_f32(y16[i]), ref[i], 2e-3 * scale + 1e-3 * std::fabs(ref[i]))
              << "fp16 out M=" << M << " K=" << K << " N=" << N << " i=" << i;
          ASSERT_NEAR(y32[i], y0[i] + ref[i], 1e-5 * (scale + std::fabs(y0[i])))
              << "fp32 accumulate M=" << M << " K=" << K << " N=" << N << " i=" << i;
        }
      }
}

TEST(GemvF16Cuda, RejectsUnsupportedShapes) {
  FQ_REQUIRE_CUDA();
  DeviceBuffer<uint16_t> x(64), w(64);
  DeviceBuffer<float> y(64);
  EXPECT_FALSE(cuda::gemv_f16_supported(5, 8, x.get(), w.get()));
  EXPECT_FALSE(cuda::gemv_f16_supported(1, 12, x.get(), w.get()));
  EXPECT_FALSE(cuda::gemv_f16_supported(1, 8, x.get() + 1, w.get()));
  EXPECT_EQ(cuda::gemv_f16(x.get(), 1, 12, w.get(), 4, y.get(), true, false, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::gemv_f16(x.get(), 1, 8, w.get(), 4, y.get(), false, true, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace fq
#endif
