// CPU reference tests for int4 packing, symmetric per-token activation quantization (with clipping) and the
// asymmetric per-(token, head) KV quantization: hand-computed codes, rounding mode, and error bounds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "flatquant/error.h"
#include "ops/ops_util.h"
#include "ref/quant.h"

namespace fq {
namespace {

TEST(PackInt4, KnownBytesLowNibbleIsEvenElement) {
  const std::vector<int8_t> q = {-8, 7, -1, 0, 3, -3};
  std::vector<uint8_t> p(3);
  ref::pack_int4(q.data(), 1, 6, p.data());
  EXPECT_EQ(p[0], 0x78);  // -8 -> 0x8 low, 7 -> 0x7 high
  EXPECT_EQ(p[1], 0x0F);  // -1 -> 0xF low, 0 high
  EXPECT_EQ(p[2], 0xD3);  // 3 low, -3 -> 0xD high
}

TEST(PackInt4, RoundTripsEveryPairOverSeveralRows) {
  std::vector<int8_t> q;
  for (int a = -8; a <= 7; ++a)
    for (int b = -8; b <= 7; ++b) {
      q.push_back(static_cast<int8_t>(a));
      q.push_back(static_cast<int8_t>(b));
    }
  // 512 codes as [8, 64]
  std::vector<uint8_t> p(q.size() / 2);
  ref::pack_int4(q.data(), 8, 64, p.data());
  std::vector<int8_t> back(q.size());
  ref::unpack_int4(p.data(), 8, 64, back.data());
  EXPECT_EQ(back, q);
  // Every byte value occurs exactly once: the packing is a bijection on pairs.
  std::vector<int> seen(256, 0);
  for (uint8_t b : p) ++seen[b];
  EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; }));
}

TEST(PackInt4, UnsignedRoundTrip) {
  std::vector<uint8_t> q = {0, 15, 7, 8, 1, 14};
  std::vector<uint8_t> p(3), back(6);
  ref::pack_uint4(q.data(), 1, 6, p.data());
  EXPECT_EQ(p[0], 0xF0);
  EXPECT_EQ(p[1], 0x87);
  ref::unpack_uint4(p.data(), 1, 6, back.data());
  EXPECT_EQ(back, q);
}

TEST(PackInt4, OddRowLengthIsAClearError) {
  std::vector<int8_t> q(6);
  std::vector<uint8_t> p(4);
  try {
    ref::pack_int4(q.data(), 2, 3, p.data());
    FAIL() << "expected fq::Error for an odd row length";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("must be even"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[2, 3]"), std::string::npos) << e.what();
  }
  std::vector<float> x(6);
  std::vector<float> s(2);
  EXPECT_THROW(ref::quantize_sym_int4(x.data(), 2, 3, 3, 1.0f, 1.0f, p.data(), s.data()), Error);
}

TEST(QuantSymInt4, RoundsHalfToEven) {
  // absmax 7 -> scale exactly 1, so x / scale = x and the .5 cases test the rounding mode
  // (half away from zero would give 3, 1, -1, -4 for 2.5, 0.5, -0.5, -3.5; half to even gives 2, 0, 0, -4).
  const std::vector<float> x = {1.0f, -3.5f, 2.5f, 7.0f, 0.5f, 1.5f, -0.5f, -2.5f};
  std::vector<int8_t> q(x.size());
  float scale = ref::quantize_sym_int4_row(x.data(), 8, 1.0f, 1.0f, q.data());
  EXPECT_EQ(scale, 1.0f);
  EXPECT_EQ(q, (std::vector<int8_t>{1, -4, 2, 7, 0, 2, 0, -2}));
}

TEST(QuantSymInt4, ClippingScalesTheRangeAndClampsOutliers) {
  std::vector<int8_t> q(2);
  const std::vector<float> a = {14.0f, -2.0f};  // xmax = 14 * 0.5 = 7 -> scale 1; 14 clamps to 7
  EXPECT_EQ(ref::quantize_sym_int4_row(a.data(), 2, 0.5f, 1.0f, q.data()), 1.0f);
  EXPECT_EQ(q, (std::vector<int8_t>{7, -2}));
  const std::vector<float> b = {1.0f, -14.0f};  // xmin = -14 * 0.5 = -7 -> scale 1; -14 clamps to -8
  EXPECT_EQ(ref::quantize_sym_int4_row(b.data(), 2, 1.0f, 0.5f, q.data()), 1.0f);
  EXPECT_EQ(q, (std::vector<int8_t>{1, -8}));
}

TEST(QuantSymInt4, ZeroRowHasScaleOneAndPositiveRowUsesZeroAsMin) {
  std::vector<int8_t> q(4);
  const std::vector<float> z(4, 0.0f);
  EXPECT_EQ(ref::quantize_sym_int4_row(z.data(), 4, 1.0f, 1.0f, q.data()), 1.0f);
  EXPECT_EQ(q, (std::vector<int8_t>(4, 0)));
  const std::vector<float> p = {3.5f, 7.0f, 10.5f, 14.0f};  // all positive: scale = 14/7 = 2
  EXPECT_EQ(ref::quantize_sym_int4_row(p.data(), 4, 1.0f, 1.0f, q.data()), 2.0f);
  EXPECT_EQ(q, (std::vector<int8_t>{2, 4, 5, 7}));  // 1.75 -> 2, 3.5 -> 4, 5.25 -> 5, 7
}

TEST(QuantSymInt4, RandomRowsDequantizeWithinHalfAStep) {
  for (int64_t cols : {8, 172, 576, 4096}) {
    const int64_t rows = 5, stride = cols + 6;
    auto x = test::random_activations(static_cast<size_t>(rows * stride), static_cast<uint32_t>(cols));
    std::vector<uint8_t> p(static_cast<size_t>(rows * cols / 2));
    std::vector<float> s(rows), y(static_cast<size_t>(rows * cols));
    ref::quantize_sym_int4(x.data(), rows, cols, stride, 1.0f, 1.0f, p.data(), s.data());
    ref::dequantize_sym_int4(p.data(), s.data(), rows, cols, y.data());
    for (int64_t r = 0; r < rows; ++r) {
      float amax = 0.0f;
      for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(x[r * stride + c]));
      EXPECT_FLOAT_EQ(s[r], amax / 7.0f) << "cols " << cols << " row " << r;
      for (int64_t c = 0; c < cols; ++c) {
        // -8 is reachable only by clamping below -7.5 steps; with absmax/7 scaling |x/scale| <= 7.
        ASSERT_LE(std::fabs(y[r * cols + c] - x[r * stride + c]), 0.5f * s[r] * (1.0f + 1e-6f))
            << "cols " << cols << " row " << r << " col " << c;
      }
    }
  }
}

TEST(QuantKvAsymInt4, HandComputedRow) {
  // xmax 3, xmin -1.5 -> scale 0.3, zero round(5) = 5; codes 0->5, 1.5->10, -1.5->0, 3->15.
  const std::vector<float> x = {0.0f, 1.5f, -1.5f, 3.0f};
  std::vector<uint8_t> p(2);
  float s = 0, z = 0;
  ref::quantize_kv_asym_int4(x.data(), 1, 1, 4, 4, 1.0f, 1.0f, p.data(), &s, &z);
  EXPECT_FLOAT_EQ(s, 0.3f);
  EXPECT_EQ(z, 5.0f);
  EXPECT_EQ(p[0], 0xA5);
  EXPECT_EQ(p[1], 0xF0);
}

TEST(QuantKvAsymInt4, ZeroRowUsesUnitRangeAndDequantizesToZero) {
  const std::vector<float> x(8, 0.0f);
  std::vector<uint8_t> p(4);
  float s = 0, z = 0;
  ref::quantize_kv_asym_int4(x.data(), 1, 1, 8, 8, 1.0f, 1.0f, p.data(), &s, &z);
  EXPECT_FLOAT_EQ(s, 2.0f / 15.0f);
  EXPECT_TRUE(z == 7.0f || z == 8.0f) << z;
  std::vector<float> y(8);
  ref::dequantize_kv_asym_int4(p.data(), &s, &z, 1, 1, 8, y.data());
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

TEST(QuantKvAsymInt4, RandomHeadsDequantizeWithinHalfAStep) {
  for (int64_t n_head : {9, 28, 32}) {
    for (int64_t head_dim : {8, 64, 128}) {
      const int64_t n_tokens = 3, stride = n_head * head_dim + 4;
      auto x = test::random_activations(static_cast<size_t>(n_tokens * stride),
                                        static_cast<uint32_t>(n_head * 1000 + head_dim));
      std::vector<uint8_t> p(static_cast<size_t>(n_tokens * n_head * head_dim / 2));
      std::vector<float> s(n_tokens * n_head), z(n_tokens * n_head),
          y(static_cast<size_t>(n_tokens * n_head * head_dim));
      ref::quantize_kv_asym_int4(x.data(), n_tokens, n_head, head_dim, stride, 1.0f, 1.0f, p.data(), s.data(),
                                 z.data());
      ref::dequantize_kv_asym_int4(p.data(), s.data(), z.data(), n_tokens, n_head, head_dim, y.data());
      for (int64_t t = 0; t < n_tokens; ++t)
        for (int64_t h = 0; h < n_head; ++h) {
          const int64_t k = t * n_head + h;
          ASSERT_GE(z[k], 0.0f);
          ASSERT_LE(z[k], 15.0f);
          for (int64_t i = 0; i < head_dim; ++i) {
            // zero is rounded, so the representable grid is shifted by up to half a step: bound is one step.
            ASSERT_LE(std::fabs(y[k * head_dim + i] - x[t * stride + h * head_dim + i]), s[k] * 1.0001f)
                << "H " << n_head << " d " << head_dim << " token " << t << " head " << h << " i " << i;
          }
        }
    }
  }
}

}  // namespace
}  // namespace fq
