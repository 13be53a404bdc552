#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <random>

#include "flatquant/error.h"
#include "ref/rope.h"
#include "ref/random_model.h"

namespace fq {
namespace {

TEST(RefRope, DefaultInvFreqHandValues) {
  // theta 10000, head_dim 8: 10000^(-2i/8) = 1, 0.1, 0.01, 0.001.
  auto f = ref::rope_inv_freq(8, 10000.0, RopeScaling{});
  ASSERT_EQ(f.size(), 4u);
  const double want[4] = {1.0, 0.1, 0.01, 0.001};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(f[i], want[i], want[i] * 1e-6) << i;
}

TEST(RefRope, Llama3InvFreqHandValues) {
  // The tiny Llama-3 fixture: head_dim 16, theta 5e5, factor 8, low 1, high 4, original context 64.
  // low_freq_wavelen = 64, high_freq_wavelen = 16. Pair i has base frequency 500000^(-i/8).
  RopeScaling s;
  s.type = "llama3";
  s.factor = 8;
  s.low_freq_factor = 1;
  s.high_freq_factor = 4;
  s.original_max_position_embeddings = 64;
  auto def = ref::rope_inv_freq(16, 500000.0, RopeScaling{});
  auto f = ref::rope_inv_freq(16, 500000.0, s);
  ASSERT_EQ(f.size(), 8u);
  // i = 0: wavelen 2*pi < 16: high frequency, kept as is.
  EXPECT_EQ(f[0], 1.0f);
  // i = 1: base 0.1939227, wavelen 32.40: between 16 and 64, smoothly interpolated:
  // smooth = (64/wavelen - 1) / 3; f = (1 - smooth) * base / 8 + smooth * base.
  const double b1 = std::pow(500000.0, -1.0 / 8.0);
  EXPECT_NEAR(b1, 0.1939227, 1e-6);
  const double wl = 2 * M_PI / b1, sm = (64.0 / wl - 1.0) / 3.0;
  EXPECT_NEAR(f[1], (1 - sm) * b1 / 8 + sm * b1, 1e-7);
  EXPECT_NEAR(f[1], 0.0794030, 1e-6);  // the expression above evaluated by hand
  // i >= 2: wavelen > 64: low frequency, divided by the factor exactly.
  for (int i = 2; i < 8; ++i) {
    EXPECT_EQ(f[i], def[i] / 8.0f) << i;
    EXPECT_NEAR(f[i], std::pow(500000.0, -i / 8.0) / 8.0, 1e-6 * f[i]) << i;
  }
}

TEST(RefRope, LinearScalingDividesInvFreq) {
  RopeScaling s;
  s.type = "linear";
  s.factor = 4;
  auto def = ref::rope_inv_freq(32, 10000.0, RopeScaling{});
  auto f = ref::rope_inv_freq(32, 10000.0, s);
  for (size_t i = 0; i < f.size(); ++i) EXPECT_EQ(f[i], def[i] / 4.0f);
}

TEST(RefRope, RejectsBadInput) {
  EXPECT_THROW(ref::rope_inv_freq(7, 10000.0, RopeScaling{}), Error);
  RopeScaling s;
  s.type = "yarn";
  EXPECT_THROW(ref::rope_inv_freq(8, 10000.0, s), Error);
}

// y[i] + i*y[i+d/2] == (x[i] + i*x[i+d/2]) * exp(i * pos * inv_freq[i]): the rotate_half convention.
TEST(RefRope, MatchesComplexRotation) {
  std::mt19937_64 g(5);
  for (int64_t hd : {8, 16, 64, 128}) {
    auto inv = ref::rope_inv_freq(hd, 10000.0, RopeScaling{});
    ref::RopeTable table(inv, 2048);
    for (int64_t pos : {0, 1, 17, 511, 2047}) {
      const int64_t heads = 3;
      auto x = test::randn(g, heads * hd, 1.0f);
      auto y = x;
      ref::rope_apply(y.data(), heads, hd, table.cos_at(pos), table.sin_at(pos));
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < hd / 2; ++i) {
          const std::complex<double> z(x[h * hd + i], x[h * hd + i + hd / 2]);
          // The angle is rounded to fp32 first, as transformers does.
          const double angle = (double)(inv[i] * (float)pos);
          const std::complex<double> r = z * std::polar(1.0, angle);
          ASSERT_NEAR(y[h * hd + i], r.real(), 2e-6) << "hd " << hd << " pos " << pos << " i " << i;
          ASSERT_NEAR(y[h * hd + i + hd / 2], r.imag(), 2e-6) << "hd " << hd << " pos " << pos << " i " << i;
        }
    }
  }
}

TEST(RefRope, PositionZeroIsIdentity) {
  auto inv = ref::rope_inv_freq(8, 10000.0, RopeScaling{});
  ref::RopeTable table(inv, 4);
  std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8}, y = x;
  ref::rope_apply(y.data(), 1, 8, table.cos_at(0), table.sin_at(0));
  EXPECT_EQ(x, y);
}

}  // namespace
}  // namespace fq
