#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "ref/attention.h"
#include "ref/parallel.h"
#include "ref/random_model.h"

namespace fq {
namespace {

// Naive causal GQA attention in double.
std::vector<double> naive(const std::vector<float>& q, int64_t n, int64_t p0, const std::vector<float>& k,
                          const std::vector<float>& v, const ref::AttentionShape& s) {
  const int64_t hd = s.head_dim;
  std::vector<double> out(n * s.q_stride(), 0.0);
  for (int64_t h = 0; h < s.n_head; ++h) {
    const int64_t g = h * s.n_head_kv / s.n_head;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t nk = p0 + i + 1;
      std::vector<double> p(nk);
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j < nk; ++j) {
        double d = 0;
        for (int64_t e = 0; e < hd; ++e) d += (double)q[i * s.q_stride() + h * hd + e] * k[j * s.kv_stride() + g * hd + e];
        p[j] = d / std::sqrt((double)hd);
        mx = std::max(mx, p[j]);
      }
      for (auto& e : p) sum += (e = std::exp(e - mx));
      for (int64_t j = 0; j < nk; ++j)
        for (int64_t e = 0; e < hd; ++e) out[i * s.q_stride() + h * hd + e] += p[j] / sum * v[j * s.kv_stride() + g * hd + e];
    }
  }
  return out;
}

TEST(RefAttention, MatchesNaiveDoubleGQA) {
  std::mt19937_64 gen(1);
  struct Case {
    int64_t n_head, n_head_kv, head_dim, n, p0;
  };
  for (Case c : {Case{4, 2, 8, 5, 0}, Case{6, 2, 8, 40, 3}, Case{4, 4, 16, 7, 9}, Case{8, 1, 64, 70, 0},
                 Case{2, 1, 128, 1, 30}, Case{9, 3, 64, 33, 0}}) {
    ref::AttentionShape s{c.n_head, c.n_head_kv, c.head_dim};
    const int64_t total = c.p0 + c.n;
    // Large-ish magnitudes so that the softmax is peaked and the max subtraction matters.
    auto q = test::randn(gen, c.n * s.q_stride(), 2.0f);
    auto k = test::randn(gen, total * s.kv_stride(), 2.0f);
    auto v = test::randn(gen, total * s.kv_stride(), 1.0f);
    std::vector<float> out(c.n * s.q_stride());
    ref::ThreadPool pool(2);
    ref::attention(q.data(), c.n, c.p0, k.data(), v.data(), s, out.data(), &pool);
    auto want = naive(q, c.n, c.p0, k, v, s);
    for (size_t i = 0; i < out.size(); ++i)
      ASSERT_NEAR(out[i], want[i], 2e-5) << "heads " << c.n_head << "/" << c.n_head_kv << " hd " << c.head_dim
                                         << " index " << i;
    // Thread-count invariance.
    std::vector<float> out1(out.size());
    ref::attention(q.data(), c.n, c.p0, k.data(), v.data(), s, out1.data(), nullptr);
    EXPECT_EQ(out, out1);
  }
}

TEST(RefAttention, FirstQueryCopiesItsValue) {
  // With one key, softmax is exactly 1: the output equals the value of the (shared) kv head.
  ref::AttentionShape s{2, 1, 8};
  std::vector<float> q(16, 3.0f), k(8, -1.0f), v = {1, 2, 3, 4, 5, 6, 7, 8}, out(16);
  ref::attention(q.data(), 1, 0, k.data(), v.data(), s, out.data());
  for (int h = 0; h < 2; ++h)
    for (int d = 0; d < 8; ++d) EXPECT_EQ(out[h * 8 + d], v[d]);
}

}  // namespace
}  // namespace fq
