// CUDA W4A4 decode GEMV (src/kernels/cuda/qgemv.cu) vs the CPU reference ref::qgemm_w4a4: the integer sums
// are exact and the epilogue is the same sequence of IEEE fp32 operations, so outputs must match BIT FOR BIT.
// Outputs are poisoned with 0xFF first (NaN as fp32 and fp16): an element the kernel does not write fails.
#ifdef FLATQUANT_WITH_CUDA
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kernels/cuda/qgemv.h"
#include "ops/ops_util.h"
#include "ref/qgemm.h"

namespace fq {
namespace {

using test::DeviceBuffer;

using test::random_packed;
using test::random_scales;

std::string first_mismatch(const std::vector<float>& gpu, const std::vector<float>& cpu, int64_t N) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < cpu.size(); ++i)
    if (std::memcmp(&gpu[i], &cpu[i], sizeof(float)) != 0 && bad++ == 0) first = i;
  if (bad == 0) return "";
  char buf[256];
  std::snprintf(buf, sizeof buf, "%zu of %zu differ; first m=%lld n=%lld: gpu=%.9g cpu=%.9g%s", bad,
                cpu.size(), static_cast<long long>(static_cast<int64_t>(first) / N),
                static_cast<long long>(static_cast<int64_t>(first) % N), gpu[first], cpu[first],
                std::isnan(gpu[first]) ? " (NaN = poison: not written)" : "");
  return buf;
}

struct Case {
  int64_t M, N, K;
};

// Runs one shape: fp32 output without residual, then fp32 + fp16 outputs with an in-place residual.
void check_case(const Case& c, uint32_t seed) {
  const auto [M, N, K] = c;
  auto qx = random_packed(static_cast<size_t>(M * K / 2), seed);
  auto qw = random_packed(static_cast<size_t>(N * K / 2), seed + 1);
  // Extreme codes: row 0 all -8 and (when M > 1, so that M = 1 keeps a random token) the last token all -8:
  // the largest |product|; row N-1 all 7.
  for (int64_t j = 0; j < K / 2; ++j) {
    if (M > 1) qx[static_cast<size_t>((M - 1) * K / 2 + j)] = 0x88;
    qw[static_cast<size_t>(j)] = 0x88;
    qw[static_cast<size_t>((N - 1) * K / 2 + j)] = 0x77;
  }
  const auto sx = random_scales(static_cast<size_t>(M), seed + 2),
             sw = random_scales(static_cast<size_t>(N), seed + 3);
  std::vector<float> res(static_cast<size_t>(M * N));
  for (size_t i = 0; i < res.size(); ++i) res[i] = std::sin(static_cast<float>(i)) * 3.0f;

  // ref::qgemm_w4a4 split into its two halves so that the integer sums are computed once for both outputs.
  std::vector<int32_t> acc(res.size());
  ref::qgemm_w4a4_acc(qx.data(), qw.data(), M, N, K, acc.data());
  std::vector<float> want(res.size()), want_res(res.size());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const size_t i = static_cast<size_t>(m * N + n);
      want[i] = ref::qgemm_epilogue(acc[i], sx[static_cast<size_t>(m)], sw[static_cast<size_t>(n)], nullptr);
      want_res[i] =
          ref::qgemm_epilogue(acc[i], sx[static_cast<size_t>(m)], sw[static_cast<size_t>(n)], &res[i]);
    }

  DeviceBuffer<uint8_t> dx(qx), dw(qw);
  DeviceBuffer<float> dsx(sx), dsw(sw), dy(res.size());
  DeviceBuffer<uint16_t> dh(res.size());
  const std::string ctx = "M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K);

  ASSERT_EQ(cuda::qgemv_w4a4(dx.get(), dsx.get(), dw.get(), dsw.get(), nullptr, dy.get(), nullptr, M, N, K,
                             nullptr),
            cudaSuccess)
      << ctx;
  FQ_CUDA_CHECK(cudaDeviceSynchronize(), "qgemv_w4a4 kernel");
  EXPECT_EQ(first_mismatch(dy.download(), want, N), "") << ctx;

  dy.upload(res);  // residual in place: y = y + x w^T
  ASSERT_EQ(cuda::qgemv_w4a4(dx.get(), dsx.get(), dw.get(), dsw.get(), dy.get(), dy.get(), dh.get(), M, N, K,
                             nullptr),
            cudaSuccess)
      << ctx;
  FQ_CUDA_CHECK(cudaDeviceSynchronize(), "qgemv_w4a4 kernel (residual)");
  EXPECT_EQ(first_mismatch(dy.download(), want_res, N), "") << ctx << " (residual)";
  const auto h = dh.download();
  size_t bad = 0;
  for (size_t i = 0; i < h.size(); ++i) bad += h[i] != f32_to_f16(want_res[i]);
  EXPECT_EQ(bad, 0u) << ctx << " (fp16 output)";
}

TEST(QgemvCuda, MatchesReferenceExactlyOnModelShapes) {
  FQ_REQUIRE_CUDA();
  const std::vector<std::array<int64_t, 2>> nk = {{576, 64},    {14336, 64},  {576, 576},   {1536, 576},
                                                  {4096, 4096}, {1536, 4096}, {576, 14336}, {1536, 14336}};
  uint32_t seed = 1;
  for (int64_t M : {1, 3, 16})
    for (const auto& [N, K] : nk) check_case({M, N, K}, seed += 10);
  check_case({1, 14336, 4096}, 7);  // up/gate shape at decode
  check_case({1, 4096, 14336}, 8);  // down shape at decode
}

TEST(QgemvCuda, EveryTokenCountAndRaggedRowCounts) {
  FQ_REQUIRE_CUDA();
  // Every template instance (M = 1..16), row counts that leave partial warps and blocks, K with a tail after
  // the unrolled loop.
  const std::vector<std::array<int64_t, 2>> nk = {{1, 32}, {43, 96}, {148, 1056}, {4097, 160}};
  uint32_t seed = 100;
  for (int64_t M = 1; M <= 16; ++M)
    for (const auto& [N, K] : nk) check_case({M, N, K}, seed += 10);
}

// Activation copies over column segments, fp16 output and residual with a row stride, as a PDL launch: each
// segment equals the reference on its own copy (fp16: the fp32 epilogue rounded to nearest even).
TEST(QgemvCuda, SegmentsFp16StridedOutput) {
  FQ_REQUIRE_CUDA();
  for (int64_t M : {1, 2, 5, 12}) {
    const int64_t N = 96, K = 256, ldy = N + 8;
    const std::array<int64_t, 3> end = {32, 64, 96};
    const auto qw = random_packed(static_cast<size_t>(N * K / 2), 500 + static_cast<uint32_t>(M));
    const auto sw = random_scales(static_cast<size_t>(N), 501);
    std::vector<uint16_t> res(static_cast<size_t>(M * ldy));
    for (size_t i = 0; i < res.size(); ++i) res[i] = f32_to_f16(std::cos(static_cast<float>(i)) * 2.0f);
    std::vector<std::vector<uint8_t>> qx(3);
    std::vector<std::vector<float>> sx(3);
    std::deque<DeviceBuffer<uint8_t>> dx;  // (not movable: a deque never moves its elements)
    std::deque<DeviceBuffer<float>> dsx;
    cuda::QgemmActs acts;
    acts.n = 3;
    for (int c = 0; c < 3; ++c) {
      qx[static_cast<size_t>(c)] = random_packed(static_cast<size_t>(M * K / 2), 510 + static_cast<uint32_t>(c));
      sx[static_cast<size_t>(c)] = random_scales(static_cast<size_t>(M), 520 + static_cast<uint32_t>(c));
      dx.emplace_back(qx[static_cast<size_t>(c)]);
      dsx.emplace_back(sx[static_cast<size_t>(c)]);
      acts.qx[c] = dx.back().get();
      acts.sx[c] = dsx.back().get();
      acts.end[c] = end[static_cast<size_t>(c)];
    }
    DeviceBuffer<uint8_t> dw(qw);
    DeviceBuffer<float> dsw(sw);
    DeviceBuffer<uint16_t> dy(res);
    ASSERT_EQ(cuda::qgemv_w4a4_segments(acts, dw.get(), dsw.get(), dy.get(), dy.get(), nullptr, true, M, N, K, ldy,
                                        nullptr, true),
              cudaSuccess);
    const auto got = dy.download();
    size_t bad = 0;
    for (int c = 0, n0 = 0; c < 3; n0 = static_cast<int>(end[static_cast<size_t>(c)]), ++c) {
      std::vector<int32_t> acc(static_cast<size_t>(M * N));
      ref::qgemm_w4a4_acc(qx[static_cast<size_t>(c)].data(), qw.data(), M, N, K, acc.data());
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = n0; n < end[static_cast<size_t>(c)]; ++n) {
          const size_t i = static_cast<size_t>(m * ldy + n);
          const float r = f16_to_f32(res[i]);
          const float want = ref::qgemm_epilogue(acc[static_cast<size_t>(m * N + n)], sx[static_cast<size_t>(c)][static_cast<size_t>(m)],
                                                 sw[static_cast<size_t>(n)], &r);
          bad += got[i] != f32_to_f16(want);
        }
    }
    for (int64_t m = 0; m < M; ++m)  // the stride's gap is left alone
      for (int64_t n = N; n < ldy; ++n) bad += got[static_cast<size_t>(m * ldy + n)] != res[static_cast<size_t>(m * ldy + n)];
    EXPECT_EQ(bad, 0u) << "M " << M;
  }
}

TEST(QgemvCuda, RejectsBadArgumentsWithoutLaunching) {
  // Argument checks come before any CUDA call: this runs without a device too.
  alignas(16) static uint8_t b[64];
  static float f[64];
  EXPECT_EQ(cuda::qgemv_w4a4(b, f, b, f, nullptr, f, nullptr, 0, 1, 32, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::qgemv_w4a4(b, f, b, f, nullptr, f, nullptr, 17, 1, 32, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::qgemv_w4a4(b, f, b, f, nullptr, f, nullptr, 1, 1, 48, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::qgemv_w4a4(b, f, b, f, nullptr, f, nullptr, 1, 1, cuda::kQgemvMaxK + 32, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::qgemv_w4a4(b, f, b, f, nullptr, nullptr, nullptr, 1, 1, 32, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::qgemv_w4a4(b + 1, f, b, f, nullptr, f, nullptr, 1, 1, 32, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace fq
#endif  // FLATQUANT_WITH_CUDA
