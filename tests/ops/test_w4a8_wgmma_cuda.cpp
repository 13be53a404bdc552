// The sm_90a W4A8 GEMM (src/kernels/cuda/prefill_int8.h: w4a8_gemm_wgmma) against the CPU reference
// ref::qgemm_w4a4 (same int32 sums, same epilogue order): outputs BIT FOR BIT, fp16 and fp32, with and
// without the fp32 residual (in place, as the engine adds into x), one to three column segments that read
// different code copies, token counts that leave partial tiles (1, 77, 300) or span two rasterization groups
// (2300; with 288 tiles the persistent CTAs take several each), several K (128, 384, 4096), cluster sizes 1,
// 2 and 4; the SwiGLU mode against the reference's gate and up rounded to fp16 and cuda::swiglu. The codes go
// in through the permuted order the quantizers write (checked here too: perm = the natural codes moved to
// wgmma_perm_col). Outputs are poisoned first. Skips without a GPU or on a GPU other than sm_90.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "ops_util.h"
#include "ref/qgemm.h"
#include "ref/quant.h"

#ifdef FLATQUANT_WITH_CUDA
#include "kernels/cuda/layer_ops.h"
#include "kernels/cuda/prefill_int8.h"
#include "kernels/cuda/w4a4_ops.h"
#endif

namespace fq {
namespace {

#ifdef FLATQUANT_WITH_CUDA
using test::DeviceBuffer;

TEST(WgmmaPerm, IsAPermutationOfEachGroupOf128KeepingPairsAdjacent) {
  std::vector<int> seen(256, 0);
  for (int64_t k = 0; k < 256; ++k) {
    const int64_t p = cuda::wgmma_perm_col(k);
    ASSERT_GE(p, k / 128 * 128);
    ASSERT_LT(p, k / 128 * 128 + 128);
    ++seen[static_cast<size_t>(p)];
    if (k % 2 == 1) {
      EXPECT_EQ(p, cuda::wgmma_perm_col(k - 1) + 1);
    }
  }
  for (int c : seen) EXPECT_EQ(c, 1);
  // Thread t's step-s fragment: natural k 32 t + 8 s + 4 h + j at mma position 16 h + 4 t + j of step s.
  EXPECT_EQ(cuda::wgmma_perm_col(32 * 1 + 8 * 2 + 4 * 1 + 3), 32 * 2 + 16 * 1 + 4 * 1 + 3);
}

#define FQ_REQUIRE_WGMMA()                           \
  do {                                               \
    FQ_REQUIRE_CUDA();                               \
    int fq_dev_ = 0;                                 \
    ASSERT_EQ(cudaGetDevice(&fq_dev_), cudaSuccess); \
    if (!cuda::w4a8_wgmma_available(fq_dev_)) {      \
      GTEST_SKIP() << "needs an sm_90 GPU (wgmma)";  \
    }                                                \
  } while (0)

// Random int4 codes of `copies` activation copies [rows, K]: packed (the reference's input) and as int8 bytes
// in the permuted order (the kernel's).
struct Codes {
  std::vector<uint8_t> packed;  // copy c at c * rows * K / 2
  std::vector<int8_t> perm;     // copy c at c * rows * K
};
Codes random_codes(int copies, int64_t rows, int64_t K, uint32_t seed) {
  Codes c;
  c.packed = test::random_packed(static_cast<size_t>(copies * rows * K / 2), seed);
  std::vector<int8_t> nat(static_cast<size_t>(copies * rows * K));
  ref::unpack_int4(c.packed.data(), copies * rows, K, nat.data());
  c.perm.resize(nat.size());
  for (int64_t r = 0; r < copies * rows; ++r)
    for (int64_t k = 0; k < K; ++k)
      c.perm[static_cast<size_t>(r * K + cuda::wgmma_perm_col(k))] = nat[static_cast<size_t>(r * K + k)];
  return c;
}

TEST(W4A8Wgmma, EqualsReferenceBitForBit) {
  FQ_REQUIRE_WGMMA();
  struct Case {
    int64_t rows, K;
    std::vector<int64_t> ends;
    bool f16, residual;
  };
  const std::vector<Case> cases = {
      {1, 128, {128}, true, false},
      {77, 384, {256}, false, true},
      {300, 256, {128, 256, 384}, true, false},
      {300, 4096, {512, 640, 768}, true, false},
      {256, 4096, {384}, false, true},
      {513, 384, {256}, false, false},
      {300, 256, {512, 1024, 1536}, true, false},
      {130, 512, {1024}, false, true},
      {2300, 128, {256, 512}, true, false},    // 9 token tiles: 2 groups
      {2300, 128, {2048, 4096}, false, true},  // 288 tiles: more than the SMs, CTAs take several
  };
  for (const Case& c : cases) {
    const int64_t M = c.rows, K = c.K, N = c.ends.back();
    const int nseg = static_cast<int>(c.ends.size());
    SCOPED_TRACE(testing::Message() << "M " << M << " N " << N << " K " << K << " segments " << nseg
                                    << (c.f16 ? " fp16" : " fp32") << (c.residual ? " +residual" : ""));
    const Codes x = random_codes(nseg, M, K, 11 + static_cast<uint32_t>(M + K));
    const auto qw = test::random_packed(static_cast<size_t>(N * K / 2), 12 + static_cast<uint32_t>(N));
    const auto sw = test::random_scales(static_cast<size_t>(N), 13);
    const int64_t sstride = M + 3;
    const auto sx = test::random_scales(static_cast<size_t>(nseg * sstride), 14);
    const auto res = test::random_activations(static_cast<size_t>(M * N), 15);
    // Reference per segment.
    std::vector<float> want(static_cast<size_t>(M * N));
    int64_t start = 0;
    for (int s = 0; s < nseg; ++s) {
      const int64_t n = c.ends[static_cast<size_t>(s)] - start;
      std::vector<uint8_t> wseg(qw.begin() + start * K / 2, qw.begin() + (start + n) * K / 2);
      std::vector<float> rseg(static_cast<size_t>(M * n)), yseg(static_cast<size_t>(M * n));
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < n; ++j)
          rseg[static_cast<size_t>(m * n + j)] = res[static_cast<size_t>(m * N + start + j)];
      ref::qgemm_w4a4(x.packed.data() + s * M * K / 2, sx.data() + s * sstride, wseg.data(),
                      sw.data() + start, c.residual ? rseg.data() : nullptr, M, n, K, yseg.data());
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < n; ++j)
          want[static_cast<size_t>(m * N + start + j)] = yseg[static_cast<size_t>(m * n + j)];
      start += n;
    }
    for (const int cluster : {1, 2, 4}) {  // CTAs sharing each tile of codes (where the shape allows)
      SCOPED_TRACE(testing::Message() << "cluster " << cluster);
      DeviceBuffer<int8_t> dx(x.perm);
      DeviceBuffer<uint8_t> dw(qw);
      DeviceBuffer<float> dsw(sw), dsx(sx), dy32(res);
      DeviceBuffer<uint16_t> dy16(static_cast<size_t>(M * N));
      cuda::W4A8Gemm g;
      g.w = dw.get();
      g.sw = dsw.get();
      g.x = dx.get();
      g.sx = dsx.get();
      g.sx_stride = sstride;
      g.nseg = nseg;
      for (int s = 0; s < nseg; ++s) g.end[s] = c.ends[static_cast<size_t>(s)];
      g.rows = M;
      g.N = N;
      g.K = K;
      g.y = c.f16 ? static_cast<void*>(dy16.get()) : static_cast<void*>(dy32.get());
      g.y_f16 = c.f16;
      g.ldy = N;
      g.residual = c.residual ? dy32.get() : nullptr;
      g.cluster = cluster;
      if (c.residual)
        dy32.upload(res);  // the residual is added in place
      else
        dy32.poison();
      ASSERT_TRUE(cuda::w4a8_wgmma_fits(g));
      // 12 tiles with ends multiples of 512 take any size; the 128-wide segments only 1.
      const int want_c = N == 1536 ? cluster : nseg == 3 && N == 768 ? 1 : cuda::w4a8_wgmma_cluster(g);
      EXPECT_EQ(cuda::w4a8_wgmma_cluster(g), want_c);
      ASSERT_EQ(cuda::w4a8_gemm_wgmma(g, nullptr), cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      if (c.f16) {
        const auto y = dy16.download();
        for (size_t i = 0; i < y.size(); ++i)
          ASSERT_EQ(y[i], f32_to_f16(want[i]))
              << "token " << i / static_cast<size_t>(N) << " channel " << i % static_cast<size_t>(N);
      } else {
        const auto y = dy32.download();
        for (size_t i = 0; i < y.size(); ++i)
          ASSERT_EQ(std::memcmp(&y[i], &want[i], sizeof(float)), 0)
              << "token " << i / static_cast<size_t>(N) << " channel " << i % static_cast<size_t>(N) << ": "
              << y[i] << " vs " << want[i];
      }
    }
  }
}

TEST(W4A8Wgmma, SwiGLUEqualsGateUpThenSwiglu) {
  FQ_REQUIRE_WGMMA();
  for (const bool f16 : {true, false})
    // 1100: 9 token tiles of 128, two rasterization groups; 2100 x 8 channel tiles: more tiles than SMs.
    for (const int64_t M : {1, 1100, 2100}) {
      const int64_t F = M == 1 ? 384 : M == 1100 ? 512 : 1024, K = 256, N = 2 * F;  // 3, 4 or 8 channel tiles
      const int cluster = f16 ? 4 : 2;
      SCOPED_TRACE(testing::Message()
                   << "M " << M << " F " << F << (f16 ? " fp16" : " fp32") << " cluster " << cluster);
      const Codes x = random_codes(2, M, K, 21 + static_cast<uint32_t>(M));
      const auto qw = test::random_packed(static_cast<size_t>(N * K / 2), 22);
      const auto sw = test::random_scales(static_cast<size_t>(N), 23);
      const auto sx = test::random_scales(static_cast<size_t>(2 * M), 24);
      // Reference gate and up, rounded to fp16 as the epilogue does, then the device's swiglu op.
      std::vector<uint16_t> gu(static_cast<size_t>(M * N));
      for (int part = 0; part < 2; ++part) {
        std::vector<float> y(static_cast<size_t>(M * F));
        ref::qgemm_w4a4(x.packed.data() + part * M * K / 2, sx.data() + part * M,
                        qw.data() + part * F * K / 2, sw.data() + part * F, nullptr, M, F, K, y.data());
        for (int64_t m = 0; m < M; ++m)
          for (int64_t j = 0; j < F; ++j)
            gu[static_cast<size_t>(m * N + part * F + j)] = f32_to_f16(y[static_cast<size_t>(m * F + j)]);
      }
      DeviceBuffer<uint16_t> dgu(gu);
      DeviceBuffer<float> dwant32(static_cast<size_t>(M * F)), dy32(static_cast<size_t>(M * F));
      DeviceBuffer<uint16_t> dwant16(static_cast<size_t>(M * F)), dy16(static_cast<size_t>(M * F));
      ASSERT_EQ(cuda::swiglu(dgu.get(), dgu.get() + F, DType::F16, N, N, M, F,
                             f16 ? static_cast<void*>(dwant16.get()) : static_cast<void*>(dwant32.get()),
                             f16 ? DType::F16 : DType::F32, nullptr),
                cudaSuccess);
      DeviceBuffer<int8_t> dx(x.perm);
      DeviceBuffer<uint8_t> dw(qw);
      DeviceBuffer<float> dsw(sw), dsx(sx);
      cuda::W4A8Gemm g;
      g.w = dw.get();
      g.sw = dsw.get();
      g.x = dx.get();
      g.sx = dsx.get();
      g.sx_stride = M;
      g.nseg = 2;
      g.end[0] = F;
      g.end[1] = N;
      g.rows = M;
      g.N = N;
      g.K = K;
      g.y = f16 ? static_cast<void*>(dy16.get()) : static_cast<void*>(dy32.get());
      g.y_f16 = f16;
      g.ldy = F;
      g.swiglu = true;
      g.cluster = cluster;
      EXPECT_EQ(cuda::w4a8_wgmma_cluster(g), F / 128 % cluster == 0 ? cluster : 1);
      ASSERT_EQ(cuda::w4a8_gemm_wgmma(g, nullptr), cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      if (f16) {
        const auto y = dy16.download(), w = dwant16.download();
        for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], w[i]) << "element " << i;
      } else {
        const auto y = dy32.download(), w = dwant32.download();
        for (size_t i = 0; i < y.size(); ++i)
          ASSERT_EQ(std::memcmp(&y[i], &w[i], sizeof(float)), 0)
              << "element " << i << ": " << y[i] << " vs " << w[i];
      }
    }
}

TEST(W4A8Wgmma, RejectsBadArguments) {
  FQ_REQUIRE_CUDA();
  DeviceBuffer<int8_t> dx(4096);
  DeviceBuffer<uint8_t> dw(4096);
  DeviceBuffer<float> ds(64), dy(8192);
  cuda::W4A8Gemm g;
  g.w = dw.get();
  g.sw = ds.get();
  g.x = dx.get();
  g.sx = ds.get();
  g.end[0] = 128;
  g.rows = 4;
  g.N = 128;
  g.K = 128;
  g.y = dy.get();
  g.y_f16 = false;
  g.ldy = 128;
  EXPECT_TRUE(cuda::w4a8_wgmma_fits(g));
  cuda::W4A8Gemm b = g;
  b.K = 192;  // K % 128
  EXPECT_FALSE(cuda::w4a8_wgmma_fits(b));
  EXPECT_EQ(cuda::w4a8_gemm_wgmma(b, nullptr), cudaErrorInvalidValue);
  b = g;
  b.N = 96;
  b.end[0] = 96;  // N % 128
  EXPECT_FALSE(cuda::w4a8_wgmma_fits(b));
  b = g;
  b.x = dx.get() + 1;  // codes not 16-byte aligned
  EXPECT_FALSE(cuda::w4a8_wgmma_fits(b));
  b = g;
  b.y_f16 = true;
  b.residual = dy.get();  // fp32 residual with fp16 output
  EXPECT_FALSE(cuda::w4a8_wgmma_fits(b));
  b = g;
  b.swiglu = true;  // SwiGLU needs the two equal segments
  EXPECT_FALSE(cuda::w4a8_wgmma_fits(b));
}

// perm = true writes the same codes as perm = false, moved to wgmma_perm_col: the plain quantizer and the
// fused transform + quantizer, shapes of the engine (K a multiple of 128).
TEST(W4A8Wgmma, QuantizersWriteThePermutedOrder) {
  FQ_REQUIRE_CUDA();
  const int64_t rows = 5;
  cuda::SymClips clips;
  clips.n = 2;
  clips.max[1] = 0.9f, clips.min[1] = 0.8f;
  auto check = [&](const std::vector<int8_t>& nat, const std::vector<int8_t>& per, int64_t K) {
    ASSERT_EQ(nat.size(), per.size());
    for (size_t r = 0; r < nat.size() / static_cast<size_t>(K); ++r)
      for (int64_t k = 0; k < K; ++k)
        ASSERT_EQ(per[r * static_cast<size_t>(K) + static_cast<size_t>(cuda::wgmma_perm_col(k))],
                  nat[r * static_cast<size_t>(K) + static_cast<size_t>(k)])
            << "row " << r << " column " << k;
  };
  for (int64_t K : {128, 4096, 14336}) {
    const auto x = test::random_activations(static_cast<size_t>(rows * K), 31 + static_cast<uint32_t>(K));
    DeviceBuffer<float> dx(x), ds(static_cast<size_t>(2 * rows));
    DeviceBuffer<int8_t> dn(static_cast<size_t>(2 * rows * K)), dp(static_cast<size_t>(2 * rows * K));
    ASSERT_EQ(
        cuda::quantize_sym_int4_i8_multi(dx.get(), rows, K, K, clips, dn.get(), ds.get(), rows, nullptr),
        cudaSuccess);
    ASSERT_EQ(cuda::quantize_sym_int4_i8_multi(dx.get(), rows, K, K, clips, dp.get(), ds.get(), rows, nullptr,
                                               true),
              cudaSuccess);
    check(dn.download(), dp.download(), K);
  }
  int device = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  for (const auto& lr :
       std::vector<std::pair<int64_t, int64_t>>{{64, 64}, {112, 128}, {148, 128}, {28, 128}}) {
    const int64_t L = lr.first, R = lr.second, K = L * R;
    if (!cuda::kron_quant_i8_fits(L, R, true, device)) continue;
    std::vector<uint16_t> x16(static_cast<size_t>(rows * K));
    const auto xf = test::random_activations(x16.size(), 41 + static_cast<uint32_t>(K));
    for (size_t i = 0; i < x16.size(); ++i) x16[i] = f32_to_f16(xf[i]);
    const auto A = test::random_matrix(L, 42), B = test::random_matrix(R, 43);
    DeviceBuffer<float> dA(A), dB(B), ds(static_cast<size_t>(2 * rows));
    DeviceBuffer<uint16_t> dx16(x16), dapk(static_cast<size_t>(cuda::fused_operand_elems(L))),
        dbpk(static_cast<size_t>(cuda::fused_operand_elems(R)));
    ASSERT_EQ(cuda::fused_pack_operand(dA.get(), L, true, dapk.get(), nullptr), cudaSuccess);
    ASSERT_EQ(cuda::fused_pack_operand(dB.get(), R, false, dbpk.get(), nullptr), cudaSuccess);
    DeviceBuffer<int8_t> dn(static_cast<size_t>(2 * rows * K)), dp(static_cast<size_t>(2 * rows * K));
    ASSERT_EQ(cuda::kron_quant_i8_multi(dx16.get(), rows, K, dapk.get(), L, dbpk.get(), R, clips, dn.get(),
                                        ds.get(), rows, nullptr),
              cudaSuccess);
    ASSERT_EQ(cuda::kron_quant_i8_multi(dx16.get(), rows, K, dapk.get(), L, dbpk.get(), R, clips, dp.get(),
                                        ds.get(), rows, nullptr, true),
              cudaSuccess);
    check(dn.download(), dp.download(), K);
  }
}
#else
TEST(W4A8Wgmma, NeedsCuda) {
  GTEST_SKIP() << "built without CUDA";
}
#endif

}  // namespace
}  // namespace fq
