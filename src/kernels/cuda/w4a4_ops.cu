// W4A4KV4 engine kernels (w4a4_ops.h). Each mirrors a CPU reference named in the header; fp32 sums are
// written with explicit-rounding intrinsics (no FMA contraction) so that they follow the reference's
// operations.
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/kv4_store.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/quant_common.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/w4a4_ops.h"

namespace fq::cuda {
namespace {

// ---------------------------------------------------------------------------------------------------------
// fused_quant_int4: a cluster of C CTAs per token (an sm_90 thread-block cluster; C = 1: one CTA). At decode
// there are only a few tokens, so with one CTA per token every phase runs on one SM and the kernel is
// latency-bound; a cluster spreads each token's work over C SMs and joins it through distributed shared
// memory. Rank r of the cluster:
//  - stages with cp.async the constants it needs (the RMSNorm weight of its input box, the packed operands
//    while shared memory allows), then, after pdl_wait(), its box of the token's input (RMSNorm: the whole
//    fp32 row, whose sum of squares every rank needs; summing it again is cheaper than a cluster reduction);
//  - with B, phase 1: the prologue for its rows of X (m-tiles [mt0, mt1)), then T = X B for those rows, each
//    pair of fp16 values of T pushed straight into the T^T tile (Tt) of the rank that owns its column in
//    phase 2 (st.async, counted on the owner's mbarrier, which the owner waits for). Without B, it fills its
//    Tt from the input;
//  - phase 2: Y = A^T T for its columns (n-tiles [nt0, nt1)), fp32, and their min/max;
//  - the row's min/max: a block reduction, then each rank pushes its pair into every rank's shared memory
//    (st.async, counted on an mbarrier: no cluster-wide barrier) and every warp combines the C pairs;
//  - the packed bytes of its columns, one copy per clip pair; rank 0 stores the scales.
// L = 0 (no transform): rank r takes a chunk of K / C values (a multiple of 8). Every output value comes from
// the same operations whatever C (each mma sum runs over the same k-steps in the same order, the RMSNorm sum
// of squares has a fixed order, min/max are exact), so all splits give the same bits.
// Shared memory (16-byte aligned regions): wbox (the RMSNorm weight of the box), raw (the staged input),
// which Y (fp32 [L][wY], the rank's columns; L = 0: its chunk) overlays when it fits: both are dead by the
// time Y is written; apk, bpk (the staged operands); X16 [mper * 16][ldx] (fp16 rows of X, zero-padded);
// Tt [wY][ldt] (fp16 T^T of the rank's columns: the right operand of A^T T, written by all ranks in phase
// 1). Row strides of 8 extra halves keep the 32-bit fragment loads free of bank conflicts. Warp tasks are
// 16 x 8 grp output tiles (one m16 row of tiles, grp n8 columns).
constexpr int kFusedMaxSplit = 8;  // the portable cluster size

// Threads per CTA: one CTA per token takes 1024 (measured: bs 16 decode 5.71 -> 5.50 ms vs 512); a cluster
// member 512. Measured (H100, Llama-3-8B graph decode, twice in one call each; C = 8 at bs 1 and 4, 2 at
// bs 16): 256 threads at C >= 4 (until 2026-11-25) 3.01-3.04 / 3.25-3.26 / 4.29-4.33 ms, 512 2.93-2.94 /
// 3.11-3.14 / 4.28-4.34, 1024 3.05-3.06 / 3.27-3.28 / 4.29; 1024 at C = 2 was slower at bs 16 (4.36-4.42).
// The phases are chains of dependent instructions: twice the warps halve each warp's share of a rank's work.
constexpr int fused_threads(int C) {
  return C == 1 ? 1024 : 512;
}

struct FusedShape {
  int C = 1;  // CTAs per token
  int Lp = 0, Rp = 0, ldx = 0, ldt = 0;
  int mper = 0, nper = 0, chunk = 0;  // per rank: m-tiles of X, n-tiles of Y; L = 0: values
  int up_off = 0;                     // kSwiGLU: the up box after the gate box in raw (halves)
  bool whole_rows = false;            // no B: the input box spans whole rows (fp16 rows of odd length)
  bool stage_a = false, stage_b = false, y_in_raw = false;
  int64_t off_w = 0, off_raw = 0, off_y = 0, off_apk = 0, off_bpk = 0, off_x16 = 0, off_tt = 0, total = 0;
};

__host__ __device__ inline int round16(int64_t n) {
  return static_cast<int>((n + 15) / 16 * 16);
}
inline int64_t align16(int64_t n) {
  return (n + 15) / 16 * 16;
}

// The layout of one CTA's shared memory for C CTAs per token (every rank's regions have the largest rank's
// size); operands are staged while the total stays within `limit`. Each region shrinks or stays as C grows.
FusedShape fused_shape(int64_t L, int64_t R, int64_t K, FusedIn in, bool with_b, int C, int64_t limit) {
  FusedShape s;
  s.C = C;
  int64_t box = 0, y = 0;  // elements of a rank's input box, bytes of its Y
  if (L > 0) {
    s.Lp = round16(L);
    s.Rp = round16(R);
    s.ldx = s.Rp + 8;
    s.ldt = s.Lp + 8;
    const int mt = s.Lp / 16, nt = static_cast<int>((R + 7) / 8);
    s.mper = (mt + C - 1) / C;
    s.nper = (nt + C - 1) / C;
    // cp.async moves 4-byte units: a column box of fp16 rows of odd length would start mid-unit.
    s.whole_rows = !with_b && in == FusedIn::kSwiGLU && R % 2 != 0;
    box = with_b ? std::min<int64_t>(16LL * s.mper, L) * R
                 : L * (s.whole_rows ? R : std::min<int64_t>(8LL * s.nper, R));
    y = 4 * L * 8LL * s.nper;
  } else {
    s.chunk = static_cast<int>(((K + C - 1) / C + 7) / 8 * 8);
    box = std::min<int64_t>(s.chunk, K);
    y = 4LL * s.chunk;
  }
  s.up_off = static_cast<int>(align16(2 * box) / 2);
  const int64_t w = in == FusedIn::kRmsNorm ? align16(4 * box) : 0;
  const int64_t raw = in == FusedIn::kRmsNorm ? align16(4 * K)
                      : in == FusedIn::kPlain ? align16(4 * box)
                                              : 2 * align16(2 * box);
  s.off_w = 0;
  s.off_raw = w;
  // L = 0 writes Y while it reads raw: no overlay there.
  s.y_in_raw = L > 0 && y <= w + raw;
  for (int pass = 0; pass < 3; ++pass) {
    s.stage_a = L > 0 && pass < 2;
    s.stage_b = L > 0 && with_b && pass < 1;
    int64_t o = w + raw;
    s.off_y = s.y_in_raw ? 0 : o;
    if (!s.y_in_raw) o += align16(y);
    s.off_apk = o;
    if (s.stage_a) o += align16(2LL * s.Lp * s.Lp);
    s.off_bpk = o;
    if (s.stage_b) o += align16(2LL * s.Rp * s.Rp);
    s.off_x16 = o;
    if (L > 0 && with_b) o += align16(2LL * 16 * s.mper * s.ldx);
    s.off_tt = o;
    if (L > 0) o += align16(2LL * 8 * s.nper * s.ldt);
    s.total = o;
    if (s.total <= limit) break;
  }
  return s;
}

__device__ __forceinline__ uint32_t lds32(const __half* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// n8 tiles per warp task (1, 2 or 4) for an mtiles x ntiles phase: the fewest mma rounds per warp,
// ceil(tasks / warps) * grp; ties go to larger groups (independent mma chains, fewer left-operand loads).
__device__ __forceinline__ int task_group(int mtiles, int ntiles, int warps) {
  int best = 4, best_cost = 1 << 30;
  for (int grp = 4; grp >= 1; grp /= 2) {
    const int tasks = mtiles * ((ntiles + grp - 1) / grp), cost = (tasks + warps - 1) / warps * grp;
    if (cost < best_cost) {
      best = grp;
      best_cost = cost;
    }
  }
  return best;
}

// The sum of squares of x[0, K) in an order that depends on K only, not on the block size, so that every
// split of a token gets the same RMSNorm factor: threads 0..255 run four interleaved fmaf chains each
// (element e in chain e % 1024), then a fixed tree. blockDim.x >= 256; red: 8 floats; every thread gets the
// sum.
__device__ __forceinline__ float sumsq_fixed(const float* x, int K, float* red) {
  const int tid = static_cast<int>(threadIdx.x);
  float p[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (tid < 256)
    for (int i = tid; i < K; i += 1024)
#pragma unroll
      for (int q = 0; q < 4; ++q)
        if (i + 256 * q < K) p[q] = fmaf(x[i + 256 * q], x[i + 256 * q], p[q]);
  float ss = __fadd_rn(__fadd_rn(p[0], p[1]), __fadd_rn(p[2], p[3]));
  for (int off = detail::kWarp / 2; off > 0; off /= 2)
    ss = __fadd_rn(ss, __shfl_xor_sync(0xffffffffu, ss, off));
  if (tid < 256 && tid % detail::kWarp == 0) red[tid / detail::kWarp] = ss;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < 256 / detail::kWarp; ++w) r = __fadd_rn(r, red[w]);
  return r;
}

// v[i] for i < 3 by selects: a dynamically indexed array would live in local memory.
__device__ __forceinline__ float pick3(const float (&v)[3], int i) {
  return i == 0 ? v[0] : i == 1 ? v[1] : v[2];
}

// kIn and kWithB are template parameters, so that each instantiation holds only its own prologue and phase-1
// code (3.1-3.9K instructions instead of 5.0K) and none of the branches between them: the kernel is
// latency-bound (`no_instruction` is its most frequent stall). Measured: graph decode bs 4 3.36 -> 3.27 ms,
// bs 16 4.37 -> 4.29 (bs 1 unchanged).
template <int kThreads, FusedIn kIn, bool kWithB>
__global__ void __launch_bounds__(kThreads, 1)
    fused_quant_kernel(FusedQuantArgs a, FusedShape s, int K, int64_t rows, uint8_t* __restrict__ packed,
                       float* __restrict__ scales) {
  static_assert(kThreads % 256 == 0 && kThreads <= 1024, "sumsq_fixed needs at least 256 threads");
  constexpr int kWarps = kThreads / detail::kWarp;
  extern __shared__ __align__(16) unsigned char smraw[];
  __shared__ float red[2 * detail::kWarp];
  __shared__ float2 mm[kFusedMaxSplit];  // (max, min) of the row's part of every rank, pushed by each rank
  __shared__ uint64_t mm_bar;            // counts the pushes
  __shared__ uint64_t t_bar;             // counts the T values pushed into Tt (with B)
  const int C = s.C, rank = static_cast<int>(blockIdx.x % static_cast<unsigned>(C));
  const int64_t t = blockIdx.x / static_cast<unsigned>(C);  // clusters are C consecutive CTAs along x
  const bool cl = C > 1;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  if (cl) __trap();  // the host launches clusters only on devices that have them
#endif
  const int L = static_cast<int>(a.L), R = static_cast<int>(a.R), Rv = L > 0 ? R : K;  // the row as [Lv, Rv]
  constexpr bool with_b = kWithB;

  // The rank's share. Output columns [n0, n1) of Y (L = 0: values [n0, n1)); input box rows [row0, row1) x
  // columns [col0, col1) of the row viewed as [Lv, Rv].
  const int NT = (R + 7) / 8, MT = s.Lp / 16, wY = 8 * s.nper;
  int n0, n1, row0 = 0, row1 = 1, col0, col1, nt0 = 0, nt1 = 0, mt0 = 0, mt1 = 0;
  if (L == 0) {
    n0 = min(rank * s.chunk, K);
    n1 = min(n0 + s.chunk, K);
    col0 = n0;
    col1 = n1;
  } else {
    nt0 = min(rank * s.nper, NT);
    nt1 = min(nt0 + s.nper, NT);
    n0 = min(8 * nt0, R);
    n1 = min(8 * nt1, R);
    if (with_b) {
      mt0 = min(rank * s.mper, MT);
      mt1 = min(mt0 + s.mper, MT);
      row0 = min(16 * mt0, L);
      row1 = min(16 * mt1, L);
      col0 = 0;
      col1 = R;
    } else {
      row1 = L;
      col0 = s.whole_rows ? 0 : n0;
      col1 = s.whole_rows ? R : n1;
    }
  }
  const int bw = col1 - col0, box_rows = row1 - row0;
  // Phase 1 (with B) and the min/max exchange write into the peers' shared memory, which a CTA may do only
  // once they run and their barriers are initialized: this arrival says that this one is (the wait is just
  // before the first such write). t_bar counts the T values of the rank's columns (all Lp rows, from every
  // rank), mm_bar the C (max, min) pairs.
  if (cl) {
    if (threadIdx.x == 0) {
      detail::mbar_init_expect(&mm_bar, static_cast<unsigned>(C * sizeof(float2)));
      if (L > 0 && with_b)
        detail::mbar_init_expect(&t_bar, static_cast<unsigned>(2 * s.Lp * 8 * (nt1 - nt0)));
    }
    detail::cluster_arrive_relaxed();
  }
  const int64_t box0 = static_cast<int64_t>(row0) * Rv + col0;  // the box's first element in the row

  float* wbox = reinterpret_cast<float*>(smraw + s.off_w);
  float* raw = reinterpret_cast<float*>(smraw + s.off_raw);
  __half* raw16 = reinterpret_cast<__half*>(raw);
  float* Y = reinterpret_cast<float*>(smraw + s.off_y);
  const __half* apk = s.stage_a ? reinterpret_cast<const __half*>(smraw + s.off_apk)
                                : reinterpret_cast<const __half*>(a.a_pk);
  const __half* bpk = s.stage_b ? reinterpret_cast<const __half*>(smraw + s.off_bpk)
                                : reinterpret_cast<const __half*>(a.b_pk);
  __half* X16 = reinterpret_cast<__half*>(smraw + s.off_x16);
  __half* Tt = reinterpret_cast<__half*>(smraw + s.off_tt);
  const int tid = static_cast<int>(threadIdx.x), lane = tid % detail::kWarp, warp = tid / detail::kWarp;
  const int g = lane / 4, tq = lane % 4;

  // 1. Stage the constants, then (after the previous kernel) the input box.
  detail::pdl_trigger();
  if (kIn == FusedIn::kRmsNorm) detail::stage_box_async(wbox, a.norm_w + box0, 4LL * Rv, box_rows, 4LL * bw);
  if (s.stage_a) detail::stage_async(smraw + s.off_apk, a.a_pk, 2LL * s.Lp * s.Lp);
  if (s.stage_b) detail::stage_async(smraw + s.off_bpk, a.b_pk, 2LL * s.Rp * s.Rp);
  detail::pdl_wait();
  if (kIn == FusedIn::kSwiGLU) {
    detail::stage_box_async(raw, a.gate + t * a.gu_stride + box0, 2LL * Rv, box_rows, 2LL * bw);
    detail::stage_box_async(raw16 + s.up_off, a.up + t * a.gu_stride + box0, 2LL * Rv, box_rows, 2LL * bw);
  } else if (kIn == FusedIn::kRmsNorm) {
    detail::stage_async(raw, a.x + t * a.x_stride, 4LL * K);
  } else {
    detail::stage_box_async(raw, a.x + t * a.x_stride + box0, 4LL * Rv, box_rows, 4LL * bw);
  }
  detail::async_wait_all();
  __syncthreads();

  // 2. Prologue, in the reference's operations: value(l, c) is element (l, c) of the row viewed as [Lv, Rv],
  // inside the box.
  float inv = 1.0f;
  if (kIn == FusedIn::kRmsNorm) {
    const float ss = sumsq_fixed(raw, K, red);
    inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, static_cast<float>(K)), a.eps)));
  }
  auto value = [&](int l, int c) -> float {
    const int bi = (l - row0) * bw + (c - col0);
    if (kIn == FusedIn::kSwiGLU) {
      const float gv = __half2float(raw16[bi]), uv = __half2float(raw16[s.up_off + bi]);
      return __fmul_rn(__fdiv_rn(gv, __fadd_rn(1.0f, expf(-gv))), uv);
    }
    return kIn == FusedIn::kRmsNorm ? __fmul_rn(wbox[bi], __fmul_rn(raw[l * Rv + c], inv)) : raw[bi];
  };
  float vmax = 0.0f, vmin = 0.0f;  // 0 is neutral: the scale takes max(., 0) / min(., 0)
  if (L == 0) {
    for (int e = n0 + tid; e < n1; e += kThreads) {
      const float v = value(0, e);
      Y[e - n0] = v;
      vmax = fmaxf(vmax, v);
      vmin = fminf(vmin, v);
    }
  } else {
    const int Lp = s.Lp, Rp = s.Rp;
    if (with_b) {
      // The rank's rows of X, fp16, zero-padded.
      // A warp per row, two columns per lane (Rp and ldx are even): no index divisions.
      const int xrows = 16 * (mt1 - mt0);
      for (int lr = warp; lr < xrows; lr += kWarps) {
        const int l = 16 * mt0 + lr;
        for (int r = 2 * lane; r < Rp; r += 2 * detail::kWarp) {
          const float v0 = l < L && r < R ? value(l, r) : 0.0f;
          const float v1 = l < L && r + 1 < R ? value(l, r + 1) : 0.0f;
          *reinterpret_cast<__half2*>(X16 + lr * s.ldx + r) = __floats2half2_rn(v0, v1);
        }
      }
      __syncthreads();
      if (cl) detail::cluster_wait();  // every peer runs: its Tt may be written
      // 3. T = X B for the rank's rows (fp32 sums over k < Rp), every value rounded to fp16 into the Tt of
      // the rank that owns its column.
      const int ks_n = Rp / 16, mtn = mt1 - mt0;
      const int grp = task_group(mtn, NT, kWarps), ngroups = (NT + grp - 1) / grp;
      for (int task = warp; task < mtn * ngroups; task += kWarps) {
        const int mt = task / ngroups, ntg = (task % ngroups) * grp, nn = min(grp, NT - ntg);
        float c[4][4] = {};
        for (int ks = 0; ks < ks_n; ++ks) {
          const __half* xa = X16 + (mt * 16 + g) * s.ldx + ks * 16 + 2 * tq;
          const uint32_t af[4] = {lds32(xa), lds32(xa + 8 * s.ldx), lds32(xa + 8), lds32(xa + 8 * s.ldx + 8)};
#pragma unroll
          for (int j = 0; j < 4; ++j)
            if (j < nn) {
              const uint2* p = reinterpret_cast<const uint2*>(bpk) + ((ntg + j) * ks_n + ks) * 32 + lane;
              const uint2 bf = s.stage_b ? *p : __ldg(p);
              detail::mma_f16(c[j], af, bf.x, bf.y);
            }
        }
        // Lane (g, tq) holds T rows m = 16 mt + g, m + 8 of columns n, n + 1 (n = 2 tq). With its partner
        // lane (g ^ 1) it forms pairs of rows of one column (adjacent halves of Tt): an even g stores rows
        // (m, m + 1) and (m + 8, m + 9) of column n, an odd g rows (m - 1, m) and (m + 7, m + 8) of n + 1.
        const bool odd = (g & 1) != 0;
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (j < nn) {  // warp-uniform
            const float r0 = __shfl_xor_sync(0xffffffffu, odd ? c[j][0] : c[j][1], 4);
            const float r1 = __shfl_xor_sync(0xffffffffu, odd ? c[j][2] : c[j][3], 4);
            const __half2 lo = odd ? __floats2half2_rn(r0, c[j][1]) : __floats2half2_rn(c[j][0], r0);
            const __half2 hi = odd ? __floats2half2_rn(r1, c[j][3]) : __floats2half2_rn(c[j][2], r1);
            const int nt = ntg + j, owner = nt / s.nper;
            const int n = 8 * (nt - owner * s.nper) + 2 * tq + (odd ? 1 : 0),
                      m = (mt0 + mt) * 16 + g - (odd ? 1 : 0);
            __half* d0 = Tt + n * s.ldt + m;
            if (cl) {
              detail::st_async_u32(d0, reinterpret_cast<const uint32_t&>(lo), &t_bar, owner);
              detail::st_async_u32(d0 + 8, reinterpret_cast<const uint32_t&>(hi), &t_bar, owner);
            } else {
              *reinterpret_cast<__half2*>(d0) = lo;
              *reinterpret_cast<__half2*>(d0 + 8) = hi;
            }
          }
      }
      // All of Tt has arrived (t_bar counted every value pushed into it); raw and X16 are dead, so Y may
      // overwrite raw.
      if (cl) detail::mbar_wait(&t_bar, 0);
      __syncthreads();
    } else {
      // No B: T = X; the rank's columns of X, transposed, fp16, zero-padded.
      // A warp per column, two rows per lane (Lp and ldt are even).
      const int ncols = 8 * (nt1 - nt0);
      for (int nl = warp; nl < ncols; nl += kWarps) {
        const int n = 8 * nt0 + nl;
        for (int m = 2 * lane; m < Lp; m += 2 * detail::kWarp) {
          const float v0 = m < L && n < R ? value(m, n) : 0.0f;
          const float v1 = m + 1 < L && n < R ? value(m + 1, n) : 0.0f;
          *reinterpret_cast<__half2*>(Tt + nl * s.ldt + m) = __floats2half2_rn(v0, v1);
        }
      }
      __syncthreads();
    }
    // 4. Y = A^T T (fp32) for the rank's columns, with their min/max.
    const int ks_n = Lp / 16, nJ = nt1 - nt0;
    const int grp = task_group(MT, nJ, kWarps), ngroups = (nJ + grp - 1) / grp;
    for (int task = warp; task < MT * ngroups; task += kWarps) {
      const int mt = task / ngroups, ntg = (task % ngroups) * grp, nn = min(grp, nJ - ntg);
      float c[4][4] = {};
      for (int ks = 0; ks < ks_n; ++ks) {
        const uint4* p = reinterpret_cast<const uint4*>(apk) + (mt * ks_n + ks) * 32 + lane;
        const uint4 av = s.stage_a ? *p : __ldg(p);
        const uint32_t af[4] = {av.x, av.y, av.z, av.w};
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (j < nn) {
            const __half* tb = Tt + ((ntg + j) * 8 + g) * s.ldt + ks * 16 + 2 * tq;
            detail::mma_f16(c[j], af, lds32(tb), lds32(tb + 8));
          }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (j < nn)
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            const int i = mt * 16 + g + (q >= 2 ? 8 : 0), nl = (ntg + j) * 8 + 2 * tq + (q & 1);
            if (i < L && n0 + nl < R) {
              Y[i * wY + nl] = c[j][q];
              vmax = fmaxf(vmax, c[j][q]);
              vmin = fminf(vmin, c[j][q]);
            }
          }
    }
  }
  // 5. The row's min/max: the block's (its barriers also publish Y), then all ranks' through the cluster.
  detail::block_minmax(vmax, vmin, red);
  // Odd R: a packed byte may pair this rank's last column with a value of another rank, read from its Y.
  const bool peer_y = cl && L > 0 && R % 2 != 0;
  if (cl) {
    if (!(L > 0 && with_b)) detail::cluster_wait();  // (with B: waited before phase 1)
    // Thread r pushes this rank's pair to rank r; every CTA waits for all C pairs in its own memory. A CTA
    // stays alive until all pushes into it have landed, so none is left with a write in flight to it.
    if (tid < C) detail::st_async_f2(&mm[rank], make_float2(vmax, vmin), &mm_bar, tid);
    detail::mbar_wait(&mm_bar, 0);
    __syncthreads();  // (also orders the pairs for tools that do not model st.async)
    const float2 p = lane < C ? mm[lane] : make_float2(0.0f, 0.0f);
    vmax = p.x;
    vmin = p.y;
    detail::warp_minmax(vmax, vmin);
  }
  if (peer_y) detail::cluster_sync();  // every rank's Y is written before a peer reads it below
  // 6. One packed copy per clip pair of the rank's values, all copies in one loop (a rank's share of one copy
  // is too little to keep its threads busy); eight values (one 32-bit store) per thread and step where the
  // layout allows.
  float sc[3], rc[3];  // per clip pair: the scale and its reciprocal (constant indices: registers)
#pragma unroll
  for (int cp = 0; cp < 3; ++cp) {
    sc[cp] = detail::sym_int4_scale(vmax, vmin, a.clips.max[cp], a.clips.min[cp]);
    rc[cp] = __frcp_rn(sc[cp]);
  }
  const bool words = (L > 0 ? R % 8 == 0 : K % 8 == 0) && reinterpret_cast<uintptr_t>(packed) % 4 == 0;
  const int wJ = n1 - n0;
  // Units (words or bytes) of one copy: L = 0, the chunk's; else, per row of Y, the rank's columns.
  const int per_row = L == 0 ? 0 : words ? wJ / 8 : wJ;
  const int units = L == 0 ? (words ? n1 / 8 - n0 / 8 : n1 / 2 - n0 / 2) : L * per_row;
  for (int j = tid; j < a.clips.n * units; j += kThreads) {
    const int cp = j / units, u = j % units;
    const float scale = pick3(sc, cp), rinv = pick3(rc, cp);
    auto code = [&](float v) { return detail::sym_int4_code_fast(v, scale, rinv); };
    uint8_t* out = packed + (cp * rows + t) * (K / 2);
    if (words) {
      // Eight consecutive values of the rank's Y (16-byte aligned: n0 and wY are multiples of 8).
      const int i = L == 0 ? 0 : u / per_row, jj = L == 0 ? u : u % per_row;
      const float4* y4 = reinterpret_cast<const float4*>(L == 0 ? Y + 8 * jj : Y + i * wY + 8 * jj);
      const float4 lo = y4[0], hi = y4[1];
      auto byte = [&](float v0, float v1) {
        return static_cast<uint32_t>(detail::pack2(code(v0), code(v1)));
      };
      const uint32_t w =
          byte(lo.x, lo.y) | byte(lo.z, lo.w) << 8 | byte(hi.x, hi.y) << 16 | byte(hi.z, hi.w) << 24;
      reinterpret_cast<uint32_t*>(out)[(L == 0 ? n0 : i * R + n0) / 8 + jj] = w;
    } else if (L == 0) {
      out[n0 / 2 + u] = detail::pack2(code(Y[2 * u]), code(Y[2 * u + 1]));
    } else {
      // The bytes whose even element is the rank's; with odd R the odd one may be another rank's.
      const int i = u / wJ, c = u % wJ, e = i * R + n0 + c;
      if (e % 2 != 0) continue;
      float v1;
      if (c + 1 < wJ) {
        v1 = Y[i * wY + c + 1];
      } else {
        const int i2 = (e + 1) / R, n2 = (e + 1) % R, owner = n2 / wY;
        const float* src = owner == rank ? Y : detail::cluster_map(Y, owner);
        v1 = src[i2 * wY + n2 - owner * wY];
      }
      out[e / 2] = detail::pack2(code(Y[i * wY + c]), code(v1));
    }
  }
  if (rank == 0 && tid < a.clips.n) scales[tid * rows + t] = pick3(sc, tid);
  // peer_y: every CTA, and so its Y, stays alive until all peers are done reading it.
  if (peer_y) detail::cluster_sync();
}

// fused_pack_operand: element d of the packed operand (see fused_quant_kernel's loads). left: 16 x 16 tiles
// (m-tile, k-step) of A^T, 8 halves per lane ({row g, g+8} x {cols 2t, 2t+1}, then cols + 8); right: 16 x 8
// tiles (n-tile, k-step) of B, 4 halves per lane (k 2t, 2t+1, 2t+8, 2t+9 of column g).
__global__ void fused_pack_kernel(const float* __restrict__ M, int n, bool left, __half* __restrict__ dst) {
  const int np = round16(n), tiles_k = np / 16;
  const int64_t total = static_cast<int64_t>(np) * np;
  for (int64_t d = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; d < total;
       d += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = 0.0f;
    if (left) {
      const int tile = static_cast<int>(d / 256), w = static_cast<int>(d % 256), lane = w / 8, j = w % 8;
      const int row = lane / 4 + ((j / 2) % 2) * 8, col = 2 * (lane % 4) + (j % 2) + (j / 4) * 8;
      const int i = (tile / tiles_k) * 16 + row, l = (tile % tiles_k) * 16 + col;
      if (i < n && l < n) v = M[static_cast<int64_t>(l) * n + i];  // A^T[i][l]
    } else {
      const int tile = static_cast<int>(d / 128), w = static_cast<int>(d % 128), lane = w / 4, j = w % 4;
      const int k = (tile % tiles_k) * 16 + 2 * (lane % 4) + (j % 2) + (j / 2) * 8,
                c = (tile / tiles_k) * 8 + lane / 4;
      if (k < n && c < n) v = M[static_cast<int64_t>(k) * n + c];  // B[k][c]
    }
    dst[d] = __float2half_rn(v);
  }
}

// ---------------------------------------------------------------------------------------------------------
// quantize_sym_int4_multi: one block per row.
__global__ void quant_multi_kernel(const float* __restrict__ x, int64_t cols, int64_t x_stride, int64_t rows,
                                   SymClips clips, uint8_t* __restrict__ packed, float* __restrict__ scales) {
  __shared__ float red[2 * detail::kWarp];
  const int64_t r = blockIdx.x;
  const float* xr = x + r * x_stride;
  float vmax = 0.0f, vmin = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = xr[c];
    vmax = fmaxf(vmax, v);
    vmin = fminf(vmin, v);
  }
  detail::block_minmax(vmax, vmin, red);
  for (int c = 0; c < clips.n; ++c) {
    const float scale = detail::sym_int4_scale(vmax, vmin, clips.max[c], clips.min[c]),
                inv = __frcp_rn(scale);
    uint8_t* out = packed + (c * rows + r) * (cols / 2);
    for (int64_t j = threadIdx.x; j < cols / 2; j += blockDim.x)
      out[j] = detail::pack2(detail::sym_int4_code_fast(xr[2 * j], scale, inv),
                             detail::sym_int4_code_fast(xr[2 * j + 1], scale, inv));
    if (threadIdx.x == 0) scales[c * rows + r] = scale;
  }
}

// ---------------------------------------------------------------------------------------------------------
// qkv_rope_transform_f16: grid (heads, rows) with heads = n_head + n_head_kv (+ n_head_kv when there is a
// bias, for v), one head vector per block.
constexpr int kRopeThreads = 128;
constexpr int kRopeStageMaxD = 128;  // matrices up to 128 x 128 fp32 (64 KB) are staged in shared memory

// With kv4.on, every k and v head (fp16-rounded, as the cache append reads them) also goes into the KV4 cache
// at slot kv4.slot0 + row / n_tok, the row's position (outside [0, max_ctx): the overflow flag, nothing
// written).
struct RopeKv4 {
  bool on = false;
  Kv4Layer c;
  int64_t slot0 = 0;
  int32_t* overflow = nullptr;
  Kv4Clip clip;
};

__global__ void __launch_bounds__(kRopeThreads)
    rope_transform_kernel(__half* qkv, int64_t qkv_stride, int64_t row0, int64_t n_tok, int64_t pos0,
                          const int32_t* __restrict__ d_pos, const float* __restrict__ bias, int n_head,
                          int n_kv, int d, const float* __restrict__ inv_freq,
                          const float* __restrict__ q_mat, const float* __restrict__ k_mat, __half* out,
                          int64_t out_stride, bool stage, RopeKv4 kv4) {
  __shared__ float v[256], r[256], cs[256];
  extern __shared__ __align__(16) float Ms[];  // the head's matrix, staged (d <= kRopeStageMaxD)
  const int hh = blockIdx.x;
  const float* M = hh < n_head ? q_mat : k_mat;
  // The matrix is a constant: its cp.async stage overlaps everything up to the product.
  if (stage && M && hh < n_head + n_kv) detail::stage_async(Ms, M, 4LL * d * d);
  const int64_t row = row0 + blockIdx.y;  // row of the whole call (launches cover at most 65535 rows)
  const int half = d / 2;
  __half* h = qkv + row * qkv_stride + static_cast<int64_t>(hh) * d;
  const float* bh = bias ? bias + static_cast<int64_t>(hh) * d : nullptr;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float a = __half2float(h[i]);
    v[i] = bh ? __fadd_rn(a, bh[i]) : a;
  }
  const int64_t p = (d_pos ? static_cast<int64_t>(d_pos[row / n_tok]) : pos0) + row % n_tok;
  // The head's cache cell (k and v heads, with kv4.on), or -1.
  auto cell = [&]() -> int64_t {
    if (p < 0 || p >= kv4.c.max_ctx) {
      if (threadIdx.x == 0 && kv4.overflow) *kv4.overflow = 1;
      return -1;
    }
    const int kvh = hh - n_head - (hh >= n_head + n_kv ? n_kv : 0);
    return ((kv4.slot0 + row / n_tok) * kv4.c.max_ctx + p) * n_kv + kvh;
  };
  auto rounded = [&](int64_t i) { return __half2float(__float2half_rn(v[i])); };
  if (hh >= n_head + n_kv) {  // a v head: the bias only
    __syncthreads();
    if (bh)
      for (int i = threadIdx.x; i < d; i += blockDim.x) h[i] = __float2half_rn(v[i]);
    if (kv4.on && threadIdx.x < detail::kWarp) {
      const int64_t ci = cell();
      if (ci >= 0) detail::kv4_store_row(kv4.c, true, ci, kv4.clip, rounded);
    }
    return;
  }
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float s, co;
    sincosf(__fmul_rn(inv_freq[i], static_cast<float>(p)), &s, &co);
    cs[i] = co;
    cs[half + i] = s;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float a = v[i], b = v[i + half], co = cs[i], s = cs[half + i];
    r[i] = __fadd_rn(__fmul_rn(a, co), __fmul_rn(-b, s));
    r[i + half] = __fadd_rn(__fmul_rn(b, co), __fmul_rn(a, s));
  }
  __syncthreads();
  const float* Mr = M;
  if (stage && M) {
    detail::async_wait_all();
    __syncthreads();
    Mr = Ms;
  }
  __half* o = out ? out + row * out_stride + static_cast<int64_t>(hh) * d : h;
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    float acc;
    if (M) {
      // Eight independent partial sums keep eight matrix loads in flight (the decode launch is
      // latency-bound).
      float p[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
      int j = 0;
      for (; j + 7 < d; j += 8)
#pragma unroll
        for (int q = 0; q < 8; ++q) p[q] = fmaf(r[j + q], Mr[(j + q) * d + e], p[q]);
      for (; j < d; ++j) p[0] = fmaf(r[j], Mr[j * d + e], p[0]);
      acc = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
    } else {
      acc = r[e];
    }
    o[e] = __float2half_rn(acc);
    v[e] = acc;  // (v is dead since the rotation)
  }
  if (kv4.on && hh >= n_head) {  // a k head: into the cache too
    __syncthreads();
    if (threadIdx.x < detail::kWarp) {
      const int64_t ci = cell();
      if (ci >= 0) detail::kv4_store_row(kv4.c, false, ci, kv4.clip, rounded);
    }
  }
}

// Without the head matrices (the prefill route; its K transform is a batched GEMM afterwards): one block per
// row, blockDim a multiple of half, so a thread keeps one frequency index i (one sincosf) and walks the q/k
// heads, then (with a bias) the v heads; no shared memory or barriers. The per-block
// kernel above spent its time in 128-thread blocks of latency (2048 rows x 40 heads of blocks); a first
// version of this one, one thread per pair over a flat index, was instruction-bound on its 64-bit divisions
// and a sincosf per pair (60 us for a 2048-row Llama-3-8B prefill, ncu). The operations, and so the bits,
// are the same.
__global__ void rope_pairs_kernel(__half* qkv, int64_t qkv_stride, int64_t n_tok, int64_t pos0,
                                  const int32_t* __restrict__ d_pos, const float* __restrict__ bias,
                                  int n_head, int n_kv, int d, const float* __restrict__ inv_freq,
                                  __half* out, int64_t out_stride) {
  const int half = d / 2, heads = n_head + n_kv, tid = static_cast<int>(threadIdx.x);
  const int i = tid % half, step = static_cast<int>(blockDim.x) / half;
  const int64_t row = blockIdx.x;
  const int64_t p = (d_pos ? static_cast<int64_t>(d_pos[row / n_tok]) : pos0) + row % n_tok;
  float sn, co;
  sincosf(__fmul_rn(inv_freq[i], static_cast<float>(p)), &sn, &co);
  __half* const hrow = qkv + row * qkv_stride;
  __half* const orow = out ? out + row * out_stride : hrow;
  // With a bias the v heads (after the q/k heads, in place in qkv) get it added, not rotated.
  for (int hh = tid / half; hh < heads + (bias ? n_kv : 0); hh += step) {
    __half* h = hrow + hh * d;
    float a = __half2float(h[i]), b = __half2float(h[i + half]);
    if (bias) {
      a = __fadd_rn(a, bias[hh * d + i]);
      b = __fadd_rn(b, bias[hh * d + i + half]);
    }
    if (hh >= heads) {
      h[i] = __float2half_rn(a);
      h[i + half] = __float2half_rn(b);
      continue;
    }
    __half* o = orow + hh * d;
    o[i] = __float2half_rn(__fadd_rn(__fmul_rn(a, co), __fmul_rn(-b, sn)));
    o[i + half] = __float2half_rn(__fadd_rn(__fmul_rn(b, co), __fmul_rn(a, sn)));
  }
}

// ---------------------------------------------------------------------------------------------------------
// kv4_dequant_f16: one thread per packed byte (two values) of K and of V.
__global__ void kv4_dequant_kernel(Kv4Layer c, int64_t slot0, int64_t n_pos, int64_t total_bytes,
                                   __half* __restrict__ k_out, __half* __restrict__ v_out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t hb = c.head_dim / 2;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total_bytes;
       i += stride) {
    const int64_t cell_out = i / hb, j = i % hb;  // (seq, pos, head) row of the output
    const int64_t h = cell_out % c.n_head_kv, p = (cell_out / c.n_head_kv) % n_pos,
                  s = cell_out / (c.n_head_kv * n_pos);
    const int64_t cell = ((slot0 + s) * c.max_ctx + p) * c.n_head_kv + h;
    const uint8_t kb = c.k[cell * hb + j], vb = c.v[cell * hb + j];
    const float ks = c.k_scale[cell], kz = c.k_zero[cell], vs = c.v_scale[cell], vz = c.v_zero[cell];
    __half* ko = k_out + cell_out * c.head_dim + 2 * j;
    __half* vo = v_out + cell_out * c.head_dim + 2 * j;
    ko[0] = __float2half_rn(__fmul_rn(__fsub_rn(static_cast<float>(kb & 0xF), kz), ks));
    ko[1] = __float2half_rn(__fmul_rn(__fsub_rn(static_cast<float>(kb >> 4), kz), ks));
    vo[0] = __float2half_rn(__fmul_rn(__fsub_rn(static_cast<float>(vb & 0xF), vz), vs));
    vo[1] = __float2half_rn(__fmul_rn(__fsub_rn(static_cast<float>(vb >> 4), vz), vs));
  }
}

// The same, 4 code bytes (8 values, 16-byte stores) per thread where head_dim % 8 == 0 and the outputs are
// 16-byte aligned: wpr = head_dim / 8 threads per output row, 32-bit row arithmetic. The one-byte version
// spent its time on three 64-bit divisions per byte (per 2048-token Llama-3-8B prefill 0.41 ms, this one
// 0.24).
__global__ void kv4_dequant_vec_kernel(Kv4Layer c, int slot0, int n_pos, int n_rows, int wpr,
                                       __half* __restrict__ k_out, __half* __restrict__ v_out) {
  const int rows_per_block = static_cast<int>(blockDim.x) / wpr, H = static_cast<int>(c.n_head_kv);
  const int j = static_cast<int>(threadIdx.x) % wpr;  // 4-byte word of the row
  for (int row = static_cast<int>(blockIdx.x) * rows_per_block + static_cast<int>(threadIdx.x) / wpr;
       row < n_rows; row += static_cast<int>(gridDim.x) * rows_per_block) {
    const int h = row % H, p = (row / H) % n_pos, sq = row / (H * n_pos);
    const int64_t cell = ((static_cast<int64_t>(slot0) + sq) * c.max_ctx + p) * H + h;
    const uint32_t kw = reinterpret_cast<const uint32_t*>(c.k + cell * (c.head_dim / 2))[j],
                   vw = reinterpret_cast<const uint32_t*>(c.v + cell * (c.head_dim / 2))[j];
    const float ks = c.k_scale[cell], kz = c.k_zero[cell], vs = c.v_scale[cell], vz = c.v_zero[cell];
    const auto dq = [](uint32_t w, float sc, float z) {
      uint4 o;
      uint32_t* op = &o.x;
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const uint32_t byte = (w >> (8 * b)) & 0xFFu;
        const __half2 hv =
            __halves2half2(__float2half_rn(__fmul_rn(__fsub_rn(static_cast<float>(byte & 0xF), z), sc)),
                           __float2half_rn(__fmul_rn(__fsub_rn(static_cast<float>(byte >> 4), z), sc)));
        op[b] = *reinterpret_cast<const uint32_t*>(&hv);
      }
      return o;
    };
    reinterpret_cast<uint4*>(k_out + static_cast<int64_t>(row) * c.head_dim)[j] = dq(kw, ks, kz);
    reinterpret_cast<uint4*>(v_out + static_cast<int64_t>(row) * c.head_dim)[j] = dq(vw, vs, vz);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Random fills (benchmarks).
__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__global__ void fill_u8_kernel(uint8_t* dst, int64_t n, uint64_t seed) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    dst[i] = static_cast<uint8_t>(splitmix64(seed ^ splitmix64(static_cast<uint64_t>(i))) >> 56);
}

__global__ void fill_normal_f32_kernel(float* dst, int64_t n, uint64_t seed, float mean, float stddev) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const uint64_t h = splitmix64(seed ^ splitmix64(static_cast<uint64_t>(i)));
    const float u1 = (static_cast<float>(h >> 40) + 1.0f) * (1.0f / 16777216.0f);
    const float u2 = static_cast<float>((h >> 8) & 0xFFFFFFu) * (1.0f / 16777216.0f);
    dst[i] = mean + stddev * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
  }
}

__global__ void to_f16_kernel(const float* __restrict__ src, int64_t rows, int64_t cols, bool transpose,
                              __half* __restrict__ dst) {
  const int64_t n = rows * cols, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / cols, c = i % cols;
    dst[transpose ? c * rows + r : i] = __float2half_rn(src[i]);
  }
}

unsigned grid_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 8192 ? 8192 : b));
}

}  // namespace

int64_t fused_operand_elems(int64_t n) {
  return n < 1 ? 0 : static_cast<int64_t>(round16(n)) * round16(n);
}

cudaError_t fused_pack_operand(const float* M, int64_t n, bool left, uint16_t* dst, cudaStream_t stream) {
  if (n < 1 || n > 4096 || !M || !dst) return cudaErrorInvalidValue;
  fused_pack_kernel<<<grid_for(fused_operand_elems(n), 256), 256, 0, stream>>>(
      M, static_cast<int>(n), left, reinterpret_cast<__half*>(dst));
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

namespace {
// The device's opt-in shared memory per block less this kernel's static part, or 0.
int64_t fused_smem_limit(int device) {
  int optin = 0;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return optin > 1024 ? optin - 1024 : 0;
}

bool fused_shape_ok(int64_t L, int64_t R, int64_t K) {
  return K >= 2 && K % 2 == 0 && K <= (1 << 24) && L >= 0 &&
         (L == 0 || (R >= 1 && L * R == K && L <= 4096 && R <= 4096));
}

// CTAs per token. split > 0: that many (any rank may be left without work); 0: the portable cluster size,
// halved while a rank would have no n-tile of Y (L = 0: fewer than 512 values) or the grid would exceed half
// the SMs (then whole SMs per token stop paying: the tokens already fill the GPU). 1 where the device has
// no clusters (all splits give the same bits).
int fused_split(int split, bool clusters, int sms, int64_t rows, int64_t L, int64_t R, int64_t K) {
  if (!clusters) return 1;
  if (split > 0) return split;
  const int64_t units = L > 0 ? (R + 7) / 8 : K / 512;
  int C = kFusedMaxSplit;
  // At most ~half of the SMs: every CTA stages the whole packed operands, so more CTAs per token cost L2
  // traffic. Measured, Llama-3-8B graph decode with 512-thread cluster CTAs (H100, ms/step, C = 1 / 2 / 4 /
  // 8): bs 8 3.87 / 3.50 / 3.30 / 3.32, bs 16 - / 4.30-4.33 / 4.23 / 4.83-4.85, bs 32 6.34 / 5.80 / 6.36 /
  // 7.13; bs 1 and 4 take 8. (A quarter of the SMs until 2026-11-25, with 256-thread CTAs at C >= 4.)
  while (C > 1 && (C > units || rows * C > std::max(sms / 2, 8))) C /= 2;
  return C;
}

using FusedKernelFn = void (*)(FusedQuantArgs, FusedShape, int, int64_t, uint8_t*, float*);

template <int kThreads>
FusedKernelFn fused_kernel_for(FusedIn in, bool with_b) {
  switch (in) {
    case FusedIn::kRmsNorm:
      return with_b ? fused_quant_kernel<kThreads, FusedIn::kRmsNorm, true>
                    : fused_quant_kernel<kThreads, FusedIn::kRmsNorm, false>;
    case FusedIn::kSwiGLU:
      return with_b ? fused_quant_kernel<kThreads, FusedIn::kSwiGLU, true>
                    : fused_quant_kernel<kThreads, FusedIn::kSwiGLU, false>;
    default:
      return with_b ? fused_quant_kernel<kThreads, FusedIn::kPlain, true>
                    : fused_quant_kernel<kThreads, FusedIn::kPlain, false>;
  }
}

FusedKernelFn fused_kernel(int threads, FusedIn in, bool with_b) {
  return threads == 1024 ? fused_kernel_for<1024>(in, with_b) : fused_kernel_for<512>(in, with_b);
}
}  // namespace

size_t fused_quant_smem(int64_t L, int64_t R, int64_t K, FusedIn in, bool with_b, int device, int split) {
  const int C = std::min(std::max(split, 1), kFusedMaxSplit);
  return static_cast<size_t>(fused_shape(L, R, K, in, with_b, C, fused_smem_limit(device)).total);
}

bool fused_quant_fits(int64_t L, int64_t R, int64_t K, FusedIn in, bool with_b, int device, int split) {
  if (split == 0) {  // the largest split the device offers: an automatic launch raises C until it fits
    int clusters = 0;
    if (cudaDeviceGetAttribute(&clusters, cudaDevAttrClusterLaunch, device) != cudaSuccess) {
      (void)cudaGetLastError();
      clusters = 0;
    }
    split = clusters ? kFusedMaxSplit : 1;
  }
  return fused_shape_ok(L, R, K) && split >= 1 && split <= kFusedMaxSplit && (split & (split - 1)) == 0 &&
         fused_quant_smem(L, R, K, in, with_b, device, split) <=
             static_cast<size_t>(fused_smem_limit(device));
}

cudaError_t fused_quant_int4(const FusedQuantArgs& a, int64_t rows, int64_t K, uint8_t* packed, float* scales,
                             cudaStream_t stream, bool pdl, int split) {
  const auto misaligned = [](const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n != 0; };
  if (rows < 0 || rows > 0x7FFFFFFF || !fused_shape_ok(a.L, a.R, K) || a.clips.n < 1 || a.clips.n > 3 ||
      split < 0 || split > kFusedMaxSplit || (split & (split - 1)) != 0 ||
      (a.L > 0 && (!a.a_pk || misaligned(a.a_pk, 16) || misaligned(a.b_pk, 16))) ||
      (rows > 0 && (!packed || !scales)) ||
      (a.in == FusedIn::kSwiGLU && (!a.gate || !a.up || a.gu_stride < K || misaligned(a.gate, 4) ||
                                    misaligned(a.up, 4) || a.gu_stride % 2 != 0)) ||
      (a.in != FusedIn::kSwiGLU && (!a.x || a.x_stride < K || misaligned(a.x, 4))) ||
      (a.in == FusedIn::kRmsNorm && (!a.norm_w || misaligned(a.norm_w, 4))))
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  int device = 0, clusters = 0, sms = 0;
  FQ_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  FQ_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&clusters, cudaDevAttrClusterLaunch, device));
  FQ_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t limit = fused_smem_limit(device);
  FusedQuantArgs k = a;
  if (k.L == 0) k.b_pk = nullptr;
  int C = fused_split(split, clusters != 0, sms, rows, k.L, k.R, K);
  FusedShape sh = fused_shape(k.L, k.R, K, k.in, k.b_pk != nullptr, C, limit);
  // Automatic: more CTAs per token while one CTA's share does not fit (fewer rows of X and columns of Y
  // each).
  while (split == 0 && clusters && sh.total > limit && C < kFusedMaxSplit) {
    C *= 2;
    sh = fused_shape(k.L, k.R, K, k.in, k.b_pk != nullptr, C, limit);
  }
  if (sh.total > limit || rows > 0x7FFFFFFF / C) return cudaErrorInvalidValue;  // grid.x = rows * C
  const int threads = fused_threads(C);
  const FusedKernelFn kernel = fused_kernel(threads, k.in, k.b_pk != nullptr);
  // Always the whole limit, so that launches of different shapes never lower it under another's needs.
  if (sh.total > 48 * 1024)
    FQ_CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(limit)));
  const detail::Launch l(dim3(static_cast<unsigned>(rows * C)), dim3(static_cast<unsigned>(threads)),
                         static_cast<size_t>(sh.total), stream, pdl, static_cast<unsigned>(C));
  FQ_CUDA_RETURN_IF_ERROR(
      cudaLaunchKernelEx(&l.cfg, kernel, k, sh, static_cast<int>(K), rows, packed, scales));
  return cudaSuccess;
}

cudaError_t quantize_sym_int4_multi(const float* x, int64_t rows, int64_t cols, int64_t x_stride,
                                    const SymClips& clips, uint8_t* packed, float* scales,
                                    cudaStream_t stream) {
  if (rows < 0 || cols < 2 || cols % 2 != 0 || x_stride < cols || clips.n < 1 || clips.n > 3 ||
      rows > 0x7FFFFFFF || (rows > 0 && (!x || !packed || !scales)))
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  const int threads = cols >= 4096 ? 512 : 256;
  quant_multi_kernel<<<static_cast<unsigned>(rows), threads, 0, stream>>>(x, cols, x_stride, rows, clips,
                                                                          packed, scales);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

namespace {
cudaError_t rope_launch(uint16_t* qkv, int64_t qkv_stride, int64_t rows, int64_t n_tok, int64_t pos0,
                        const int32_t* d_pos, const float* bias, int64_t n_head, int64_t n_head_kv,
                        int64_t head_dim, const float* inv_freq, const float* q_mat, const float* k_mat,
                        cudaStream_t stream, uint16_t* qk_out, int64_t qk_stride, const RopeKv4& kv4) {
  if (qk_out && qk_stride < (n_head + n_head_kv) * head_dim) return cudaErrorInvalidValue;
  if (rows < 0 || n_tok < 1 || rows % n_tok != 0 || head_dim < 2 || head_dim % 2 != 0 || head_dim > 256 ||
      n_head < 1 || n_head_kv < 1 || qkv_stride < (n_head + 2 * n_head_kv) * head_dim || !inv_freq ||
      rows > 65535 * 1024LL || (rows > 0 && !qkv))
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  const int64_t heads = n_head + n_head_kv + (bias || kv4.on ? n_head_kv : 0);
  if (rows > 0x7FFFFFFF || heads > 0x7FFFFFFF) return cudaErrorInvalidValue;
  if (!q_mat && !k_mat && !kv4.on) {
    const int half = static_cast<int>(head_dim / 2);
    rope_pairs_kernel<<<static_cast<unsigned>(rows), half * std::max(1, 256 / half), 0, stream>>>(
        reinterpret_cast<__half*>(qkv), qkv_stride, n_tok, pos0, d_pos, bias, static_cast<int>(n_head),
        static_cast<int>(n_head_kv), static_cast<int>(head_dim), inv_freq, reinterpret_cast<__half*>(qk_out),
        qk_stride);
    FQ_CUDA_RETURN_LAUNCH_ERROR();
    return cudaSuccess;
  }
  // The matrices are staged in shared memory when they fit (64 KB at head_dim 128).
  const size_t smem =
      (q_mat || k_mat) && head_dim <= kRopeStageMaxD ? static_cast<size_t>(4 * head_dim * head_dim) : 0;
  if (smem > 48 * 1024)  // always the largest size, so that no launch lowers it under another's needs
    FQ_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(rope_transform_kernel,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 4 * kRopeStageMaxD * kRopeStageMaxD));
  // gridDim.y is limited to 65535: rows beyond that go in further launches (the kernel adds row0).
  for (int64_t r0 = 0; r0 < rows; r0 += 65535) {
    const int64_t nr = std::min<int64_t>(rows - r0, 65535);
    rope_transform_kernel<<<dim3(static_cast<unsigned>(heads), static_cast<unsigned>(nr)), kRopeThreads, smem,
                            stream>>>(reinterpret_cast<__half*>(qkv), qkv_stride, r0, n_tok, pos0, d_pos,
                                      bias, static_cast<int>(n_head), static_cast<int>(n_head_kv),
                                      static_cast<int>(head_dim), inv_freq, q_mat, k_mat,
                                      reinterpret_cast<__half*>(qk_out), qk_stride, smem > 0, kv4);
    FQ_CUDA_RETURN_LAUNCH_ERROR();
  }
  return cudaSuccess;
}
}  // namespace

cudaError_t qkv_rope_transform_f16(uint16_t* qkv, int64_t qkv_stride, int64_t rows, int64_t n_tok,
                                   int64_t pos0, const int32_t* d_pos, const float* bias, int64_t n_head,
                                   int64_t n_head_kv, int64_t head_dim, const float* inv_freq,
                                   const float* q_mat, const float* k_mat, cudaStream_t stream,
                                   uint16_t* qk_out, int64_t qk_stride) {
  return rope_launch(qkv, qkv_stride, rows, n_tok, pos0, d_pos, bias, n_head, n_head_kv, head_dim, inv_freq,
                     q_mat, k_mat, stream, qk_out, qk_stride, RopeKv4{});
}

cudaError_t qkv_rope_transform_kv4_f16(uint16_t* qkv, int64_t qkv_stride, int64_t rows, int64_t n_tok,
                                       int64_t slot0, int64_t pos0, const int32_t* d_pos, const float* bias,
                                       int64_t n_head, int64_t n_head_kv, int64_t head_dim,
                                       const float* inv_freq, const float* q_mat, const float* k_mat,
                                       const Kv4Layer& cache, int32_t* d_overflow, const Kv4Clip& clip,
                                       cudaStream_t stream) {
  const Kv4Layer& c = cache;
  // kv4_append's checks: the cache's shape matches the heads, the slots exist, positions are checked here
  // when known on the host and flagged on the device otherwise.
  if (c.n_slots < 1 || c.max_ctx < 1 || c.n_head_kv != n_head_kv || c.head_dim != head_dim || !c.k || !c.v ||
      !c.k_scale || !c.k_zero || !c.v_scale || !c.v_zero || n_tok < 1 || rows < 0 || rows % n_tok != 0 ||
      slot0 < 0 || slot0 + rows / n_tok > c.n_slots)
    return cudaErrorInvalidValue;
  if (d_pos ? d_overflow == nullptr : (pos0 < 0 || pos0 + n_tok > c.max_ctx)) return cudaErrorInvalidValue;
  RopeKv4 kv4;
  kv4.on = true;
  kv4.c = c;
  kv4.slot0 = slot0;
  kv4.overflow = d_overflow;
  kv4.clip = clip;
  return rope_launch(qkv, qkv_stride, rows, n_tok, pos0, d_pos, bias, n_head, n_head_kv, head_dim, inv_freq,
                     q_mat, k_mat, stream, nullptr, 0, kv4);
}

cudaError_t kv4_dequant_f16(const Kv4Layer& c, int64_t slot0, int64_t n_seq, int64_t n_pos, uint16_t* k_out,
                            uint16_t* v_out, cudaStream_t stream) {
  if (n_seq < 0 || n_pos < 0 || slot0 < 0 || slot0 + n_seq > c.n_slots || n_pos > c.max_ctx ||
      c.head_dim < 2 || c.head_dim % 2 != 0 || c.n_head_kv < 1 || !c.k || !c.v || !c.k_scale || !c.k_zero ||
      !c.v_scale || !c.v_zero || (n_seq * n_pos > 0 && (!k_out || !v_out)))
    return cudaErrorInvalidValue;
  const int64_t total = n_seq * n_pos * c.n_head_kv * (c.head_dim / 2);
  if (total == 0) return cudaSuccess;
  const int64_t n_rows = n_seq * n_pos * c.n_head_kv, wpr = c.head_dim / 8;
  const auto al16 = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  if (c.head_dim % 8 == 0 && wpr <= 256 && n_rows <= 0x7FFFFFFF && slot0 + n_seq <= 0x7FFFFFFF &&
      al16(k_out) && al16(v_out) && reinterpret_cast<uintptr_t>(c.k) % 4 == 0 &&
      reinterpret_cast<uintptr_t>(c.v) % 4 == 0) {
    const int threads = static_cast<int>(256 / wpr * wpr);
    const int64_t blocks = std::min<int64_t>((n_rows + threads / wpr - 1) / (threads / wpr), 1 << 20);
    kv4_dequant_vec_kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        c, static_cast<int>(slot0), static_cast<int>(n_pos), static_cast<int>(n_rows), static_cast<int>(wpr),
        reinterpret_cast<__half*>(k_out), reinterpret_cast<__half*>(v_out));
    FQ_CUDA_RETURN_LAUNCH_ERROR();
    return cudaSuccess;
  }
  kv4_dequant_kernel<<<grid_for(total, 256), 256, 0, stream>>>(
      c, slot0, n_pos, total, reinterpret_cast<__half*>(k_out), reinterpret_cast<__half*>(v_out));
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t fill_random_u8(uint8_t* dst, int64_t n, uint64_t seed, cudaStream_t stream) {
  if (n < 0 || (n > 0 && !dst)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  fill_u8_kernel<<<grid_for(n, 256), 256, 0, stream>>>(dst, n, seed);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t fill_normal_f32(float* dst, int64_t n, uint64_t seed, float mean, float stddev,
                            cudaStream_t stream) {
  if (n < 0 || (n > 0 && !dst)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  fill_normal_f32_kernel<<<grid_for(n, 256), 256, 0, stream>>>(dst, n, seed, mean, stddev);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t f32_to_f16_matrix(const float* src, int64_t rows, int64_t cols, bool transpose, uint16_t* dst,
                              cudaStream_t stream) {
  if (rows < 0 || cols < 0 || (rows * cols > 0 && (!src || !dst))) return cudaErrorInvalidValue;
  if (rows * cols == 0) return cudaSuccess;
  to_f16_kernel<<<grid_for(rows * cols, 256), 256, 0, stream>>>(src, rows, cols, transpose,
                                                                reinterpret_cast<__half*>(dst));
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

}  // namespace fq::cuda
