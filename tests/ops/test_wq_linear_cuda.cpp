// The W4A16 / W8A8 / W4A8 kernels (src/kernels/cuda/wq_linear.h) against their CPU references:
// - the int8 activation quantizer equals ref::quantize_sym_row (8 bits, per clip pair) BIT FOR BIT, on fp32
// and
//   fp16 inputs, all-zero rows and exact ties included;
// - the int8-activation linear (decode GEMV with int8 and packed int4 weights over 1-3 activation segments,
// the
//   plain kernel, the epilogue after an int32 GEMM) equals ref::int_linear (+ residual, ref::qgemm_epilogue)
//   BIT FOR BIT; int4 -> int8 unpacking equals ref::unpack_int4;
// - the weight-only int4 GEMV agrees with a double sum of f16(x) * code * scale to fp32 rounding, and the
// fp16
//   dequantization equals f16(code * scale) exactly.
// Shapes include non-power-of-two K and N (172 = 4 x 43, 344, 576, 1376 = 32 x 43). Outputs are poisoned
// first (0xFF: NaN), so an element a kernel does not write fails. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "ops_util.h"
#include "ref/fake_quant.h"
#include "ref/qgemm.h"
#include "ref/quant.h"
#include "ref/quant_ops.h"

#ifdef FLATQUANT_WITH_CUDA
#include "kernels/cuda/layer_ops.h"
#include "kernels/cuda/wq_linear.h"
#endif

namespace fq {
namespace {

#ifdef FLATQUANT_WITH_CUDA
using test::DeviceBuffer;

std::vector<int8_t> random_i8(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int8_t> v(n);
  for (auto& x : v) x = static_cast<int8_t>(static_cast<int>(rng() & 0xFF) - 128);
  return v;
}

std::vector<uint16_t> to_f16(const std::vector<float>& x) {
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = f32_to_f16(x[i]);
  return h;
}

// Weight codes [N, K] as int16 (ref::int_linear's operand) from int8 bytes or packed int4.
std::vector<int16_t> codes16(const std::vector<uint8_t>& qw, int w_bits, int64_t N, int64_t K) {
  std::vector<int8_t> c(static_cast<size_t>(N * K));
  if (w_bits == 4)
    ref::unpack_int4(qw.data(), N, K, c.data());
  else
    std::memcpy(c.data(), qw.data(), c.size());
  return std::vector<int16_t>(c.begin(), c.end());
}

bool same_bits(float a, float b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

TEST(WqLinear, QuantizeInt8MultiMatchesReferenceBitExact) {
  FQ_REQUIRE_CUDA();
  const cuda::SymClips clips{3, {1.0f, 0.93f, 0.875f}, {1.0f, 0.97f, 0.9f}};
  for (int64_t cols : {64, 172, 344, 4096}) {
    for (int64_t rows : {1, 7, 33}) {
      auto x =
          test::random_activations(static_cast<size_t>(rows * cols), 10 + static_cast<uint32_t>(cols + rows));
      for (int64_t c = 0; c < cols; ++c) x[static_cast<size_t>(c)] = 0.0f;  // an all-zero row: scale 1
      if (rows > 1) {
        // Exact ties under clip pair 0 (scale 1): x / 1 = k + 0.5 rounds to even.
        float* r = x.data() + cols;
        for (int64_t c = 0; c < cols; ++c) r[c] = static_cast<float>(c % 9) - 4.5f;
        r[0] = 127.0f;
      }
      for (bool f16 : {false, true}) {
        std::vector<float> xr = x;
        std::vector<uint16_t> xh;
        if (f16) {
          xh = to_f16(x);
          for (size_t i = 0; i < x.size(); ++i) xr[i] = f16_to_f32(xh[i]);
        }
        std::vector<int8_t> want(static_cast<size_t>(3 * rows * cols));
        std::vector<float> want_s(static_cast<size_t>(3 * rows));
        for (int c = 0; c < 3; ++c)
          for (int64_t r = 0; r < rows; ++r)
            want_s[static_cast<size_t>(c * rows + r)] =
                ref::quantize_sym_row(xr.data() + r * cols, cols, 8, clips.max[c], clips.min[c],
                                      want.data() + (c * rows + r) * cols);
        DeviceBuffer<float> dx32(x);
        DeviceBuffer<uint16_t> dx16(f16 ? xh : std::vector<uint16_t>(1));
        DeviceBuffer<int8_t> dq(want.size());
        DeviceBuffer<float> ds(want_s.size());
        ASSERT_EQ(
            cuda::quantize_sym_int8_multi(f16 ? static_cast<const void*>(dx16.get()) : dx32.get(), f16, rows,
                                          cols, cols, clips, dq.get(), rows * cols, ds.get(), nullptr),
            cudaSuccess);
        EXPECT_EQ(dq.download(), want) << rows << "x" << cols << (f16 ? " fp16" : " fp32");
        const auto s = ds.download();
        for (size_t i = 0; i < s.size(); ++i) ASSERT_TRUE(same_bits(s[i], want_s[i])) << i << ": " << s[i];
      }
    }
  }
  const cuda::SymClips none{0, {}, {}};
  EXPECT_EQ(cuda::quantize_sym_int8_multi(nullptr, false, 1, 8, 8, none, nullptr, 8, nullptr, nullptr),
            cudaErrorInvalidValue);
}

// The int8-activation linear over `segs` activation segments (ends: even boundaries), every entry point that
// supports the shape, against ref::int_linear per segment (+ residual).
void check_a8(int w_bits, int64_t M, int64_t N, int64_t K, std::vector<int64_t> ends, bool residual,
              bool f16) {
  const int n_seg = static_cast<int>(ends.size());
  const uint32_t seed = static_cast<uint32_t>(w_bits * 1000003 + M * 7919 + N * 31 + K);
  const std::vector<uint8_t> qw =
      test::random_packed(static_cast<size_t>(w_bits == 4 ? N * K / 2 : N * K), seed);
  const std::vector<float> sw = test::random_scales(static_cast<size_t>(N), seed + 1);
  const std::vector<int16_t> w16 = codes16(qw, w_bits, N, K);
  std::vector<std::vector<int8_t>> qx;
  std::vector<std::vector<float>> sx;
  for (int s = 0; s < n_seg; ++s) {
    qx.push_back(random_i8(static_cast<size_t>(M * K), seed + 2 + static_cast<uint32_t>(s)));
    sx.push_back(test::random_scales(static_cast<size_t>(M), seed + 5 + static_cast<uint32_t>(s)));
  }
  const std::vector<float> res = test::random_activations(static_cast<size_t>(M * N), seed + 9);
  // Reference: ref::int_linear on each segment's columns, then + residual (the qgemm epilogue's last step).
  std::vector<float> want(static_cast<size_t>(M * N));
  int64_t start = 0;
  for (int s = 0; s < n_seg; ++s) {
    const int64_t n = ends[static_cast<size_t>(s)] - start;
    const std::vector<int16_t> x16(qx[static_cast<size_t>(s)].begin(), qx[static_cast<size_t>(s)].end());
    std::vector<float> ys(static_cast<size_t>(M * n));
    ref::int_linear(x16.data(), sx[static_cast<size_t>(s)].data(), w16.data() + start * K, sw.data() + start,
                    nullptr, M, K, n, ys.data());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < n; ++j) {
        float t = ys[static_cast<size_t>(m * n + j)];
        if (residual) t = t + res[static_cast<size_t>(m * N + start + j)];
        want[static_cast<size_t>(m * N + start + j)] = t;
      }
    start = ends[static_cast<size_t>(s)];
  }
  DeviceBuffer<uint8_t> dw(qw);
  DeviceBuffer<float> dsw(sw);
  std::vector<std::unique_ptr<DeviceBuffer<int8_t>>> dqx;
  std::vector<std::unique_ptr<DeviceBuffer<float>>> dsx;
  cuda::Int8Acts acts;
  acts.n = n_seg;
  for (int s = 0; s < n_seg; ++s) {
    dqx.push_back(std::make_unique<DeviceBuffer<int8_t>>(qx[static_cast<size_t>(s)]));
    dsx.push_back(std::make_unique<DeviceBuffer<float>>(sx[static_cast<size_t>(s)]));
    acts.qx[s] = dqx.back()->get();
    acts.sx[s] = dsx.back()->get();
    acts.end[s] = ends[static_cast<size_t>(s)];
  }
  const std::string what = "w" + std::to_string(w_bits) + " M " + std::to_string(M) + " N " +
                           std::to_string(N) + " K " + std::to_string(K) + " segs " + std::to_string(n_seg) +
                           (residual ? " res" : "") + (f16 ? " f16" : "");
  auto run = [&](bool gemv) {
    DeviceBuffer<float> dy(residual ? res : std::vector<float>(static_cast<size_t>(M * N)));
    DeviceBuffer<uint16_t> dy16(static_cast<size_t>(M * N));
    if (!residual) dy.poison();
    void* y = f16 ? static_cast<void*>(dy16.get()) : dy.get();
    const float* r = residual ? dy.get() : nullptr;  // the residual aliases y, as in the engine
    const cudaError_t e =
        gemv ? cuda::a8_gemv(acts, w_bits, dw.get(), dsw.get(), r, y, f16, M, N, K, nullptr)
             : cuda::a8_gemm_simple(acts, w_bits, dw.get(), dsw.get(), r, y, f16, M, N, K, nullptr);
    ASSERT_EQ(e, cudaSuccess) << what;
    if (f16) {
      const auto got = dy16.download();
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_EQ(got[i], f32_to_f16(want[i])) << what << (gemv ? " gemv" : " simple") << " at " << i;
    } else {
      const auto got = dy.download();
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_TRUE(same_bits(got[i], want[i]))
            << what << (gemv ? " gemv" : " simple") << " at " << i << ": " << got[i] << " vs " << want[i];
    }
  };
  if (cuda::a8_gemv_supported(w_bits, M, K, acts, dw.get())) run(true);
  if (M * N * K <= (int64_t(1) << 26)) run(false);

  // The engine's prefill route: int32 sums (here from the host) -> epilogue, per segment (col0 > 0).
  start = 0;
  DeviceBuffer<float> dy(residual ? res : std::vector<float>(static_cast<size_t>(M * N)));
  DeviceBuffer<uint16_t> dy16(static_cast<size_t>(M * N));
  void* y = f16 ? static_cast<void*>(dy16.get()) : dy.get();
  for (int s = 0; s < n_seg; ++s) {
    const int64_t n = ends[static_cast<size_t>(s)] - start;
    std::vector<int32_t> acc(static_cast<size_t>(M * n));
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < n; ++j) {
        int32_t a = 0;
        for (int64_t k = 0; k < K; ++k)
          a += qx[static_cast<size_t>(s)][static_cast<size_t>(m * K + k)] *
               w16[static_cast<size_t>((start + j) * K + k)];
        acc[static_cast<size_t>(m * n + j)] = a;
      }
    DeviceBuffer<int32_t> dacc(acc);
    ASSERT_EQ(cuda::a8_epilogue(dacc.get(), n, acts.sx[s], dsw.get(), residual ? dy.get() : nullptr, y, f16,
                                N, M, start, n, nullptr),
              cudaSuccess);
    start = ends[static_cast<size_t>(s)];
  }
  if (f16) {
    const auto got = dy16.download();
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(got[i], f32_to_f16(want[i])) << what << " epilogue " << i;
  } else {
    const auto got = dy.download();
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_TRUE(same_bits(got[i], want[i])) << what << " epilogue " << i;
  }
}

TEST(WqLinear, Int8ActivationLinearMatchesIntLinearBitExact) {
  FQ_REQUIRE_CUDA();
  for (int w_bits : {8, 4}) {
    for (int64_t M : {1, 2, 3, 5, 8, 13, 16}) {
      check_a8(w_bits, M, 300, 576, {300}, false, false);
      check_a8(w_bits, M, 48, 1376, {16, 32, 48}, false, true);  // q|k|v-like segments, fp16 out
      check_a8(w_bits, M, 172, 4096, {172}, true, false);        // residual (aliasing y)
      check_a8(w_bits, M, 86, 64, {44, 86}, false, false);       // gate|up-like
    }
    // Shapes the GEMV does not take (K % 16 or 32 != 0): the plain kernel; and prefill-sized M.
    check_a8(w_bits, 1, 43, 172, {43}, true, false);
    check_a8(w_bits, 20, 64, 344, {32, 64}, false, true);
    check_a8(w_bits, 37, 130, 576, {64, 96, 130}, true, false);
  }
  cuda::Int8Acts bad;
  EXPECT_FALSE(cuda::a8_gemv_supported(8, 1, 172, bad, nullptr));
  EXPECT_EQ(cuda::a8_gemv(bad, 8, nullptr, nullptr, nullptr, nullptr, false, 1, 8, 64, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::a8_gemm_simple(bad, 3, nullptr, nullptr, nullptr, nullptr, false, 1, 8, 64, nullptr),
            cudaErrorInvalidValue);
}

// The gate|up epilogue fused with SwiGLU equals the two kernels it replaces (a8_epilogue to fp16, then
// cuda::swiglu), BIT FOR BIT, on the vector path (n % 4 == 0) and the scalar one, to fp16 and fp32.
TEST(WqLinear, SwigluEpilogueEqualsEpilogueThenSwiglu) {
  FQ_REQUIRE_CUDA();
  for (int64_t n : {100, 37, 4096})
    for (bool f16 : {true, false}) {
      const int64_t M = 5;
      std::mt19937 rng(static_cast<uint32_t>(n));
      std::vector<int32_t> acc(static_cast<size_t>(2 * M * n));
      for (auto& a : acc) a = static_cast<int32_t>(rng() % 200001) - 100000;
      const auto sx = test::random_scales(static_cast<size_t>(2 * M), 5),
                 sw = test::random_scales(static_cast<size_t>(2 * n), 6);
      DeviceBuffer<int32_t> dacc(acc);
      DeviceBuffer<float> dsx(sx), dsw(sw);
      DeviceBuffer<uint16_t> gu(static_cast<size_t>(M * 2 * n));
      const size_t ob = f16 ? 2 : 4;
      DeviceBuffer<uint8_t> want(static_cast<size_t>(M * n) * ob), got(want.bytes());
      for (int s = 0; s < 2; ++s)
        ASSERT_EQ(cuda::a8_epilogue(dacc.get() + s * M * n, n, dsx.get() + s * M, dsw.get(), nullptr,
                                    gu.get(), true, 2 * n, M, s * n, n, nullptr),
                  cudaSuccess);
      ASSERT_EQ(cuda::swiglu(gu.get(), gu.get() + n, DType::F16, 2 * n, 2 * n, M, n, want.get(),
                             f16 ? DType::F16 : DType::F32, nullptr),
                cudaSuccess);
      ASSERT_EQ(cuda::a8_swiglu_epilogue(dacc.get(), dacc.get() + M * n, n, dsx.get(), dsx.get() + M,
                                         dsw.get(), dsw.get() + n, got.get(), f16, n, M, n, nullptr),
                cudaSuccess);
      EXPECT_EQ(got.download(), want.download()) << "n " << n << (f16 ? " fp16" : " fp32");
    }
}

TEST(WqLinear, UnpackInt4ToInt8MatchesReference) {
  FQ_REQUIRE_CUDA();
  for (auto [N, K] :
       std::vector<std::pair<int64_t, int64_t>>{{43, 172}, {7, 344}, {130, 64}, {64, 4096}, {1, 6}}) {
    const auto qw = test::random_packed(static_cast<size_t>(N * K / 2), static_cast<uint32_t>(N + K));
    std::vector<int8_t> want(static_cast<size_t>(N * K));
    ref::unpack_int4(qw.data(), N, K, want.data());
    DeviceBuffer<uint8_t> dw(qw);
    DeviceBuffer<int8_t> dout(want.size());
    ASSERT_EQ(cuda::unpack_int4_int8(dw.get(), N, K, dout.get(), nullptr), cudaSuccess);
    EXPECT_EQ(dout.download(), want) << N << "x" << K;
  }
}

TEST(WqLinear, DequantW4F16MatchesReference) {
  FQ_REQUIRE_CUDA();
  for (auto [N, K] : std::vector<std::pair<int64_t, int64_t>>{{43, 172}, {300, 344}, {64, 4096}}) {
    const auto qw = test::random_packed(static_cast<size_t>(N * K / 2), static_cast<uint32_t>(3 * N + K));
    const auto sw = test::random_scales(static_cast<size_t>(N), static_cast<uint32_t>(N));
    std::vector<int8_t> c(static_cast<size_t>(N * K));
    ref::unpack_int4(qw.data(), N, K, c.data());
    std::vector<uint16_t> want(c.size());
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const size_t i = static_cast<size_t>(n * K + k);
        want[i] = f32_to_f16(static_cast<float>(c[i]) * sw[static_cast<size_t>(n)]);
      }
    DeviceBuffer<uint8_t> dw(qw);
    DeviceBuffer<float> ds(sw);
    DeviceBuffer<uint16_t> dout(want.size());
    ASSERT_EQ(cuda::dequant_w4_f16(dw.get(), ds.get(), N, K, dout.get(), nullptr), cudaSuccess);
    EXPECT_EQ(dout.download(), want) << N << "x" << K;
  }
}

TEST(WqLinear, W4A16GemvMatchesDoubleSum) {
  FQ_REQUIRE_CUDA();
  for (auto [N, K] :
       std::vector<std::pair<int64_t, int64_t>>{{43, 64}, {300, 576}, {172, 1376}, {1000, 4096}}) {
    const uint32_t seed = static_cast<uint32_t>(N * 131 + K);
    const auto qw = test::random_packed(static_cast<size_t>(N * K / 2), seed);
    const auto sw = test::random_scales(static_cast<size_t>(N), seed + 1);
    std::vector<int8_t> c(static_cast<size_t>(N * K));
    ref::unpack_int4(qw.data(), N, K, c.data());
    DeviceBuffer<uint8_t> dw(qw);
    DeviceBuffer<float> ds(sw);
    for (int64_t M : {1, 2, 3, 4, 6, 8, 11, 16}) {
      const auto x16 =
          to_f16(test::random_activations(static_cast<size_t>(M * K), seed + 2 + static_cast<uint32_t>(M)));
      const auto y0 = test::random_activations(static_cast<size_t>(M * N), seed + 40);
      DeviceBuffer<uint16_t> dx(x16);
      for (int mode = 0; mode < 3; ++mode) {  // fp32 out, fp32 accumulate, fp16 out
        DeviceBuffer<float> dy(y0);
        DeviceBuffer<uint16_t> dy16(static_cast<size_t>(M * N));
        if (mode == 0) dy.poison();
        ASSERT_EQ(cuda::w4a16_gemv(dx.get(), M, K, dw.get(), ds.get(), N,
                                   mode == 2 ? static_cast<void*>(dy16.get()) : dy.get(), mode != 2,
                                   mode == 1, nullptr),
                  cudaSuccess);
        const auto y = dy.download();
        const auto y16 = dy16.download();
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            double want = 0, mag = 0;
            for (int64_t k = 0; k < K; ++k) {
              const double p = static_cast<double>(f16_to_f32(x16[static_cast<size_t>(m * K + k)])) *
                               c[static_cast<size_t>(n * K + k)] * sw[static_cast<size_t>(n)];
              want += p;
              mag += std::fabs(p);
            }
            const size_t i = static_cast<size_t>(m * N + n);
            if (mode == 1) want += y0[i], mag += std::fabs(y0[i]);
            const double got = mode == 2 ? f16_to_f32(y16[i]) : y[i];
            const double tol = 1e-5 * mag + (mode == 2 ? std::fabs(want) / 1024.0 : 0.0) + 1e-30;
            ASSERT_NEAR(got, want, tol)
                << "M " << M << " N " << N << " K " << K << " mode " << mode << " n " << n;
          }
      }
    }
  }
  EXPECT_FALSE(cuda::w4a16_gemv_supported(1, 172, nullptr, nullptr));
  EXPECT_EQ(cuda::w4a16_gemv(nullptr, 1, 172, nullptr, nullptr, 8, nullptr, true, false, nullptr),
            cudaErrorInvalidValue);
}
#else
TEST(WqLinear, NeedsCuda) {
  GTEST_SKIP() << "built without CUDA";
}
#endif

}  // namespace
}  // namespace fq
