// CPU reference tests for the W4A4 linear (src/ref/qgemm.h): a hand-computed case, agreement with a
// dequantize-then-float64 computation on random inputs, the residual path (also in place) and shape checks.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "flatquant/error.h"
#include "ops/ops_util.h"
#include "ref/qgemm.h"
#include "ref/quant.h"

namespace fq {
namespace {

using test::random_packed;
using test::random_scales;

TEST(QgemmRef, HandComputedDotAndEpilogue) {
  // x = [-8, 7, -1, 0], w = [-8, -8, 3, 5]: dot = 64 - 56 - 3 + 0 = 5.
  const std::vector<int8_t> xq = {-8, 7, -1, 0}, wq = {-8, -8, 3, 5};
  std::vector<uint8_t> xp(2), wp(2);
  ref::pack_int4(xq.data(), 1, 4, xp.data());
  ref::pack_int4(wq.data(), 1, 4, wp.data());
  int32_t acc = 0;
  ref::qgemm_w4a4_acc(xp.data(), wp.data(), 1, 1, 4, &acc);
  EXPECT_EQ(acc, 5);
  const float sx = 0.5f, sw = 0.25f, res = 1.0f;
  float y = 0.0f;
  ref::qgemm_w4a4(xp.data(), &sx, wp.data(), &sw, &res, 1, 1, 4, &y);
  EXPECT_EQ(y, 5.0f * 0.5f * 0.25f + 1.0f);
}

TEST(QgemmRef, MatchesDequantizedFloat64Product) {
  for (auto [M, N, K] : {std::array<int64_t, 3>{1, 7, 64}, {3, 43, 576}, {16, 24, 96}}) {
    const auto qx = random_packed(static_cast<size_t>(M * K / 2), static_cast<uint32_t>(K + M));
    const auto qw = random_packed(static_cast<size_t>(N * K / 2), static_cast<uint32_t>(K + N));
    const auto sx = random_scales(static_cast<size_t>(M), 11), sw = random_scales(static_cast<size_t>(N), 12);
    std::vector<float> y(static_cast<size_t>(M * N));
    ref::qgemm_w4a4(qx.data(), sx.data(), qw.data(), sw.data(), nullptr, M, N, K, y.data());

    std::vector<float> x(static_cast<size_t>(M * K)), w(static_cast<size_t>(N * K));
    ref::dequantize_sym_int4(qx.data(), sx.data(), M, K, x.data());
    ref::dequantize_sym_int4(qw.data(), sw.data(), N, K, w.data());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0.0, mag = 0.0;
        for (int64_t k = 0; k < K; ++k) {
          const double p =
              static_cast<double>(x[static_cast<size_t>(m * K + k)]) * w[static_cast<size_t>(n * K + k)];
          s += p;
          mag += std::fabs(p);
        }
        // Dequantized values carry one fp32 rounding each; the reference's epilogue two more.
        EXPECT_NEAR(y[static_cast<size_t>(m * N + n)], s, 1e-6 * mag + 1e-12)
            << "m " << m << " n " << n << " K " << K;
      }
  }
}

TEST(QgemmRef, ExtremeCodesDoNotOverflowAtMaxK) {
  const int64_t K = ref::kQgemmMaxK;
  const std::vector<uint8_t> all_minus8(static_cast<size_t>(K / 2), 0x88);
  int32_t acc = 0;
  ref::qgemm_w4a4_acc(all_minus8.data(), all_minus8.data(), 1, 1, K, &acc);
  EXPECT_EQ(acc, 64 * K);
}

TEST(QgemmRef, ResidualAddsAndMayAliasOutput) {
  const int64_t M = 2, N = 5, K = 32;
  const auto qx = random_packed(static_cast<size_t>(M * K / 2), 1),
             qw = random_packed(static_cast<size_t>(N * K / 2), 2);
  const auto sx = random_scales(M, 3), sw = random_scales(N, 4);
  std::vector<float> plain(static_cast<size_t>(M * N)), res(static_cast<size_t>(M * N));
  for (size_t i = 0; i < res.size(); ++i) res[i] = 0.37f * static_cast<float>(i) - 1.0f;
  ref::qgemm_w4a4(qx.data(), sx.data(), qw.data(), sw.data(), nullptr, M, N, K, plain.data());
  std::vector<float> inplace = res;
  ref::qgemm_w4a4(qx.data(), sx.data(), qw.data(), sw.data(), inplace.data(), M, N, K, inplace.data());
  for (size_t i = 0; i < res.size(); ++i) EXPECT_EQ(inplace[i], plain[i] + res[i]) << i;
}

TEST(QgemmRef, RejectsBadShapes) {
  std::vector<uint8_t> b(64);
  std::vector<float> f(64);
  EXPECT_THROW(ref::qgemm_w4a4(b.data(), f.data(), b.data(), f.data(), nullptr, 1, 1, 3, f.data()), Error);
  EXPECT_THROW(
      ref::qgemm_w4a4(b.data(), f.data(), b.data(), f.data(), nullptr, 1, 1, ref::kQgemmMaxK + 2, f.data()),
      Error);
  EXPECT_THROW(ref::qgemm_w4a4(b.data(), f.data(), b.data(), f.data(), nullptr, -1, 1, 4, f.data()), Error);
}

}  // namespace
}  // namespace fq
