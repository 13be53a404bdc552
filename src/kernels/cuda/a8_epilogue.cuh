// The int8 GEMMs' epilogue per element (ref::qgemm_epilogue's operations in its order, no FMA), shared by the
// cuBLASLt route's epilogue kernels (wq_linear.cu) and the sm_90a W4A8 GEMM (prefill_wgmma.cu), so both give
// the same bits.
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

namespace fq::cuda::detail {

// t = float(acc) * sx * sw (+ res where has_res): the residual value already loaded.
__device__ __forceinline__ float a8_epi_v(int32_t a, float sx, float sw, bool has_res, float res) {
  const float t = __fmul_rn(__fmul_rn(__int2float_rn(a), sx), sw);
  return has_res ? __fadd_rn(t, res) : t;
}

// t = float(acc) * sx * sw (+ residual[o]).
__device__ __forceinline__ float a8_epi(int32_t a, float sx, float sw, const float* residual, int64_t o) {
  return a8_epi_v(a, sx, sw, residual != nullptr, residual ? residual[o] : 0.0f);
}

// SwiGLU of the fp16-rounded gate and up epilogues: silu(g) * u with cuda::swiglu's operations.
__device__ __forceinline__ float a8_swiglu(int32_t ag, int32_t au, float sg, float su, float wg, float wu) {
  const float g = __half2float(__float2half_rn(a8_epi(ag, sg, wg, nullptr, 0)));
  const float u = __half2float(__float2half_rn(a8_epi(au, su, wu, nullptr, 0)));
  return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}

}  // namespace fq::cuda::detail
