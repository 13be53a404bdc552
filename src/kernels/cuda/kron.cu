// Fused online Kronecker transform + symmetric int4 quantization (FlatQuant's per-linear input transform),
// and the heads x heads o_proj input transform as its B = identity special case.
//
// Simple-but-correct version: one block per token, fp32 CUDA-core math, A and B read through L1/L2. What
// would make it faster (docs/numerics.md "Runtime 4-bit quantization"): fp16/bf16 input, A and B staged in
// shared memory (or registers) once per block and several tokens per block to amortize them, tensor-core MMA
// for the two small GEMMs (m = tokens), and vectorized loads/stores.
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/kron.h"
#include "kernels/cuda/quant_common.cuh"

namespace fq::cuda {
namespace {

constexpr int kThreads = 256;

// ============================================================================================================
// kron_quant_int4_kernel — reference: fq::ref::kron_quant_int4 (src/ref/kron.cpp)
// Layout: x [n_tokens, L*R] fp32 (row stride x_stride); s [L*R] or null; A [L, L], B [R, R] row-major (B null
// = identity); packed [n_tokens, L*R/2] uint8 (low nibble = even element, two's complement); scales
// [n_tokens] fp32. Grid: one block per token. Dynamic shared memory: 2*L*R floats (X = x ⊙ s, then T = A^T X;
// Y = T B overwrites X). One pass over x per token; fp32 accumulation in the same k / l order as the
// reference (nvcc may fuse the multiply-adds, so values can differ from the reference by a few ulps — the
// tests allow for it).
// ============================================================================================================
__global__ void kron_quant_int4_kernel(const float* __restrict__ x, int64_t x_stride,
                                       const float* __restrict__ s, const float* __restrict__ A, int L,
                                       const float* __restrict__ B, int R, float clip_max, float clip_min,
                                       uint8_t* __restrict__ packed, float* __restrict__ scales) {
  extern __shared__ float smem[];
  __shared__ float red[2 * detail::kWarp];
  const int n = L * R;
  float* X = smem;
  float* T = smem + n;
  const int64_t t = blockIdx.x;
  const float* xt = x + t * x_stride;
  for (int c = threadIdx.x; c < n; c += blockDim.x) X[c] = s ? __fmul_rn(xt[c], s[c]) : xt[c];
  __syncthreads();
  // T = A^T X: T[i][l] = sum_k A[k][i] X[k][l]
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const int i = idx / R, l = idx % R;
    float acc = 0.0f;
    for (int k = 0; k < L; ++k) acc += A[k * L + i] * X[k * R + l];
    T[idx] = acc;
  }
  __syncthreads();
  // Y = T B: Y[i][j] = sum_l T[i][l] B[l][j], written over X (no longer needed).
  float* Y = T;
  if (B) {
    for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
      const int i = idx / R, j = idx % R;
      float acc = 0.0f;
      for (int l = 0; l < R; ++l) acc += T[i * R + l] * B[l * R + j];
      X[idx] = acc;
    }
    __syncthreads();
    Y = X;
  }
  detail::quantize_row_sym_int4(Y, n, clip_max, clip_min, red, packed + t * (n / 2), scales + t);
}

}  // namespace

cudaError_t kron_quant_int4(const float* x, int64_t n_tokens, int64_t x_stride, const float* s,
                            const float* A, int64_t L, const float* B, int64_t R, float clip_max,
                            float clip_min, uint8_t* packed, float* scales, cudaStream_t stream) {
  if (n_tokens < 0 || L < 1 || R < 1 || L > 65536 || R > 65536 || (L * R) % 2 != 0 || x_stride < L * R ||
      n_tokens > 0x7fffffff)
    return cudaErrorInvalidValue;
  if (n_tokens == 0) return cudaSuccess;
  const size_t smem = 2 * static_cast<size_t>(L * R) * sizeof(float);
  int device = 0, max_optin = 0;
  FQ_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  FQ_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  // The static `red` array also lives in shared memory.
  if (smem + 2 * detail::kWarp * sizeof(float) > static_cast<size_t>(max_optin)) return cudaErrorInvalidValue;
  FQ_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
      kron_quant_int4_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kron_quant_int4_kernel<<<static_cast<unsigned>(n_tokens), kThreads, smem, stream>>>(
      x, x_stride, s, A, static_cast<int>(L), B, static_cast<int>(R), clip_max, clip_min, packed, scales);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t head_mix_quant_int4(const float* attn, int64_t n_tokens, int64_t n_head, int64_t head_dim,
                                int64_t attn_stride, const float* Po, float clip_max, float clip_min,
                                uint8_t* packed, float* scales, cudaStream_t stream) {
  return kron_quant_int4(attn, n_tokens, attn_stride, nullptr, Po, n_head, nullptr, head_dim, clip_max,
                         clip_min, packed, scales, stream);
}

}  // namespace fq::cuda
