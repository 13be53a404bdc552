// CUDA vs CPU reference for the small layer kernels (src/kernels/cuda/layer_ops.cu): RMSNorm (ref::rmsnorm),
// RoPE with default and llama3 scaling at arbitrary positions (ref::RopeTable + ref::rope_apply), SwiGLU
// (ref::swiglu), embedding gather (exact), greedy argmax (runtime::argmax, exact, ties and NaN included); and
// the sampling kernel (sampling.cu): top-k 1 and temperature 0 are argmax, every draw lies in the top-k /
// top-p set computed on the CPU in double, the empirical distribution over many rows matches the filtered
// softmax, and draws are a pure function of (seed, row, step).
#ifdef FLATQUANT_WITH_CUDA
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/layer_ops.h"
#include "kernels/cuda/sampling.h"
#include "model/config.h"
#include "ops/attn_test_util.h"
#include "ops/ops_util.h"
#include "ref/rmsnorm.h"
#include "ref/rope.h"
#include "ref/swiglu.h"
#include "runtime/sampler.h"

namespace fq {
namespace {

using test::DeviceBuffer;

// Uploads x as `dt` (fp16 rounding already applied by the caller) and returns the device buffer's pointer.
struct ActBuffer {
  DeviceBuffer<float> f32;
  DeviceBuffer<uint16_t> f16;
  DType dt;
  ActBuffer(const std::vector<float>& x, DType dt_)
      : f32(dt_ == DType::F32 ? x : std::vector<float>(1)),
        f16(dt_ == DType::F16 ? test::to_f16(x) : std::vector<uint16_t>(1)),
        dt(dt_) {}
  explicit ActBuffer(size_t n, DType dt_)
      : f32(dt_ == DType::F32 ? n : 1), f16(dt_ == DType::F16 ? n : 1), dt(dt_) {}
  void* get() { return dt == DType::F16 ? static_cast<void*>(f16.get()) : static_cast<void*>(f32.get()); }
  std::vector<float> download() const {
    return dt == DType::F16 ? test::from_f16(f16.download()) : f32.download();
  }
};

const char* name(DType t) {
  return t == DType::F16 ? "fp16" : "fp32";
}

TEST(LayerOpsCuda, RmsNormMatchesReference) {
  FQ_REQUIRE_CUDA();
  // Row stride dim + 3 takes the scalar kernel; dim + 4 with fp32 x the vector one (up to 8192 elements).
  for (int64_t dim : {8, 576, 3584, 4096, 8192, 8200})
    for (int64_t pad : {3, 4})
      for (DType xt : {DType::F32, DType::F16})
        for (DType yt : {DType::F32, DType::F16}) {
          const int64_t n = 5, stride = dim + pad;
          auto x = test::random_activations(static_cast<size_t>(n * stride), static_cast<uint32_t>(dim));
          if (xt == DType::F16) test::round_f16(x);
          auto w = test::random_activations(static_cast<size_t>(dim), static_cast<uint32_t>(dim + 1));
          std::vector<float> dense(static_cast<size_t>(n * dim)), want(dense.size());
          for (int64_t r = 0; r < n; ++r) std::copy_n(x.begin() + r * stride, dim, dense.begin() + r * dim);
          ref::rmsnorm(dense.data(), w.data(), n, dim, 1e-5f, want.data());
          ActBuffer dx(x, xt), dy(static_cast<size_t>(n * dim), yt);
          DeviceBuffer<float> dw(w);
          ASSERT_EQ(cuda::rmsnorm(dx.get(), xt, stride, dw.get(), n, dim, 1e-5f, dy.get(), yt, nullptr),
                    cudaSuccess);
          FQ_CUDA_CHECK(cudaDeviceSynchronize(), "rmsnorm");
          const double rtol = yt == DType::F16 ? 1e-3 : 2e-6;
          EXPECT_EQ(test::check_rows(dy.download(), want, dim, rtol, 0.0, "rmsnorm"), "")
              << "dim " << dim << " stride " << stride << " x " << name(xt) << " y " << name(yt);
        }
}

TEST(LayerOpsCuda, RopeMatchesReferenceAtArbitraryPositions) {
  FQ_REQUIRE_CUDA();
  RopeScaling llama3;
  llama3.type = "llama3";
  llama3.factor = 8.0;
  llama3.low_freq_factor = 1.0;
  llama3.high_freq_factor = 4.0;
  llama3.original_max_position_embeddings = 8192;
  const std::vector<std::pair<int64_t, int64_t>> heads = {{9, 3}, {28, 4}, {32, 8}};
  for (const RopeScaling& sc : {RopeScaling{}, llama3})
    for (auto [hq, hk] : heads)
      for (int64_t d : {8, 64, 128})
        for (DType dt : {DType::F32, DType::F16}) {
          const int64_t n = 7, qs = hq * d + 2, ks = hk * d;
          const std::vector<int32_t> pos = {0, 1, 17, 511, 4095, 8191, 131071};
          const auto inv = ref::rope_inv_freq(d, sc.type == "llama3" ? 500000.0 : 10000.0, sc);
          auto q = test::random_activations(static_cast<size_t>(n * qs), static_cast<uint32_t>(d * hq));
          auto k = test::random_activations(static_cast<size_t>(n * ks), static_cast<uint32_t>(d * hk + 1));
          if (dt == DType::F16) {
            test::round_f16(q);
            test::round_f16(k);
          }
          std::vector<float> wq = q, wk = k;
          for (int64_t t = 0; t < n; ++t) {  // RopeTable's angles, per position (no table up to 131071)
            std::vector<float> c(static_cast<size_t>(d / 2)), s(c.size());
            for (int64_t i = 0; i < d / 2; ++i) {
              const float angle =
                  inv[static_cast<size_t>(i)] * static_cast<float>(pos[static_cast<size_t>(t)]);
              c[static_cast<size_t>(i)] = std::cos(angle);
              s[static_cast<size_t>(i)] = std::sin(angle);
            }
            ref::rope_apply(wq.data() + t * qs, hq, d, c.data(), s.data());
            ref::rope_apply(wk.data() + t * ks, hk, d, c.data(), s.data());
          }
          ActBuffer dq(q, dt), dk(k, dt);
          DeviceBuffer<int32_t> dpos(pos);
          DeviceBuffer<float> dinv(inv);
          ASSERT_EQ(cuda::rope(dq.get(), qs, hq, dk.get(), ks, hk, dt, n, d, dpos.get(), dinv.get(), nullptr),
                    cudaSuccess);
          FQ_CUDA_CHECK(cudaDeviceSynchronize(), "rope");
          const double rtol = dt == DType::F16 ? 1e-3 : 1e-5;
          const std::string ctx = "rope " + sc.type + " heads " + std::to_string(hq) + "/" +
                                  std::to_string(hk) + " d " + std::to_string(d) + " " + name(dt);
          EXPECT_EQ(test::check_rows(dq.download(), wq, qs, rtol, 1e-6, "q (rows = tokens)"), "") << ctx;
          EXPECT_EQ(test::check_rows(dk.download(), wk, ks, rtol, 1e-6, "k (rows = tokens)"), "") << ctx;
        }
}

TEST(LayerOpsCuda, RopeTableMatchesOurInlineAngles) {
  // The test above recomputes cos/sin per position exactly as RopeTable does; check that equivalence here so
  // that a change to RopeTable cannot silently leave the CUDA test behind.
  const auto inv = ref::rope_inv_freq(64, 10000.0, RopeScaling{});
  const ref::RopeTable t(inv, 40);
  for (int64_t p = 0; p < 40; ++p)
    for (int64_t i = 0; i < 32; ++i) {
      const float angle = inv[static_cast<size_t>(i)] * static_cast<float>(p);
      ASSERT_EQ(t.cos_at(p)[i], std::cos(angle));
      ASSERT_EQ(t.sin_at(p)[i], std::sin(angle));
    }
}

TEST(LayerOpsCuda, SwiGluMatchesReference) {
  FQ_REQUIRE_CUDA();
  for (DType it : {DType::F32, DType::F16})
    for (DType ot : {DType::F32, DType::F16}) {
      const int64_t n = 3, ff = 1000;
      auto gu = test::random_activations(static_cast<size_t>(n * 2 * ff), 77, 5.0f);  // fused [n, gate | up]
      if (it == DType::F16) test::round_f16(gu);
      std::vector<float> want(static_cast<size_t>(n * ff));
      for (int64_t r = 0; r < n; ++r)
        ref::swiglu(gu.data() + r * 2 * ff, gu.data() + r * 2 * ff + ff, ff, want.data() + r * ff);
      ActBuffer dgu(gu, it), dout(want.size(), ot);
      const void* gate = dgu.get();
      const void* up = it == DType::F16 ? static_cast<const void*>(dgu.f16.get() + ff)
                                        : static_cast<const void*>(dgu.f32.get() + ff);
      ASSERT_EQ(cuda::swiglu(gate, up, it, 2 * ff, 2 * ff, n, ff, dout.get(), ot, nullptr), cudaSuccess);
      FQ_CUDA_CHECK(cudaDeviceSynchronize(), "swiglu");
      // Per element: silu differs from the reference only by expf's last bits.
      const auto got = dout.download();
      const double rtol = ot == DType::F16 ? 1e-3 : 1e-6;
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_LE(std::fabs(got[i] - want[i]), rtol * std::fabs(want[i]) + 1e-7)
            << "element " << i << " in " << name(it) << " out " << name(ot) << ": gpu " << got[i] << " ref "
            << want[i];
    }
}

TEST(LayerOpsCuda, EmbeddingGathersRowsAndFlagsBadIds) {
  FQ_REQUIRE_CUDA();
  const int64_t vocab = 50, dim = 72;
  auto table = test::random_activations(static_cast<size_t>(vocab * dim), 3);
  for (DType tt : {DType::F32, DType::F16}) {
    auto t = table;
    if (tt == DType::F16) test::round_f16(t);
    const std::vector<int32_t> ids = {0, 49, 7, 7, 23};
    ActBuffer dt(t, tt), dout(ids.size() * static_cast<size_t>(dim), DType::F32);
    DeviceBuffer<int32_t> did(ids), dflag(std::vector<int32_t>{0});
    ASSERT_EQ(cuda::embedding(dt.get(), tt, vocab, dim, did.get(), static_cast<int64_t>(ids.size()),
                              dout.get(), DType::F32, dflag.get(), nullptr),
              cudaSuccess);
    FQ_CUDA_CHECK(cudaDeviceSynchronize(), "embedding");
    const auto got = dout.download();
    for (size_t r = 0; r < ids.size(); ++r)
      for (int64_t e = 0; e < dim; ++e)
        ASSERT_EQ(got[r * dim + e], t[static_cast<size_t>(ids[r] * dim + e)]) << "row " << r << " elem " << e;
    EXPECT_EQ(dflag.download()[0], 0);
    DeviceBuffer<int32_t> bad(std::vector<int32_t>{3, 50, -1});
    ASSERT_EQ(
        cuda::embedding(dt.get(), tt, vocab, dim, bad.get(), 3, dout.get(), DType::F32, dflag.get(), nullptr),
        cudaSuccess);
    FQ_CUDA_CHECK(cudaDeviceSynchronize(), "embedding");
    EXPECT_EQ(dflag.download()[0], 1) << "ids 50 and -1 are out of range for vocab 50";
    EXPECT_EQ(dout.download()[static_cast<size_t>(dim)], 0.0f) << "an out-of-range id gives a zero row";
  }
}

// Logit rows: normal * 3, with a few special rows (ties, NaN, -inf).
std::vector<float> logit_rows(int64_t rows, int64_t vocab, uint32_t seed) {
  auto x = test::random_activations(static_cast<size_t>(rows * vocab), seed);
  for (auto& v : x) v *= 3.0f;
  return x;
}

TEST(LayerOpsCuda, ArgmaxMatchesCpuIncludingTiesAndNaN) {
  FQ_REQUIRE_CUDA();
  for (int64_t vocab : {1, 33, 1000, 128256}) {
    const int64_t rows = 6;
    auto x = logit_rows(rows, vocab, static_cast<uint32_t>(vocab));
    if (vocab > 2) {
      const int64_t m = std::max_element(x.begin() + vocab, x.begin() + 2 * vocab) - (x.begin() + vocab);
      x[static_cast<size_t>(vocab + vocab - 1)] =
          x[static_cast<size_t>(vocab + m)];    // row 1: a tie, later index
      x[static_cast<size_t>(2 * vocab)] = NAN;  // row 2: NaN first
      for (int64_t i = 0; i < vocab; ++i) x[static_cast<size_t>(3 * vocab + i)] = -INFINITY;  // row 3
      x[static_cast<size_t>(3 * vocab + vocab / 2)] = -1e30f;
      for (int64_t i = 0; i < vocab; ++i) x[static_cast<size_t>(4 * vocab + i)] = NAN;  // row 4: all NaN
    }
    for (DType dt : {DType::F32, DType::F16}) {
      auto xr = x;
      if (dt == DType::F16)
        test::round_f16(xr);  // -1e30 becomes -inf: still the CPU's answer on the same data
      ActBuffer dx(xr, dt);
      DeviceBuffer<int32_t> out(static_cast<size_t>(rows));
      ASSERT_EQ(cuda::argmax(dx.get(), dt, rows, vocab, vocab, out.get(), nullptr), cudaSuccess);
      FQ_CUDA_CHECK(cudaDeviceSynchronize(), "argmax");
      const auto got = out.download();
      for (int64_t r = 0; r < rows; ++r)
        EXPECT_EQ(got[static_cast<size_t>(r)], runtime::argmax(xr.data() + r * vocab, vocab))
            << "row " << r << " vocab " << vocab << " " << name(dt);
    }
  }
}

std::vector<int32_t> run_sample(const std::vector<float>& x, int64_t rows, int64_t vocab,
                                const cuda::SampleParams& p, uint64_t step) {
  DeviceBuffer<float> dx(x);
  DeviceBuffer<int32_t> out(static_cast<size_t>(rows));
  DeviceBuffer<uint64_t> dstep(std::vector<uint64_t>{step});
  // Alternate between the host step and the device step (the CUDA-graph form): both must mean the same.
  const bool dev = step % 2 == 1;
  EXPECT_EQ(cuda::sample(dx.get(), DType::F32, rows, vocab, vocab, p, dev ? 0 : step,
                         dev ? dstep.get() : nullptr, out.get(), nullptr),
            cudaSuccess);
  FQ_CUDA_CHECK(cudaDeviceSynchronize(), "sample");
  return out.download();
}

// The kept set in double: top-k by logit, then the smallest most-likely-first prefix whose probability
// reaches top_p. Returns per token: 0 = removed, 1 = kept, 2 = at the top-p boundary (kept or removed within
// 1e-6).
std::vector<int> kept_set(const float* x, int64_t vocab, const cuda::SampleParams& p) {
  std::vector<int64_t> idx(static_cast<size_t>(vocab));
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(),
            [&](int64_t a, int64_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
  const int64_t k = p.top_k > 0 && p.top_k < vocab ? p.top_k : vocab;
  std::vector<double> w(static_cast<size_t>(k));
  double z = 0;
  for (int64_t i = 0; i < k; ++i)
    z += w[static_cast<size_t>(i)] = std::exp((double(x[idx[i]]) - x[idx[0]]) / p.temperature);
  std::vector<int> keep(static_cast<size_t>(vocab), 0);
  double before = 0;
  for (int64_t i = 0; i < k; ++i) {
    const double frac = before / z;
    if (frac < double(p.top_p) - 1e-6)
      keep[static_cast<size_t>(idx[i])] = 1;
    else if (frac < double(p.top_p) + 1e-6)
      keep[static_cast<size_t>(idx[i])] = 2;
    before += w[static_cast<size_t>(i)];
  }
  return keep;
}

TEST(SampleCuda, TopK1AndZeroTemperatureAreArgmax) {
  FQ_REQUIRE_CUDA();
  for (int64_t vocab : {1000, 128256}) {
    const int64_t rows = 8;
    const auto x = logit_rows(rows, vocab, static_cast<uint32_t>(vocab + 5));
    std::vector<int32_t> want(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r)
      want[static_cast<size_t>(r)] = runtime::argmax(x.data() + r * vocab, vocab);
    cuda::SampleParams p;
    p.temperature = 0.8f;
    p.top_k = 1;
    p.seed = 42;
    EXPECT_EQ(run_sample(x, rows, vocab, p, 3), want) << "top_k 1, vocab " << vocab;
    p.top_k = 0;
    p.temperature = 0.0f;
    EXPECT_EQ(run_sample(x, rows, vocab, p, 4), want) << "temperature 0, vocab " << vocab;
  }
}

TEST(SampleCuda, DrawsStayInsideTopKTopPSet) {
  FQ_REQUIRE_CUDA();
  const int64_t rows = 64;
  for (int64_t vocab : {50, 5000, 128256}) {
    const auto x = logit_rows(rows, vocab, static_cast<uint32_t>(vocab * 3));
    for (auto [k, top_p] :
         std::vector<std::pair<int32_t, float>>{{0, 0.9f}, {40, 1.0f}, {40, 0.5f}, {0, 0.2f}}) {
      cuda::SampleParams p;
      p.temperature = 1.1f;
      p.top_k = k;
      p.top_p = top_p;
      p.seed = 7;
      std::vector<std::vector<int>> keep(static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r)
        keep[static_cast<size_t>(r)] = kept_set(x.data() + r * vocab, vocab, p);
      for (uint64_t step = 0; step < 4; ++step) {
        const auto got = run_sample(x, rows, vocab, p, step);
        for (int64_t r = 0; r < rows; ++r) {
          const int32_t tok = got[static_cast<size_t>(r)];
          ASSERT_TRUE(tok >= 0 && tok < vocab) << "row " << r << " token " << tok;
          EXPECT_NE(keep[static_cast<size_t>(r)][static_cast<size_t>(tok)], 0)
              << "vocab " << vocab << " top_k " << k << " top_p " << top_p << " step " << step << " row " << r
              << ": token " << tok << " (logit " << x[static_cast<size_t>(r * vocab + tok)]
              << ") is outside the set";
        }
      }
    }
  }
}

TEST(SampleCuda, EmpiricalDistributionMatchesFilteredSoftmax) {
  FQ_REQUIRE_CUDA();
  const int64_t vocab = 16, rows = 40000;
  std::vector<float> one = {1.0f,  2.5f, 0.3f, 2.0f,  -1.0f, 1.7f, 0.0f,  2.2f,
                            -3.0f, 0.9f, 1.2f, -0.5f, 2.4f,  0.1f, -2.0f, 1.9f};
  std::vector<float> x;
  for (int64_t r = 0; r < rows; ++r) x.insert(x.end(), one.begin(), one.end());
  cuda::SampleParams p;
  p.temperature = 1.3f;
  p.top_k = 10;
  p.top_p = 0.8f;
  p.seed = 1234;
  const auto got = run_sample(x, rows, vocab, p, 0);
  // Expected: filtered softmax in double.
  const auto keep = kept_set(one.data(), vocab, p);
  std::vector<double> prob(static_cast<size_t>(vocab), 0.0);
  double z = 0;
  for (int64_t i = 0; i < vocab; ++i)
    if (keep[static_cast<size_t>(i)])
      z += prob[static_cast<size_t>(i)] = std::exp(one[static_cast<size_t>(i)] / 1.3);
  for (auto& v : prob) v /= z;
  std::vector<int64_t> count(static_cast<size_t>(vocab), 0);
  for (int32_t t : got) ++count[static_cast<size_t>(t)];
  for (int64_t i = 0; i < vocab; ++i) {
    const double pi = prob[static_cast<size_t>(i)], f = double(count[static_cast<size_t>(i)]) / rows;
    const double sigma = std::sqrt(pi * (1 - pi) / rows);
    EXPECT_LE(std::fabs(f - pi), 5 * sigma + 1e-12)
        << "token " << i << ": frequency " << f << " expected " << pi << " (" << count[static_cast<size_t>(i)]
        << " of " << rows << ")";
  }
}

TEST(SampleCuda, DrawsArePureFunctionsOfSeedRowAndStep) {
  FQ_REQUIRE_CUDA();
  const int64_t rows = 32, vocab = 3000;
  const auto x = logit_rows(rows, vocab, 99);
  cuda::SampleParams p;
  p.seed = 5;
  p.top_p = 0.95f;
  const auto a = run_sample(x, rows, vocab, p, 10), b = run_sample(x, rows, vocab, p, 10);
  EXPECT_EQ(a, b) << "same seed and step";
  const auto c = run_sample(x, rows, vocab, p, 11);
  EXPECT_NE(a, c) << "a new step must draw new tokens (32 rows all equal is ~impossible)";
}

TEST(SampleCuda, RejectsBadParametersWithoutLaunching) {
  cuda::SampleParams p;
  p.top_p = 0.0f;
  EXPECT_EQ(cuda::sample(nullptr, DType::F32, 1, 10, 10, p, 0, nullptr, nullptr, nullptr),
            cudaErrorInvalidValue);
  p.top_p = 1.0f;
  EXPECT_EQ(cuda::sample(nullptr, DType::F32, 1, 10, 5, p, 0, nullptr, nullptr, nullptr),
            cudaErrorInvalidValue)
      << "stride < vocab";
}

}  // namespace
}  // namespace fq
#endif  // FLATQUANT_WITH_CUDA
