// The int8 prefill route's fused transform + quantizer (prefill_int8.h: kron_quant_i8_multi).
//
// Before this kernel a prefill input took three ops: a cuBLAS GEMM T = X B over all rows ([rows * L, R] x
// [R, R], fp16 out), a strided-batched GEMM Y = A^T T per token (fp32 out) and quantize_sym_int4_i8_multi,
// i.e. the fp16 T and the fp32 Y made a round trip through memory (for a 2048-token Llama-3-8B prefill:
// 11.5 ms of 55.7, bench/results/w4a4_engine_notes.md). Here a CTA reads a token's fp16 row once and writes
// only its int8 codes.
//
// Each CTA loops over tokens (persistent grid, blocks = rows or the resident CTAs if fewer). Shared memory:
// the packed operands (fused_pack_operand's fragment order, staged once per CTA), one or two X buffers
// [Lp][ld] (the next token's row is a cp.async stage in flight while the current one computes; with one
// buffer and B it loads as soon as phase 1 has read X), and T [Lp][ld] (with B). ld = Rp + 8 halves: ld / 8
// is odd, so the 8 rows of an ldmatrix phase hit 8 different 16-byte bank groups. The padding the mma phases
// read (rows >= L, columns [R, Rp)) is zeroed once; the stages never write it. Per token:
//  1. T = X B on mma.sync m16n8k16 (A fragments of X by ldmatrix, B fragments from the packed operand), fp32
//     sums rounded to fp16 into T. Warp tasks: 16 x 32 tiles.
//  2. Y = A^T T (A^T from the packed operand, T fragments by ldmatrix.trans), fp32 sums kept in registers:
//     each warp owns kTasks (1 or 3) 16 x 32 tiles of Y. Their max/min, a block reduction, the scales.
//  3. The codes from the registers, per clip copy: each lane stores its column pairs as 16-bit words (the
//     rounding on full-rate ALU operations, quant_common.cuh's sym_int4_byte_fast_dev), one 64-bit address
//     per row of a tile and immediate offsets; the rare values next to a half-integer send the thread to a
//     second, exact pass. A first version gathered 8 bytes per lane by quad shuffles; with
//     sym_int4_code_fast it was instruction-bound (ncu: 64.6 us for Llama-3-8B's 2048-row q|k|v input, 38M
//     warp instructions, 62 % SM throughput); per-pair 64-bit permuted addresses and tie branches: 63 us,
//     31M; this form 56 us, 23M (bench/results/w4a4_engine_notes.md, "Eighth pass").
//     On sm_90 the codes go to shared memory first (a staging buffer of each token's copies), and after
//     the next barrier one thread sends each token's copy to global memory with one bulk copy (TMA); the
//     buffer is written again only after that thread saw the copies' reads done (before the next phase 3's
//     barriers). Llama-3-8B, 2048 rows, ncu: down input 151.6 -> 136.5 us, the small inputs unchanged
//     (their 16-bit stores were not what held them back).
// A warp owns one tile of Y where the input has at most 32 (28 warps for Llama-3-8B's down input: 172 ->
// 170 us, the 16-warp form with two tiles per warp was as fast before this phase 3 and 185 us after), else
// three. Inputs of 17..28 tiles (CTAs that fill an SM alone) take two tokens per step: each B / A fragment
// read from shared memory feeds both tokens' mmas, and the barriers are per two tokens (down input 170.7 ->
// 143.3 us).
// Every step (the k-steps of each mma sum in order, fp16 rounding of T, fp32 Y, exact min/max, the scale and
// code functions) is the fused decode kernel's (w4a4_ops.cu), so for the same fp16 X both give the same bits.
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/prefill_int8.h"
#include "kernels/cuda/quant_common.cuh"

namespace fq::cuda {
namespace {

struct KqShape {
  int L = 0, R = 0, Lp = 0, Rp = 0, ld = 0;
  int MT = 0, NT = 0, groups = 0;  // m-tiles, n8-tiles of Y (ceil(R / 8)), groups of 4 n-tiles
  int stages = 0;
  int tok = 1;     // tokens per step (their X and T tiles side by side)
  int staged = 0;  // copies of codes staged per token in shared memory (0: codes stored directly)
  bool with_b = false;
  bool wide = false;   // 16-byte cp.async rows (R % 8 == 0, x aligned)
  bool even = false;   // R even and out 2-byte aligned: 16-bit code stores
  int row_shift = -1;  // log2(R / 8) where R / 8 is a power of two
  bool fast = false;   // phase 3's fast form (see the kernel)
  bool full = false;   // L % 16 == 0, R % 32 == 0: every tile fully valid
  int64_t off_b = 0, off_x = 0, off_t = 0, off_c = 0, total = 0;  // bytes (A at 0)
};

inline int round16(int64_t n) {
  return static_cast<int>((n + 15) / 16 * 16);
}

KqShape kq_shape(int64_t L, int64_t R, bool with_b, int stages, int tok, int staged) {
  KqShape s;
  s.L = static_cast<int>(L);
  s.R = static_cast<int>(R);
  s.Lp = round16(L);
  s.Rp = round16(R);
  s.ld = s.Rp + 8;
  s.MT = s.Lp / 16;
  s.NT = static_cast<int>((R + 7) / 8);
  s.groups = (s.NT + 3) / 4;
  s.stages = stages;
  s.tok = tok;
  s.staged = staged;
  s.with_b = with_b;
  const int64_t tile = 2LL * s.Lp * s.ld;
  s.off_b = 2LL * s.Lp * s.Lp;
  s.off_x = s.off_b + (with_b ? 2LL * s.Rp * s.Rp : 0);
  s.off_t = s.off_x + stages * tok * tile;
  s.off_c = s.off_t + (with_b ? tok * tile : 0);
  s.total = s.off_c + static_cast<int64_t>(tok) * staged * L * R;
  return s;
}

int64_t smem_limit(int device) {
  int optin = 0;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return optin;
}

// Tiles of Y (16 x 32) a CTA holds in registers: 16 warps x 3 (4 spill at 128 registers per thread).
constexpr int kMaxTasks = 48;
// With two tokens per step: up to 28 warps of one tile each (72 registers per thread; at 32 warps, 64
// registers, the two tokens' tiles spill).
constexpr int kMaxTok2Tasks = 28;

// The tokens per step, code staging and X buffers of a shape: `tok` tokens per step where their tiles fit
// (only shapes of at most kMaxTok2Tasks tiles of Y, one per warp: the registers hold tok of them), the codes
// of `staged` copies per token staged in shared memory where they fit (0: never), two X buffers where they
// fit, else one, in that order of preference; total = 0 where not even one token with one buffer fits (or the
// tiles of Y exceed what a CTA's registers hold). tok 0: the automatic choice.
KqShape kq_fit(int64_t L, int64_t R, bool with_b, int64_t limit, int tok, int staged) {
  const int64_t tasks = ((L + 15) / 16) * ((R + 31) / 32);
  for (int tk = 2; tk >= 1; --tk) {
    // Automatic: two tokens only for shapes of more than 16 tiles, whose CTAs fill an SM alone (the down
    // input of Llama-3-8B, 28 tiles: 170.7 -> 143.3 us per 2048 rows); the small inputs run several CTAs per
    // SM and gained nothing (q|k|v 56.6 -> 58.3 us, o 29.7 -> 29.1, gate|up 46.0 -> 46.4; ncu, H100).
    if ((tok > 0 && tk != tok) || (tok == 0 && tk > 1 && tasks <= 16) || (tk > 1 && tasks > kMaxTok2Tasks))
      continue;
    for (int sg = staged; sg >= 0; sg = sg > 0 ? 0 : -1)
      for (int st = 2; st >= 1; --st) {
        const KqShape s = kq_shape(L, R, with_b, st, tk, sg);
        if (s.total <= limit && s.MT * s.groups <= kMaxTasks) return s;
      }
  }
  return KqShape{};
}

// Token t's row into the X buffer: L rows of R halves. Wide: 16-byte cp.async; else plain loads (rows of odd
// length start mid-word; only tiny shapes have them).
__device__ __forceinline__ void load_x(const KqShape& s, const __half* __restrict__ xr, __half* X) {
  if (s.wide) {
    // 16-byte chunks, per_row = R / 8 of them per row; a shift where per_row is a power of two (the engine's
    // shapes) instead of a division.
    // Chunk i is halves [8 i, 8 i + 8) of the token's row (row l = i / per_row): in X at 8 i + l (ld - R).
    const int per_row = s.R / 8, total = s.L * per_row, sh = s.row_shift, pad = s.ld - s.R;
    const unsigned x0 = detail::smem_u32(X);
    for (int i = static_cast<int>(threadIdx.x); i < total; i += static_cast<int>(blockDim.x)) {
      const int l = sh >= 0 ? i >> sh : i / per_row;
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(
                       x0 + 2u * static_cast<unsigned>(8 * i + l * pad)),
                   "l"(xr + 8 * i));
    }
  } else {
    const int total = s.L * s.R;
    for (int i = static_cast<int>(threadIdx.x); i < total; i += static_cast<int>(blockDim.x))
      X[(i / s.R) * s.ld + i % s.R] = xr[i];
  }
}

// Staged codes: one thread sends the staged copies of tokens t0 .. t0 + n - 1 (those < rows; copy cp of
// token t0 + u at Cs + (u * copies + cp) * K) to global memory, one bulk copy per token and copy, after the
// barrier that follows every thread's phase 3 and proxy fence. Not inlined: it would hold registers across
// the kernel's loop.
__device__ __noinline__ void flush_codes(const int8_t* Cs, int8_t* out, int64_t t0, int n, int64_t rows,
                                         int copies, int K) {
  for (int u = 0; u < n && t0 + u < rows; ++u)
    for (int cp = 0; cp < copies; ++cp)
      detail::bulk_store(out + (cp * rows + t0 + u) * K, Cs + (u * copies + cp) * K,
                         static_cast<unsigned>(K));
  detail::bulk_commit();
}

// kTasks tiles of Y per warp, blockDim.x / 32 = ceil(tasks / kTasks) warps (up to 32 with one tile each);
// kTok tokens per step (s.tok): a step's tokens are consecutive rows, each with its own X (and T) tile, and
// every operand fragment a warp reads from shared memory (B in phase 1, A in phase 2) feeds the mmas of all
// of them, between the same barriers.
template <int kTasks, int kTok, bool kPerm>
__global__ void __launch_bounds__(kTasks == 1 ? (kTok == 1 ? 1024 : 32 * kMaxTok2Tasks) : 512)
    kron_quant_i8_kernel(const __half* __restrict__ x, int64_t x_stride, int64_t rows,
                         const __half* __restrict__ a_pk, const __half* __restrict__ b_pk, KqShape s,
                         SymClips clips, int8_t* __restrict__ out, float* __restrict__ scales,
                         int64_t scale_stride) {
  extern __shared__ __align__(16) unsigned char sm[];
  __shared__ float red[2 * kTok * detail::kWarp];
  const int tid = static_cast<int>(threadIdx.x), lane = tid % 32, warp = tid / 32, g = lane / 4,
            tq = lane % 4, nw = static_cast<int>(blockDim.x) / 32;
  const int L = s.L, R = s.R, ld = s.ld, K = L * R;
  const uint4* As = reinterpret_cast<const uint4*>(sm);
  const uint2* Bs = reinterpret_cast<const uint2*>(sm + s.off_b);
  __half* Xs = reinterpret_cast<__half*>(sm + s.off_x);
  __half* Ts = reinterpret_cast<__half*>(sm + s.off_t);
  int8_t* Cs = reinterpret_cast<int8_t*>(sm + s.off_c);
  const int tile = s.Lp * ld;
  const int64_t steps = (rows + kTok - 1) / kTok;
  // The rows of step i into X buffer b (those past the last row are not loaded; their tiles are computed on
  // and never stored).
  const auto load_step = [&](int64_t i, int b) {
    for (int u = 0; u < kTok; ++u)
      if (i * kTok + u < rows) load_x(s, x + (i * kTok + u) * x_stride, Xs + (b * kTok + u) * tile);
  };

  // Zero the padding the mma phases read, stage the constants and the first step. Per warp one row at a time
  // (no divisions): the X buffers' columns [R, Rp) and rows [L, Lp); T's columns [8 NT, Rp) (phase 2 reads
  // them in tile pairs) and rows [L, Lp). Columns [Rp, ld) are never read. Nothing for the engine's shapes.
  for (int b = 0; b < (s.stages + (s.with_b ? 1 : 0)) * kTok; ++b) {
    const bool xb = b < s.stages * kTok;
    __half* Z = xb ? Xs + b * tile : Ts + (b - s.stages * kTok) * tile;
    const int c0 = xb ? R : 8 * s.NT;
    for (int l = (c0 < s.Rp ? 0 : L) + warp; l < s.Lp; l += nw)
      for (int c = (l < L ? c0 : 0) + lane; c < s.Rp; c += 32) Z[l * ld + c] = __float2half_rn(0.0f);
  }
  detail::stage_async(sm, a_pk, 2LL * s.Lp * s.Lp);
  if (s.with_b) detail::stage_async(sm + s.off_b, b_pk, 2LL * s.Rp * s.Rp);
  int64_t i = blockIdx.x;
  if (i < steps) load_step(i, 0);
  detail::async_commit();

  const int ksR = s.Rp / 16, ksL = s.Lp / 16, tasks = s.MT * s.groups;
  int64_t prev = -1;  // the step whose staged codes are still to be sent
  for (int it = 0; i < steps; ++it, prev = i, i += gridDim.x) {
    const int64_t in = i + gridDim.x;
    const int st = s.stages == 2 ? it & 1 : 0;
    if (s.stages == 2) {
      // The other buffer was last read before the previous step's min/max barriers.
      if (in < steps) load_step(in, st ^ 1);
      detail::async_commit();
      detail::async_wait<1>();
    } else {
      detail::async_wait<0>();
    }
    __syncthreads();
    if (s.staged > 0 && tid == 0 && prev >= 0) flush_codes(Cs, out, prev * kTok, kTok, rows, s.staged, K);
    const __half* X = Xs + st * kTok * tile;
    const __half* T = X;  // no B: T = X

    // 1. T = X B (n-tiles < NT; T's columns past them stay zero).
    if (s.with_b) {
      for (int task = warp; task < tasks; task += nw) {
        const int mt = task / s.groups, n0 = (task % s.groups) * 4, nn = min(4, s.NT - n0);
        float c[kTok][4][4] = {};
        for (int ks = 0; ks < ksR; ++ks) {
          uint32_t a[kTok][4];
#pragma unroll
          for (int u = 0; u < kTok; ++u)
            detail::ldmatrix_x4(a[u], X + u * tile + (mt * 16 + lane % 16) * ld + ks * 16 + (lane / 16) * 8);
#pragma unroll
          for (int j = 0; j < 4; ++j)
            if (j < nn) {
              const uint2 b = Bs[((n0 + j) * ksR + ks) * 32 + lane];
#pragma unroll
              for (int u = 0; u < kTok; ++u) detail::mma_f16(c[u][j], a[u], b.x, b.y);
            }
        }
#pragma unroll
        for (int u = 0; u < kTok; ++u)
#pragma unroll
          for (int j = 0; j < 4; ++j)
            if (j < nn) {
              __half* o = Ts + u * tile + (mt * 16 + g) * ld + (n0 + j) * 8 + 2 * tq;
              *reinterpret_cast<__half2*>(o) = __floats2half2_rn(c[u][j][0], c[u][j][1]);
              *reinterpret_cast<__half2*>(o + 8 * ld) = __floats2half2_rn(c[u][j][2], c[u][j][3]);
            }
      }
      __syncthreads();
      T = Ts;
      if (s.stages == 1) {  // X is free already: the next step's rows load during phases 2 and 3
        if (in < steps) load_step(in, 0);
        detail::async_commit();
      }
    }

    // 2. Y = A^T T into registers, with the min/max of the valid values per token.
    float y[kTasks][kTok][4][4];
    float vmax[kTok], vmin[kTok];
#pragma unroll
    for (int u = 0; u < kTok; ++u)
      vmax[u] = vmin[u] = 0.0f;  // 0 is neutral: the scale takes max(., 0) / min(., 0)
#pragma unroll
    for (int k = 0; k < kTasks; ++k) {
      const int task = warp + k * nw, mt = task / s.groups, n0 = (task % s.groups) * 4;
#pragma unroll
      for (int u = 0; u < kTok; ++u)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int q = 0; q < 4; ++q) y[k][u][j][q] = 0.0f;
      if (task >= tasks) continue;
      for (int ks = 0; ks < ksL; ++ks) {
        const uint4 av = As[(mt * ksL + ks) * 32 + lane];
        const uint32_t a[4] = {av.x, av.y, av.z, av.w};
#pragma unroll
        for (int jp = 0; jp < 2; ++jp)
          if (n0 + 2 * jp < s.NT) {
#pragma unroll
            for (int u = 0; u < kTok; ++u) {
              uint32_t b[4];
              detail::ldmatrix_x4_trans(
                  b, T + u * tile + (ks * 16 + lane % 16) * ld + (n0 + 2 * jp + lane / 16) * 8);
              detail::mma_f16(y[k][u][2 * jp], a, b[0], b[1]);
              detail::mma_f16(y[k][u][2 * jp + 1], a, b[2], b[3]);
            }
          }
      }
      if (s.full) {  // every value of the tile is valid: no bounds checks
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int q = 0; q < 4; ++q)
#pragma unroll
            for (int u = 0; u < kTok; ++u) {
              vmax[u] = fmaxf(vmax[u], y[k][u][j][q]);
              vmin[u] = fminf(vmin[u], y[k][u][j][q]);
            }
        continue;
      }
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int r = mt * 16 + g + (q >= 2 ? 8 : 0), n = (n0 + j) * 8 + 2 * tq + (q & 1);
          if (r < L && n < R)
#pragma unroll
            for (int u = 0; u < kTok; ++u) {
              vmax[u] = fmaxf(vmax[u], y[k][u][j][q]);
              vmin[u] = fminf(vmin[u], y[k][u][j][q]);
            }
        }
    }
    // The block's min/max per token (exact: any order). Its barriers end every read of X and T for the step,
    // and (thread 0 waits first) the bulk copies' reads of the staged codes of the previous step.
#pragma unroll
    for (int u = 0; u < kTok; ++u) detail::warp_minmax(vmax[u], vmin[u]);
    if (s.staged > 0 && tid == 0) detail::bulk_wait_read<0>();
    __syncthreads();  // red may still be read by the previous step
    if (lane == 0)
#pragma unroll
      for (int u = 0; u < kTok; ++u) {
        red[(2 * u) * detail::kWarp + warp] = vmax[u];
        red[(2 * u + 1) * detail::kWarp + warp] = vmin[u];
      }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kTok; ++u) {
      vmax[u] = lane < nw ? red[(2 * u) * detail::kWarp + lane] : 0.0f;
      vmin[u] = lane < nw ? red[(2 * u + 1) * detail::kWarp + lane] : 0.0f;
      detail::warp_minmax(vmax[u], vmin[u]);
    }
    if (s.stages == 1 && !s.with_b) {
      if (in < steps) load_step(in, 0);
      detail::async_commit();
    }

    // 3. The codes, one copy per clip pair. Fast form (s.fast: R even, out 2-byte aligned, and for the
    // permuted order R % 32 == 0): a pair's two codes are adjacent, and the pairs j = 0..3 of a row of a
    // task lie kJ bytes apart (natural 8; permuted 32: the row's 32-column block starts at a multiple of 32,
    // so its n-tile j only sets wgmma_perm_col's s bits), so one 64-bit address per row and immediate
    // offsets. The rounding is the fast one; a thread that met a value within 1e-5 of a half-integer (rare)
    // rewrites its codes of that copy in the general form below (exact; same thread, same bytes: the later
    // store wins). General form (other shapes): byte stores at wgmma_perm_col, exact rounding per value.
    constexpr int kJ = kPerm ? 32 : 8;
#pragma unroll
    for (int u = 0; u < kTok; ++u) {
      const int64_t t = i * kTok + u;
      if (t >= rows) break;  // block-uniform
#pragma unroll
      for (int cp = 0; cp < 3; ++cp) {
        if (cp >= clips.n) break;
        const float scale = detail::sym_int4_scale(vmax[u], vmin[u], clips.max[cp], clips.min[cp]),
                    rinv = __frcp_rn(scale);
        int8_t* o = s.staged > 0 ? Cs + (u * s.staged + cp) * K : out + (cp * rows + t) * K;
        float dev[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // per n-tile j (independent max chains)
        if (s.fast) {
#pragma unroll
          for (int k = 0; k < kTasks; ++k) {
            const int task = warp + k * nw, mt = task / s.groups, n0 = (task % s.groups) * 4;
            if (task >= tasks) break;  // warp-uniform
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int r = mt * 16 + g + 8 * h, base = r * R + n0 * 8 + 2 * tq;
              if (r >= L) continue;
              int8_t* ob = o + (kPerm ? wgmma_perm_col_t<int>(base) : base);
#pragma unroll
              for (int j = 0; j < 4; ++j) {
                const uint32_t c0 = detail::sym_int4_byte_fast_dev(y[k][u][j][2 * h], rinv, dev[j]),
                               c1 = detail::sym_int4_byte_fast_dev(y[k][u][j][2 * h + 1], rinv, dev[j]);
                if ((n0 + j) * 8 + 2 * tq < R)
                  *reinterpret_cast<uint16_t*>(ob + j * kJ) =
                      static_cast<uint16_t>(__byte_perm(c0, c1, 0x0040));
              }
            }
          }
        }
        if (!s.fast || fmaxf(fmaxf(dev[0], dev[1]), fmaxf(dev[2], dev[3])) > detail::kTieDev) {
#pragma unroll
          for (int k = 0; k < kTasks; ++k) {
            const int task = warp + k * nw, mt = task / s.groups, n0 = (task % s.groups) * 4;
            if (task >= tasks) break;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int r = mt * 16 + g + 8 * h;
              if (r >= L) continue;
#pragma unroll
              for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                  const int n = (n0 + j) * 8 + 2 * tq + e, c = r * R + n;
                  if (n < R)
                    o[kPerm ? wgmma_perm_col_t<int>(c) : c] = static_cast<int8_t>(
                        detail::sym_int4_byte_fast(y[k][u][j][2 * h + e], scale, rinv) & 0xFFu);
                }
            }
          }
        }
        if (tid == 0) scales[cp * scale_stride + t] = scale;
      }
    }
    if (s.staged > 0) detail::bulk_store_fence();
  }
  detail::async_wait<0>();
  if (s.staged > 0) {
    __syncthreads();
    if (tid == 0) {
      if (prev >= 0) flush_codes(Cs, out, prev * kTok, kTok, rows, s.staged, K);
      detail::bulk_wait<0>();
    }
  }
}

}  // namespace

bool kron_quant_i8_fits(int64_t L, int64_t R, bool with_b, int device) {
  if (L < 1 || R < 1 || L > 4096 || R > 4096) return false;
  return kq_fit(L, R, with_b, smem_limit(device), 1, 0).total > 0;
}

cudaError_t kron_quant_i8_multi(const uint16_t* x, int64_t rows, int64_t x_stride, const uint16_t* a_pk,
                                int64_t L, const uint16_t* b_pk, int64_t R, const SymClips& clips,
                                int8_t* out, float* scales, int64_t scale_stride, cudaStream_t stream,
                                bool perm, KronQuantLaunch launch) {
  const auto misaligned = [](const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n != 0; };
  if (rows < 0 || rows > 0x7FFFFFFF || L < 1 || R < 1 || L > 4096 || R > 4096 || (L * R) % 2 != 0 ||
      (perm && (L * R) % 128 != 0) || x_stride < L * R || clips.n < 1 || clips.n > 3 || scale_stride < rows ||
      (rows > 0 && (!x || !a_pk || !out || !scales || misaligned(x, 2) || misaligned(a_pk, 16) ||
                    misaligned(b_pk, 16))) ||
      (launch.tokens != 0 && launch.tokens != 1 && launch.tokens != 2) || launch.max_blocks < 0)
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  int device = 0, sms = 0, major = 0;
  FQ_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  FQ_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  FQ_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  // Staged codes need the bulk copies (sm_90) and 16-byte aligned rows of codes.
  const int staged =
      !launch.direct_stores && major >= 9 && (L * R) % 16 == 0 && !misaligned(out, 16) ? clips.n : 0;
  KqShape s = kq_fit(L, R, b_pk != nullptr, smem_limit(device), launch.tokens, staged);
  if (s.total == 0) return cudaErrorInvalidValue;
  s.wide = R % 8 == 0 && x_stride % 8 == 0 && !misaligned(x, 16);
  s.even = R % 2 == 0 && !misaligned(out, 2);
  s.fast = s.even && (!perm || R % 32 == 0);
  s.full = L % 16 == 0 && R % 32 == 0;
  for (int sh = 0; sh < 12; ++sh)
    if (R == 8LL << sh) s.row_shift = sh;
  const int tasks = s.MT * s.groups;
  using Kernel = void (*)(const __half*, int64_t, int64_t, const __half*, const __half*, KqShape, SymClips,
                          int8_t*, float*, int64_t);
  // One tile of Y per warp up to 32 tiles (Llama-3-8B's down input: 28 warps; more warps, shorter phases
  // between the barriers), else three (one token per step).
  const bool one = tasks <= 32;
  const Kernel kernel = !one ? (perm ? kron_quant_i8_kernel<3, 1, true> : kron_quant_i8_kernel<3, 1, false>)
                        : s.tok == 2
                            ? (perm ? kron_quant_i8_kernel<1, 2, true> : kron_quant_i8_kernel<1, 2, false>)
                            : (perm ? kron_quant_i8_kernel<1, 1, true> : kron_quant_i8_kernel<1, 1, false>);
  const int threads = 32 * (one ? tasks : (tasks + 2) / 3);
  FQ_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(s.total)));
  int per_sm = 0;
  FQ_CUDA_RETURN_IF_ERROR(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, static_cast<size_t>(s.total)));
  int64_t blocks =
      std::min<int64_t>((rows + s.tok - 1) / s.tok, static_cast<int64_t>(std::max(per_sm, 1)) * sms);
  if (launch.max_blocks > 0) blocks = std::min(blocks, launch.max_blocks);
  kernel<<<static_cast<unsigned>(blocks), threads, static_cast<size_t>(s.total), stream>>>(
      reinterpret_cast<const __half*>(x), x_stride, rows, reinterpret_cast<const __half*>(a_pk),
      reinterpret_cast<const __half*>(b_pk), s, clips, out, scales, scale_stride);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

}  // namespace fq::cuda
