// Int8 LM head (head_int8.h). quantize: one block per row, the reference's scale (amax / 127, exact IEEE
// division; 1 for an all-zero row) and codes (round half to even, clamp to [-128, 127]). GEMV: a warp owns
// two weight rows and streams them in 16-byte chunks (16 int8), 4 chunks per row in flight per lane; the
// tokens' matching 16 fp16 values come through L1. fp32 sums, then a warp reduction and the row scale.
#include <cuda_fp16.h>

#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/head_int8.h"
#include "kernels/cuda/quant_common.cuh"

namespace fq::cuda {
namespace {

constexpr int kQuantThreads = 256;

__global__ void __launch_bounds__(kQuantThreads)
    quantize_rows_int8_kernel(const __half* __restrict__ w, int64_t cols, int8_t* __restrict__ q,
                              float* __restrict__ scales) {
  __shared__ float red[2 * detail::kWarp];
  const __half* row = w + static_cast<int64_t>(blockIdx.x) * cols;
  float vmax = 0.0f, vmin = 0.0f;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float v = __half2float(row[i]);
    vmax = fmaxf(vmax, v);
    vmin = fminf(vmin, v);
  }
  detail::block_minmax(vmax, vmin, red);
  float scale = __fdiv_rn(fmaxf(fabsf(vmin), vmax), 127.0f);
  if (scale == 0.0f) scale = 1.0f;
  int8_t* out = q + static_cast<int64_t>(blockIdx.x) * cols;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float r = rintf(__fdiv_rn(__half2float(row[i]), scale));
    out[i] = static_cast<int8_t>(fminf(fmaxf(r, -128.0f), 127.0f));
  }
  if (threadIdx.x == 0) scales[blockIdx.x] = scale;
}

constexpr int kWarps = 8, kRows = 2, kUnroll = 4, kMaxM = 16;

// acc[m] += sum over the 16 values of one chunk: weights (16 int8) times token m's 16 fp16 values.
template <int MT>
__device__ __forceinline__ void chunk_dot(const uint4& wv, const uint4* __restrict__ x, int64_t kc, int64_t c,
                                          int M, float (&acc)[MT]) {
  float wf[16];
  const uint32_t ww[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
  for (int i = 0; i < 16; ++i) wf[i] = static_cast<float>(static_cast<int8_t>((ww[i / 4] >> (8 * (i % 4))) & 0xFF));
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m >= M) break;
    const uint4 a = __ldg(x + m * kc + 2 * c), b = __ldg(x + m * kc + 2 * c + 1);
    const __half2* h0 = reinterpret_cast<const __half2*>(&a);
    const __half2* h1 = reinterpret_cast<const __half2*>(&b);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f0 = __half22float2(h0[i]), f1 = __half22float2(h1[i]);
      acc[m] = fmaf(wf[2 * i], f0.x, acc[m]);
      acc[m] = fmaf(wf[2 * i + 1], f0.y, acc[m]);
      acc[m] = fmaf(wf[8 + 2 * i], f1.x, acc[m]);
      acc[m] = fmaf(wf[8 + 2 * i + 1], f1.y, acc[m]);
    }
  }
}

// x: [M, K] as 16-byte chunks (kc = K / 8 of them per row; a weight chunk of 16 int8 pairs with x chunks
// 2c, 2c + 1). M <= MT.
template <int MT>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_int8_kernel(const uint4* __restrict__ x, int M, int64_t K, const uint4* __restrict__ q,
                     const float* __restrict__ scales, int64_t N, float* __restrict__ y) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kRows;
  if (row0 >= N) return;
  const int64_t wc = K / 16, kc = K / 8;  // weight chunks per row, x chunks per row
  const uint4* wr[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) wr[r] = q + (row0 + r < N ? row0 + r : row0) * wc;
  float acc[kRows][MT];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;
  int64_t c = lane;
  for (; c + 32 * (kUnroll - 1) < wc; c += 32 * kUnroll) {
    uint4 wv[kUnroll][kRows];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int r = 0; r < kRows; ++r) wv[u][r] = detail::load_stream(wr[r] + c + 32 * u);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int r = 0; r < kRows; ++r) chunk_dot<MT>(wv[u][r], x, kc, c + 32 * u, M, acc[r]);
  }
  for (; c < wc; c += 32)
#pragma unroll
    for (int r = 0; r < kRows; ++r) chunk_dot<MT>(detail::load_stream(wr[r] + c), x, kc, c, M, acc[r]);
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int off = 16; off > 0; off /= 2) acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], off);
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (row0 + r >= N) break;
      const float s = scales[row0 + r];
#pragma unroll
      for (int m = 0; m < MT; ++m)
        if (m < M) y[m * N + row0 + r] = acc[r][m] * s;
    }
}

template <int MT>
void launch_gemv(const uint4* x, int M, int64_t K, const uint4* q, const float* scales, int64_t N, float* y,
                 cudaStream_t stream) {
  const int64_t blocks = (N + kWarps * kRows - 1) / (kWarps * kRows);
  gemv_int8_kernel<MT><<<static_cast<unsigned>(blocks), kWarps * 32, 0, stream>>>(x, M, K, q, scales, N, y);
}

}  // namespace

cudaError_t quantize_rows_int8(const uint16_t* w, int64_t rows, int64_t cols, int8_t* q, float* scales,
                               cudaStream_t stream) {
  if (rows < 0 || cols < 1 || rows > 0x7FFFFFFF || (rows > 0 && (!w || !q || !scales))) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  quantize_rows_int8_kernel<<<static_cast<unsigned>(rows), kQuantThreads, 0, stream>>>(
      reinterpret_cast<const __half*>(w), cols, q, scales);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t gemv_int8_f16(const uint16_t* x, int64_t M, int64_t K, const int8_t* q, const float* scales,
                          int64_t N, float* y, cudaStream_t stream) {
  const auto misaligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 != 0; };
  if (M < 1 || N < 1 || K < 16 || K % 16 != 0 || !x || !q || !scales || !y || misaligned(x) || misaligned(q) ||
      (N + kWarps * kRows - 1) / (kWarps * kRows) > 0x7FFFFFFF)
    return cudaErrorInvalidValue;
  const auto* q4 = reinterpret_cast<const uint4*>(q);
  for (int64_t m0 = 0; m0 < M; m0 += kMaxM) {
    const int m = static_cast<int>(M - m0 < kMaxM ? M - m0 : kMaxM);
    const auto* x4 = reinterpret_cast<const uint4*>(x + m0 * K);
    float* ym = y + m0 * N;
    if (m == 1)
      launch_gemv<1>(x4, m, K, q4, scales, N, ym, stream);
    else if (m <= 4)
      launch_gemv<4>(x4, m, K, q4, scales, N, ym, stream);
    else
      launch_gemv<16>(x4, m, K, q4, scales, N, ym, stream);
    FQ_CUDA_RETURN_LAUNCH_ERROR();
  }
  return cudaSuccess;
}

}  // namespace fq::cuda
