// KV4 cache append: quantize new K and V rows (asymmetric 4-bit per (token, head), exactly as
// ref::quantize_kv_asym_int4) straight into the static cache at their positions.
#include <cuda_fp16.h>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/kv4_store.cuh"

namespace fq::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ float to_f32(float x) {
  return x;
}
__device__ __forceinline__ float to_f32(__half x) {
  return __half2float(x);
}

// One warp per (sequence, token, kv head) row; blockIdx.y = 0 quantizes K, 1 quantizes V.
template <typename T>
__global__ void kv4_append_kernel(Kv4Layer c, const T* __restrict__ k, const T* __restrict__ v,
                                  int64_t n_rows, int64_t n_tok, int64_t x_stride, int64_t slot0,
                                  int64_t pos0, const int32_t* __restrict__ d_pos, int32_t* d_overflow,
                                  Kv4Clip clip) {
  const int lane = threadIdx.x % detail::kWarp;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / detail::kWarp;
  if (r >= n_rows) return;  // whole warps leave together
  const int64_t H = c.n_head_kv, d = c.head_dim;
  const int64_t h = r % H, t = (r / H) % n_tok, b = r / (H * n_tok);
  const int64_t pos = (d_pos ? static_cast<int64_t>(d_pos[b]) : pos0) + t;
  if (pos < 0 || pos >= c.max_ctx) {
    if (lane == 0 && d_overflow) *d_overflow = 1;
    return;
  }
  const bool is_v = blockIdx.y == 1;
  const T* row = (is_v ? v : k) + (b * n_tok + t) * x_stride + h * d;
  detail::kv4_store_row(c, is_v, ((slot0 + b) * c.max_ctx + pos) * H + h, clip,
                        [&](int64_t i) { return to_f32(row[i]); });
}

}  // namespace

cudaError_t kv4_append(const Kv4Layer& cache, const void* k, const void* v, DType dtype, int64_t n_seq,
                       int64_t n_tok, int64_t x_stride, int64_t slot0, int64_t pos0, const int32_t* d_pos,
                       int32_t* d_overflow, const Kv4Clip& clip, cudaStream_t stream) {
  const Kv4Layer& c = cache;
  if (dtype != DType::F32 && dtype != DType::F16) return cudaErrorInvalidValue;
  if (c.n_slots < 1 || c.max_ctx < 1 || c.n_head_kv < 1 || c.head_dim < 2 || c.head_dim % 2 != 0)
    return cudaErrorInvalidValue;
  if (n_seq < 0 || n_tok < 0 || x_stride < c.n_head_kv * c.head_dim || slot0 < 0 || slot0 + n_seq > c.n_slots)
    return cudaErrorInvalidValue;
  // Host-known positions are checked here; device positions need the overflow flag.
  if (d_pos ? d_overflow == nullptr : (pos0 < 0 || pos0 + n_tok > c.max_ctx)) return cudaErrorInvalidValue;
  const int64_t n_rows = n_seq * n_tok * c.n_head_kv;
  if (n_rows == 0) return cudaSuccess;
  const int64_t blocks = (n_rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(blocks), 2);
  if (dtype == DType::F32) {
    kv4_append_kernel<float><<<grid, kWarpsPerBlock * detail::kWarp, 0, stream>>>(
        c, static_cast<const float*>(k), static_cast<const float*>(v), n_rows, n_tok, x_stride, slot0, pos0,
        d_pos, d_overflow, clip);
  } else {
    kv4_append_kernel<__half><<<grid, kWarpsPerBlock * detail::kWarp, 0, stream>>>(
        c, static_cast<const __half*>(k), static_cast<const __half*>(v), n_rows, n_tok, x_stride, slot0, pos0,
        d_pos, d_overflow, clip);
  }
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

}  // namespace fq::cuda
