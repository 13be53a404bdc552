// CUDA W4A4 GEMM (src/kernels/cuda/qgemm.cu, every kernel behind qgemm_w4a4_cuda) vs the CPU reference
// ref::qgemm_w4a4: the integer sums are exact and the epilogue is the same sequence of IEEE fp32 operations,
// so the outputs must match BIT FOR BIT (fp32; fp16 = the reference value rounded to nearest even). Outputs
// are poisoned with 0xFF first (NaN in fp32 and fp16): an element the kernel does not write fails. Each case
// also checks which kernel ran, so that every path (the mma decode kernel at M <= 64 with the weights in
// registers, its staged variant at M <= 16 with the weights through shared memory, the prefill kernel, the
// fallback) is covered on purpose.
#ifdef FLATQUANT_WITH_CUDA
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kernels/cuda/qgemm.h"
#include "ops/ops_util.h"
#include "ref/parallel.h"
#include "ref/qgemm.h"

namespace fq {
namespace {

using test::DeviceBuffer;
using test::random_packed;
using test::random_scales;

// "" if equal, else the count and the first differing element (m, n, both values, the integer sum).
template <typename T>
std::string first_mismatch(const std::vector<T>& gpu, const std::vector<T>& cpu,
                           const std::vector<int32_t>& acc, int64_t N) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < cpu.size(); ++i)
    if (std::memcmp(&gpu[i], &cpu[i], sizeof(T)) != 0 && bad++ == 0) first = i;
  if (bad == 0) return "";
  float g, c;
  if constexpr (sizeof(T) == 4) {
    g = gpu[first], c = cpu[first];
  } else {
    g = f16_to_f32(gpu[first]), c = f16_to_f32(cpu[first]);
  }
  char buf[320];
  std::snprintf(buf, sizeof buf, "%zu of %zu differ; first m=%lld n=%lld: gpu=%.9g cpu=%.9g (acc=%d)%s", bad,
                cpu.size(), static_cast<long long>(static_cast<int64_t>(first) / N),
                static_cast<long long>(static_cast<int64_t>(first) % N), g, c, acc[first],
                std::isnan(g) ? " (NaN = poison: not written)" : "");
  return buf;
}

struct Case {
  int64_t M, N, K;
  const char* kernel;  // expected qgemm_w4a4_kernel_name (the same for the fp32 and fp16 entry points)
  int offset = 0;      // byte offset of qx and qw from an aligned allocation (misalignment -> fallback)
  cuda::QgemmDecode decode = cuda::QgemmDecode::kAuto;
};

bool sm90() {
  int device = 0, major = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
         major >= 9;
}

// The kernel expected for a token count on the tensor-core paths (automatic choice); "" = either decode
// variant (the staged one where the grid fits in one wave: DecodeAutomaticChoice checks that rule).
const char* small_m_kernel(int64_t M) {
  return M <= cuda::kQgemmStagedMaxM && sm90() ? "" : "decode";
}

// The reference integer sums, rows split over threads (each row is one independent ref call).
std::vector<int32_t> ref_acc(const std::vector<uint8_t>& qx, const std::vector<uint8_t>& qw, int64_t M,
                             int64_t N, int64_t K) {
  std::vector<int32_t> acc(static_cast<size_t>(M * N));
  ref::ThreadPool pool;
  pool.parallel_for(M, [&](int64_t b, int64_t e) {
    ref::qgemm_w4a4_acc(qx.data() + b * K / 2, qw.data(), e - b, N, K, acc.data() + b * N);
  });
  return acc;
}

// One shape: fp32 without residual, fp32 with an in-place residual, fp16 with an fp16 residual.
void check_case(const Case& c, uint32_t seed) {
  const auto [M, N, K, kernel, offset, decode] = c;
  const int64_t kb = K / 2;
  auto qx = random_packed(static_cast<size_t>(M * kb), seed);
  auto qw = random_packed(static_cast<size_t>(N * kb), seed + 1);
  // Extreme codes: the last token all -8 (when M > 1, so that M = 1 keeps a random token), weight row 0 all
  // -8
  // (|product| 64 at every k: the largest sums), weight row N-1 all 7.
  for (int64_t j = 0; j < kb; ++j) {
    if (M > 1) qx[static_cast<size_t>((M - 1) * kb + j)] = 0x88;
    qw[static_cast<size_t>(j)] = 0x88;
    qw[static_cast<size_t>((N - 1) * kb + j)] = 0x77;
  }
  const auto sx = random_scales(static_cast<size_t>(M), seed + 2),
             sw = random_scales(static_cast<size_t>(N), seed + 3);
  const size_t n_out = static_cast<size_t>(M * N);
  std::vector<float> res(n_out);
  std::vector<uint16_t> res16(n_out);
  for (size_t i = 0; i < n_out; ++i) {
    res[i] = std::sin(static_cast<float>(i)) * 3.0f;
    res16[i] = f32_to_f16(std::cos(static_cast<float>(i)) * 2.0f);
  }

  const auto acc = ref_acc(qx, qw, M, N, K);
  std::vector<float> want(n_out), want_res(n_out);
  std::vector<uint16_t> want16(n_out);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const size_t i = static_cast<size_t>(m * N + n);
      const float sxm = sx[static_cast<size_t>(m)], swn = sw[static_cast<size_t>(n)];
      want[i] = ref::qgemm_epilogue(acc[i], sxm, swn, nullptr);
      want_res[i] = ref::qgemm_epilogue(acc[i], sxm, swn, &res[i]);
      const float r16 = f16_to_f32(res16[i]);
      want16[i] = f32_to_f16(ref::qgemm_epilogue(acc[i], sxm, swn, &r16));
    }

  // Operands at `offset` bytes into their buffers.
  std::vector<uint8_t> hx(static_cast<size_t>(offset), 0), hw(static_cast<size_t>(offset), 0);
  hx.insert(hx.end(), qx.begin(), qx.end());
  hw.insert(hw.end(), qw.begin(), qw.end());
  DeviceBuffer<uint8_t> dx(hx), dw(hw);
  const uint8_t* px = dx.get() + offset;
  const uint8_t* pw = dw.get() + offset;
  DeviceBuffer<float> dsx(sx), dsw(sw), dy(n_out);
  DeviceBuffer<uint16_t> dh(n_out);

  const std::string name = cuda::qgemm_w4a4_kernel_name(px, pw, M, N, K, false, decode);
  const std::string name16 = cuda::qgemm_w4a4_kernel_name(px, pw, M, N, K, true, decode);
  const std::string ctx = "M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K) +
                          " kernel " + name + (offset ? " offset" : "");
  if (*kernel)
    EXPECT_EQ(name, kernel) << ctx;
  else
    EXPECT_TRUE(name == "decode" || name == "decode_staged") << ctx;
  EXPECT_EQ(name16, name) << ctx;

  ASSERT_EQ(
      cuda::qgemm_w4a4_cuda(px, dsx.get(), pw, dsw.get(), nullptr, dy.get(), M, N, K, nullptr, false, decode),
      cudaSuccess)
      << ctx;
  FQ_CUDA_CHECK(cudaDeviceSynchronize(), "qgemm_w4a4_cuda");
  EXPECT_EQ(first_mismatch(dy.download(), want, acc, N), "") << ctx;

  dy.upload(res);  // residual in place: y = y + x w^T
  ASSERT_EQ(cuda::qgemm_w4a4_cuda(px, dsx.get(), pw, dsw.get(), dy.get(), dy.get(), M, N, K, nullptr, false,
                                  decode),
            cudaSuccess)
      << ctx;
  FQ_CUDA_CHECK(cudaDeviceSynchronize(), "qgemm_w4a4_cuda (residual)");
  EXPECT_EQ(first_mismatch(dy.download(), want_res, acc, N), "") << ctx << " (residual in place)";

  DeviceBuffer<uint16_t> dr16(res16);
  ASSERT_EQ(cuda::qgemm_w4a4_cuda_f16(px, dsx.get(), pw, dsw.get(), dr16.get(), dh.get(), M, N, K, nullptr,
                                      false, decode),
            cudaSuccess)
      << ctx;
  FQ_CUDA_CHECK(cudaDeviceSynchronize(), "qgemm_w4a4_cuda_f16");
  EXPECT_EQ(first_mismatch(dh.download(), want16, acc, N), "")
      << ctx << " (fp16 out, fp16 residual, " << name16 << ")";
}

TEST(QgemmCuda, DecodeEveryTokenCount) {
  FQ_REQUIRE_CUDA();
  // M = 1..64 (the four token-tile widths of the mma kernel: 8, 16, 32, 64), ragged row groups
  // (N % 16 != 0), K with partial 128-k steps (K % 128 != 0) and more steps than warps.
  uint32_t seed = 1;
  for (int64_t M = 1; M <= 64; M += M < 20 ? 1 : 3) {
    check_case({M, 1, 32, small_m_kernel(M)}, seed += 10);
    check_case({M, 43, 96, small_m_kernel(M)}, seed += 10);
    check_case({M, 148, 1056, small_m_kernel(M)}, seed += 10);
    check_case({M, 1024, 4096, small_m_kernel(M)}, seed += 10);
    check_case({M, 200, 14336 + 32, small_m_kernel(M)}, seed += 10);
  }
}

// The automatic choice at batch 1 on sm_90: the staged kernel where every row group is resident at once
// (Llama-3-8B's o: 256 groups), the register kernel for more (gate|up: 1792 groups), never above
// kQgemmStagedMaxM tokens.
TEST(QgemmCuda, DecodeAutomaticChoice) {
  FQ_REQUIRE_CUDA();
  if (!sm90()) GTEST_SKIP() << "the staged decode kernel needs sm_90";
  const void* p = reinterpret_cast<const void*>(256);  // aligned; only the address is looked at
  EXPECT_STREQ(cuda::qgemm_w4a4_kernel_name(p, p, 1, 4096, 4096, false), "decode_staged");
  EXPECT_STREQ(cuda::qgemm_w4a4_kernel_name(p, p, 1, 28672, 4096, false), "decode");
  EXPECT_STREQ(cuda::qgemm_w4a4_kernel_name(p, p, cuda::kQgemmStagedMaxM + 1, 4096, 4096, false), "decode");
  EXPECT_STREQ(cuda::qgemm_w4a4_kernel_name(p, p, 1, 4096, 4096, false, cuda::QgemmDecode::kRegisters),
               "decode");
}

// Both decode variants forced, where the automatic choice would take the other one: the register kernel at
// M <= 16, the staged one (sm_90) with one stage per warp (K 96 .. 4096, warps without steps at K = 96), two
// (K = 8192), four through a ring of three (K = 14336 + 32, 18944), unaligned tails, and more row groups
// than resident blocks (N = 9000: each block loops over several groups, its ring running across them).
TEST(QgemmCuda, DecodeVariantsForced) {
  FQ_REQUIRE_CUDA();
  uint32_t seed = 3000;
  const std::vector<std::array<int64_t, 2>> nk = {{1, 32},           {43, 96},    {148, 1056},
                                                  {1024, 4096},      {64, 8192},  {77, 3584},
                                                  {200, 14336 + 32}, {96, 18944}, {9000, 96}};
  for (int64_t M : {1, 2, 8})
    for (const auto& [N, K] : nk) {
      check_case({M, N, K, "decode", 0, cuda::QgemmDecode::kRegisters}, seed += 10);
      if (sm90()) check_case({M, N, K, "decode_staged", 0, cuda::QgemmDecode::kStaged}, seed += 10);
    }
  // The staged kernel takes at most kQgemmStagedMaxM tokens and aligned operands: anything else is refused,
  // not run.
  alignas(16) static uint8_t b[64];
  static float f[64];
  EXPECT_EQ(cuda::qgemm_w4a4_cuda(b, f, b, f, nullptr, f, cuda::kQgemmStagedMaxM + 1, 1, 32, nullptr, false,
                                  cuda::QgemmDecode::kStaged),
            cudaErrorInvalidValue);
  EXPECT_EQ(
      cuda::qgemm_w4a4_cuda(b + 1, f, b, f, nullptr, f, 1, 1, 32, nullptr, false, cuda::QgemmDecode::kStaged),
      cudaErrorInvalidValue);
}

TEST(QgemmCuda, DecodeModelShapes) {
  FQ_REQUIRE_CUDA();
  // Llama-3-8B, Qwen2.5-7B and SmolLM2 linears at decode.
  const std::vector<std::array<int64_t, 2>> nk = {{4096, 4096}, {14336, 4096}, {4096, 14336}, {3584, 3584},
                                                  {512, 3584},  {18944, 3584}, {3584, 18944}, {576, 576},
                                                  {1536, 576},  {576, 1536}};
  uint32_t seed = 1000;
  for (int64_t M : {1, 5, 16, 32, 64})
    for (const auto& [N, K] : nk) check_case({M, N, K, small_m_kernel(M)}, seed += 10);
}

TEST(QgemmCuda, Prefill) {
  FQ_REQUIRE_CUDA();
  // M not a multiple of 128 (65, 77, 200, 1100), N not a multiple of 8 or 2 (43, 1001, 4090), K with a half
  // k-tile tail (K % 64 == 32), model shapes with a few rows, and one full 2048-row GEMM.
  uint32_t seed = 2000;
  check_case({65, 64, 64, "prefill"}, seed += 10);
  check_case({77, 43, 96, "prefill"}, seed += 10);
  check_case({77, 1001, 576, "prefill"}, seed += 10);
  check_case({200, 1536, 576, "prefill"}, seed += 10);
  check_case({128, 576, 1536, "prefill"}, seed += 10);
  check_case({77, 4096, 4096, "prefill"}, seed += 10);
  check_case({77, 512, 3584, "prefill"}, seed += 10);
  check_case({97, 256, 14336, "prefill"}, seed += 10);
  check_case({71, 136, 18944, "prefill"}, seed += 10);
  check_case({1100, 4090, 160, "prefill"}, seed += 10);
  check_case({2048, 4096, 1024, "prefill"}, seed += 10);
}

TEST(QgemmCuda, FallbackForUnalignedShapes) {
  FQ_REQUIRE_CUDA();
  uint32_t seed = 4000;
  check_case({1, 16, 2, "fallback"}, seed += 10);
  check_case({5, 64, 172, "fallback"}, seed += 10);  // stories260K's ff
  check_case({300, 172, 64, "prefill"}, seed += 10);
  check_case({300, 48, 172, "fallback"}, seed += 10);
  check_case({3, 100, 4096, "fallback", 1}, seed += 10);  // operands not 16-byte aligned
}

TEST(QgemmCuda, RejectsBadArgumentsWithoutLaunching) {
  // Argument checks come before any CUDA call: this runs without a device too.
  alignas(16) static uint8_t b[64];
  static float f[64];
  EXPECT_EQ(cuda::qgemm_w4a4_cuda(b, f, b, f, nullptr, f, 0, 1, 32, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::qgemm_w4a4_cuda(b, f, b, f, nullptr, f, 1, 0, 32, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::qgemm_w4a4_cuda(b, f, b, f, nullptr, f, 1, 1, 33, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::qgemm_w4a4_cuda(b, f, b, f, nullptr, f, 1, 1, 0, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::qgemm_w4a4_cuda(b, f, b, f, nullptr, f, 1, 1, cuda::kQgemmMaxK + 2, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::qgemm_w4a4_cuda(b, f, b, f, nullptr, nullptr, 1, 1, 32, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::qgemm_w4a4_cuda(nullptr, f, b, f, nullptr, f, 1, 1, 32, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::qgemm_w4a4_cuda_f16(b, f, b, f, nullptr, nullptr, 1, 1, 32, nullptr),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace fq
#endif  // FLATQUANT_WITH_CUDA
