// FP16 GEMV for the decode step (engine_kernels.h): y[M, N] (+)= x[M, K] . W[N, K]^T, M <= 4.
// 256 threads = 8 warps per CTA; warp w owns rows 2 (8 blockIdx.x + w) .. + 1. Lane l reads the 16-byte
// chunks l, l + 32, ... of both rows (kUnroll chunks per row issued before the first use) and the matching
// chunks of the M x rows (L1-resident: x is at most 4 x K fp16), accumulates in fp32, then a warp reduction.
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/engine_kernels.h"

namespace fq::cuda {
namespace {

constexpr int kRows = 2;  // weight rows per warp
constexpr int kWarps = 8;
constexpr int kUnroll = 4;  // 16-byte chunks per row in flight per lane
constexpr int kMaxM = 4;

__device__ __forceinline__ void to_f32(const uint4& u, float* f) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __half22float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

template <int M>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_f16_kernel(const uint4* __restrict__ x, int64_t K, const uint4* __restrict__ w, int64_t N, void* y,
                    bool y_f32, bool acc_out) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kRows;
  if (row0 >= N) return;
  const int64_t kc = K / 8;  // 16-byte chunks per row
  const uint4* wr[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) wr[r] = w + (row0 + r < N ? row0 + r : row0) * kc;
  float acc[kRows][M];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.0f;

  for (int64_t c0 = lane; c0 < kc; c0 += 32 * kUnroll) {
    uint4 wv[kUnroll][kRows];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + u * 32;
#pragma unroll
      for (int r = 0; r < kRows; ++r) wv[u][r] = c < kc ? __ldcs(wr[r] + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + u * 32;
      if (c >= kc) break;
      float wf[kRows][8];
#pragma unroll
      for (int r = 0; r < kRows; ++r) to_f32(wv[u][r], wf[r]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xf[8];
        to_f32(__ldg(x + m * kc + c), xf);
#pragma unroll
        for (int r = 0; r < kRows; ++r)
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[r][m] = fmaf(wf[r][e], xf[e], acc[r][m]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int off = 16; off > 0; off /= 2) acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], off);
  if (lane != 0) return;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t n = row0 + r;
    if (n >= N) break;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (y_f32) {
        float* yp = static_cast<float*>(y) + m * N + n;
        *yp = acc_out ? *yp + acc[r][m] : acc[r][m];
      } else {
        static_cast<__half*>(y)[m * N + n] = __float2half_rn(acc[r][m]);
      }
    }
  }
}

}  // namespace

bool gemv_f16_supported(int64_t M, int64_t K, const void* x, const void* w) {
  return M >= 1 && M <= kMaxM && K > 0 && K % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

cudaError_t gemv_f16(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, int64_t N, void* y,
                     bool y_f32, bool accumulate, cudaStream_t stream) {
  if (!gemv_f16_supported(M, K, x, w) || N <= 0 || !y || (accumulate && !y_f32)) return cudaErrorInvalidValue;
  const int64_t blocks = (N + kWarps * kRows - 1) / (kWarps * kRows);
  if (blocks > 0x7FFFFFFF) return cudaErrorInvalidValue;
  const auto* xv = reinterpret_cast<const uint4*>(x);
  const auto* wv = reinterpret_cast<const uint4*>(w);
  const dim3 grid(static_cast<unsigned>(blocks));
  switch (M) {
    case 1:
      gemv_f16_kernel<1><<<grid, kWarps * 32, 0, stream>>>(xv, K, wv, N, y, y_f32, accumulate);
      break;
    case 2:
      gemv_f16_kernel<2><<<grid, kWarps * 32, 0, stream>>>(xv, K, wv, N, y, y_f32, accumulate);
      break;
    case 3:
      gemv_f16_kernel<3><<<grid, kWarps * 32, 0, stream>>>(xv, K, wv, N, y, y_f32, accumulate);
      break;
    default:
      gemv_f16_kernel<4><<<grid, kWarps * 32, 0, stream>>>(xv, K, wv, N, y, y_f32, accumulate);
      break;
  }
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

}  // namespace fq::cuda
