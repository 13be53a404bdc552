#include <gtest/gtest.h>

#include <cmath>

#include "eval/kld.h"
#include "eval/logprob_file.h"
#include "eval/perplexity.h"
#include "flatquant/error.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace fq {
namespace {

std::vector<float> logp(std::vector<double> p) {
  std::vector<float> out;
  for (double x : p) out.push_back((float)std::log(x));
  return out;
}

TEST(Kld, KnownValuesAndAgreement) {
  eval::KldAccumulator acc;
  const auto a = logp({0.5, 0.25, 0.25}), b = logp({0.25, 0.5, 0.25});
  acc.add(a.data(), a.data(), 3);  // identical: 0
  acc.add(a.data(), b.data(), 3);  // 0.5 ln 2 - 0.25 ln 2 = 0.25 ln 2; argmax differs
  const auto s = acc.stats();
  EXPECT_EQ(s.n, 2);
  EXPECT_NEAR(s.mean, 0.125 * std::log(2.0), 1e-7);
  EXPECT_NEAR(s.max, 0.25 * std::log(2.0), 1e-7);
  EXPECT_NEAR(s.p99, 0.25 * std::log(2.0), 1e-7);
  EXPECT_DOUBLE_EQ(s.top1_agree_pct, 50.0);
}

TEST(Kld, Percentile99IsNearestRank) {
  eval::KldAccumulator acc;
  // 200 positions with KLD growing with i: 99th percentile by nearest rank is the 198th smallest.
  for (int i = 0; i < 200; ++i) {
    const double q = 0.5 + 0.4 * i / 199.0;
    const auto a = logp({0.5, 0.5}), b = logp({q, 1 - q});
    acc.add(a.data(), b.data(), 2);
  }
  const auto s = acc.stats();
  const double q = 0.5 + 0.4 * 197 / 199.0;
  const double want = 0.5 * std::log(0.5 / q) + 0.5 * std::log(0.5 / (1 - q));
  EXPECT_NEAR(s.p99, want, 1e-6);
  EXPECT_GT(s.max, s.p99);
}

TEST(LogprobFile, RoundTripAndTokenCheck) {
  test::TempDir dir;
  const std::string path = dir.file("base.safetensors");
  const int64_t W = 2, S = 5, V = 3;
  std::vector<int32_t> stream = {1, 2, 0, 1, 2, 2, 1, 0, 0, 1, 2};
  {
    eval::LogprobWriter w(path, W, S, V, stream.data());
    EXPECT_EQ(w.dtype(), DType::F32);
    for (int64_t win = 0; win < W; ++win) {
      std::vector<float> rows((S - 1) * V);
      for (size_t i = 0; i < rows.size(); ++i) rows[i] = -(float)(win * 100 + i);
      w.add(win, 0, 2, rows.data());
      w.add(win, 2, 2, rows.data() + 2 * V);
    }
    w.write();
  }
  eval::LogprobReader r(path);
  EXPECT_EQ(r.windows(), W);
  EXPECT_EQ(r.seq_len(), S);
  EXPECT_EQ(r.n_vocab(), V);
  std::vector<float> row(V);
  r.row(1, 3, row.data());
  EXPECT_EQ(row, (std::vector<float>{-109, -110, -111}));
  r.check_same_tokens(stream.data(), W, S, V);
  auto other = stream;
  other[6] = 0;
  try {
    r.check_same_tokens(other.data(), W, S, V);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token 1 of window 1 differs"), std::string::npos) << e.what();
  }
  EXPECT_THROW(r.check_same_tokens(stream.data(), 1, S, V), Error);
  EXPECT_THROW(r.check_same_tokens(stream.data(), W, S, V + 1), Error);
}

TEST(LogprobFile, RejectsOtherSafetensors) {
  test::TempDir dir;
  const std::string path = dir.file("x.safetensors");
  SafeTensorsWriter w;
  const float v[2] = {1, 2};
  w.add_f32("tokens", {2}, v);
  w.write(path);
  EXPECT_THROW(eval::LogprobReader r(path), Error);
}

}  // namespace
}  // namespace fq
