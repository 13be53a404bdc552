// W4A4 GEMM on INT8 tensor cores (mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32), all token counts.
//
// Unpacking s4 -> s8 without a table, and without caring where each k lands. A 32-bit word of packed int4
// holds 8 consecutive k (e0 = low nibble of byte 0). lo(w) = (w << 4) & 0xF0F0F0F0 holds 16*e0, 16*e2, 16*e4,
// 16*e6 as four s8 (sign-extended by construction), hi(w) = w & 0xF0F0F0F0 holds 16*e1, 16*e3, 16*e5, 16*e7.
// A dot product does not depend on the order of k, only on both operands using the SAME order. In the
// m16n8k32 s8 fragments (PTX ISA, "Matrix Fragments for mma.m16n8k32"), lane (g = lane/4, t = lane%4) holds
//   A: a0 = row g,   k 4t..4t+3;   a1 = row g+8, k 4t..4t+3;   a2 = row g, k 16+4t..; a3 = row g+8, k 16+4t..
//   B: b0 = col g,   k 4t..4t+3;   b1 = col g,   k 16+4t..
//   C: c0, c1 = row g, cols 2t, 2t+1;   c2, c3 = row g+8, cols 2t, 2t+1.
// So if lane t takes the same packed word W_t (8 real k) from its A row and from its B column, and puts lo()
// into a0/a1 and b0, hi() into a2/a3 and b1, then mma-k 4t+j <-> real k 2j and 16+4t+j <-> 2j+1 of W_t for
// both operands: the mma sums 256 * x_k * w_k over the 32 real k of the 4 words the 4 lanes took. |sum| <=
// 256 * 64 * K <= 2^30 (K <= 65536): no int32 overflow; acc >> 8 (exact, a multiple of 256) is the reference
// integer. Unpacking costs 3 integer ops per word (8 values), no lookup, no shared-memory round trip.
//
// Epilogue (ref::qgemm_epilogue): t = float(acc); t *= sx[m]; t *= sw[n]; t += residual, each a separately
// rounded IEEE op (__fmul_rn / __fadd_rn: nvcc must not contract them into an FMA).
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/qgemm.h"

namespace fq::cuda {
namespace {

// ---------------------------------------------------------------------------------------------------------
// Shared pieces.

__device__ __forceinline__ uint32_t lo16(uint32_t w) {
  return (w << 4) & 0xF0F0F0F0u;
}
__device__ __forceinline__ uint32_t hi16(uint32_t w) {
  return w & 0xF0F0F0F0u;
}

__device__ __forceinline__ void mma_s8(int (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));  // i is a compile-time constant at every use
}

// Output element types: fp32 (residual fp32) or fp16 (residual fp16, widened before the add).
__device__ __forceinline__ float to_f32(float v) {
  return v;
}
__device__ __forceinline__ float to_f32(__half v) {
  return __half2float(v);
}
template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half_rn(v);
}

// acc: the integer dot product (the tensor-core paths pass their sum >> 8).
template <typename T>
__device__ __forceinline__ float epilogue(int acc, float sxm, float swn, const T* residual, int64_t i) {
  float t = __int2float_rn(acc);
  t = __fmul_rn(t, sxm);
  t = __fmul_rn(t, swn);
  if (residual) t = __fadd_rn(t, to_f32(residual[i]));
  return t;
}

// Two adjacent outputs (n, n + 1) of row m from 256x sums a0, a1; `vec` says both exist and the pair (y,
// residual, sw) is aligned for one 2-element access.
template <typename T>
__device__ __forceinline__ void store_pair(T* y, const T* residual, int64_t N, int64_t ldy, int64_t m,
                                           int64_t n, bool vec, float sxm, const float* __restrict__ sw,
                                           int a0, int a1) {
  const int64_t i = m * ldy + n;
  if (vec) {
    const float2 s = *reinterpret_cast<const float2*>(sw + n);
    float r0 = 0.0f, r1 = 0.0f;
    if (residual) {
      if constexpr (sizeof(T) == 4) {
        const float2 r = *reinterpret_cast<const float2*>(residual + i);
        r0 = r.x, r1 = r.y;
      } else {
        const __half2 r = *reinterpret_cast<const __half2*>(residual + i);
        r0 = __low2float(r), r1 = __high2float(r);
      }
    }
    float t0 = __fmul_rn(__fmul_rn(__int2float_rn(a0 >> 8), sxm), s.x);
    float t1 = __fmul_rn(__fmul_rn(__int2float_rn(a1 >> 8), sxm), s.y);
    if (residual) t0 = __fadd_rn(t0, r0), t1 = __fadd_rn(t1, r1);
    if constexpr (sizeof(T) == 4) {
      *reinterpret_cast<float2*>(y + i) = make_float2(t0, t1);
    } else {
      *reinterpret_cast<__half2*>(y + i) = __halves2half2(__float2half_rn(t0), __float2half_rn(t1));
    }
  } else {
    if (n < N) y[i] = from_f32<T>(epilogue(a0 >> 8, sxm, sw[n], residual, i));
    if (n + 1 < N) y[i + 1] = from_f32<T>(epilogue(a1 >> 8, sxm, sw[n + 1], residual, i + 1));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Prefill: block tile BM x BN, k-tile of 64 int4 values (32 bytes per row), STAGES-deep cp.async pipeline.
// Shared memory holds each stage as [BM rows of x | BN rows of w], 32 bytes per row, unpadded: a warp's
// 8-byte fragment loads (lane (g, t) reads bytes 8t..8t+7 of row g) cover 256 contiguous bytes, so each
// half-warp phase touches all 32 banks once (no conflicts, no swizzle). Lane t's 8 bytes are words 2t (k-step
// 0) and 2t + 1 (k-step 1) of the row, for A and B alike (see the file comment).

constexpr int kTileRowBytes = 32;  // packed bytes per row per k-tile

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = valid ? 16 : 0;  // src-size 0: the 16 bytes are zero-filled (rows/k past the edge add 0)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

template <int BM, int BN, int WM, int WN, int STAGES, typename T>
__global__ void __launch_bounds__(WM* WN * 32)
    qgemm_prefill_kernel(const uint8_t* __restrict__ qx, const float* __restrict__ sx,
                         const uint8_t* __restrict__ qw, const float* __restrict__ sw, const T* residual,
                         T* y, int M, int N, int64_t ldy, int64_t row_bytes, bool vec) {
  constexpr int kThreads = WM * WN * 32;
  constexpr int TM = BM / WM, TN = BN / WN;  // warp tile
  constexpr int MT = TM / 16, NT = TN / 8;   // mma tiles per warp
  constexpr int kStageBytes = (BM + BN) * kTileRowBytes;
  constexpr int kCopies = (BM + BN) * 2;  // 16-byte copies per stage
  static_assert(kCopies % kThreads == 0, "copies must split evenly over the threads");
  static_assert(STAGES * kStageBytes <= 48 * 1024, "static shared memory limit");
  __shared__ __align__(128) uint8_t smem[STAGES * kStageBytes];

  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WN, wn = warp % WN;
  const int g = lane >> 2, t = lane & 3;
  const int m0 = static_cast<int>(blockIdx.y) * BM, n0 = static_cast<int>(blockIdx.x) * BN;
  const int ktiles = static_cast<int>((row_bytes + kTileRowBytes - 1) / kTileRowBytes);

  auto load_tile = [&](int stage, int kt) {
    uint8_t* s = smem + stage * kStageBytes;
    const int64_t kb = static_cast<int64_t>(kt) * kTileRowBytes;
#pragma unroll
    for (int j = 0; j < kCopies / kThreads; ++j) {
      const int i = tid + j * kThreads;
      const int row = i >> 1;
      const int64_t kbyte = kb + (i & 1) * 16;
      const bool in_k = kbyte < row_bytes;
      const uint8_t* src;
      bool ok;
      if (row < BM) {
        ok = in_k && m0 + row < M;
        src = qx + (ok ? static_cast<int64_t>(m0 + row) * row_bytes + kbyte : 0);
      } else {
        ok = in_k && n0 + row - BM < N;
        src = qw + (ok ? static_cast<int64_t>(n0 + row - BM) * row_bytes + kbyte : 0);
      }
      cp_async16(s + i * 16, src, ok);
    }
  };

  int acc[MT][NT][4];
#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int b = 0; b < NT; ++b)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][b][c] = 0;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < ktiles) load_tile(s, s);
    cp_async_commit();  // empty groups keep the group count uniform
  }

  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<STAGES - 2>();  // tile kt has landed (for this thread's copies) ...
    __syncthreads();              // ... and everyone's; everyone is done reading the stage refilled below
    {
      const int nk = kt + STAGES - 1;
      if (nk < ktiles) load_tile(nk % STAGES, nk);
      cp_async_commit();
    }
    const uint8_t* sa = smem + (kt % STAGES) * kStageBytes + (wm * TM) * kTileRowBytes + 8 * t;
    const uint8_t* sb = smem + (kt % STAGES) * kStageBytes + (BM + wn * TN) * kTileRowBytes + 8 * t;
    uint2 pa[MT][2], pb[NT];
#pragma unroll
    for (int a = 0; a < MT; ++a) {
      pa[a][0] = *reinterpret_cast<const uint2*>(sa + (a * 16 + g) * kTileRowBytes);
      pa[a][1] = *reinterpret_cast<const uint2*>(sa + (a * 16 + g + 8) * kTileRowBytes);
    }
#pragma unroll
    for (int b = 0; b < NT; ++b) pb[b] = *reinterpret_cast<const uint2*>(sb + (b * 8 + g) * kTileRowBytes);
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      uint32_t fa[MT][4], fb[NT][2];
#pragma unroll
      for (int a = 0; a < MT; ++a) {
        const uint32_t w0 = ks ? pa[a][0].y : pa[a][0].x, w1 = ks ? pa[a][1].y : pa[a][1].x;
        fa[a][0] = lo16(w0);
        fa[a][1] = lo16(w1);
        fa[a][2] = hi16(w0);
        fa[a][3] = hi16(w1);
      }
#pragma unroll
      for (int b = 0; b < NT; ++b) {
        const uint32_t w = ks ? pb[b].y : pb[b].x;
        fb[b][0] = lo16(w);
        fb[b][1] = hi16(w);
      }
#pragma unroll
      for (int a = 0; a < MT; ++a)
#pragma unroll
        for (int b = 0; b < NT; ++b) mma_s8(acc[a][b], fa[a], fb[b][0], fb[b][1]);
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + wm * TM + a * 16 + g + 8 * h;
      if (m >= M) continue;
      const float sxm = sx[m];
#pragma unroll
      for (int b = 0; b < NT; ++b) {
        const int n = n0 + wn * TN + b * 8 + 2 * t;
        if (n >= N) continue;
        store_pair(y, residual, N, ldy, m, n, vec && n + 1 < N, sxm, sw, acc[a][b][2 * h],
                   acc[a][b][2 * h + 1]);
      }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Decode (M <= 64): "swapped" mma, the weights are the A operand (16 output rows per warp), the tokens the B
// operand (NT = 1, 2, 4 or 8 column tiles of 8, tokens past M are zeros). Each weight byte is used by exactly
// one warp, so the weights go from HBM straight into registers (no shared memory), 16 bytes per lane per
// load: lane (g, t) loads chunk 4s + t (32 k) of rows g and g + 8 for step s (128 k), and the same chunk of
// tokens g (g + 8, ...) from the small, L1/L2-resident activations. Word i of the chunk feeds k-step i of the
// step (4 mma per column tile). Steps are split over the 8 warps of a block, whose partial sums are added in
// shared memory (exact int32). Splitting K over blocks too (int32 atomics into a workspace, the last block
// runs the epilogue) was measured slower on every shape, even k/v (1024 x 4096): the atomic tail costs more
// than the extra blocks gain (qgemm_notes.md).

// One step group of a lane: chunks 4 (s + u) + t of its two weight rows, zeros past the warp's range.
template <int U>
__device__ __forceinline__ void decode_load_w(uint4 (&wa)[U], uint4 (&wb)[U], const uint8_t* w0,
                                              const uint8_t* w1, int64_t s, int64_t s_end, int64_t chunks,
                                              int t) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t c = (s + u) * 4 + t;  // this lane's chunk
    const bool ok = s + u < s_end && c < chunks;
    wa[u] = ok ? detail::load_stream(w0 + (c - t) * 16) : make_uint4(0, 0, 0, 0);
    wb[u] = ok ? detail::load_stream(w1 + (c - t) * 16) : make_uint4(0, 0, 0, 0);
  }
}

// A warp's share of a row's K steps (4 chunks of 16 bytes each, 64 bytes): [s_begin, s_end) of `steps`, the
// W warps of a block splitting them evenly.
struct DecodeSteps {
  int64_t chunks, s_begin, s_end;
};
__device__ __forceinline__ DecodeSteps decode_steps(int64_t row_bytes, int warp, int W) {
  const int64_t chunks = row_bytes / 16, steps = (chunks + 3) / 4;
  return {chunks, warp * steps / W, (warp + 1) * steps / W};
}

// The activation copy (codes, scales) of the block whose 16 output rows start at n_base (segment boundaries
// are multiples of 16); selected with constant indices so that the parameter struct is not copied to local
// memory.
__device__ __forceinline__ void decode_acts(const QgemmActs& acts, int n_base, const uint8_t*& qx,
                                            const float*& sx) {
  const int seg = (acts.n > 1 && n_base >= acts.end[0]) + (acts.n > 2 && n_base >= acts.end[1]);
  qx = seg == 0 ? acts.qx[0] : (seg == 1 ? acts.qx[1] : acts.qx[2]);
  sx = seg == 0 ? acts.sx[0] : (seg == 1 ? acts.sx[1] : acts.sx[2]);
}

// Lane (g, t)'s code rows of tokens g + 8 j (j < NT; tokens past M read row 0 and are masked by xok), at its
// 16-byte column t, and the zeroed int32 accumulators of its NT token tiles.
template <int NT>
__device__ __forceinline__ void decode_token_rows(const uint8_t* qx, int64_t row_bytes, int M, int g, int t,
                                                  const uint8_t* (&xr)[NT], bool (&xok)[NT],
                                                  int (&acc)[NT][4]) {
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    xok[j] = g + 8 * j < M;
    xr[j] = qx + static_cast<int64_t>(xok[j] ? g + 8 * j : 0) * row_bytes + 16 * t;
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[j][c] = 0;
  }
}

// W warps per block (one row group, K split W ways), U steps per loop iteration, NT token tiles of 8.
// HOIST: the first U steps of weights are requested BEFORE the PDL wait (they are constants), so that a
// block resident early streams them while the producer of the activations still runs. MINB: minimum blocks
// per SM for the register allocation (__launch_bounds__).
template <int W, int U, int NT, bool HOIST, int MINB, typename T>
__global__ void __launch_bounds__(W * 32, MINB)
    qgemm_decode_kernel(QgemmActs acts, const uint8_t* __restrict__ qw, const float* __restrict__ sw,
                        const T* residual, T* y, int M, int N, int64_t ldy, int64_t row_bytes) {
  constexpr int kThreads = W * 32;
  constexpr int kTok = NT <= 2 ? 16 : 8 * NT;  // token columns of the reduction
  constexpr int E = 16 * kTok / kThreads;      // (weight row, token) outputs of the group per thread
  static_assert((16 * kTok) % kThreads == 0, "at most 8 warps");
  __shared__ int red[W][16][kTok];  // [warp][weight row][token]
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n_base = static_cast<int>(blockIdx.x) * 16;
  detail::pdl_trigger();
  const auto [chunks, s_begin, s_end] = decode_steps(row_bytes, warp, W);
  // Rows past N re-read row N-1 (no divergence in the loads); their results are never stored.
  const uint8_t* w0 = qw + static_cast<int64_t>(min(n_base + g, N - 1)) * row_bytes + 16 * t;
  const uint8_t* w1 = qw + static_cast<int64_t>(min(n_base + g + 8, N - 1)) * row_bytes + 16 * t;
  uint4 wa[U], wb[U];
  if constexpr (HOIST) decode_load_w<U>(wa, wb, w0, w1, s_begin, s_end, chunks, t);
  float sw_e[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int r = (tid + e * kThreads) / kTok;
    sw_e[e] = n_base + r < N ? sw[n_base + r] : 0.0f;
  }
  const uint8_t* qx;
  const float* sx;
  decode_acts(acts, n_base, qx, sx);
  detail::pdl_wait();  // (PDL launches) everything below may read the previous kernel's output

  // The epilogue's activation scales, fetched now so that their latency hides under the weight stream.
  float sx_e[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int m = (tid + e * kThreads) % kTok;
    sx_e[e] = m < M ? sx[m] : 0.0f;
  }
  const uint8_t* xr[NT];
  bool xok[NT];
  int acc[NT][4];
  decode_token_rows(qx, row_bytes, M, g, t, xr, xok, acc);

  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int64_t s = s_begin; s < s_end; s += U) {
    if (!HOIST || s != s_begin) decode_load_w<U>(wa, wb, w0, w1, s, s_end, chunks, t);
    uint4 xv[U][NT];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = (s + u) * 4 + t;
      const bool ok = s + u < s_end && c < chunks;
#pragma unroll
      for (int j = 0; j < NT; ++j)
        xv[u][j] = ok && xok[j] ? __ldg(reinterpret_cast<const uint4*>(xr[j] + (c - t) * 16)) : zero;
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t a0 = word(wa[u], i), a1 = word(wb[u], i);
        const uint32_t fa[4] = {lo16(a0), lo16(a1), hi16(a0), hi16(a1)};
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const uint32_t b = word(xv[u][j], i);
          mma_s8(acc[j], fa, lo16(b), hi16(b));
        }
      }
  }

  // C fragment: acc[j][0..1] = weight row g, tokens 8j + 2t, +1; acc[j][2..3] = row g + 8.
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    red[warp][g][8 * j + 2 * t] = acc[j][0];
    red[warp][g][8 * j + 2 * t + 1] = acc[j][1];
    red[warp][g + 8][8 * j + 2 * t] = acc[j][2];
    red[warp][g + 8][8 * j + 2 * t + 1] = acc[j][3];
  }
  __syncthreads();
  int v[E];
  bool mine[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int idx = tid + e * kThreads, r = idx / kTok, m = idx % kTok;
    mine[e] = m < M && n_base + r < N;
    v[e] = 0;
    if (mine[e]) {
#pragma unroll
      for (int w = 0; w < W; ++w) v[e] += red[w][r][m];
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int idx = tid + e * kThreads, r = idx / kTok, m = idx % kTok;
    if (mine[e]) {
      const int64_t i = static_cast<int64_t>(m) * ldy + n_base + r;
      y[i] = from_f32<T>(epilogue(v[e] >> 8, sx_e[e], sw_e[e], residual, i));
    }
  }
}

template <int W, int U, int NT, bool HOIST, int MINB, typename T>
cudaError_t launch_decode_v(const QgemmActs& acts, const uint8_t* qw, const float* sw, const T* residual,
                            T* y, int64_t M, int64_t N, int64_t ldy, int64_t K, cudaStream_t stream,
                            bool pdl) {
  const int64_t groups = (N + 15) / 16;
  if (groups > 0x7fffffff) return cudaErrorInvalidValue;
  const int m = static_cast<int>(M), n = static_cast<int>(N);
  const detail::Launch l(dim3(static_cast<unsigned>(groups)), dim3(W * 32), 0, stream, pdl);
  FQ_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&l.cfg, qgemm_decode_kernel<W, U, NT, HOIST, MINB, T>, acts, qw,
                                             sw, residual, y, m, n, ldy, K / 2));
  return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------------------
// Decode with the weights staged in shared memory (sm_90, M <= 8): the warps, steps, fragments and
// reduction of qgemm_decode_kernel (one block per group of 16 weight rows, K split over 8 warps), but each
// warp's share of the 16 rows arrives by bulk copies (TMA: one per row and stage of kStageSteps 64-byte
// steps) into a ring of up to kStagedDepth stages of its own, each counted on one mbarrier. Why: at batch 1
// the kernel before a GEMM (the fused transform + quantize, ~8 us on 8 SMs) leaves the GPU's bandwidth idle;
// a PDL-launched block requests its first stages before pdl_wait(), so the blocks resident then stream up to
// 96 KB each into shared memory (the whole q|k|v and o weights of Llama-3-8B, 12 of down's 14 steps) where
// the register kernel holds 16 KB. Lane (g, t) reads its 16 bytes of rows g and g + 8 from the stage (two-way
// bank conflicts: shared-memory bandwidth is ~10x an SM's share of HBM). After its last stage a warp's
// reduction partials overwrite its own first stage. Measured alternatives
// (bench/results/w4a4_engine_notes.md, eleventh pass): persistent blocks whose ring runs across row groups,
// and whole-row copies of up to 32 KB, streamed more slowly.
constexpr int kStageSteps = 4;
constexpr int kStageRowBytes = 64 * kStageSteps;      // bytes of one weight row per stage
constexpr int kWarpStageBytes = 16 * kStageRowBytes;  // one warp's stage: 16 rows
constexpr int kStagedWarps = 8;
constexpr int kStagedDepth = 3;  // stages in flight per warp, at most

template <int NT, typename T>
__global__ void __launch_bounds__(kStagedWarps * 32, 4)
    qgemm_decode_staged_kernel(QgemmActs acts, const uint8_t* __restrict__ qw, const float* __restrict__ sw,
                               const T* residual, T* y, int M, int N, int64_t ldy, int64_t row_bytes, int D) {
  constexpr int W = kStagedWarps, kTok = 16;
  static_assert(NT <= 2 && 16 * kTok == W * 32, "one (row, token) output per thread");
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n_base = static_cast<int>(blockIdx.x) * 16;
  detail::pdl_trigger();
  const auto [chunks, s_begin, s_end] = decode_steps(row_bytes, warp, W);
  const int64_t k_begin = s_begin * 64, k_end = min(s_end * 64, row_bytes);  // the warp's bytes of a row
  const int stages = static_cast<int>((s_end - s_begin + kStageSteps - 1) / kStageSteps);
  // Shared memory: the warps' rings, then their barriers.
  uint8_t* const ring = smem + static_cast<int64_t>(warp) * D * kWarpStageBytes;
  uint64_t* const bars =
      reinterpret_cast<uint64_t*>(smem + static_cast<int64_t>(W) * D * kWarpStageBytes) + warp * D;
  // Lane r < 16 copies weight row n_base + r (rows past N re-read row N - 1; never stored).
  const uint8_t* src = qw + static_cast<int64_t>(min(n_base + (lane & 15), N - 1)) * row_bytes;
  const auto request = [&](int i) {  // stage i into slot i % D
    const int64_t k0 = k_begin + static_cast<int64_t>(i) * kStageRowBytes;
    const unsigned bytes = static_cast<unsigned>(min(static_cast<int64_t>(kStageRowBytes), k_end - k0));
    uint64_t* bar = bars + i % D;
    if (lane == 0) detail::mbar_expect_tx(bar, 16 * bytes);
    if (lane < 16)
      detail::bulk_load(ring + (i % D) * kWarpStageBytes + lane * kStageRowBytes, src + k0, bytes, bar);
  };
  if (lane == 0)
    for (int d = 0; d < D; ++d) detail::mbar_init(bars + d, 1);
  __syncwarp();
  for (int i = 0; i < min(D, stages); ++i) request(i);

  const int r_out = tid / kTok, m_out = tid % kTok;  // this thread's output
  const float sw_o = n_base + r_out < N ? sw[n_base + r_out] : 0.0f;
  const uint8_t* qx;
  const float* sx;
  decode_acts(acts, n_base, qx, sx);
  detail::pdl_wait();  // (PDL launches) everything below may read the previous kernel's output

  const float sx_o = m_out < M ? sx[m_out] : 0.0f;
  const uint8_t* xr[NT];
  bool xok[NT];
  int acc[NT][4];
  decode_token_rows(qx, row_bytes, M, g, t, xr, xok, acc);

  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int i = 0; i < stages; ++i) {
    const int64_t s0 = s_begin + static_cast<int64_t>(i) * kStageSteps;
    detail::mbar_wait_cta(bars + i % D, static_cast<unsigned>(i / D) & 1u);
    const uint8_t* st = ring + (i % D) * kWarpStageBytes + 16 * t;
#pragma unroll
    for (int u = 0; u < kStageSteps; ++u) {
      const int64_t c = (s0 + u) * 4 + t;
      const bool ok = s0 + u < s_end && c < chunks;
      uint4 xv[NT];
#pragma unroll
      for (int j = 0; j < NT; ++j)
        xv[j] = ok && xok[j] ? __ldg(reinterpret_cast<const uint4*>(xr[j] + (c - t) * 16)) : zero;
      const uint4 wa = ok ? *reinterpret_cast<const uint4*>(st + g * kStageRowBytes + 64 * u) : zero;
      const uint4 wb = ok ? *reinterpret_cast<const uint4*>(st + (g + 8) * kStageRowBytes + 64 * u) : zero;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const uint32_t a0 = word(wa, q), a1 = word(wb, q);
        const uint32_t fa[4] = {lo16(a0), lo16(a1), hi16(a0), hi16(a1)};
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const uint32_t b = word(xv[j], q);
          mma_s8(acc[j], fa, lo16(b), hi16(b));
        }
      }
    }
    __syncwarp();  // every lane's reads of the slot are done before it is refilled
    if (i + D < stages) request(i + D);
  }

  // C fragment -> the warp's partials [16 rows][kTok tokens], over its own first stage (all its copies
  // landed).
  int* red = reinterpret_cast<int*>(ring);
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    red[g * kTok + 8 * j + 2 * t] = acc[j][0];
    red[g * kTok + 8 * j + 2 * t + 1] = acc[j][1];
    red[(g + 8) * kTok + 8 * j + 2 * t] = acc[j][2];
    red[(g + 8) * kTok + 8 * j + 2 * t + 1] = acc[j][3];
  }
  __syncthreads();
  if (m_out < M && n_base + r_out < N) {
    int v = 0;
#pragma unroll
    for (int w = 0; w < W; ++w)
      v += reinterpret_cast<const int*>(smem +
                                        static_cast<int64_t>(w) * D * kWarpStageBytes)[r_out * kTok + m_out];
    const int64_t i = static_cast<int64_t>(m_out) * ldy + n_base + r_out;
    y[i] = from_f32<T>(epilogue(v >> 8, sx_o, sw_o, residual, i));
  }
}

// Stages in flight per warp: all of a warp's share up to kStagedDepth (32 KB per block per stage: Llama-3-8B
// down's 3 of 4 stages, 2 blocks per SM, all its 256 blocks resident at once).
int staged_depth(int64_t K) {
  const int64_t steps = (K / 2 / 16 + 3) / 4;
  const int64_t per_warp = (steps + kStagedWarps - 1) / kStagedWarps;
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(kStagedDepth, (per_warp + kStageSteps - 1) / kStageSteps)));
}

template <typename T>
cudaError_t launch_decode_staged(const QgemmActs& acts, const uint8_t* qw, const float* sw, const T* residual,
                                 T* y, int64_t M, int64_t N, int64_t ldy, int64_t K, cudaStream_t stream,
                                 bool pdl) {
  const int64_t groups = (N + 15) / 16;
  if (groups > 0x7fffffff || M > kQgemmStagedMaxM) return cudaErrorInvalidValue;
  const int D = staged_depth(K);
  const size_t smem = static_cast<size_t>(kStagedWarps) * D * (kWarpStageBytes + sizeof(uint64_t));
  const auto kernel = qgemm_decode_staged_kernel<1, T>;  // one token tile (M <= 8; measured slower at 16)
  FQ_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const detail::Launch l(dim3(static_cast<unsigned>(groups)), dim3(kStagedWarps * 32), smem, stream, pdl);
  FQ_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&l.cfg, kernel, acts, qw, sw, residual, y, static_cast<int>(M),
                                             static_cast<int>(N), ldy, K / 2, D));
  return cudaSuccess;
}

// The dispatched configuration: 8 warps, 2 steps per iteration, >= 4 blocks per SM (64 registers), the first
// weights before the PDL wait at M <= 8 only (measured: faster at M = 1, slower at M = 16). M = 17..32: four
// token tiles, >= 2 blocks per SM (the tiles' activation registers do not fit in 64); M = 33..64: eight, one
// step per iteration.
template <typename T>
cudaError_t launch_decode(const QgemmActs& acts, const uint8_t* qw, const float* sw, const T* residual, T* y,
                          int64_t M, int64_t N, int64_t ldy, int64_t K, cudaStream_t stream, bool pdl) {
  if (M <= 8)
    return launch_decode_v<8, 2, 1, true, 4, T>(acts, qw, sw, residual, y, M, N, ldy, K, stream, pdl);
  if (M <= 16)
    return launch_decode_v<8, 2, 2, false, 4, T>(acts, qw, sw, residual, y, M, N, ldy, K, stream, pdl);
  if (M <= 32)
    return launch_decode_v<8, 2, 4, false, 2, T>(acts, qw, sw, residual, y, M, N, ldy, K, stream, pdl);
  return launch_decode_v<8, 1, 8, false, 2, T>(acts, qw, sw, residual, y, M, N, ldy, K, stream, pdl);
}

template <typename T>
cudaError_t launch_any_decode(const QgemmActs& acts, const uint8_t* qw, const float* sw, const T* residual,
                              T* y, int64_t M, int64_t N, int64_t ldy, int64_t K, cudaStream_t stream,
                              bool pdl, bool staged) {
  return staged ? launch_decode_staged<T>(acts, qw, sw, residual, y, M, N, ldy, K, stream, pdl)
                : launch_decode<T>(acts, qw, sw, residual, y, M, N, ldy, K, stream, pdl);
}

// ---------------------------------------------------------------------------------------------------------
// Fallback (any even K, any alignment): one thread per output, plain nibble loop, exact int32.

template <typename T>
__global__ void qgemm_fallback_kernel(const uint8_t* __restrict__ qx, const float* __restrict__ sx,
                                      const uint8_t* __restrict__ qw, const float* __restrict__ sw,
                                      const T* residual, T* y, int64_t M, int64_t N, int64_t ldy,
                                      int64_t row_bytes) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= M * N) return;
  const int64_t m = o / N, n = o % N, i = m * ldy + n;
  const uint8_t* x = qx + m * row_bytes;
  const uint8_t* w = qw + n * row_bytes;
  int acc = 0;
  for (int64_t j = 0; j < row_bytes; ++j) {
    const int xb = x[j], wb = w[j];
    acc += (((xb & 0xF) ^ 8) - 8) * (((wb & 0xF) ^ 8) - 8) + (((xb >> 4) ^ 8) - 8) * (((wb >> 4) ^ 8) - 8);
  }
  y[i] = from_f32<T>(epilogue(acc, sx[m], sw[n], residual, i));
}

// ---------------------------------------------------------------------------------------------------------
// Dispatch. Measured on the H100 (bench/results/qgemm_notes.md, "Decode, second pass"): the mma decode kernel
// for every M <= 16 (since its rewrite it also beats the dp4a GEMV at M = 1: o_proj 5.3 vs 6.2 us, down_proj
// 13.3 vs 15.9 us in the decode-layer graph), and with four / eight token tiles for M = 17..64 (one pass over
// the weights; the 128-row prefill tile left most SMs idle there: Llama-3-8B decode at batch 32 took 15.8
// ms/step, at 48 18.7, slower than the FP16 engine); the 128x128 prefill tile (2 blocks per SM) beat 128x256,
// 256x128, 64x256 and 8-warp 128x128 on every measured shape.

enum class Kind { kDecode, kStaged, kPrefill, kFallback, kInvalid };

// The staged decode kernel needs sm_90 (bulk copies, mbarriers); 0 where the device cannot be queried.
int device_major() {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess)
    return 0;
  return major;
}

// Row groups of the staged kernel resident at once for this K (its blocks of one wave); 0 if unknown.
int64_t staged_wave(int64_t K) {
  const size_t smem =
      static_cast<size_t>(kStagedWarps) * staged_depth(K) * (kWarpStageBytes + sizeof(uint64_t));
  const auto kernel = qgemm_decode_staged_kernel<1, float>;  // every instance: 64 registers, the same smem
  int device = 0, sms = 0, per_sm = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) !=
          cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kStagedWarps * 32, smem) != cudaSuccess)
    return 0;
  return static_cast<int64_t>(per_sm) * sms;
}

// kAuto takes the staged kernel where its prefetch pays (measured, bench/results/w4a4_engine_notes.md,
// eleventh pass): at most kQgemmStagedMaxM tokens and every row group resident at once (Llama-3-8B's q|k|v,
// o and down at batch 1; gate|up's 1792 groups stream faster through registers).
Kind choose(const void* qx, const void* qw, int64_t M, int64_t N, int64_t K, QgemmDecode decode) {
  const bool aligned = reinterpret_cast<uintptr_t>(qx) % 16 == 0 && reinterpret_cast<uintptr_t>(qw) % 16 == 0;
  const bool small = K % 32 == 0 && aligned && M <= kQgemmDecodeMaxM;
  if (!small)
    return decode == QgemmDecode::kStaged ? Kind::kInvalid
           : K % 32 != 0 || !aligned      ? Kind::kFallback
                                          : Kind::kPrefill;
  const bool staged = M <= kQgemmStagedMaxM && device_major() >= 9;
  if (decode == QgemmDecode::kStaged) return staged ? Kind::kStaged : Kind::kInvalid;
  if (decode == QgemmDecode::kAuto && staged && (N + 15) / 16 <= staged_wave(K)) return Kind::kStaged;
  return Kind::kDecode;
}

// y rows have stride ldy >= N (a column range of a wider output when ldy > N; residual likewise).
template <typename T>
cudaError_t run(const uint8_t* qx, const float* sx, const uint8_t* qw, const float* sw, const T* residual,
                T* y, int64_t M, int64_t N, int64_t K, int64_t ldy, cudaStream_t stream, bool pdl,
                QgemmDecode decode) {
  if (M < 1 || N < 1 || K < 2 || K % 2 != 0 || K > kQgemmMaxK || ldy < N) return cudaErrorInvalidValue;
  if (M > 0x7fffffff || N > 0x7fffffff) return cudaErrorInvalidValue;
  if (!qx || !sx || !qw || !sw || !y) return cudaErrorInvalidValue;
  const int64_t row_bytes = K / 2;
  const Kind kind = choose(qx, qw, M, N, K, decode);
  switch (kind) {
    case Kind::kInvalid:
      return cudaErrorInvalidValue;
    case Kind::kFallback: {
      const int64_t blocks = (M * N + 255) / 256;
      if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
      qgemm_fallback_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(qx, sx, qw, sw, residual, y,
                                                                                  M, N, ldy, row_bytes);
      break;
    }
    case Kind::kDecode:
    case Kind::kStaged: {
      QgemmActs acts;
      acts.qx[0] = qx;
      acts.sx[0] = sx;
      acts.end[0] = N;
      return launch_any_decode<T>(acts, qw, sw, residual, y, M, N, ldy, K, stream, pdl,
                                  kind == Kind::kStaged);
    }
    case Kind::kPrefill: {
      // Paired accesses need an even N and 2-element alignment of y, residual and sw.
      const uintptr_t pair = 2 * sizeof(T);
      const bool vec = N % 2 == 0 && ldy % 2 == 0 && reinterpret_cast<uintptr_t>(y) % pair == 0 &&
                       reinterpret_cast<uintptr_t>(residual) % pair == 0 &&
                       reinterpret_cast<uintptr_t>(sw) % sizeof(float2) == 0;
      const dim3 grid(static_cast<unsigned>((N + 127) / 128), static_cast<unsigned>((M + 127) / 128));
      qgemm_prefill_kernel<128, 128, 2, 2, 4, T><<<grid, 128, 0, stream>>>(
          qx, sx, qw, sw, residual, y, static_cast<int>(M), static_cast<int>(N), ldy, row_bytes, vec);
      break;
    }
  }
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

// Several activation copies over column segments: one decode launch when every boundary is a multiple of 16
// (its row groups), else one launch per segment into the column range of y.
template <typename T>
cudaError_t run_multi(const QgemmActs& a, const uint8_t* qw, const float* sw, const T* residual, T* y,
                      int64_t M, int64_t N, int64_t K, cudaStream_t stream, bool pdl, QgemmDecode decode) {
  if (a.n < 1 || a.n > 3 || a.end[a.n - 1] != N || M < 1 || N < 1 || K < 2 || K % 2 != 0)
    return cudaErrorInvalidValue;
  bool one_launch = M <= kQgemmDecodeMaxM && K % 32 == 0 && K <= kQgemmMaxK && N <= 0x7fffffff &&
                    reinterpret_cast<uintptr_t>(qw) % 16 == 0 && sw && y;
  int64_t start = 0;
  for (int s = 0; s < a.n; ++s) {
    if (!a.qx[s] || !a.sx[s] || a.end[s] <= start) return cudaErrorInvalidValue;
    one_launch = one_launch && reinterpret_cast<uintptr_t>(a.qx[s]) % 16 == 0 && a.end[s] % 16 == 0;
    start = a.end[s];
  }
  if (a.n == 1) return run<T>(a.qx[0], a.sx[0], qw, sw, residual, y, M, N, K, N, stream, pdl, decode);
  if (one_launch) {
    const Kind kind = choose(a.qx[0], qw, M, N, K, decode);
    if (kind == Kind::kInvalid) return cudaErrorInvalidValue;
    return launch_any_decode<T>(a, qw, sw, residual, y, M, N, N, K, stream, pdl, kind == Kind::kStaged);
  }
  start = 0;
  for (int s = 0; s < a.n; ++s) {
    const int64_t ns = a.end[s] - start;
    FQ_CUDA_RETURN_IF_ERROR(run<T>(a.qx[s], a.sx[s], qw + start * (K / 2), sw + start,
                                   residual ? residual + start : nullptr, y + start, M, ns, K, N, stream, pdl,
                                   decode));
    start = a.end[s];
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t qgemm_w4a4_multi_cuda(const QgemmActs& acts, const uint8_t* qw, const float* sw,
                                  const float* residual, float* y, int64_t M, int64_t N, int64_t K,
                                  cudaStream_t stream, bool pdl, QgemmDecode decode) {
  return run_multi<float>(acts, qw, sw, residual, y, M, N, K, stream, pdl, decode);
}

cudaError_t qgemm_w4a4_multi_cuda_f16(const QgemmActs& acts, const uint8_t* qw, const float* sw,
                                      const uint16_t* residual, uint16_t* y, int64_t M, int64_t N, int64_t K,
                                      cudaStream_t stream, bool pdl, QgemmDecode decode) {
  return run_multi<__half>(acts, qw, sw, reinterpret_cast<const __half*>(residual),
                           reinterpret_cast<__half*>(y), M, N, K, stream, pdl, decode);
}

const char* qgemm_w4a4_kernel_name(const void* qx, const void* qw, int64_t M, int64_t N, int64_t K,
                                   bool f16_out, QgemmDecode decode) {
  (void)f16_out;
  switch (choose(qx, qw, M, N, K, decode)) {
    case Kind::kDecode:
      return "decode";
    case Kind::kStaged:
      return "decode_staged";
    case Kind::kInvalid:
      return "invalid";
    case Kind::kPrefill:
      return "prefill";
    default:
      return "fallback";
  }
}

cudaError_t qgemm_w4a4_cuda(const uint8_t* qx, const float* sx, const uint8_t* qw, const float* sw,
                            const float* residual, float* y, int64_t M, int64_t N, int64_t K,
                            cudaStream_t stream, bool pdl, QgemmDecode decode) {
  return run<float>(qx, sx, qw, sw, residual, y, M, N, K, N, stream, pdl, decode);
}

cudaError_t qgemm_w4a4_cuda_f16(const uint8_t* qx, const float* sx, const uint8_t* qw, const float* sw,
                                const uint16_t* residual, uint16_t* y, int64_t M, int64_t N, int64_t K,
                                cudaStream_t stream, bool pdl, QgemmDecode decode) {
  return run<__half>(qx, sx, qw, sw, reinterpret_cast<const __half*>(residual), reinterpret_cast<__half*>(y),
                     M, N, K, N, stream, pdl, decode);
}

}  // namespace fq::cuda
