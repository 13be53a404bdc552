// Asymmetric 4-bit KV-cache quantization per (token, head).
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/quant.h"
#include "kernels/cuda/quant_common.cuh"

namespace fq::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

// ============================================================================================================
// quantize_kv_asym_int4_kernel — reference: fq::ref::quantize_kv_asym_int4 (src/ref/quant.cpp)
// Layout: x [n_tokens, n_head, head_dim] fp32 (token stride x_stride, heads contiguous); packed [n_tokens,
// n_head, head_dim/2] uint8 (plain nibbles 0..15, low = even element); scale, zero [n_tokens, n_head] fp32.
// One warp per (token, head) row; kWarpsPerBlock rows per block.
// ============================================================================================================
__global__ void quantize_kv_asym_int4_kernel(const float* __restrict__ x, int64_t n_rows, int64_t n_head,
                                             int64_t head_dim, int64_t x_stride, float clip_max,
                                             float clip_min, uint8_t* __restrict__ packed,
                                             float* __restrict__ scale, float* __restrict__ zero) {
  const int lane = threadIdx.x % detail::kWarp;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / detail::kWarp;
  if (k >= n_rows) return;  // whole warps leave together, so the shuffles below stay full-warp
  const int64_t t = k / n_head, h = k % n_head;
  const float* row = x + t * x_stride + h * head_dim;
  float vmax = 0.0f, vmin = 0.0f;
  for (int64_t i = lane; i < head_dim; i += detail::kWarp) {
    vmax = fmaxf(vmax, row[i]);
    vmin = fminf(vmin, row[i]);
  }
  detail::warp_minmax(vmax, vmin);
  float s, z;
  detail::asym_int4_params(vmax, vmin, clip_max, clip_min, s, z);
  uint8_t* out = packed + k * (head_dim / 2);
  for (int64_t j = lane; j < head_dim / 2; j += detail::kWarp)
    out[j] = static_cast<uint8_t>(detail::asym_int4_code(row[2 * j], s, z) |
                                  (detail::asym_int4_code(row[2 * j + 1], s, z) << 4));
  if (lane == 0) {
    scale[k] = s;
    zero[k] = z;
  }
}

}  // namespace

cudaError_t quantize_kv_asym_int4(const float* x, int64_t n_tokens, int64_t n_head, int64_t head_dim,
                                  int64_t x_stride, float clip_max, float clip_min, uint8_t* packed,
                                  float* scale, float* zero, cudaStream_t stream) {
  if (n_tokens < 0 || n_head < 1 || head_dim < 2 || head_dim % 2 != 0 || x_stride < n_head * head_dim)
    return cudaErrorInvalidValue;
  const int64_t n_rows = n_tokens * n_head;
  if (n_rows == 0) return cudaSuccess;
  const int64_t blocks = (n_rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  quantize_kv_asym_int4_kernel<<<static_cast<unsigned>(blocks), kWarpsPerBlock * detail::kWarp, 0, stream>>>(
      x, n_rows, n_head, head_dim, x_stride, clip_max, clip_min, packed, scale, zero);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

}  // namespace fq::cuda
