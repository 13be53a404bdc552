// W4A4 decode GEMV/GEMM (M = 1..16): memory-bound on the packed weights, which are streamed once.
//
// Work split: a warp owns R consecutive output rows n; its lanes stride along K in 16-byte chunks (uint4 =
// 32 int4 values), so each load instruction of a warp reads 512 contiguous bytes of one weight row. U chunks
// per row (U * R 16-byte loads per lane) are issued before the first use. Activations (M * K / 2 bytes, at
// most 512 KB; 115 KB for M = 16, K = 14336) are read through L1 with the same chunk indexing: every warp of
// an SM reads the same bytes, so they stay L1/L2-resident while the weights bypass L1 (ld.global.nc.L1::
// no_allocate).
//
// Integer math: a 32-bit word holds 8 nibbles e0..e7 (e0 = low nibble of byte 0). (w << 4) & 0xF0F0F0F0 puts
// 16*e0, 16*e2, 16*e4, 16*e6 into the four int8 lanes and w & 0xF0F0F0F0 puts 16*e1, 16*e3, 16*e5, 16*e7
// there: sign-extended nibbles scaled by 16, two instructions, no lookup. Doing the same on both operands,
// __dp4a sums 256 * x_i * w_i exactly; |sum| <= 256 * 64 * K <= 2^30 for K <= 65536, so after the warp
// reduction acc >> 8 (exact: acc is a multiple of 256) is the int32 dot product of the reference.
//
// Epilogue (fq::ref::qgemm_epilogue): t = float(acc); t *= sx[m]; t *= sw[n]; t += residual, each a
// separately rounded IEEE op (__fmul_rn / __fadd_rn keep nvcc from contracting them into an FMA). Lane m
// writes token m of each row.
#include <cuda_fp16.h>

#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/qgemv.h"

namespace fq::cuda {
namespace {

constexpr int kWarps = 4;  // warps per block (block = 128 threads; many small blocks balance well)
constexpr unsigned kFull = 0xffffffffu;

// 8 nibbles -> even elements x16 (lo) and odd elements x16 (hi) as int8x4.
__device__ __forceinline__ void split16(uint32_t w, int& lo, int& hi) {
  lo = static_cast<int>((w << 4) & 0xF0F0F0F0u);
  hi = static_cast<int>(w & 0xF0F0F0F0u);
}

struct Split {
  int lo[4], hi[4];
};

__device__ __forceinline__ Split split_chunk(uint4 v) {
  Split s;
  split16(v.x, s.lo[0], s.hi[0]);
  split16(v.y, s.lo[1], s.hi[1]);
  split16(v.z, s.lo[2], s.hi[2]);
  split16(v.w, s.lo[3], s.hi[3]);
  return s;
}

// acc += 256 * (dot of the 32 int4 values of one chunk of w with one chunk of x).
__device__ __forceinline__ int dot_chunk(const Split& w, const Split& x, int acc) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    acc = __dp4a(w.lo[j], x.lo[j], acc);
    acc = __dp4a(w.hi[j], x.hi[j], acc);
  }
  return acc;
}

// One step over U chunks (c, c + 32, ..., c + 32 (U - 1)) of R rows for all M tokens: the weight loads ...
template <int R, int U>
__device__ __forceinline__ void load_step(const uint4* const (&wrow)[R], int64_t c, uint4 (&w)[U][R]) {
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int r = 0; r < R; ++r) w[u][r] = detail::load_stream(wrow[r] + c + 32 * u);
}

// ... and the dot products with the activations.
template <int M, int R, int U>
__device__ __forceinline__ void dot_step(const uint4* __restrict__ qx, const uint4 (&w)[U][R], int64_t chunks,
                                         int64_t c, int (&acc)[R][M]) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    Split ws[R];
#pragma unroll
    for (int r = 0; r < R; ++r) ws[r] = split_chunk(w[u][r]);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const Split xs = split_chunk(__ldg(qx + m * chunks + c + 32 * u));
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r][m] = dot_chunk(ws[r], xs, acc[r][m]);
    }
  }
}

// Activation copies over column segments (QgemmActs with 16-byte chunk pointers).
struct Segs {
  int n = 1;
  const uint4* qx[3] = {nullptr, nullptr, nullptr};
  const float* sx[3] = {nullptr, nullptr, nullptr};
  int64_t end[3] = {0, 0, 0};
};

__device__ __forceinline__ float to_f32(float v) {
  return v;
}
__device__ __forceinline__ float to_f32(__half v) {
  return __half2float(v);
}
__device__ __forceinline__ void store(float* p, float v) {
  *p = v;
}
__device__ __forceinline__ void store(__half* p, float v) {
  *p = __float2half_rn(v);
}

// R rows of a warp lie in one segment (boundaries are multiples of R). The weights are constants: a PDL
// launch requests its first step of weight chunks before pdl_wait(), so that their latency overlaps the
// previous kernel (an L2 prefetch there instead was measured slower: it doubles the requests); the
// activations and their scales are read after it.
template <int M, int R, int U, typename T>
__global__ void __launch_bounds__(kWarps * 32)
    qgemv_kernel(Segs a, const uint4* __restrict__ qw, const float* __restrict__ sw, const T* residual, T* y,
                 __half* y_f16, int64_t N, int64_t ldy, int64_t chunks) {
  detail::pdl_trigger();
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * R;
  if (n0 >= N) return;  // the whole warp leaves together: the shuffles below see full warps only
  const uint4* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) wrow[r] = qw + (n0 + r < N ? n0 + r : N - 1) * chunks;  // clamp: no divergence
  int64_t c = lane;
  uint4 w[U][R];
  if (c + 32 * (U - 1) < chunks) load_step<R, U>(wrow, c, w);
  detail::pdl_wait();
  int seg = 0;
  while (seg + 1 < a.n && n0 >= a.end[seg]) ++seg;
  const uint4* __restrict__ qx = a.qx[seg];
  const float* __restrict__ sx = a.sx[seg];

  int acc[R][M];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0;

  for (; c + 32 * (U - 1) < chunks; c += 32 * U) {
    if (c != lane) load_step<R, U>(wrow, c, w);
    dot_step<M, R, U>(qx, w, chunks, c, acc);
  }
  if (U > 1)
    for (; c < chunks; c += 32) {
      uint4 w1[1][R];
      load_step<R, 1>(wrow, c, w1);
      dot_step<M, R, 1>(qx, w1, chunks, c, acc);
    }

#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[r][m] += __shfl_xor_sync(kFull, acc[r][m], off);

#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t n = n0 + r;
    if (n >= N) break;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (lane != m) continue;  // compile-time register index, run-time lane choice
      float t = __int2float_rn(acc[r][m] >> 8);
      t = __fmul_rn(t, sx[m]);
      t = __fmul_rn(t, sw[n]);
      const int64_t i = m * ldy + n;
      if (residual) t = __fadd_rn(t, to_f32(residual[i]));
      if (y) store(y + i, t);
      if (y_f16) y_f16[i] = __float2half_rn(t);
    }
  }
}

// Rows per warp R and chunks per row in flight U, by token count: more rows per warp amortize the activation
// unpacking and L1 reads as M grows; fewer registers leave room for more chunks in flight at small M.
template <int M>
constexpr int rows_per_warp() {
  return M <= 2 ? 1 : (M <= 7 ? 2 : 4);
}

template <int M, typename T>
cudaError_t launch(const Segs& a, const uint4* qw, const float* sw, const T* residual, T* y, __half* y_f16,
                   int64_t N, int64_t ldy, int64_t chunks, cudaStream_t stream, bool pdl) {
  constexpr int R = rows_per_warp<M>();
  constexpr int U = M <= 2 ? 4 : (M <= 7 ? 2 : 1);
  for (int s = 0; s + 1 < a.n; ++s)
    if (a.end[s] % R != 0) return cudaErrorInvalidValue;
  const int64_t rows_per_block = static_cast<int64_t>(kWarps) * R;
  const int64_t blocks = (N + rows_per_block - 1) / rows_per_block;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const detail::Launch l(dim3(static_cast<unsigned>(blocks)), dim3(kWarps * 32), 0, stream, pdl);
  FQ_CUDA_RETURN_IF_ERROR(
      cudaLaunchKernelEx(&l.cfg, qgemv_kernel<M, R, U, T>, a, qw, sw, residual, y, y_f16, N, ldy, chunks));
  return cudaSuccess;
}

template <typename T>
cudaError_t dispatch(const Segs& a, const uint4* qw, const float* sw, const T* residual, T* y, __half* y_f16,
                     int64_t M, int64_t N, int64_t ldy, int64_t chunks, cudaStream_t stream, bool pdl) {
  switch (M) {
#define FQ_QGEMV_CASE(m) \
  case m:                \
    return launch<m, T>(a, qw, sw, residual, y, y_f16, N, ldy, chunks, stream, pdl);
    FQ_QGEMV_CASE(1)
    FQ_QGEMV_CASE(2)
    FQ_QGEMV_CASE(3)
    FQ_QGEMV_CASE(4)
    FQ_QGEMV_CASE(5)
    FQ_QGEMV_CASE(6)
    FQ_QGEMV_CASE(7)
    FQ_QGEMV_CASE(8)
    FQ_QGEMV_CASE(9)
    FQ_QGEMV_CASE(10)
    FQ_QGEMV_CASE(11)
    FQ_QGEMV_CASE(12)
    FQ_QGEMV_CASE(13)
    FQ_QGEMV_CASE(14)
    FQ_QGEMV_CASE(15)
    FQ_QGEMV_CASE(16)
#undef FQ_QGEMV_CASE
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t qgemv_w4a4(const uint8_t* qx, const float* sx, const uint8_t* qw, const float* sw,
                       const float* residual, float* y, uint16_t* y_f16, int64_t M, int64_t N, int64_t K,
                       cudaStream_t stream) {
  if (!y && !y_f16) return cudaErrorInvalidValue;
  QgemmActs a;
  a.qx[0] = qx;
  a.sx[0] = sx;
  a.end[0] = N;
  return qgemv_w4a4_segments(a, qw, sw, residual, y, y_f16, false, M, N, K, N, stream, false);
}

cudaError_t qgemv_w4a4_segments(const QgemmActs& acts, const uint8_t* qw, const float* sw,
                                const void* residual, void* y, uint16_t* y_f16, bool f16, int64_t M,
                                int64_t N, int64_t K, int64_t ldy, cudaStream_t stream, bool pdl) {
  if (M < 1 || M > kQgemvMaxM || N < 1 || K < 32 || K % 32 != 0 || K > kQgemvMaxK || ldy < N)
    return cudaErrorInvalidValue;
  if (!qw || !sw || (!y && !y_f16) || (f16 && (!y || y_f16)) || acts.n < 1 || acts.n > 3 ||
      acts.end[acts.n - 1] != N || reinterpret_cast<uintptr_t>(qw) % 16 != 0)
    return cudaErrorInvalidValue;
  Segs s;
  s.n = acts.n;
  int64_t start = 0;
  for (int i = 0; i < acts.n; ++i) {
    if (!acts.qx[i] || !acts.sx[i] || acts.end[i] <= start ||
        reinterpret_cast<uintptr_t>(acts.qx[i]) % 16 != 0)
      return cudaErrorInvalidValue;
    s.qx[i] = reinterpret_cast<const uint4*>(acts.qx[i]);
    s.sx[i] = acts.sx[i];
    s.end[i] = start = acts.end[i];
  }
  const auto* w4 = reinterpret_cast<const uint4*>(qw);
  auto* yh = reinterpret_cast<__half*>(y_f16);
  const int64_t chunks = K / 32;
  if (f16)
    return dispatch<__half>(s, w4, sw, static_cast<const __half*>(residual), static_cast<__half*>(y), nullptr,
                            M, N, ldy, chunks, stream, pdl);
  return dispatch<float>(s, w4, sw, static_cast<const float*>(residual), static_cast<float*>(y), yh, M, N,
                         ldy, chunks, stream, pdl);
}

}  // namespace fq::cuda
