// CUDA vs CPU reference for the fused transform + int4 quantization kernels (src/kernels/cuda/kron.cu):
// kron_quant_int4 vs ref::kron_quant_int4 and head_mix_quant_int4 vs ref::head_mix_quant_int4.
// The kernel may sum in a different fp32 order (nvcc fuses multiply-adds), so the comparison allows:
//   - scales within 1e-5 relative;
//   - a code off by exactly 1 only where the reference x'/scale lies within 1e-4 of a .5 rounding boundary,
//     and at most max(2, 0.1% of the elements) such codes per case.
// Outputs are poisoned with 0xFF first: an unwritten byte decodes to (-1, -1) and an unwritten scale is NaN.
#ifdef FLATQUANT_WITH_CUDA
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cuda/kron.h"
#include "ops/ops_util.h"
#include "ref/kron.h"
#include "ref/quant.h"

namespace fq {
namespace {

using test::DeviceBuffer;

// y_ref: the reference transformed tokens [n_tokens, n] (before quantization). Returns "" when within
// tolerance.
std::string compare_quantized(const std::vector<uint8_t>& p_gpu, const std::vector<float>& s_gpu,
                              const std::vector<uint8_t>& p_cpu, const std::vector<float>& s_cpu,
                              const std::vector<float>& y_ref, int64_t n_tokens, int64_t n) {
  std::ostringstream err;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const double rel = std::fabs(double(s_gpu[t]) - s_cpu[t]) / s_cpu[t];
    if (!(rel <= 1e-5)) {
      err << "token " << t << ": scale gpu=" << s_gpu[t] << " cpu=" << s_cpu[t] << " (rel diff " << rel
          << " > 1e-5" << (std::isnan(s_gpu[t]) ? "; NaN = poison: not written" : "") << ")";
      return err.str();
    }
  }
  std::vector<int8_t> q_gpu(static_cast<size_t>(n_tokens * n)), q_cpu(q_gpu.size());
  ref::unpack_int4(p_gpu.data(), n_tokens, n, q_gpu.data());
  ref::unpack_int4(p_cpu.data(), n_tokens, n, q_cpu.data());
  int64_t near_boundary = 0;
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t c = 0; c < n; ++c) {
      const size_t i = static_cast<size_t>(t * n + c);
      if (q_gpu[i] == q_cpu[i]) continue;
      const float v = y_ref[i] / s_cpu[t];
      const float dist = std::fabs(v - std::floor(v) - 0.5f);
      if (std::abs(q_gpu[i] - q_cpu[i]) != 1 || dist > 1e-4f) {
        err << "token " << t << " element " << c << ": code gpu=" << int(q_gpu[i]) << " cpu=" << int(q_cpu[i])
            << ", x'/scale=" << v << " is " << dist << " from a .5 boundary (allowed: off by 1 within 1e-4)"
            << (p_gpu[i / 2] == 0xFF ? "; byte 0xff = poison: the kernel may not have written it" : "");
        return err.str();
      }
      ++near_boundary;
    }
  const int64_t allowed = std::max<int64_t>(2, n_tokens * n / 1000);
  if (near_boundary > allowed) {
    err << near_boundary << " codes off by one at .5 boundaries, more than the " << allowed << " allowed";
    return err.str();
  }
  return "";
}

TEST(KronQuantInt4Cuda, MatchesReferenceForAnyFactorSizes) {
  FQ_REQUIRE_CUDA();
  struct Shape {
    int64_t L, R;
  };
  for (Shape sh : {Shape{4, 43}, Shape{24, 24}, Shape{56, 64}, Shape{86, 128}, Shape{112, 128},
                   Shape{128, 148}, Shape{128, 224}}) {
    for (bool with_s : {false, true}) {
      const int64_t L = sh.L, R = sh.R, n = L * R, n_tokens = 5, stride = n + 8;
      const uint32_t seed = static_cast<uint32_t>(n + with_s);
      auto x = test::random_activations(static_cast<size_t>(n_tokens * stride), seed);
      auto A = test::random_matrix(L, seed + 1);
      auto B = test::random_matrix(R, seed + 2);
      auto s = test::random_activations(static_cast<size_t>(n), seed + 3, 1.0f);
      const float* s_host = with_s ? s.data() : nullptr;
      const float cmax = 0.9820138f, cmin = 0.93f;
      std::vector<uint8_t> p_cpu(static_cast<size_t>(n_tokens * n / 2));
      std::vector<float> s_cpu(n_tokens), y_ref(static_cast<size_t>(n_tokens * n));
      ref::kron_quant_int4(x.data(), n_tokens, stride, s_host, A.data(), L, B.data(), R, cmax, cmin,
                           p_cpu.data(), s_cpu.data());
      ref::kron_transform(x.data(), n_tokens, stride, s_host, A.data(), L, B.data(), R, y_ref.data());

      DeviceBuffer<float> dx(x), dA(A), dB(B), ds_vec(s);
      DeviceBuffer<uint8_t> dp(p_cpu.size());
      DeviceBuffer<float> dscale(static_cast<size_t>(n_tokens));
      const cudaError_t e =
          fq::cuda::kron_quant_int4(dx.get(), n_tokens, stride, with_s ? ds_vec.get() : nullptr, dA.get(), L,
                                    dB.get(), R, cmax, cmin, dp.get(), dscale.get(), nullptr);
      const std::string ctx = std::to_string(L) + "x" + std::to_string(R) + (with_s ? " with s" : " no s");
      ASSERT_EQ(e, cudaSuccess) << ctx << ": launch failed: " << cudaGetErrorString(e)
                                << " (cudaErrorInvalidValue here = the token does not fit in shared memory)";
      FQ_CUDA_CHECK(cudaDeviceSynchronize(), "kron_quant_int4 kernel " + ctx);
      EXPECT_EQ(compare_quantized(dp.download(), dscale.download(), p_cpu, s_cpu, y_ref, n_tokens, n), "")
          << ctx;
    }
  }
}

TEST(HeadMixQuantInt4Cuda, MatchesReferenceForAnyHeadCount) {
  FQ_REQUIRE_CUDA();
  for (int64_t H : {9, 28, 32}) {
    for (int64_t d : {8, 64, 128}) {
      const int64_t n = H * d, n_tokens = 4, stride = n + 4;
      const uint32_t seed = static_cast<uint32_t>(H * 1000 + d);
      auto attn = test::random_activations(static_cast<size_t>(n_tokens * stride), seed);
      auto Po = test::random_matrix(H, seed + 1);
      std::vector<uint8_t> p_cpu(static_cast<size_t>(n_tokens * n / 2));
      std::vector<float> s_cpu(n_tokens), y_ref(static_cast<size_t>(n_tokens * n));
      ref::head_mix_quant_int4(attn.data(), n_tokens, H, d, stride, Po.data(), 1.0f, 1.0f, p_cpu.data(),
                               s_cpu.data());
      ref::head_mix(attn.data(), n_tokens, H, d, stride, Po.data(), y_ref.data());

      DeviceBuffer<float> dattn(attn), dPo(Po);
      DeviceBuffer<uint8_t> dp(p_cpu.size());
      DeviceBuffer<float> dscale(static_cast<size_t>(n_tokens));
      const std::string ctx = "H " + std::to_string(H) + " d " + std::to_string(d);
      const cudaError_t e = fq::cuda::head_mix_quant_int4(dattn.get(), n_tokens, H, d, stride, dPo.get(),
                                                          1.0f, 1.0f, dp.get(), dscale.get(), nullptr);
      ASSERT_EQ(e, cudaSuccess) << ctx << ": launch failed: " << cudaGetErrorString(e);
      FQ_CUDA_CHECK(cudaDeviceSynchronize(), "head_mix_quant_int4 kernel " + ctx);
      EXPECT_EQ(compare_quantized(dp.download(), dscale.download(), p_cpu, s_cpu, y_ref, n_tokens, n), "")
          << ctx;
    }
  }
}

TEST(KronQuantInt4Cuda, RejectsBadSizesWithoutLaunching) {
  EXPECT_EQ(fq::cuda::kron_quant_int4(nullptr, 1, 15, nullptr, nullptr, 3, nullptr, 5, 1.0f, 1.0f, nullptr,
                                      nullptr, nullptr),
            cudaErrorInvalidValue);  // 3*5 odd
  EXPECT_EQ(fq::cuda::kron_quant_int4(nullptr, 1, 10, nullptr, nullptr, 4, nullptr, 4, 1.0f, 1.0f, nullptr,
                                      nullptr, nullptr),
            cudaErrorInvalidValue);  // stride < L*R
}

}  // namespace
}  // namespace fq
#endif  // FLATQUANT_WITH_CUDA
