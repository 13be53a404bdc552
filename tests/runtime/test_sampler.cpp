// The sampler against its contract: greedy limits, HF's filter order, seeded determinism, and the empirical
// distribution of a known softmax.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "flatquant/error.h"
#include "runtime/sampler.h"

namespace fq::runtime {
namespace {

// A row with a clear but not overwhelming maximum at id 3.
std::vector<float> row() { return {0.1f, 1.0f, -2.0f, 1.7f, 1.5f, 0.0f, 1.69f, -1.0f}; }

int32_t draw(SamplerOptions o, const std::vector<float>& l) {
  Sampler s(o);
  return s.sample(l.data(), (int64_t)l.size());
}

TEST(Sampler, ArgmaxTakesFirstOfEqualMaxima) {
  const std::vector<float> v = {1, 3, 2, 3};
  EXPECT_EQ(argmax(v.data(), 4), 1);
}

TEST(Sampler, GreedyLimits) {
  const auto l = row();
  SamplerOptions o;
  o.temperature = 0;
  EXPECT_EQ(draw(o, l), 3);
  for (uint64_t seed = 0; seed < 50; ++seed) {
    SamplerOptions k1;  // top-k 1 == greedy at any temperature
    k1.top_k = 1;
    k1.temperature = 5;
    k1.seed = seed;
    EXPECT_EQ(draw(k1, l), 3);
    SamplerOptions p0;  // a tiny nucleus keeps only the most likely token
    p0.top_p = 1e-6;
    p0.seed = seed;
    EXPECT_EQ(draw(p0, l), 3);
    SamplerOptions t0;  // temperature -> 0: the softmax concentrates on the max (no overflow)
    t0.temperature = 1e-6;
    t0.seed = seed;
    EXPECT_EQ(draw(t0, l), 3);
  }
}

TEST(Sampler, SameSeedSameSequenceDifferentSeedDiffers) {
  const auto l = row();
  SamplerOptions o;
  o.seed = 1234;
  Sampler a(o), b(o);
  o.seed = 99;
  Sampler c(o);
  std::vector<int32_t> sa, sb, sc;
  for (int i = 0; i < 200; ++i) {
    sa.push_back(a.sample(l.data(), (int64_t)l.size()));
    sb.push_back(b.sample(l.data(), (int64_t)l.size()));
    sc.push_back(c.sample(l.data(), (int64_t)l.size()));
  }
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);
}

TEST(Sampler, EmpiricalFrequenciesMatchSoftmax) {
  const std::vector<float> l = {0.0f, 1.0f, 2.0f};
  SamplerOptions o;
  o.temperature = 1.0;
  o.seed = 7;
  Sampler s(o);
  const int n = 20000;
  std::vector<int> count(3, 0);
  for (int i = 0; i < n; ++i) ++count[s.sample(l.data(), 3)];
  const double z = 1 + std::exp(1.0) + std::exp(2.0);
  for (int i = 0; i < 3; ++i) {
    const double p = std::exp((double)i) / z;
    const double sigma = std::sqrt(p * (1 - p) / n);
    EXPECT_NEAR((double)count[i] / n, p, 4 * sigma) << "token " << i;
  }
}

TEST(Sampler, TemperatureScalesTheLogits) {
  const std::vector<float> l = {0.0f, 1.0f, 2.0f};
  SamplerOptions o;
  o.temperature = 2.0;
  Sampler s(o);
  const auto p = s.distribution(l.data(), 3);
  const double z = 1 + std::exp(0.5) + std::exp(1.0);
  EXPECT_NEAR(p[0], 1 / z, 1e-12);
  EXPECT_NEAR(p[2], std::exp(1.0) / z, 1e-12);
}

TEST(Sampler, TopKThenTopPRenormalize) {
  // Probabilities (T=1) of {0, 1, 2, 3} are proportional to e^0..e^3: 0.032, 0.087, 0.237, 0.644.
  const std::vector<float> l = {0.0f, 1.0f, 2.0f, 3.0f};
  SamplerOptions k;
  k.top_k = 2;
  Sampler sk(k);
  auto p = sk.distribution(l.data(), 4);
  EXPECT_EQ(p[0], 0.0);
  EXPECT_EQ(p[1], 0.0);
  EXPECT_NEAR(p[2], 1 / (1 + std::exp(1.0)), 1e-12);
  // top-p 0.7: 0.644 < 0.7, so token 2 (crossing the mass) is kept too; token 1 is not.
  SamplerOptions tp;
  tp.top_p = 0.7;
  Sampler sp(tp);
  p = sp.distribution(l.data(), 4);
  EXPECT_EQ(p[1], 0.0);
  EXPECT_GT(p[2], 0.0);
  EXPECT_NEAR(p[2] + p[3], 1.0, 1e-12);
  // top-p 0.6 keeps only the top token.
  tp.top_p = 0.6;
  Sampler sp2(tp);
  p = sp2.distribution(l.data(), 4);
  EXPECT_EQ(p[3], 1.0);
}

TEST(Sampler, RepetitionPenaltyAsHf) {
  // Penalty 2 on {2 (positive logit), 0 (negative)}: 2.0 -> 1.0, -1.0 -> -2.0; greedy then picks token 1.
  const std::vector<float> l = {-1.0f, 1.5f, 2.0f};
  SamplerOptions o;
  o.temperature = 0;
  o.repetition_penalty = 2.0;
  Sampler s(o);
  EXPECT_EQ(s.sample(l.data(), 3, {}), 2);
  EXPECT_EQ(s.sample(l.data(), 3, {2, 2, 0}), 1);
  SamplerOptions t;
  t.repetition_penalty = 2.0;
  Sampler st(t);
  const auto p = st.distribution(l.data(), 3, {0, 2});
  const double z = std::exp(-2.0) + std::exp(1.5) + std::exp(1.0);
  EXPECT_NEAR(p[0], std::exp(-2.0) / z, 1e-12);
}

TEST(Sampler, NonFiniteLogitsAreExcluded) {
  const std::vector<float> l = {NAN, 1.0f, INFINITY, 0.5f};
  SamplerOptions o;
  o.seed = 3;
  Sampler s(o);
  for (int i = 0; i < 100; ++i) {
    const int32_t id = s.sample(l.data(), 4);
    EXPECT_TRUE(id == 1 || id == 3) << id;
  }
  const std::vector<float> bad = {NAN, -INFINITY};
  EXPECT_THROW(s.sample(bad.data(), 2), Error);
}

TEST(Sampler, InvalidOptionsThrow) {
  SamplerOptions o;
  o.top_p = 0;
  EXPECT_THROW(Sampler{o}, Error);
  o = {};
  o.top_p = 1.5;
  EXPECT_THROW(Sampler{o}, Error);
  o = {};
  o.repetition_penalty = 0;
  EXPECT_THROW(Sampler{o}, Error);
}

}  // namespace
}  // namespace fq::runtime
