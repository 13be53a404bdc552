// W4A16 / W8A8 / W4A8 linear kernels (wq_linear.h, which states each contract and its CPU reference).
//
// Both decode GEMVs share the house layout of gemv_f16.cu / qgemv.cu: 128-thread blocks, a warp owns R = 2
// consecutive weight rows, lane l reads the 16-byte chunks l, l + 32, ... of each row with streaming loads (U
// chunks per row issued before the first use), the matching activation bytes come through L1 (every warp of
// an SM reads the same ones), then a warp reduction and lane 0 stores.
//
// W4A16: a chunk is 32 int4 codes. Code e (two's complement nibble) becomes fp32 without an int->float
// conversion: u = e ^ 8 is in 0..15, and float(0x4B000000 | u) = 2^23 + u exactly, so subtracting 2^23 + 8
// gives e exactly (one logic op and one FADD per code, shared by the M tokens).
// A8: int8 weights: a chunk is 16 codes, one activation chunk per token, 4 dp4a. int4 weights: a chunk is 32
// codes; for each 32-bit word (8 codes e0..e7), (w << 4) & 0xF0F0F0F0 holds 16 e0, 16 e2, 16 e4, 16 e6 as
// int8 lanes and w & 0xF0F0F0F0 holds 16 e1, 16 e3, 16 e5, 16 e7; the 8 matching activation bytes are
// permuted into evens and odds (__byte_perm), so two dp4a add 16 x the exact dot product; |acc| <= 16 * 8 *
// 128 * K <= 2^30, and acc >> 4 after the reduction is exact.
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cuda/a8_epilogue.cuh"
#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/quant_common.cuh"
#include "kernels/cuda/wq_linear.h"

namespace fq::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRows = 2;  // weight rows per warp
constexpr unsigned kFull = 0xffffffffu;

unsigned grid_for(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// Chunks in flight per row and lane by token count: fewer registers at large M.
__host__ __device__ constexpr int unroll_for(int MT) {
  return MT <= 2 ? 4 : (MT <= 4 ? 2 : 1);
}

// ---- W4A16 GEMV
// -----------------------------------------------------------------------------------------------

// The 8 codes of one 32-bit word (low nibble first) as exact fp32 values.
__device__ __forceinline__ void codes_f32(uint32_t w, float (&f)[8]) {
  const uint32_t u = w ^ 0x88888888u;  // two's complement nibble e -> e + 8 in 0..15
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = __int_as_float(0x4B000000u | ((u >> (4 * i)) & 0xFu)) - 8388616.0f;
}

__device__ __forceinline__ void halves_f32(const uint4& v, float (&f)[8]) {
  const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __half22float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// One weight chunk c (32 codes) of kRows rows times the matching x of the first M tokens (x chunks of 8
// halves: 4c .. 4c + 3 of each row, xc of them per row).
template <int MT>
__device__ __forceinline__ void w4_chunk(const uint4 (&w)[kRows], const uint4* __restrict__ x, int64_t xc,
                                         int64_t c, int M, float (&acc)[kRows][MT]) {
  const uint32_t* ww[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) ww[r] = reinterpret_cast<const uint32_t*>(&w[r]);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float wf[kRows][8];
#pragma unroll
    for (int r = 0; r < kRows; ++r) codes_f32(ww[r][j], wf[r]);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= M) break;
      float xf[8];
      halves_f32(__ldg(x + m * xc + 4 * c + j), xf);
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r][m] = fmaf(wf[r][e], xf[e], acc[r][m]);
    }
  }
}

template <int MT>
__global__ void __launch_bounds__(kWarps * 32)
    w4a16_gemv_kernel(const uint4* __restrict__ x, int M, int64_t K, const uint4* __restrict__ qw,
                      const float* __restrict__ sw, int64_t N, void* y, bool y_f32, bool accumulate) {
  constexpr int U = unroll_for(MT);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kRows;
  if (n0 >= N) return;  // whole warps leave together
  const int64_t wc = K / 32, xc = K / 8;
  const uint4* wr[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) wr[r] = qw + (n0 + r < N ? n0 + r : N - 1) * wc;
  float acc[kRows][MT];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;
  int64_t c = lane;
  for (; c + 32 * (U - 1) < wc; c += 32 * U) {
    uint4 w[U][kRows];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < kRows; ++r) w[u][r] = detail::load_stream(wr[r] + c + 32 * u);
#pragma unroll
    for (int u = 0; u < U; ++u) w4_chunk<MT>(w[u], x, xc, c + 32 * u, M, acc);
  }
  for (; c < wc; c += 32) {
    uint4 w[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) w[r] = detail::load_stream(wr[r] + c);
    w4_chunk<MT>(w, x, xc, c, M, acc);
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int off = 16; off > 0; off /= 2) acc[r][m] += __shfl_xor_sync(kFull, acc[r][m], off);
  if (lane != 0) return;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t n = n0 + r;
    if (n >= N) break;
    const float s = sw[n];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= M) break;
      const float t = acc[r][m] * s;
      if (y_f32) {
        float* yp = static_cast<float*>(y) + m * N + n;
        *yp = accumulate ? *yp + t : t;
      } else {
        static_cast<__half*>(y)[m * N + n] = __float2half_rn(t);
      }
    }
  }
}

template <int MT>
void launch_w4a16(const uint16_t* x, int M, int64_t K, const uint8_t* qw, const float* sw, int64_t N, void* y,
                  bool y_f32, bool accumulate, cudaStream_t stream) {
  const int64_t blocks = (N + kWarps * kRows - 1) / (kWarps * kRows);
  w4a16_gemv_kernel<MT><<<static_cast<unsigned>(blocks), kWarps * 32, 0, stream>>>(
      reinterpret_cast<const uint4*>(x), M, K, reinterpret_cast<const uint4*>(qw), sw, N, y, y_f32,
      accumulate);
}

__global__ void dequant_w4_f16_kernel(const uint8_t* __restrict__ qw, const float* __restrict__ sw,
                                      int64_t kb, int64_t total, __half2* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int b = qw[i];
  const float s = sw[i / kb];
  const int lo = static_cast<int>((static_cast<unsigned>(b & 0xF) ^ 8u)) - 8;
  const int hi = static_cast<int>((static_cast<unsigned>(b >> 4) ^ 8u)) - 8;
  out[i] = __halves2half2(__float2half_rn(__fmul_rn(static_cast<float>(lo), s)),
                          __float2half_rn(__fmul_rn(static_cast<float>(hi), s)));
}

// ---- int8 activation quantization
// -----------------------------------------------------------------------------

__device__ __forceinline__ float load_f32(const float* p, int64_t i) {
  return p[i];
}
__device__ __forceinline__ float load_f32(const __half* p, int64_t i) {
  return __half2float(p[i]);
}

// Mirrors ref::quantize_sym_row with bits = 8 (fake_quant.cpp): scale = max(|min(x,0) clip_min|, max(x,0)
// clip_max) / 127 (1 when 0), code = clamp(round_half_even(x / scale), -128, 127).
template <typename T>
__global__ void quant_int8_multi_kernel(const T* __restrict__ x, int64_t cols, int64_t x_stride, int64_t rows,
                                        SymClips clips, int8_t* __restrict__ q, int64_t copy_stride,
                                        float* __restrict__ scales) {
  __shared__ float red[2 * detail::kWarp];
  const int64_t r = blockIdx.x;
  const T* xr = x + r * x_stride;
  float vmax = 0.0f, vmin = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = load_f32(xr, c);
    vmax = fmaxf(vmax, v);
    vmin = fminf(vmin, v);
  }
  detail::block_minmax(vmax, vmin, red);
  for (int k = 0; k < clips.n; ++k) {
    const float xmax = __fmul_rn(vmax, clips.max[k]), xmin = __fmul_rn(vmin, clips.min[k]);
    float scale = __fdiv_rn(fmaxf(fabsf(xmin), xmax), 127.0f);
    if (scale == 0.0f) scale = 1.0f;
    int8_t* out = q + k * copy_stride + r * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float v = rintf(__fdiv_rn(load_f32(xr, c), scale));
      out[c] = static_cast<int8_t>(fminf(fmaxf(v, -128.0f), 127.0f));
    }
    if (threadIdx.x == 0) scales[k * rows + r] = scale;
  }
}

// ---- int8-activation GEMV
// -------------------------------------------------------------------------------------

struct Segs {
  int n = 1;
  const int8_t* qx[3] = {nullptr, nullptr, nullptr};
  const float* sx[3] = {nullptr, nullptr, nullptr};
  int64_t end[3] = {0, 0, 0};
};

__device__ __forceinline__ int seg_of(const Segs& a, int64_t n) {
  int s = 0;
  while (s + 1 < a.n && n >= a.end[s]) ++s;
  return s;
}

// The epilogue of ref::qgemm_epilogue (+ residual), stored as fp32 or fp16.
__device__ __forceinline__ void store_epilogue(int32_t acc, float sx, float sw, const float* residual,
                                               void* y, bool y_f16, int64_t i) {
  float t = __int2float_rn(acc);
  t = __fmul_rn(t, sx);
  t = __fmul_rn(t, sw);
  if (residual) t = __fadd_rn(t, residual[i]);
  if (y_f16)
    static_cast<__half*>(y)[i] = __float2half_rn(t);
  else
    static_cast<float*>(y)[i] = t;
}

// acc += (WB == 8: 1, WB == 4: 16) x the dot product of weight chunk w with token m's activation chunk(s).
template <int WB>
__device__ __forceinline__ int a8_dot(const uint4& w, const uint4* __restrict__ xrow, int64_t c, int acc) {
  if constexpr (WB == 8) {
    const uint4 xv = __ldg(xrow + c);
    acc = __dp4a(static_cast<int>(w.x), static_cast<int>(xv.x), acc);
    acc = __dp4a(static_cast<int>(w.y), static_cast<int>(xv.y), acc);
    acc = __dp4a(static_cast<int>(w.z), static_cast<int>(xv.z), acc);
    acc = __dp4a(static_cast<int>(w.w), static_cast<int>(xv.w), acc);
  } else {
    const uint4 x0 = __ldg(xrow + 2 * c), x1 = __ldg(xrow + 2 * c + 1);
    const uint32_t xw[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
    const uint32_t ww[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int lo = static_cast<int>((ww[j] << 4) & 0xF0F0F0F0u), hi = static_cast<int>(ww[j] & 0xF0F0F0F0u);
      const int ev = static_cast<int>(__byte_perm(xw[2 * j], xw[2 * j + 1], 0x6420));
      const int od = static_cast<int>(__byte_perm(xw[2 * j], xw[2 * j + 1], 0x7531));
      acc = __dp4a(lo, ev, acc);
      acc = __dp4a(hi, od, acc);
    }
  }
  return acc;
}

// Rows n0, n0 + 1 of a warp lie in one segment (boundaries even: a8_gemv_supported).
template <int MT, int WB>
__global__ void __launch_bounds__(kWarps * 32)
    a8_gemv_kernel(Segs a, const uint4* __restrict__ qw, const float* __restrict__ sw, const float* residual,
                   void* y, bool y_f16, int M, int64_t N, int64_t K) {
  constexpr int U = unroll_for(MT);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kRows;
  if (n0 >= N) return;
  const int64_t wc = WB == 8 ? K / 16 : K / 32, xc = K / 16;  // weight / activation chunks per row
  const int seg = seg_of(a, n0);
  const uint4* __restrict__ x = reinterpret_cast<const uint4*>(a.qx[seg]);
  const float* __restrict__ sx = a.sx[seg];
  const uint4* wr[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) wr[r] = qw + (n0 + r < N ? n0 + r : N - 1) * wc;
  int acc[kRows][MT];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0;
  int64_t c = lane;
  for (; c + 32 * (U - 1) < wc; c += 32 * U) {
    uint4 w[U][kRows];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < kRows; ++r) w[u][r] = detail::load_stream(wr[r] + c + 32 * u);
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m >= M) break;
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r][m] = a8_dot<WB>(w[u][r], x + m * xc, c + 32 * u, acc[r][m]);
      }
  }
  for (; c < wc; c += 32) {
    uint4 w[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) w[r] = detail::load_stream(wr[r] + c);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= M) break;
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[r][m] = a8_dot<WB>(w[r], x + m * xc, c, acc[r][m]);
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int off = 16; off > 0; off /= 2) acc[r][m] += __shfl_xor_sync(kFull, acc[r][m], off);
  if (lane != 0) return;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t n = n0 + r;
    if (n >= N) break;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= M) break;
      const int32_t s = WB == 8 ? acc[r][m] : (acc[r][m] >> 4);  // exact: a multiple of 16
      store_epilogue(s, sx[m], sw[n], residual, y, y_f16, m * N + n);
    }
  }
}

template <int MT, int WB>
void launch_a8(const Segs& a, const void* qw, const float* sw, const float* residual, void* y, bool y_f16,
               int M, int64_t N, int64_t K, cudaStream_t stream) {
  const int64_t blocks = (N + kWarps * kRows - 1) / (kWarps * kRows);
  a8_gemv_kernel<MT, WB><<<static_cast<unsigned>(blocks), kWarps * 32, 0, stream>>>(
      a, reinterpret_cast<const uint4*>(qw), sw, residual, y, y_f16, M, N, K);
}

template <int WB>
void dispatch_a8(const Segs& a, const void* qw, const float* sw, const float* residual, void* y, bool y_f16,
                 int M, int64_t N, int64_t K, cudaStream_t stream) {
  if (M == 1)
    launch_a8<1, WB>(a, qw, sw, residual, y, y_f16, M, N, K, stream);
  else if (M == 2)
    launch_a8<2, WB>(a, qw, sw, residual, y, y_f16, M, N, K, stream);
  else if (M <= 4)
    launch_a8<4, WB>(a, qw, sw, residual, y, y_f16, M, N, K, stream);
  else if (M <= 8)
    launch_a8<8, WB>(a, qw, sw, residual, y, y_f16, M, N, K, stream);
  else
    launch_a8<16, WB>(a, qw, sw, residual, y, y_f16, M, N, K, stream);
}

// ---- plain exact kernels
// --------------------------------------------------------------------------------------

__device__ __forceinline__ int w_code(const uint8_t* row, int64_t k, bool w4) {
  if (!w4) return static_cast<int8_t>(row[k]);
  const unsigned b = row[k / 2];
  const unsigned nib = (k & 1) ? (b >> 4) : (b & 0xFu);
  return static_cast<int>(nib ^ 8u) - 8;
}

__global__ void a8_simple_kernel(Segs a, const uint8_t* __restrict__ qw, bool w4,
                                 const float* __restrict__ sw, const float* residual, void* y, bool y_f16,
                                 int64_t M, int64_t N, int64_t K) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * N) return;
  const int64_t m = i / N, n = i % N;
  const int s = seg_of(a, n);
  const int8_t* x = a.qx[s] + m * K;
  const uint8_t* w = qw + n * (w4 ? K / 2 : K);
  int32_t acc = 0;
  for (int64_t k = 0; k < K; ++k) acc += static_cast<int32_t>(x[k]) * w_code(w, k, w4);
  store_epilogue(acc, a.sx[s][m], sw[n], residual, y, y_f16, i);
}

// One block row per output row (blockIdx.y, chunks of 65535 rows in the host loop), four columns per thread:
// int4 / float4 loads and 8- or 16-byte stores where the pointers and strides allow (vec), else one column at
// a time. Every element: ref::qgemm_epilogue's operations in its order.
using detail::a8_epi;

// Four consecutive outputs (8- or 16-byte aligned) / one output, fp16 or fp32.
__device__ __forceinline__ void store4(void* y, bool f16, int64_t o, float t0, float t1, float t2, float t3) {
  if (f16) {
    const __half2 h01 = __halves2half2(__float2half_rn(t0), __float2half_rn(t1)),
                  h23 = __halves2half2(__float2half_rn(t2), __float2half_rn(t3));
    uint2 u;
    u.x = *reinterpret_cast<const uint32_t*>(&h01);
    u.y = *reinterpret_cast<const uint32_t*>(&h23);
    *reinterpret_cast<uint2*>(static_cast<__half*>(y) + o) = u;
  } else {
    *reinterpret_cast<float4*>(static_cast<float*>(y) + o) = make_float4(t0, t1, t2, t3);
  }
}

__device__ __forceinline__ void store1(void* y, bool f16, int64_t o, float t) {
  if (f16)
    static_cast<__half*>(y)[o] = __float2half_rn(t);
  else
    static_cast<float*>(y)[o] = t;
}

__global__ void a8_epilogue_kernel(const int32_t* __restrict__ acc, int64_t lda, const float* __restrict__ sx,
                                   const float* __restrict__ sw, const float* residual, void* y, bool y_f16,
                                   int64_t ldy, int64_t col0, int64_t n, int64_t row0, bool vec) {
  const int64_t m = row0 + blockIdx.y, j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (j >= n) return;
  const float s = sx[m];
  const int32_t* a = acc + m * lda + j;
  const int64_t o = m * ldy + col0 + j;
  if (vec && j + 4 <= n) {
    const int4 q = *reinterpret_cast<const int4*>(a);
    const float4 w = *reinterpret_cast<const float4*>(sw + col0 + j);
    store4(y, y_f16, o, a8_epi(q.x, s, w.x, residual, o), a8_epi(q.y, s, w.y, residual, o + 1),
           a8_epi(q.z, s, w.z, residual, o + 2), a8_epi(q.w, s, w.w, residual, o + 3));
    return;
  }
  for (int64_t q = 0; q < 4 && j + q < n; ++q)
    store1(y, y_f16, o + q, a8_epi(a[q], s, sw[col0 + j + q], residual, o + q));
}

// a8_swiglu_epilogue: the layout of a8_epilogue_kernel, one output row per block row.
using detail::a8_swiglu;

__global__ void a8_swiglu_epilogue_kernel(const int32_t* __restrict__ acc_g,
                                          const int32_t* __restrict__ acc_u, int64_t lda,
                                          const float* __restrict__ sx_g, const float* __restrict__ sx_u,
                                          const float* __restrict__ sw_g, const float* __restrict__ sw_u,
                                          void* out, bool out_f16, int64_t ldo, int64_t n, int64_t row0,
                                          bool vec) {
  const int64_t m = row0 + blockIdx.y, j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (j >= n) return;
  const float sg = sx_g[m], su = sx_u[m];
  const int64_t a = m * lda + j, o = m * ldo + j;
  if (vec && j + 4 <= n) {
    const int4 qg = *reinterpret_cast<const int4*>(acc_g + a), qu = *reinterpret_cast<const int4*>(acc_u + a);
    const float4 wg = *reinterpret_cast<const float4*>(sw_g + j),
                 wu = *reinterpret_cast<const float4*>(sw_u + j);
    store4(out, out_f16, o, a8_swiglu(qg.x, qu.x, sg, su, wg.x, wu.x),
           a8_swiglu(qg.y, qu.y, sg, su, wg.y, wu.y), a8_swiglu(qg.z, qu.z, sg, su, wg.z, wu.z),
           a8_swiglu(qg.w, qu.w, sg, su, wg.w, wu.w));
    return;
  }
  for (int64_t q = 0; q < 4 && j + q < n; ++q)
    store1(out, out_f16, o + q, a8_swiglu(acc_g[a + q], acc_u[a + q], sg, su, sw_g[j + q], sw_u[j + q]));
}

__global__ void unpack_int4_int8_kernel(const uint8_t* __restrict__ qw, int64_t total,
                                        char2* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const unsigned b = qw[i];
  out[i] = make_char2(static_cast<signed char>(static_cast<int>((b & 0xFu) ^ 8u) - 8),
                      static_cast<signed char>(static_cast<int>((b >> 4) ^ 8u) - 8));
}

// Four packed bytes (eight codes) per thread: nibble n of a word -> byte n of the output, (n ^ 8) - 8 per
// byte, computed on whole words (the prefill GEMMs unpack every weight, ~110 MB per layer of an 8B model).
__global__ void unpack_int4_int8_x4_kernel(const uint32_t* __restrict__ qw, int64_t words,
                                           uint2* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= words) return;
  const uint32_t w = qw[i];
  // Spread the nibbles into bytes: even nibbles (low) and odd nibbles (high) of each byte.
  const uint32_t lo = w & 0x0F0F0F0Fu, hi = (w >> 4) & 0x0F0F0F0Fu;
  // Interleave: output bytes 0..3 = lo0 hi0 lo1 hi1, 4..7 = lo2 hi2 lo3 hi3.
  const uint32_t a = __byte_perm(lo, hi, 0x5140), b = __byte_perm(lo, hi, 0x7362);
  // Sign-extend each 4-bit value in its byte: (v ^ 8) - 8, per byte without borrows: (v ^ 8) + 0xF8 mod 256.
  const auto sext = [](uint32_t v) { return __vadd4(v ^ 0x08080808u, 0xF8F8F8F8u); };
  out[i] = make_uint2(sext(a), sext(b));
}

// One thread per element of the row's K|V (kvd each).
__global__ void f16_kv_append_kernel(const __half* __restrict__ k, const __half* __restrict__ v,
                                     int64_t stride, int64_t rows, int64_t n_tok, int64_t slot0, int64_t pos0,
                                     const int32_t* __restrict__ d_pos, F16KvCache c, int32_t* d_overflow) {
  const int64_t kvd = c.n_head_kv * c.head_dim;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * kvd) return;
  const int64_t r = i / kvd, e = i % kvd, seq = r / n_tok;
  const int64_t p = (d_pos ? static_cast<int64_t>(d_pos[seq]) : pos0) + r % n_tok;
  if (p < 0 || p >= c.max_ctx || slot0 + seq >= c.n_slots) {
    if (d_overflow) *d_overflow = 1;
    return;
  }
  const int64_t o = ((slot0 + seq) * c.max_ctx + p) * kvd + e;
  reinterpret_cast<__half*>(c.k)[o] = k[r * stride + e];
  reinterpret_cast<__half*>(c.v)[o] = v[r * stride + e];
}

bool segs_of(const Int8Acts& acts, int64_t N, Segs& s) {
  if (acts.n < 1 || acts.n > 3 || acts.end[acts.n - 1] != N) return false;
  s.n = acts.n;
  int64_t prev = 0;
  for (int i = 0; i < acts.n; ++i) {
    if (!acts.qx[i] || !acts.sx[i] || acts.end[i] <= prev) return false;
    s.qx[i] = acts.qx[i];
    s.sx[i] = acts.sx[i];
    s.end[i] = acts.end[i];
    prev = acts.end[i];
  }
  return true;
}

}  // namespace

// ---- public launchers
// -----------------------------------------------------------------------------------------

bool w4a16_gemv_supported(int64_t M, int64_t K, const void* x, const void* qw) {
  return M >= 1 && M <= kWqGemvMaxM && K >= 32 && K % 32 == 0 && x && qw && aligned16(x) && aligned16(qw);
}

cudaError_t w4a16_gemv(const uint16_t* x, int64_t M, int64_t K, const uint8_t* qw, const float* sw, int64_t N,
                       void* y, bool y_f32, bool accumulate, cudaStream_t stream) {
  if (!w4a16_gemv_supported(M, K, x, qw) || N < 1 || !sw || !y || (accumulate && !y_f32) ||
      (N + kWarps * kRows - 1) / (kWarps * kRows) > 0x7FFFFFFF)
    return cudaErrorInvalidValue;
  const int m = static_cast<int>(M);
  if (m == 1)
    launch_w4a16<1>(x, m, K, qw, sw, N, y, y_f32, accumulate, stream);
  else if (m == 2)
    launch_w4a16<2>(x, m, K, qw, sw, N, y, y_f32, accumulate, stream);
  else if (m <= 4)
    launch_w4a16<4>(x, m, K, qw, sw, N, y, y_f32, accumulate, stream);
  else if (m <= 8)
    launch_w4a16<8>(x, m, K, qw, sw, N, y, y_f32, accumulate, stream);
  else
    launch_w4a16<16>(x, m, K, qw, sw, N, y, y_f32, accumulate, stream);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t dequant_w4_f16(const uint8_t* qw, const float* sw, int64_t N, int64_t K, uint16_t* w16,
                           cudaStream_t stream) {
  if (N < 0 || K < 2 || K % 2 != 0 || (N > 0 && (!qw || !sw || !w16)) || N * K / 2 / 256 > 0x7FFFFFFF)
    return cudaErrorInvalidValue;
  const int64_t total = N * K / 2;
  if (total == 0) return cudaSuccess;
  dequant_w4_f16_kernel<<<grid_for(total, 256), 256, 0, stream>>>(qw, sw, K / 2, total,
                                                                  reinterpret_cast<__half2*>(w16));
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t quantize_sym_int8_multi(const void* x, bool x_f16, int64_t rows, int64_t cols, int64_t x_stride,
                                    const SymClips& clips, int8_t* q, int64_t copy_stride, float* scales,
                                    cudaStream_t stream) {
  if (rows < 0 || cols < 1 || x_stride < cols || clips.n < 1 || clips.n > 3 || rows > 0x7FFFFFFF ||
      (clips.n > 1 && copy_stride < rows * cols) || (rows > 0 && (!x || !q || !scales)))
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  const int threads = cols >= 4096 ? 512 : 256;
  const unsigned grid = static_cast<unsigned>(rows);
  if (x_f16)
    quant_int8_multi_kernel<__half><<<grid, threads, 0, stream>>>(
        static_cast<const __half*>(x), cols, x_stride, rows, clips, q, copy_stride, scales);
  else
    quant_int8_multi_kernel<float><<<grid, threads, 0, stream>>>(static_cast<const float*>(x), cols, x_stride,
                                                                 rows, clips, q, copy_stride, scales);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

bool a8_gemv_supported(int w_bits, int64_t M, int64_t K, const Int8Acts& acts, const void* qw) {
  if ((w_bits != 4 && w_bits != 8) || M < 1 || M > kWqGemvMaxM || K < 32 || K > kWqMaxK ||
      K % (w_bits == 8 ? 16 : 32) != 0 || !qw || !aligned16(qw) || acts.n < 1 || acts.n > 3)
    return false;
  for (int i = 0; i < acts.n; ++i) {
    if (!acts.qx[i] || !aligned16(acts.qx[i])) return false;
    if (i + 1 < acts.n && acts.end[i] % kRows != 0) return false;
  }
  return true;
}

cudaError_t a8_gemv(const Int8Acts& acts, int w_bits, const void* qw, const float* sw, const float* residual,
                    void* y, bool y_f16, int64_t M, int64_t N, int64_t K, cudaStream_t stream) {
  Segs s;
  if (!a8_gemv_supported(w_bits, M, K, acts, qw) || N < 1 || !sw || !y || (residual && y_f16) ||
      !segs_of(acts, N, s) || (N + kWarps * kRows - 1) / (kWarps * kRows) > 0x7FFFFFFF)
    return cudaErrorInvalidValue;
  if (w_bits == 8)
    dispatch_a8<8>(s, qw, sw, residual, y, y_f16, static_cast<int>(M), N, K, stream);
  else
    dispatch_a8<4>(s, qw, sw, residual, y, y_f16, static_cast<int>(M), N, K, stream);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t a8_gemm_simple(const Int8Acts& acts, int w_bits, const void* qw, const float* sw,
                           const float* residual, void* y, bool y_f16, int64_t M, int64_t N, int64_t K,
                           cudaStream_t stream) {
  Segs s;
  if ((w_bits != 4 && w_bits != 8) || M < 1 || N < 1 || K < 1 || K > kWqMaxK || (w_bits == 4 && K % 2 != 0) ||
      !qw || !sw || !y || (residual && y_f16) || !segs_of(acts, N, s) || (M * N + 255) / 256 > 0x7FFFFFFF)
    return cudaErrorInvalidValue;
  a8_simple_kernel<<<grid_for(M * N, 256), 256, 0, stream>>>(s, static_cast<const uint8_t*>(qw), w_bits == 4,
                                                             sw, residual, y, y_f16, M, N, K);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t a8_epilogue(const int32_t* acc, int64_t lda, const float* sx, const float* sw,
                        const float* residual, void* y, bool y_f16, int64_t ldy, int64_t M, int64_t col0,
                        int64_t n, cudaStream_t stream) {
  if (M < 0 || n < 0 || col0 < 0 || lda < n || ldy < col0 + n || (residual && y_f16) ||
      (M * n > 0 && (!acc || !sx || !sw || !y)) || (M * n + 255) / 256 > 0x7FFFFFFF)
    return cudaErrorInvalidValue;
  if (M * n == 0) return cudaSuccess;
  // Vector path: 16-byte aligned rows of acc (int4), sw (float4), residual and y (float4 / 4 halves).
  const auto al = [](const void* p, uintptr_t b) { return reinterpret_cast<uintptr_t>(p) % b == 0; };
  const size_t yb = y_f16 ? 2 : 4;
  const bool vec = lda % 4 == 0 && ldy % 4 == 0 && col0 % 4 == 0 && al(acc, 16) && al(sw, 16) &&
                   al(static_cast<const char*>(y) + col0 * yb, 4 * yb) && al(y, 4 * yb) &&
                   (!residual || al(residual, 16));
  const unsigned gx = static_cast<unsigned>((n + 4 * 256 - 1) / (4 * 256));
  for (int64_t r0 = 0; r0 < M; r0 += 65535) {
    const unsigned gy = static_cast<unsigned>(std::min<int64_t>(M - r0, 65535));
    a8_epilogue_kernel<<<dim3(gx, gy), 256, 0, stream>>>(acc, lda, sx, sw, residual, y, y_f16, ldy, col0, n,
                                                         r0, vec);
    FQ_CUDA_RETURN_LAUNCH_ERROR();
  }
  return cudaSuccess;
}

cudaError_t a8_swiglu_epilogue(const int32_t* acc_g, const int32_t* acc_u, int64_t lda, const float* sx_g,
                               const float* sx_u, const float* sw_g, const float* sw_u, void* out,
                               bool out_f16, int64_t ldo, int64_t M, int64_t n, cudaStream_t stream) {
  if (M < 0 || n < 0 || lda < n || ldo < n ||
      (M * n > 0 && (!acc_g || !acc_u || !sx_g || !sx_u || !sw_g || !sw_u || !out)))
    return cudaErrorInvalidValue;
  if (M * n == 0) return cudaSuccess;
  const auto al = [](const void* p, uintptr_t b) { return reinterpret_cast<uintptr_t>(p) % b == 0; };
  const bool vec = lda % 4 == 0 && ldo % 4 == 0 && al(acc_g, 16) && al(acc_u, 16) && al(sw_g, 16) &&
                   al(sw_u, 16) && al(out, out_f16 ? 8 : 16);
  const unsigned gx = static_cast<unsigned>((n + 4 * 256 - 1) / (4 * 256));
  for (int64_t r0 = 0; r0 < M; r0 += 65535) {
    const unsigned gy = static_cast<unsigned>(std::min<int64_t>(M - r0, 65535));
    a8_swiglu_epilogue_kernel<<<dim3(gx, gy), 256, 0, stream>>>(acc_g, acc_u, lda, sx_g, sx_u, sw_g, sw_u,
                                                                out, out_f16, ldo, n, r0, vec);
    FQ_CUDA_RETURN_LAUNCH_ERROR();
  }
  return cudaSuccess;
}

cudaError_t unpack_int4_int8(const uint8_t* qw, int64_t N, int64_t K, int8_t* out, cudaStream_t stream) {
  if (N < 0 || K < 2 || K % 2 != 0 || (N > 0 && (!qw || !out)) || (N * K / 2 + 255) / 256 > 0x7FFFFFFF)
    return cudaErrorInvalidValue;
  const int64_t total = N * K / 2;
  if (total == 0) return cudaSuccess;
  if (total % 4 == 0 && reinterpret_cast<uintptr_t>(qw) % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0)
    unpack_int4_int8_x4_kernel<<<grid_for(total / 4, 256), 256, 0, stream>>>(
        reinterpret_cast<const uint32_t*>(qw), total / 4, reinterpret_cast<uint2*>(out));
  else
    unpack_int4_int8_kernel<<<grid_for(total, 256), 256, 0, stream>>>(qw, total,
                                                                      reinterpret_cast<char2*>(out));
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t f16_kv_append(const uint16_t* k, const uint16_t* v, int64_t stride, int64_t rows, int64_t n_tok,
                          int64_t slot0, int64_t pos0, const int32_t* d_pos, const F16KvCache& cache,
                          int32_t* d_overflow, cudaStream_t stream) {
  const int64_t kvd = cache.n_head_kv * cache.head_dim;
  if (rows < 0 || n_tok < 1 || rows % n_tok != 0 || slot0 < 0 || kvd < 1 || stride < kvd || !cache.k ||
      !cache.v || (rows > 0 && (!k || !v)) || (rows * kvd + 255) / 256 > 0x7FFFFFFF)
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  f16_kv_append_kernel<<<grid_for(rows * kvd, 256), 256, 0, stream>>>(
      reinterpret_cast<const __half*>(k), reinterpret_cast<const __half*>(v), stride, rows, n_tok, slot0,
      pos0, d_pos, cache, d_overflow);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

}  // namespace fq::cuda
