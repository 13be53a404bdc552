// Engine-only kernels (engine_kernels.h): random fill, fused q/k/v bias + RoPE + FP16 cache write, the decode
// step advance. The FP16 decode attention is in decode_attn_f16.cu.
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/engine_kernels.h"

namespace fq::cuda {
namespace {

__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__global__ void fill_normal_f16_kernel(__half* dst, int64_t n, uint64_t seed, float stddev) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const uint64_t h = splitmix64(seed ^ splitmix64(static_cast<uint64_t>(i)));
    // Two 24-bit uniforms; u1 in (0, 1] so that the log is finite.
    const float u1 = (static_cast<float>(h >> 40) + 1.0f) * (1.0f / 16777216.0f);
    const float u2 = static_cast<float>((h >> 8) & 0xFFFFFFu) * (1.0f / 16777216.0f);
    const float z = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    dst[i] = __float2half_rn(stddev * z);
  }
}

__global__ void fill_f32_kernel(float* dst, int64_t n, float v) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    dst[i] = v;
}

int grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

constexpr int kRopeThreads = 256;

// One block per row. cos/sin of the row's position are computed once per pair index (shared memory), then
// every (head, pair) of q and k is rotated; v is copied. Math in fp32 with the reference's operation order.
__global__ void __launch_bounds__(kRopeThreads)
    qkv_rope_append_kernel(__half* qkv, int64_t qkv_stride, int64_t n_tok, int64_t slot0, int64_t pos0,
                           const int32_t* __restrict__ d_pos, const float* __restrict__ bias, int n_head,
                           const float* __restrict__ inv_freq, F16KvCache c, int32_t* d_overflow) {
  extern __shared__ float sc[];  // [half] cos, [half] sin
  const int64_t r = blockIdx.x;
  const int64_t seq = r / n_tok;
  const int64_t p = (d_pos ? static_cast<int64_t>(d_pos[seq]) : pos0) + r % n_tok;
  const int64_t slot = slot0 + seq;
  const int d = static_cast<int>(c.head_dim), half = d / 2, n_kv = static_cast<int>(c.n_head_kv);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float s, co;
    sincosf(__fmul_rn(inv_freq[i], static_cast<float>(p)), &s, &co);
    sc[i] = co;
    sc[half + i] = s;
  }
  __syncthreads();
  const bool ok = p >= 0 && p < c.max_ctx && slot >= 0 && slot < c.n_slots;
  if (!ok && threadIdx.x == 0 && d_overflow) *d_overflow = 1;
  __half* row = qkv + r * qkv_stride;
  const size_t cell = ok ? static_cast<size_t>((slot * c.max_ctx + p) * c.n_head_kv) * d : 0;
  __half* kc = reinterpret_cast<__half*>(c.k) + cell;
  __half* vc = reinterpret_cast<__half*>(c.v) + cell;
  const int n_pairs = (n_head + n_kv) * half;
  for (int j = threadIdx.x; j < n_pairs; j += blockDim.x) {
    const int head = j / half, i = j % half;
    const int e = head * d + i;  // column of the pair's first element (k heads follow the q heads)
    float a = __half2float(row[e]), b = __half2float(row[e + half]);
    if (bias) {
      a = __fadd_rn(a, bias[e]);
      b = __fadd_rn(b, bias[e + half]);
    }
    const float co = sc[i], s = sc[half + i];
    const __half y1 = __float2half_rn(__fadd_rn(__fmul_rn(a, co), __fmul_rn(-b, s)));
    const __half y2 = __float2half_rn(__fadd_rn(__fmul_rn(b, co), __fmul_rn(a, s)));
    if (head < n_head) {
      row[e] = y1;
      row[e + half] = y2;
    } else if (ok) {
      const int kh = head - n_head;
      kc[kh * d + i] = y1;
      kc[kh * d + i + half] = y2;
    }
  }
  if (!ok) return;
  const int v0 = (n_head + n_kv) * d;
  for (int j = threadIdx.x; j < n_kv * d; j += blockDim.x) {
    __half v = row[v0 + j];
    if (bias) v = __float2half_rn(__half2float(v) + bias[v0 + j]);
    vc[j] = v;
  }
}

__global__ void decode_advance_kernel(const int32_t* __restrict__ next, int32_t* tokens, int32_t* pos,
                                      int32_t* len, int batch, int32_t* hist, int64_t hist_rows,
                                      int32_t* step) {
  const int b = threadIdx.x;
  const int32_t s = *step;
  for (int i = b; i < batch; i += blockDim.x) {
    const int32_t t = next[i];
    tokens[i] = t;
    pos[i] += 1;
    len[i] += 1;
    if (hist && s < hist_rows) hist[static_cast<int64_t>(s) * batch + i] = t;
  }
  __syncthreads();
  if (b == 0) *step = s + 1;
}

}  // namespace

cudaError_t fill_normal_f16(uint16_t* dst, int64_t n, uint64_t seed, float stddev, cudaStream_t stream) {
  if (n < 0 || (n > 0 && !dst)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  fill_normal_f16_kernel<<<grid_for(n, 256) < 4096 ? grid_for(n, 256) : 4096, 256, 0, stream>>>(
      reinterpret_cast<__half*>(dst), n, seed, stddev);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t fill_f32(float* dst, int64_t n, float value, cudaStream_t stream) {
  if (n < 0 || (n > 0 && !dst)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  fill_f32_kernel<<<grid_for(n, 256) < 4096 ? grid_for(n, 256) : 4096, 256, 0, stream>>>(dst, n, value);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t qkv_rope_append_f16(uint16_t* qkv, int64_t qkv_stride, int64_t rows, int64_t n_tok, int64_t slot0,
                                int64_t pos0, const int32_t* d_pos, const float* bias, int64_t n_head,
                                const float* inv_freq, const F16KvCache& cache, int32_t* d_overflow,
                                cudaStream_t stream) {
  const int64_t d = cache.head_dim;
  if (rows < 0 || n_tok <= 0 || rows % n_tok != 0 || d <= 0 || d % 2 != 0 || d > 1024 || n_head <= 0 ||
      cache.n_head_kv <= 0 || qkv_stride < (n_head + 2 * cache.n_head_kv) * d || !inv_freq || !cache.k ||
      !cache.v || (rows > 0 && !qkv) || rows > 0x7FFFFFFF)
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  qkv_rope_append_kernel<<<static_cast<unsigned>(rows), kRopeThreads, static_cast<size_t>(d) * sizeof(float),
                           stream>>>(reinterpret_cast<__half*>(qkv), qkv_stride, n_tok, slot0, pos0, d_pos,
                                     bias, static_cast<int>(n_head), inv_freq, cache, d_overflow);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t decode_advance(const int32_t* next, int32_t* tokens, int32_t* pos, int32_t* len, int64_t batch,
                           int32_t* hist, int64_t hist_rows, int32_t* step, cudaStream_t stream) {
  if (batch <= 0 || batch > 1024 || !next || !tokens || !pos || !len || !step) return cudaErrorInvalidValue;
  decode_advance_kernel<<<1, 128, 0, stream>>>(next, tokens, pos, len, static_cast<int>(batch), hist,
                                               hist_rows, step);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

}  // namespace fq::cuda
