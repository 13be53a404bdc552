#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "ref/linear.h"
#include "ref/parallel.h"
#include "ref/rmsnorm.h"
#include "ref/swiglu.h"
#include "ref/random_model.h"

namespace fq {
namespace {

// Sizes with every tail: in % 8 != 0, out % 4 != 0, odd token counts.
TEST(RefLinear, MatchesDoubleWithBiasAndTails) {
  std::mt19937_64 g(7);
  for (auto [n, in, out] : {std::tuple<int, int, int>{1, 8, 4}, {3, 13, 7}, {5, 67, 33}, {70, 40, 9}, {2, 3, 130}}) {
    auto x = test::randn(g, n * in, 1.0f), w = test::randn(g, out * in, 1.0f), b = test::randn(g, out, 1.0f);
    std::vector<float> y(n * out);
    ref::linear(x.data(), n, in, w.data(), b.data(), out, y.data());
    for (int t = 0; t < n; ++t)
      for (int o = 0; o < out; ++o) {
        double s = b[o], mag = std::fabs(b[o]);
        for (int i = 0; i < in; ++i) {
          s += (double)x[t * in + i] * w[o * in + i];
          mag += std::fabs((double)x[t * in + i] * w[o * in + i]);
        }
        ASSERT_NEAR(y[t * out + o], s, 1e-6 * mag + 1e-7) << "n " << n << " in " << in << " out " << out;
      }
  }
}

TEST(RefLinear, NoBiasIsPlainDot) {
  const float x[3] = {1, 2, 3}, w[6] = {1, 0, 0, 0.5f, 0.5f, 0.5f};
  float y[2];
  ref::linear(x, 1, 3, w, nullptr, 2, y);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], 3.0f);
}

TEST(RefLinear, BitIdenticalForAnyThreadCount) {
  std::mt19937_64 g(11);
  for (auto [n, in, out] : {std::tuple<int, int, int>{37, 45, 203}, {300, 64, 30}, {1, 100, 77}}) {
    auto x = test::randn(g, n * in, 1.0f), w = test::randn(g, out * in, 1.0f), b = test::randn(g, out, 1.0f);
    std::vector<float> y1(n * out), y2(n * out), y3(n * out);
    ref::ThreadPool p1(1), p2(2), p3(3);
    ref::linear(x.data(), n, in, w.data(), b.data(), out, y1.data(), &p1);
    ref::linear(x.data(), n, in, w.data(), b.data(), out, y2.data(), &p2);
    ref::linear(x.data(), n, in, w.data(), b.data(), out, y3.data(), &p3);
    EXPECT_EQ(y1, y2);
    EXPECT_EQ(y1, y3);
    // The single dot product uses the same order.
    const int t = n - 1;
    EXPECT_EQ(y1[t * out + 5], ref::dot_f32(x.data() + t * in, w.data() + 5 * in, in) + b[5]);
  }
}

TEST(RefThreadPool, RunsEveryTaskOnceAndRethrows) {
  ref::ThreadPool pool(3);
  std::vector<int> hits(1000, 0);
  pool.run(1000, [&](int64_t t) { hits[t]++; });
  for (int h : hits) ASSERT_EQ(h, 1);
  EXPECT_THROW(pool.run(10, [&](int64_t t) {
    if (t == 7) throw std::runtime_error("boom");
  }),
               std::runtime_error);
  // Still usable after an exception.
  int64_t covered = 0;
  std::mutex mu;
  pool.parallel_for(101, [&](int64_t b, int64_t e) {
    std::lock_guard<std::mutex> lk(mu);
    covered += e - b;
  });
  EXPECT_EQ(covered, 101);
}

TEST(RefRmsNorm, MatchesFormula) {
  std::mt19937_64 g(3);
  const int n = 3, d = 37;
  auto x = test::randn(g, n * d, 2.0f), w = test::randn(g, d, 0.1f, 1.0f);
  std::vector<float> y(n * d);
  ref::rmsnorm(x.data(), w.data(), n, d, 1e-5f, y.data());
  for (int t = 0; t < n; ++t) {
    double ss = 0;
    for (int i = 0; i < d; ++i) ss += (double)x[t * d + i] * x[t * d + i];
    const double r = 1.0 / std::sqrt(ss / d + 1e-5);
    for (int i = 0; i < d; ++i) ASSERT_NEAR(y[t * d + i], x[t * d + i] * r * w[i], 2e-6);
  }
  // eps matters for a zero row: output is exactly zero, not NaN.
  std::vector<float> z(d, 0.0f), zy(d, 1.0f);
  ref::rmsnorm(z.data(), w.data(), 1, d, 1e-5f, zy.data());
  for (float v : zy) EXPECT_EQ(v, 0.0f);
}

TEST(RefSwiGLU, MatchesFormula) {
  const float g[4] = {-3.0f, -0.5f, 0.0f, 2.5f}, u[4] = {1.0f, 2.0f, 3.0f, -1.0f};
  float o[4];
  ref::swiglu(g, u, 4, o);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(o[i], g[i] / (1.0 + std::exp(-(double)g[i])) * u[i], 1e-6);
  EXPECT_EQ(o[2], 0.0f);
}

}  // namespace
}  // namespace fq
