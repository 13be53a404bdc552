// The FP8 prefill route of the W4A4 GEMM (src/kernels/cuda/qgemm_fp8.h) against its CPU references:
// - int4 -> e4m3 bytes decode back to the same integers (host, no GPU needed);
// - the e4m3 activation quantizer equals ref::quantize_sym_int4 BIT FOR BIT (codes and scales, 1-3 clip pairs,
//   padded row strides, non-power-of-two widths);
// - the weight unpacking equals the packed nibbles (vector and byte paths);
// - cuBLASLt's FP8 GEMM with per-row scale vectors equals ref::qgemm_w4a4 up to the epilogue's rounding order
//   (fp32 and fp16 outputs, the residual add), and its integer sums are exact (unit scales, the largest |acc|).
// Outputs are poisoned first (0xFF), so an element a kernel does not write fails. GPU parts skip without one.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "ops_util.h"
#include "ref/qgemm.h"
#include "ref/quant.h"
#include "ref/quant_ops.h"

#ifdef FLATQUANT_WITH_CUDA
#include <cublasLt.h>

#include "kernels/cuda/qgemm_fp8.h"
#endif

namespace fq {
namespace {

#ifdef FLATQUANT_WITH_CUDA
using test::DeviceBuffer;

// An e4m3 byte's value (sign, 4-bit exponent with bias 7, 3-bit mantissa; exponent 0: subnormal).
double e4m3_value(uint8_t b) {
  const int s = b >> 7, e = (b >> 3) & 0xF, m = b & 7;
  const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -mag : mag;
}

TEST(QgemmFp8, E4m3OfSmallIntegers) {
  for (int v = -8; v <= 8; ++v) EXPECT_EQ(e4m3_value(cuda::int4_to_e4m3(v)), static_cast<double>(v)) << v;
  EXPECT_EQ(cuda::int4_to_e4m3(0), 0);  // +0, not -0
}

int compute_major() {
  int dev = 0;
  cudaDeviceProp p{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) return 0;
  return p.major;
}

TEST(QgemmFp8, QuantizeEqualsReferenceBitForBit) {
  FQ_REQUIRE_CUDA();
  for (int64_t cols : {24, 172, 4096, 14336, 18944})
    for (int64_t rows : {1, 5, 33}) {
      const int64_t stride = cols + 4, sstride = rows + 3;
      auto x = test::random_activations(static_cast<size_t>(rows * stride), 71 + static_cast<uint32_t>(cols));
      if (rows > 1)
        for (int64_t c = 0; c < cols; ++c) x[static_cast<size_t>(stride + c)] = 0.0f;  // an all-zero row
      cuda::SymClips clips;
      clips.n = 3;
      clips.max[1] = 0.9f, clips.min[1] = 0.8f, clips.max[2] = 0.7f, clips.min[2] = 1.0f;
      DeviceBuffer<float> dx(x), ds(static_cast<size_t>(3 * sstride));
      DeviceBuffer<uint8_t> dq(static_cast<size_t>(3 * rows * cols));
      ASSERT_EQ(cuda::quantize_sym_int4_fp8_multi(dx.get(), rows, cols, stride, clips, dq.get(), ds.get(), sstride,
                                                  nullptr),
                cudaSuccess);
      const auto q = dq.download();
      const auto s = ds.download();
      for (int c = 0; c < clips.n; ++c) {
        std::vector<uint8_t> rp(static_cast<size_t>(rows * cols / 2));
        std::vector<float> rs(static_cast<size_t>(rows));
        ref::quantize_sym_int4(x.data(), rows, cols, stride, clips.max[c], clips.min[c], rp.data(), rs.data());
        std::vector<int8_t> codes(static_cast<size_t>(rows * cols));
        ref::unpack_int4(rp.data(), rows, cols, codes.data());
        for (int64_t r = 0; r < rows; ++r)
          ASSERT_EQ(s[static_cast<size_t>(c * sstride + r)], rs[static_cast<size_t>(r)]) << cols << " row " << r;
        for (size_t i = 0; i < codes.size(); ++i)
          ASSERT_EQ(e4m3_value(q[static_cast<size_t>(c * rows * cols) + i]), codes[i])
              << "cols " << cols << " copy " << c << " element " << i;
      }
    }
  // Bad arguments: nothing launched.
  DeviceBuffer<float> dx(64), ds(4);
  DeviceBuffer<uint8_t> dq(64);
  cuda::SymClips one;
  EXPECT_EQ(cuda::quantize_sym_int4_fp8_multi(dx.get(), 1, 62, 64, one, dq.get(), ds.get(), 1, nullptr),
            cudaErrorInvalidValue);  // cols % 4
  EXPECT_EQ(cuda::quantize_sym_int4_fp8_multi(dx.get(), 2, 32, 32, one, dq.get(), ds.get(), 1, nullptr),
            cudaErrorInvalidValue);  // scale stride < rows
  EXPECT_EQ(cuda::quantize_sym_int4_fp8_multi(dx.get() + 1, 1, 32, 32, one, dq.get(), ds.get(), 1, nullptr),
            cudaErrorInvalidValue);  // misaligned rows
}

TEST(QgemmFp8, UnpackEqualsNibbles) {
  FQ_REQUIRE_CUDA();
  for (const auto& [N, K] : std::vector<std::pair<int64_t, int64_t>>{{37, 172}, {64, 4096}, {3, 2}}) {
    const auto qw = test::random_packed(static_cast<size_t>(N * K / 2), 81 + static_cast<uint32_t>(K));
    DeviceBuffer<uint8_t> dw(qw), dout(static_cast<size_t>(N * K));
    ASSERT_EQ(cuda::unpack_int4_fp8(dw.get(), N, K, dout.get(), nullptr), cudaSuccess);
    const auto out = dout.download();
    std::vector<int8_t> codes(static_cast<size_t>(N * K));
    ref::unpack_int4(qw.data(), N, K, codes.data());
    for (size_t i = 0; i < codes.size(); ++i) ASSERT_EQ(e4m3_value(out[i]), codes[i]) << N << "x" << K << " " << i;
  }
}

// cuBLASLt on an RAII handle with a 32 MB workspace.
struct Lt {
  cublasLtHandle_t h = nullptr;
  DeviceBuffer<uint8_t> ws{32u << 20};
  Lt() { EXPECT_EQ(cublasLtCreate(&h), CUBLAS_STATUS_SUCCESS); }
  ~Lt() { cublasLtDestroy(h); }
  Lt(const Lt&) = delete;
  Lt& operator=(const Lt&) = delete;
};

TEST(QgemmFp8, GemmMatchesReference) {
  FQ_REQUIRE_CUDA();
  if (compute_major() < 9) GTEST_SKIP() << "FP8 tensor cores with per-row scales: sm_90";
  Lt lt;
  cuda::QgemmFp8 g(lt.h, lt.ws.get(), lt.ws.bytes());
  struct Case {
    int64_t M, N, K, ldy;
    bool f32, residual, extreme;  // extreme: every code -8 and unit scales, |acc| = 64 K
  };
  const std::vector<Case> cases = {{17, 64, 64, 64, true, true, false},        {130, 96, 4096, 112, false, false, false},
                                   {300, 48, 14336, 48, true, true, false},    {64, 1024, 4096, 1024, false, false, false},
                                   {33, 32, 14336, 32, true, false, true},     {40, 16, 18944, 16, false, false, false}};
  for (const Case& k : cases) {
    const int64_t M = k.M, N = k.N, K = k.K;
    auto qx = test::random_packed(static_cast<size_t>(M * K / 2), 91 + static_cast<uint32_t>(K));
    auto qw = test::random_packed(static_cast<size_t>(N * K / 2), 92 + static_cast<uint32_t>(N));
    auto sx = test::random_scales(static_cast<size_t>(M), 93), sw = test::random_scales(static_cast<size_t>(N), 94);
    if (k.extreme) {
      std::fill(qx.begin(), qx.end(), 0x88);  // both nibbles -8
      std::fill(qw.begin(), qw.end(), 0x88);
      std::fill(sx.begin(), sx.end(), 1.0f);
      std::fill(sw.begin(), sw.end(), 1.0f);
    }
    std::vector<float> res(static_cast<size_t>(M * k.ldy));
    for (size_t i = 0; i < res.size(); ++i) res[i] = std::sin(0.37f * static_cast<float>(i)) * 3.0f;
    std::vector<float> ref(static_cast<size_t>(M * N)), res_n(ref.size());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) res_n[static_cast<size_t>(m * N + n)] = res[static_cast<size_t>(m * k.ldy + n)];
    ref::qgemm_w4a4(qx.data(), sx.data(), qw.data(), sw.data(), k.residual ? res_n.data() : nullptr, M, N, K,
                    ref.data());
    std::vector<int32_t> acc(ref.size());
    ref::qgemm_w4a4_acc(qx.data(), qw.data(), M, N, K, acc.data());

    DeviceBuffer<uint8_t> dqx(qx), dqw(qw), dx8(static_cast<size_t>(M * K)), dw8(static_cast<size_t>(N * K));
    DeviceBuffer<float> dsx(sx), dsw(sw);
    ASSERT_EQ(cuda::unpack_int4_fp8(dqx.get(), M, K, dx8.get(), nullptr), cudaSuccess);
    ASSERT_EQ(cuda::unpack_int4_fp8(dqw.get(), N, K, dw8.get(), nullptr), cudaSuccess);
    ASSERT_TRUE(g.supported(M, N, K, k.ldy, k.f32)) << "cuBLASLt FP8 " << M << "x" << N << "x" << K;
    std::vector<float> got(ref.size());
    if (k.f32) {
      DeviceBuffer<float> dy(res);
      ASSERT_EQ(g.run(dx8.get(), dsx.get(), dw8.get(), dsw.get(), dy.get(), k.ldy, true, k.residual, M, N, K, nullptr),
                CUBLAS_STATUS_SUCCESS);
      const auto y = dy.download();
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) got[static_cast<size_t>(m * N + n)] = y[static_cast<size_t>(m * k.ldy + n)];
      for (int64_t m = 0; m < M; ++m)  // columns past N untouched
        for (int64_t n = N; n < k.ldy; ++n)
          ASSERT_EQ(y[static_cast<size_t>(m * k.ldy + n)], res[static_cast<size_t>(m * k.ldy + n)]);
    } else {
      DeviceBuffer<uint16_t> dy(static_cast<size_t>(M * k.ldy));
      ASSERT_EQ(g.run(dx8.get(), dsx.get(), dw8.get(), dsw.get(), dy.get(), k.ldy, false, false, M, N, K, nullptr),
                CUBLAS_STATUS_SUCCESS);
      const auto y = dy.download();
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n)
          got[static_cast<size_t>(m * N + n)] = f16_to_f32(y[static_cast<size_t>(m * k.ldy + n)]);
    }
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    double worst = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      const double prod = std::fabs(static_cast<double>(acc[i]) * sx[i / static_cast<size_t>(N)] *
                                    sw[i % static_cast<size_t>(N)]),
                   r = k.residual ? std::fabs(res_n[i]) : 0.0;
      if (k.extreme) {
        ASSERT_EQ(got[i], static_cast<float>(64 * K)) << "integer sums must be exact";
        continue;
      }
      // fp32: a few ulps of the epilogue's terms; fp16: one rounding of the output on top.
      const double tol = (k.f32 ? 4.0 * std::ldexp(1.0, -24) : std::ldexp(1.0, -11)) * (prod + r) + 1e-30;
      const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
      ASSERT_LE(d, tol) << M << "x" << N << "x" << K << " element " << i << " got " << got[i] << " ref " << ref[i];
      worst = std::max(worst, d / tol);
    }
    std::printf("  %lldx%lldx%lld %s: worst error %.2f of the bound\n", static_cast<long long>(M),
                static_cast<long long>(N), static_cast<long long>(K), k.f32 ? "fp32" : "fp16", worst);
  }
  // Shapes cuBLASLt's FP8 GEMM cannot take are refused, nothing launched.
  EXPECT_FALSE(g.supported(16, 64, 172, 64, true));  // K % 16
  EXPECT_FALSE(g.supported(16, 64, 64, 60, true));   // ldy % 16
}
#else
TEST(QgemmFp8, NeedsCuda) { GTEST_SKIP() << "built without CUDA"; }
#endif

}  // namespace
}  // namespace fq
