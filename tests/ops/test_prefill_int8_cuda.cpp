// The int8 prefill route's activation quantizer (src/kernels/cuda/prefill_int8.h) against
// ref::quantize_sym_int4: codes and scales BIT FOR BIT, 1-3 clip pairs, padded row strides, an all-zero row,
// widths from 24 to 18944 (non-powers of two). Outputs are poisoned first (0xFF), so an element the kernel
// does not write fails. The GEMM itself (cuBLASLt s8 + a8_epilogue) is covered by the engine test that
// compares the route with the mma.sync kernel (tests/runtime/test_cuda_quant_engine.cpp). Skips without a
// GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "ops_util.h"
#include "ref/quant.h"

#ifdef FLATQUANT_WITH_CUDA
#include "kernels/cuda/prefill_int8.h"
#include "kernels/cuda/w4a4_ops.h"
#endif

namespace fq {
namespace {

#ifdef FLATQUANT_WITH_CUDA
using test::DeviceBuffer;

TEST(PrefillInt8, QuantizeEqualsReferenceBitForBit) {
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
      DeviceBuffer<int8_t> dq(static_cast<size_t>(3 * rows * cols));
      ASSERT_EQ(cuda::quantize_sym_int4_i8_multi(dx.get(), rows, cols, stride, clips, dq.get(), ds.get(),
                                                 sstride, nullptr),
                cudaSuccess);
      const auto q = dq.download();
      const auto s = ds.download();
      for (int c = 0; c < clips.n; ++c) {
        std::vector<uint8_t> rp(static_cast<size_t>(rows * cols / 2));
        std::vector<float> rs(static_cast<size_t>(rows));
        ref::quantize_sym_int4(x.data(), rows, cols, stride, clips.max[c], clips.min[c], rp.data(),
                               rs.data());
        std::vector<int8_t> codes(static_cast<size_t>(rows * cols));
        ref::unpack_int4(rp.data(), rows, cols, codes.data());
        for (int64_t r = 0; r < rows; ++r)
          ASSERT_EQ(s[static_cast<size_t>(c * sstride + r)], rs[static_cast<size_t>(r)])
              << cols << " row " << r;
        for (size_t i = 0; i < codes.size(); ++i)
          ASSERT_EQ(q[static_cast<size_t>(c * rows * cols) + i], codes[i])
              << "cols " << cols << " copy " << c << " element " << i;
      }
    }
}

TEST(PrefillInt8, QuantizeRejectsBadArguments) {
  FQ_REQUIRE_CUDA();
  DeviceBuffer<float> dx(64), ds(4);
  DeviceBuffer<int8_t> dq(64);
  cuda::SymClips one;
  EXPECT_EQ(cuda::quantize_sym_int4_i8_multi(dx.get(), 1, 62, 64, one, dq.get(), ds.get(), 1, nullptr),
            cudaErrorInvalidValue);  // cols % 4
  EXPECT_EQ(cuda::quantize_sym_int4_i8_multi(dx.get(), 2, 32, 32, one, dq.get(), ds.get(), 1, nullptr),
            cudaErrorInvalidValue);  // scale stride < rows
  EXPECT_EQ(cuda::quantize_sym_int4_i8_multi(dx.get() + 1, 1, 32, 32, one, dq.get(), ds.get(), 1, nullptr),
            cudaErrorInvalidValue);  // rows not 16-byte aligned
  EXPECT_EQ(cuda::quantize_sym_int4_i8_multi(dx.get(), 1, 32, 32, one, dq.get(), ds.get(), 1, nullptr),
            cudaSuccess);
}
// The fused prefill transform + int8 quantizer against the fused decode kernel (fused_quant_int4 with a plain
// input, itself tested against the host chain in test_w4a4_ops_cuda.cpp) on rows that are exact fp16 values:
// both run the same operations in the same order, so codes and scales must be EQUAL. Shapes: the engine's
// (Llama-3-8B 64 x 64, o 32 x 128 without B, down 112 x 128; Qwen2.5-7B 56 x 64, o 28 x 128, down 148 x 128),
// odd and small ones (4 x 43: rows of odd length take the plain-load path; 9 x 64, 24 x 24, 86 x 128, 128 x
// 148; 128 x 192 has room for one X buffer only). Row counts from 1 to more than the resident CTAs (each CTA
// then loops over several tokens, through both X buffers), a padded row stride and one that is not a multiple
// of 8 (plain loads). Each launch form (tokens per step, a cap on the CTAs) must give the same bits, in the
// natural and the W4A8 GEMM's permuted column order (where K % 128 == 0). The
// output is poisoned with 0x40 (no int4 code) and the scales with NaN first.
TEST(PrefillInt8, KronQuantEqualsFusedDecodeKernel) {
  FQ_REQUIRE_CUDA();
  struct Case {
    int64_t L, R;
    bool with_b;
  };
  const std::vector<Case> cases = {{64, 64, true},   {32, 128, false}, {112, 128, true}, {56, 64, true},
                                   {28, 128, false}, {148, 128, true}, {4, 43, true},    {9, 64, false},
                                   {24, 24, true},   {86, 128, true},  {128, 148, true}, {128, 192, true}};
  int device = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  for (const Case& k : cases) {
    const int64_t L = k.L, R = k.R, K = L * R;
    ASSERT_TRUE(cuda::kron_quant_i8_fits(L, R, k.with_b, device)) << L << "x" << R;
    for (int64_t rows : {1, 7, 700})
      for (int64_t pad : {0, 8, 1}) {
        if (rows == 700 && K > 8192 && pad != 0) continue;  // the big shapes: one stride at 700 rows
        SCOPED_TRACE(testing::Message() << L << "x" << R << " rows " << rows << " pad " << pad);
        const int64_t xs = K + pad;
        auto xf = test::random_activations(static_cast<size_t>(rows * xs), 81 + static_cast<uint32_t>(K));
        std::vector<uint16_t> x16(xf.size());
        for (size_t i = 0; i < xf.size(); ++i) {
          x16[i] = f32_to_f16(xf[i]);
          xf[i] = f16_to_f32(x16[i]);
        }
        const auto A = test::random_matrix(L, 83), B = test::random_matrix(R, 84);
        cuda::SymClips clips;
        clips.n = 3;
        clips.max[1] = 0.9f, clips.min[1] = 0.8f, clips.max[2] = 0.7f, clips.min[2] = 1.0f;
        const int64_t sstride = rows + 3;
        DeviceBuffer<float> dxf(xf), dA(A), dB(B), ds8(static_cast<size_t>(3 * sstride)),
            ds4(static_cast<size_t>(3 * rows));
        DeviceBuffer<uint16_t> dx16(x16), dapk(static_cast<size_t>(cuda::fused_operand_elems(L))),
            dbpk(static_cast<size_t>(cuda::fused_operand_elems(R)));
        DeviceBuffer<int8_t> dq(static_cast<size_t>(3 * rows * K));
        DeviceBuffer<uint8_t> dp(static_cast<size_t>(3 * rows * K / 2));
        ASSERT_EQ(cuda::fused_pack_operand(dA.get(), L, true, dapk.get(), nullptr), cudaSuccess);
        ASSERT_EQ(cuda::fused_pack_operand(dB.get(), R, false, dbpk.get(), nullptr), cudaSuccess);
        cuda::FusedQuantArgs f;
        f.x = dxf.get();
        f.x_stride = xs;
        f.a_pk = dapk.get();
        f.L = L;
        f.b_pk = k.with_b ? dbpk.get() : nullptr;
        f.R = R;
        f.clips = clips;
        ASSERT_EQ(cuda::fused_quant_int4(f, rows, K, dp.get(), ds4.get(), nullptr), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const auto p = dp.download();
        const auto s4 = ds4.download();
        std::vector<int8_t> codes(static_cast<size_t>(3 * rows * K));
        ref::unpack_int4(p.data(), 3 * rows, K, codes.data());
        // The automatic launch; one and two tokens per step (two wherever one tile of Y per warp covers the
        // row with at most 28 warps, which every such shape here fits); two with 3 CTAs, each looping over
        // many steps through both X buffers and ending on a half step at odd row counts; with the codes
        // staged in shared memory (on sm_90 where L * R % 16 == 0) and stored directly.
        const bool two = ((L + 15) / 16) * ((R + 31) / 32) <= 28;
        using Launch = cuda::KronQuantLaunch;
        for (const bool perm : {false, true})
          for (const Launch launch : {Launch{0, 0, false}, Launch{1, 0, false}, Launch{2, 0, false},
                                      Launch{2, 3, false}, Launch{0, 0, true}, Launch{2, 3, true}}) {
            if (perm && (K % 128 != 0 || launch.tokens == 1)) continue;
            SCOPED_TRACE(testing::Message()
                         << "perm " << perm << " tokens " << launch.tokens << " max_blocks "
                         << launch.max_blocks << " direct " << launch.direct_stores);
            ASSERT_EQ(cudaMemset(dq.get(), 0x40, dq.bytes()), cudaSuccess);
            ds8.poison();
            const cudaError_t e = cuda::kron_quant_i8_multi(
                dx16.get(), rows, xs, dapk.get(), L, k.with_b ? dbpk.get() : nullptr, R, clips, dq.get(),
                ds8.get(), sstride, nullptr, perm, launch);
            if (launch.tokens == 2 && !two) {
              ASSERT_EQ(e, cudaErrorInvalidValue);
              continue;
            }
            ASSERT_EQ(e, cudaSuccess);
            ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
            const auto q = dq.download();
            const auto s8 = ds8.download();
            for (int c = 0; c < 3; ++c)
              for (int64_t r = 0; r < rows; ++r) {
                const float a = s8[static_cast<size_t>(c * sstride + r)],
                            b = s4[static_cast<size_t>(c * rows + r)];
                ASSERT_EQ(std::memcmp(&a, &b, sizeof a), 0)
                    << "copy " << c << " row " << r << ": " << a << " vs " << b;
              }
            for (size_t i = 0; i < codes.size(); ++i) {
              const size_t row = i / static_cast<size_t>(K), col = i % static_cast<size_t>(K),
                           at = row * static_cast<size_t>(K) +
                                (perm ? static_cast<size_t>(cuda::wgmma_perm_col(static_cast<int64_t>(col)))
                                      : col);
              ASSERT_EQ(q[at], codes[i]) << "element " << col << " of row " << row;
            }
          }
      }
  }
}

TEST(PrefillInt8, KronQuantRejectsBadArguments) {
  FQ_REQUIRE_CUDA();
  int device = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  // 160 x 160: 50 tiles of Y, more than a CTA holds in registers; the engine keeps its GEMM route there.
  EXPECT_FALSE(cuda::kron_quant_i8_fits(160, 160, true, device));
  DeviceBuffer<uint16_t> dx(4096), dapk(static_cast<size_t>(cuda::fused_operand_elems(64))),
      dbpk(static_cast<size_t>(cuda::fused_operand_elems(64)));
  DeviceBuffer<int8_t> dq(4096);
  DeviceBuffer<float> ds(4);
  cuda::SymClips one;
  EXPECT_EQ(cuda::kron_quant_i8_multi(dx.get(), 1, 4096, dapk.get(), 64, dbpk.get(), 64, one, dq.get(),
                                      ds.get(), 0, nullptr),
            cudaErrorInvalidValue);  // scale stride < rows
  EXPECT_EQ(cuda::kron_quant_i8_multi(dx.get(), 1, 4000, dapk.get(), 64, dbpk.get(), 64, one, dq.get(),
                                      ds.get(), 1, nullptr),
            cudaErrorInvalidValue);  // row stride < L * R
  EXPECT_EQ(cuda::kron_quant_i8_multi(dx.get(), 1, 4096, dapk.get() + 1, 64, dbpk.get(), 64, one, dq.get(),
                                      ds.get(), 1, nullptr),
            cudaErrorInvalidValue);  // operand not 16-byte aligned
  cuda::SymClips none;
  none.n = 0;
  EXPECT_EQ(cuda::kron_quant_i8_multi(dx.get(), 1, 4096, dapk.get(), 64, dbpk.get(), 64, none, dq.get(),
                                      ds.get(), 1, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::kron_quant_i8_multi(dx.get(), 1, 25600, dapk.get(), 160, dbpk.get(), 160, one, dq.get(),
                                      ds.get(), 1, nullptr),
            cudaErrorInvalidValue);  // does not fit
  EXPECT_EQ(cuda::kron_quant_i8_multi(dx.get(), 0, 4096, dapk.get(), 64, dbpk.get(), 64, one, dq.get(),
                                      ds.get(), 0, nullptr),
            cudaSuccess);  // nothing to do
}
#else
TEST(PrefillInt8, NeedsCuda) {
  GTEST_SKIP() << "built without CUDA";
}
#endif

}  // namespace
}  // namespace fq
