// CUDA vs CPU reference for causal prefill attention on fp16 q/k/v (src/kernels/cuda/prefill_attn.cu): the
// tensor-core kernel (head_dim 64, 128) and the fp32 fallback (any head_dim; run here on 8, 64 and 128)
// against ref::attention in fp32 on the same fp16-rounded inputs. The tensor-core kernel rounds probabilities
// to fp16 for P.V, so its bound is fp16-sized; the fallback only differs by summation order.
#ifdef FLATQUANT_WITH_CUDA
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/cuda/attention.h"
#include "ops/attn_test_util.h"
#include "ops/ops_util.h"
#include "ref/attention.h"

namespace fq {
namespace {

using test::DeviceBuffer;

struct PrefillCase {
  int64_t batch, n, p0, n_head, H, d;
};

enum class Kernel { Auto, Simple };

void run_prefill(const PrefillCase& c, Kernel which, DType out_dt, uint32_t seed) {
  const int64_t d = c.d, nk = c.p0 + c.n;
  // Strides with a little padding (a multiple of 8 halves keeps the tensor-core path eligible).
  const int64_t q_stride = c.n_head * d + 8, kv_stride = c.H * d + 8;
  const int64_t q_bs = c.n * q_stride + 8, kv_bs = nk * kv_stride + 16;
  auto q = test::random_activations(static_cast<size_t>(c.batch * q_bs), seed, 4.0f);
  auto k = test::random_activations(static_cast<size_t>(c.batch * kv_bs), seed + 1, 4.0f);
  auto v = test::random_activations(static_cast<size_t>(c.batch * kv_bs), seed + 2, 4.0f);
  test::round_f16(q);
  test::round_f16(k);
  test::round_f16(v);
  // Reference per sequence on dense copies.
  const ref::AttentionShape s{c.n_head, c.H, d};
  std::vector<float> want(static_cast<size_t>(c.batch * c.n * c.n_head * d));
  for (int64_t b = 0; b < c.batch; ++b) {
    std::vector<float> qb(static_cast<size_t>(c.n * c.n_head * d)), kb(static_cast<size_t>(nk * c.H * d)),
        vb(kb.size());
    for (int64_t i = 0; i < c.n; ++i)
      for (int64_t e = 0; e < c.n_head * d; ++e)
        qb[static_cast<size_t>(i * c.n_head * d + e)] = q[static_cast<size_t>(b * q_bs + i * q_stride + e)];
    for (int64_t j = 0; j < nk; ++j)
      for (int64_t e = 0; e < c.H * d; ++e) {
        kb[static_cast<size_t>(j * c.H * d + e)] = k[static_cast<size_t>(b * kv_bs + j * kv_stride + e)];
        vb[static_cast<size_t>(j * c.H * d + e)] = v[static_cast<size_t>(b * kv_bs + j * kv_stride + e)];
      }
    ref::attention(qb.data(), c.n, c.p0, kb.data(), vb.data(), s, want.data() + b * c.n * c.n_head * d);
  }
  DeviceBuffer<uint16_t> dq(test::to_f16(q)), dk(test::to_f16(k)), dv(test::to_f16(v));
  DeviceBuffer<float> o32(want.size());
  DeviceBuffer<uint16_t> o16(want.size());
  void* op = out_dt == DType::F16 ? static_cast<void*>(o16.get()) : o32.get();
  auto fn = which == Kernel::Simple ? cuda::prefill_attention_simple : cuda::prefill_attention;
  const std::string ctx = std::string(which == Kernel::Simple ? "fallback" : "auto") + " batch " +
                          std::to_string(c.batch) + " n " + std::to_string(c.n) + " p0 " +
                          std::to_string(c.p0) + " heads " + std::to_string(c.n_head) + "/" +
                          std::to_string(c.H) + " d " + std::to_string(d) +
                          (out_dt == DType::F16 ? " out fp16" : " out fp32");
  ASSERT_EQ(fn(dq.get(), dk.get(), dv.get(), c.batch, c.n, c.p0, c.n_head, c.H, d, q_stride, q_bs, kv_stride,
               kv_bs, op, out_dt, nullptr),
            cudaSuccess)
      << ctx;
  FQ_CUDA_CHECK(cudaDeviceSynchronize(), "prefill_attention " + ctx);
  const auto got = out_dt == DType::F16 ? test::from_f16(o16.download()) : o32.download();
  // Tensor cores: P in fp16 (relative 2^-11 per probability) -> ~1e-3 of the row scale; fallback: fp32.
  const bool tc = which == Kernel::Auto && (d == 64 || d == 128);
  const double rtol = tc || out_dt == DType::F16 ? 4e-3 : 1e-4;
  EXPECT_EQ(test::check_rows(got, want, d, rtol, 1e-6, "prefill attention"), "") << ctx;
}

TEST(PrefillAttnCuda, TensorCoreKernelMatchesReference) {
  FQ_REQUIRE_CUDA();
  uint32_t seed = 11;
  const std::vector<std::pair<int64_t, int64_t>> heads = {{9, 3}, {28, 4}, {32, 8}};
  for (auto [nh, H] : heads)
    for (int64_t d : {64, 128})
      for (int64_t n : {1, 63, 64, 130, 257})
        run_prefill({1, n, 0, nh, H, d}, Kernel::Auto, DType::F32, seed++);
  // Batches, a cached prefix (p0 > 0), fp16 output.
  run_prefill({3, 100, 37, 32, 8, 128}, Kernel::Auto, DType::F32, seed++);
  run_prefill({2, 200, 0, 28, 4, 64}, Kernel::Auto, DType::F16, seed++);
  run_prefill({1, 1000, 24, 8, 8, 128}, Kernel::Auto, DType::F16, seed++);
}

TEST(PrefillAttnCuda, FallbackKernelMatchesReference) {
  FQ_REQUIRE_CUDA();
  uint32_t seed = 51;
  const std::vector<std::pair<int64_t, int64_t>> heads = {{9, 3}, {28, 4}, {32, 8}};
  for (auto [nh, H] : heads)
    for (int64_t d : {8, 64, 128}) run_prefill({2, 45, 3, nh, H, d}, Kernel::Simple, DType::F32, seed++);
  // head_dim 8 through the dispatcher goes to the fallback.
  run_prefill({1, 300, 0, 32, 8, 8}, Kernel::Auto, DType::F32, seed++);
  run_prefill({1, 150, 0, 4, 2, 256}, Kernel::Auto, DType::F16, seed++);
}

TEST(PrefillAttnCuda, RejectsBadShapesWithoutLaunching) {
  EXPECT_EQ(cuda::prefill_attention(nullptr, nullptr, nullptr, 1, 4, 0, 6, 4, 64, 384, 0, 256, 0, nullptr,
                                    DType::F32, nullptr),
            cudaErrorInvalidValue)
      << "6 query heads over 4 kv heads";
  EXPECT_EQ(cuda::prefill_attention(nullptr, nullptr, nullptr, 1, 4, 0, 4, 4, 7, 28, 0, 28, 0, nullptr,
                                    DType::F32, nullptr),
            cudaErrorInvalidValue)
      << "odd head_dim";
  EXPECT_EQ(cuda::prefill_attention(nullptr, nullptr, nullptr, 1, 4, 0, 4, 4, 64, 100, 0, 256, 0, nullptr,
                                    DType::F32, nullptr),
            cudaErrorInvalidValue)
      << "q_stride < n_head * head_dim";
}

}  // namespace
}  // namespace fq
#endif  // FLATQUANT_WITH_CUDA
