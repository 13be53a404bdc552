// CPU reference tests for the Kronecker factor sizes, the per-token Kronecker transform and the heads x heads
// o_proj input transform: exact factor pairs, and the transform against an explicit (A ⊗ B) product in
// double.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "flatquant/error.h"
#include "ops/ops_util.h"
#include "ref/kron.h"
#include "ref/quant.h"

namespace fq {
namespace {

TEST(DecomposeDim, MatchesTheOriginalFermatRule) {
  struct Case {
    int64_t n, l, r;
  };
  // Model dims from the original's table, plus small ones. 172 = 4*43 is NOT what Fermat's rule returns:
  // a^2 - b^2 needs factors of equal parity, so the closest such pair is 2*86 (the original returns (2, 86)).
  for (Case c : {Case{4096, 64, 64}, Case{3584, 56, 64}, Case{11008, 86, 128}, Case{14336, 112, 128},
                 Case{18944, 128, 148}, Case{576, 24, 24}, Case{5120, 64, 80}, Case{8192, 64, 128},
                 Case{13824, 108, 128}, Case{28672, 128, 224}, Case{172, 2, 86}, Case{43, 1, 43},
                 Case{1, 1, 1}, Case{32, 4, 8}}) {
    ref::KronDims d = ref::decompose_dim(c.n);
    EXPECT_EQ(d.left, c.l) << "n = " << c.n;
    EXPECT_EQ(d.right, c.r) << "n = " << c.n;
  }
}

TEST(DecomposeDim, RejectsDimsWithoutAFactorPair) {
  EXPECT_THROW(ref::decompose_dim(0), Error);
  EXPECT_THROW(ref::decompose_dim(6), Error);     // 2 mod 4: the original loops forever
  EXPECT_THROW(ref::decompose_dim(4098), Error);  // 2 mod 4
}

// y[i*R + j] = sum_{k,l} (x ⊙ s)[k*R + l] A[k][i] B[l][j]  ==  (x ⊙ s) (A ⊗ B), in double.
std::vector<double> explicit_kron(const std::vector<float>& x, const float* s, const std::vector<float>& A,
                                  int64_t L, const std::vector<float>* B, int64_t R) {
  std::vector<double> y(static_cast<size_t>(L * R), 0.0);
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < R; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < L; ++k)
        for (int64_t l = 0; l < R; ++l) {
          double b = B ? (*B)[static_cast<size_t>(l * R + j)] : (l == j ? 1.0 : 0.0);
          double xv = static_cast<double>(x[static_cast<size_t>(k * R + l)]) * (s ? s[k * R + l] : 1.0f);
          acc += xv * A[static_cast<size_t>(k * L + i)] * b;
        }
      y[static_cast<size_t>(i * R + j)] = acc;
    }
  return y;
}

double rel_err(const float* got, const std::vector<double>& want) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

TEST(KronTransform, EqualsTheExplicitKroneckerProduct) {
  for (auto [L, R] : {std::pair<int64_t, int64_t>{4, 43}, {24, 24}, {8, 16}, {3, 5}}) {
    const int64_t n = L * R, n_tokens = 2, stride = n + 3;
    auto x = test::random_activations(static_cast<size_t>(n_tokens * stride), static_cast<uint32_t>(n));
    auto A = test::random_matrix(L, 11);
    auto B = test::random_matrix(R, 12);
    auto s = test::random_activations(static_cast<size_t>(n), 13, 1.0f);
    std::vector<float> y(static_cast<size_t>(n_tokens * n));
    ref::kron_transform(x.data(), n_tokens, stride, s.data(), A.data(), L, B.data(), R, y.data());
    for (int64_t t = 0; t < n_tokens; ++t) {
      std::vector<float> xt(x.begin() + t * stride, x.begin() + t * stride + n);
      EXPECT_LT(rel_err(y.data() + t * n, explicit_kron(xt, s.data(), A, L, &B, R)), 1e-5)
          << L << "x" << R << " token " << t;
      // Without s and with B = identity the transform is A^T X alone.
      std::vector<float> y2(static_cast<size_t>(n));
      ref::kron_transform(xt.data(), 1, n, nullptr, A.data(), L, nullptr, R, y2.data());
      EXPECT_LT(rel_err(y2.data(), explicit_kron(xt, nullptr, A, L, nullptr, R)), 1e-5) << L << "x" << R;
    }
  }
}

TEST(HeadMix, IsPoTransposeTimesTheHeadMajorBlock) {
  const int64_t H = 9, d = 8, n_tokens = 2, stride = H * d + 2;
  auto attn = test::random_activations(static_cast<size_t>(n_tokens * stride), 21);
  auto Po = test::random_matrix(H, 22);
  std::vector<float> y(static_cast<size_t>(n_tokens * H * d));
  ref::head_mix(attn.data(), n_tokens, H, d, stride, Po.data(), y.data());
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t e = 0; e < d; ++e) {
        double want = 0.0;
        for (int64_t g = 0; g < H; ++g) want += double(Po[g * H + h]) * attn[t * stride + g * d + e];
        EXPECT_NEAR(y[(t * H + h) * d + e], want, 1e-5 * (1.0 + std::fabs(want))) << "t " << t << " h " << h;
      }
}

TEST(KronQuantInt4, QuantizesTheTransformedToken) {
  const int64_t L = 4, R = 43, n = L * R, n_tokens = 3;
  auto x = test::random_activations(static_cast<size_t>(n_tokens * n), 31);
  auto A = test::random_matrix(L, 32);
  auto B = test::random_matrix(R, 33);
  std::vector<float> y(static_cast<size_t>(n_tokens * n)), deq(static_cast<size_t>(n_tokens * n));
  std::vector<uint8_t> p(static_cast<size_t>(n_tokens * n / 2));
  std::vector<float> s(n_tokens);
  ref::kron_quant_int4(x.data(), n_tokens, n, nullptr, A.data(), L, B.data(), R, 0.9f, 0.8f, p.data(),
                       s.data());
  ref::kron_transform(x.data(), n_tokens, n, nullptr, A.data(), L, B.data(), R, y.data());
  ref::dequantize_sym_int4(p.data(), s.data(), n_tokens, n, deq.data());
  for (int64_t t = 0; t < n_tokens; ++t) {
    float ymax = 0.0f, ymin = 0.0f;
    for (int64_t c = 0; c < n; ++c) {
      ymax = std::max(ymax, y[t * n + c]);
      ymin = std::min(ymin, y[t * n + c]);
    }
    EXPECT_FLOAT_EQ(s[t], std::max(-ymin * 0.8f, ymax * 0.9f) / 7.0f) << "token " << t;
    for (int64_t c = 0; c < n; ++c) {
      const float v = y[t * n + c];
      // Inside the clipped range the error is at most half a step; outside it saturates at the range ends.
      const float clamped = std::min(std::max(v, -8.0f * s[t]), 7.0f * s[t]);
      ASSERT_LE(std::fabs(deq[t * n + c] - clamped), 0.5f * s[t] * 1.0001f) << "token " << t << " elem " << c;
    }
  }
}

}  // namespace
}  // namespace fq
