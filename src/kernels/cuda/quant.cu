// Symmetric per-token int4 activation quantization with activation clipping.
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/quant.h"
#include "kernels/cuda/quant_common.cuh"

namespace fq::cuda {
namespace {

constexpr int kThreads = 256;

// ============================================================================================================
// quantize_sym_int4_kernel — reference: fq::ref::quantize_sym_int4 (src/ref/quant.cpp)
// Layout: x [rows, cols] fp32, row stride x_stride; packed [rows, cols/2] uint8, byte j = (q[2j] & 0xF) |
// (q[2j+1] << 4); scales [rows] fp32. Grid: one block per row; the row is read twice from global memory
// (min/max, then codes), which is fine for a bandwidth-bound op with rows of a few thousand elements.
// ============================================================================================================
__global__ void quantize_sym_int4_kernel(const float* __restrict__ x, int64_t cols, int64_t x_stride,
                                         float clip_max, float clip_min, uint8_t* __restrict__ packed,
                                         float* __restrict__ scales) {
  __shared__ float red[2 * detail::kWarp];
  const int64_t r = blockIdx.x;
  const float* row = x + r * x_stride;
  detail::quantize_row_sym_int4(row, cols, clip_max, clip_min, red, packed + r * (cols / 2), scales + r);
}

}  // namespace

cudaError_t quantize_sym_int4(const float* x, int64_t rows, int64_t cols, int64_t x_stride, float clip_max,
                              float clip_min, uint8_t* packed, float* scales, cudaStream_t stream) {
  if (rows < 0 || cols < 0 || cols % 2 != 0 || x_stride < cols || rows > 0x7fffffff)
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  quantize_sym_int4_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, cols, x_stride, clip_max,
                                                                                 clip_min, packed, scales);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

}  // namespace fq::cuda
