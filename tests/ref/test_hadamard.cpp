// Hadamard constructions (Sylvester, Paley I/II, Kronecker products) and the seeded randomized Hadamard /
// random orthogonal rotations of src/ref/hadamard.h.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "flatquant/error.h"
#include "ref/hadamard.h"

namespace fq {
namespace {

// max |M M^T - s I| over all entries.
double gram_err(const std::vector<double>& m, int64_t n, double s) {
  double e = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double d = 0;
      for (int64_t k = 0; k < n; ++k) d += m[i * n + k] * m[j * n + k];
      e = std::max(e, std::fabs(d - (i == j ? s : 0.0)));
    }
  return e;
}

TEST(Hadamard, EveryCoveredOrderUpTo256IsHadamard) {
  std::string covered;
  for (int64_t n = 1; n <= 256; ++n) {
    if (!ref::hadamard_exists(n)) {
      EXPECT_TRUE(ref::hadamard_construction(n).empty()) << n;
      EXPECT_THROW(ref::hadamard(n), Error) << n;
      continue;
    }
    covered += std::to_string(n) + " ";
    // Necessary condition for a Hadamard matrix: n = 1, 2 or a multiple of 4.
    EXPECT_TRUE(n <= 2 || n % 4 == 0) << n;
    const auto h = ref::hadamard(n);
    ASSERT_EQ(h.size(), static_cast<size_t>(n * n));
    for (double v : h) ASSERT_TRUE(v == 1.0 || v == -1.0) << "n = " << n;
    // Integer sums: exact in double.
    EXPECT_EQ(gram_err(h, n, static_cast<double>(n)), 0.0)
        << "n = " << n << " (" << ref::hadamard_construction(n) << ")";
  }
  std::printf("covered orders <= 256: %s\n", covered.c_str());
}

TEST(Hadamard, CoverageMatchesTheConstructions) {
  // Powers of two, Paley I (q + 1, q prime = 3 mod 4), Paley II (2(q + 1), q prime = 1 mod 4), products.
  for (int64_t n :
       {1,  2,  4,  8,  16, 32, 64, 128, 256, 12,  20,  24,  28,   36,   40,    44,
        48, 56, 60, 64, 72, 76, 80, 96,  112, 144, 192, 576, 1536, 4096, 14336, 11008 /* 2 x paley1(5504) */})
    EXPECT_TRUE(ref::hadamard_exists(n)) << n;
  // No construction here: not 1, 2 or 0 mod 4; or orders needing GF(p^m) Paley / Williamson (52 = 2(25+1),
  // 92, 100 = 2(49+1), 116, 156, 172).
  for (int64_t n : {0, -4, 3, 6, 9, 10, 86, 52, 92, 100, 116, 156, 172})
    EXPECT_FALSE(ref::hadamard_exists(n)) << n;
}

TEST(Hadamard, PrefersTheLargestPowerOfTwoPart) {
  EXPECT_EQ(ref::hadamard_construction(1), "sylvester(1)");
  EXPECT_EQ(ref::hadamard_construction(64), "sylvester(64)");
  EXPECT_EQ(ref::hadamard_construction(12), "paley1(12)");  // also paley2(12) (q = 5): Paley I preferred
  EXPECT_EQ(ref::hadamard_construction(28), "paley2(28)");  // 27 is not prime
  EXPECT_EQ(ref::hadamard_construction(24), "sylvester(2) x paley1(12)");      // not paley1(24)
  EXPECT_EQ(ref::hadamard_construction(48), "sylvester(4) x paley1(12)");      // not paley1(48)
  EXPECT_EQ(ref::hadamard_construction(1536), "sylvester(128) x paley1(12)");  // 1536 = 2^9 * 3
  EXPECT_EQ(ref::hadamard_construction(576), "sylvester(16) x paley2(36)");    // 576 = 2^6 * 9
}

TEST(Hadamard, KroneckerStructure) {
  // hadamard(24) = sylvester(2) (x) paley1(12): block (a, b) of size 12 is H2[a][b] * hadamard(12).
  const auto h24 = ref::hadamard(24), h12 = ref::hadamard(12), h2 = ref::hadamard(2);
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b)
      for (int i = 0; i < 12; ++i)
        for (int j = 0; j < 12; ++j)
          ASSERT_EQ(h24[(a * 12 + i) * 24 + b * 12 + j], h2[a * 2 + b] * h12[i * 12 + j]);
  EXPECT_EQ(ref::hadamard(48), ref::hadamard(48));  // deterministic
}

TEST(Hadamard, RandomizedIsHadamardTimesSeededSigns) {
  for (int64_t n : {2, 4, 8, 24, 32, 48, 64, 96}) {
    const uint64_t seed = 1234 + static_cast<uint64_t>(n);
    const auto rot = ref::randomized_hadamard(n, seed);
    ASSERT_EQ(rot.kind, ref::RotationKind::Hadamard) << n;
    EXPECT_LE(gram_err(rot.matrix, n, 1.0), 1e-12) << n;
    // M[i][j] = H[i][j] d_j / sqrt(n), d_j from the top bit of the j-th mt19937_64 output.
    const auto h = ref::hadamard(n);
    std::mt19937_64 g(seed);
    for (int64_t j = 0; j < n; ++j) {
      const double d = (g() >> 63) ? -1.0 : 1.0;
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(rot.matrix[i * n + j], h[i * n + j] * (1.0 / std::sqrt(static_cast<double>(n)) * d))
            << n << " " << i << " " << j;
    }
  }
}

TEST(Hadamard, FallbackIsTheSignFixedQOfTheSeededGaussian) {
  for (int64_t n : {3, 9, 10, 86}) {
    const auto rot = ref::randomized_hadamard(n, 7);
    ASSERT_EQ(rot.kind, ref::RotationKind::RandomOrthogonal) << n;
    EXPECT_EQ(rot.matrix, ref::random_orthogonal(n, 7));
    EXPECT_LE(gram_err(rot.matrix, n, 1.0), 1e-12) << n;
    // R = Q^T G must be upper triangular with a positive diagonal (the sign fix that makes Q unique).
    const auto g = ref::gaussian_matrix(n, 7);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j <= i; ++j) {
        double r = 0;
        for (int64_t k = 0; k < n; ++k) r += rot.matrix[k * n + i] * g[k * n + j];
        if (j < i)
          EXPECT_NEAR(r, 0.0, 1e-12 * n) << n << " R[" << i << "][" << j << "]";
        else
          EXPECT_GT(r, 0.0) << n << " R[" << i << "][" << i << "]";
      }
  }
}

TEST(Hadamard, SeedsAreDeterministicAndDistinct) {
  for (int64_t n : {8, 9, 24, 86}) {
    const auto a = ref::randomized_hadamard(n, 1), b = ref::randomized_hadamard(n, 1),
               c = ref::randomized_hadamard(n, 2);
    EXPECT_EQ(a.matrix, b.matrix) << n;
    EXPECT_NE(a.matrix, c.matrix) << n;
  }
}

TEST(Hadamard, GaussianDrawsLookNormal) {
  // Guards the Box-Muller transform (a wrong constant would shift the moments far beyond these bounds).
  const auto g = ref::gaussian_matrix(200, 3);
  double m1 = 0, m2 = 0;
  for (double v : g) {
    m1 += v;
    m2 += v * v;
  }
  m1 /= static_cast<double>(g.size());
  m2 /= static_cast<double>(g.size());
  EXPECT_NEAR(m1, 0.0, 0.03);
  EXPECT_NEAR(m2, 1.0, 0.03);
}

}  // namespace
}  // namespace fq
