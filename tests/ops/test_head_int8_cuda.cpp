// The int8 LM head (src/kernels/cuda/head_int8.h) against its references: the codes and scales equal
// ref::quantize_sym_row (8 bits, no clipping) of the fp16 row exactly; the GEMV agrees with a double-precision
// sum of the dequantized weights to fp32 rounding (relative to sum |x w|). Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "ops_util.h"
#include "ref/fake_quant.h"

#ifdef FLATQUANT_WITH_CUDA
#include "kernels/cuda/head_int8.h"
#endif

namespace fq {
namespace {

#ifdef FLATQUANT_WITH_CUDA
using test::DeviceBuffer;

TEST(HeadInt8, QuantizeAndGemvMatchReference) {
  FQ_REQUIRE_CUDA();
  for (auto [N, K] : std::vector<std::pair<int64_t, int64_t>>{{300, 64}, {1000, 576}, {37, 4096}}) {
    auto wf = test::random_activations(static_cast<size_t>(N * K), 70 + static_cast<uint32_t>(K), 5.0f);
    std::vector<uint16_t> w16(wf.size());
    for (size_t i = 0; i < wf.size(); ++i) w16[i] = f32_to_f16(wf[i] * 0.05f);
    for (int64_t k = 0; k < K; ++k) w16[static_cast<size_t>(K + k)] = 0;  // an all-zero row: scale 1
    std::vector<int8_t> rq(w16.size());
    std::vector<float> rs(static_cast<size_t>(N)), row(static_cast<size_t>(K));
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t k = 0; k < K; ++k) row[static_cast<size_t>(k)] = f16_to_f32(w16[static_cast<size_t>(n * K + k)]);
      rs[static_cast<size_t>(n)] = ref::quantize_sym_row(row.data(), K, 8, 1.0f, 1.0f, rq.data() + n * K);
    }
    DeviceBuffer<uint16_t> dw(w16);
    DeviceBuffer<int8_t> dq(w16.size());
    DeviceBuffer<float> ds(static_cast<size_t>(N));
    ASSERT_EQ(cuda::quantize_rows_int8(dw.get(), N, K, dq.get(), ds.get(), nullptr), cudaSuccess);
    EXPECT_EQ(dq.download(), rq) << N << "x" << K;
    EXPECT_EQ(ds.download(), rs) << N << "x" << K;
    for (int64_t M : {1, 3, 16, 21}) {
      const auto xf = test::random_activations(static_cast<size_t>(M * K), 80 + static_cast<uint32_t>(M));
      std::vector<uint16_t> x16(xf.size());
      for (size_t i = 0; i < xf.size(); ++i) x16[i] = f32_to_f16(xf[i]);
      DeviceBuffer<uint16_t> dx(x16);
      DeviceBuffer<float> dy(static_cast<size_t>(M * N));
      ASSERT_EQ(cuda::gemv_int8_f16(dx.get(), M, K, dq.get(), ds.get(), N, dy.get(), nullptr), cudaSuccess);
      const auto y = dy.download();
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          double want = 0, mag = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double p = static_cast<double>(f16_to_f32(x16[static_cast<size_t>(m * K + k)])) *
                             rq[static_cast<size_t>(n * K + k)] * rs[static_cast<size_t>(n)];
            want += p;
            mag += std::fabs(p);
          }
          ASSERT_NEAR(y[static_cast<size_t>(m * N + n)], want, 1e-5 * mag + 1e-30) << "M " << M << " n " << n;
        }
    }
  }
  int8_t* bad = nullptr;
  EXPECT_EQ(cuda::gemv_int8_f16(nullptr, 1, 24, bad, nullptr, 1, nullptr, nullptr), cudaErrorInvalidValue);
}
#else
TEST(HeadInt8, NeedsCuda) { GTEST_SKIP() << "built without CUDA"; }
#endif

}  // namespace
}  // namespace fq
