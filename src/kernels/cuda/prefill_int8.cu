// The int8 prefill route's activation quantizer (prefill_int8.h).
#include <algorithm>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/prefill_int8.h"
#include "kernels/cuda/quant_common.cuh"

namespace fq::cuda {
namespace {

// One block per row, the row held in registers as float4 chunks (kMaxChunks per thread), one min/max for all
// copies, four codes (one 32-bit store) per chunk.
constexpr int kMaxChunks = 8;
constexpr int kMaxThreads = 1024;

__device__ __forceinline__ uint32_t byte_of(int q) {
  return static_cast<uint32_t>(q) & 0xFFu;
}

__global__ void __launch_bounds__(kMaxThreads)
    quant_i8_kernel(const float* __restrict__ x, int64_t chunks, int64_t x_stride, int64_t rows,
                    SymClips clips, int8_t* __restrict__ out, float* __restrict__ scales,
                    int64_t scale_stride, bool perm) {
  __shared__ float red[2 * detail::kWarp];
  const int64_t r = blockIdx.x;
  const float4* xr = reinterpret_cast<const float4*>(x + r * x_stride);
  float4 v[kMaxChunks];
  float vmax = 0.0f, vmin = 0.0f;  // 0 is neutral: the scale takes max(., 0) / min(., 0)
#pragma unroll
  for (int i = 0; i < kMaxChunks; ++i) {
    const int64_t j = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    v[i] = j < chunks ? xr[j] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    vmax = fmaxf(vmax, fmaxf(fmaxf(v[i].x, v[i].y), fmaxf(v[i].z, v[i].w)));
    vmin = fminf(vmin, fminf(fminf(v[i].x, v[i].y), fminf(v[i].z, v[i].w)));
  }
  detail::block_minmax(vmax, vmin, red);
  for (int c = 0; c < clips.n; ++c) {
    const float scale = detail::sym_int4_scale(vmax, vmin, clips.max[c], clips.min[c]),
                inv = __frcp_rn(scale);
    uint32_t* o = reinterpret_cast<uint32_t*>(out + (c * rows + r) * (chunks * 4));
    const auto code = [&](float f) { return byte_of(detail::sym_int4_code_fast(f, scale, inv)); };
#pragma unroll
    for (int i = 0; i < kMaxChunks; ++i) {
      const int64_t j = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
      if (j < chunks)
        o[perm ? wgmma_perm_col(4 * j) / 4 : j] =
            code(v[i].x) | (code(v[i].y) << 8) | (code(v[i].z) << 16) | (code(v[i].w) << 24);
    }
    if (threadIdx.x == 0) scales[c * scale_stride + r] = scale;
  }
}

}  // namespace

cudaError_t quantize_sym_int4_i8_multi(const float* x, int64_t rows, int64_t cols, int64_t x_stride,
                                       const SymClips& clips, int8_t* out, float* scales,
                                       int64_t scale_stride, cudaStream_t stream, bool perm) {
  if (rows < 0 || rows > 0x7FFFFFFF || cols < 4 || cols % 4 != 0 || (perm && cols % 128 != 0) ||
      cols > int64_t{kMaxThreads} * kMaxChunks * 4 || x_stride < cols || x_stride % 4 != 0 || clips.n < 1 ||
      clips.n > 3 || scale_stride < rows ||
      (rows > 0 && (!x || !out || !scales || reinterpret_cast<uintptr_t>(x) % 16 != 0 ||
                    reinterpret_cast<uintptr_t>(out) % 4 != 0)))
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  // About four chunks (16 values) per thread: enough loads in flight, few idle threads.
  const int64_t chunks = cols / 4;
  const int threads = static_cast<int>(std::clamp<int64_t>((chunks / 4 + 31) / 32 * 32, 64, kMaxThreads));
  quant_i8_kernel<<<static_cast<unsigned>(rows), threads, 0, stream>>>(x, chunks, x_stride, rows, clips, out,
                                                                       scales, scale_stride, perm);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

}  // namespace fq::cuda
