// W4A4KV4 engine kernels (w4a4_ops.h). Each mirrors a CPU reference named in the header; fp32 sums are
// written with explicit-rounding intrinsics (no FMA contraction) so that they follow the reference's
// operations.
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/quant_common.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/w4a4_ops.h"

namespace fq::cuda {
namespace {

// ---------------------------------------------------------------------------------------------------------
// fused_quant_int4: one CTA per token. Every global read of the kernel is one cp.async stage (all loads in
// flight at once; the launch is latency-bound): first the constants (the RMSNorm weight and, when shared
// memory allows, the packed transform operands), then, after pdl_wait(), the token's input row. Shared
// memory (16-byte aligned regions): raw (the staged input row, then the RMSNorm weight) which Y (fp32 [K],
// the transform's output) later overwrites (a separate region without a transform); apk, bpk (staged
// operands); X16 [Lp][ldx] (fp16 X, zero-padded); Tt [Rp][ldt] (fp16 T^T, the right operand of A^T T). Row
// strides of 8 extra halves keep the 32-bit fragment loads free of bank conflicts. Warp tasks are 16 x 32
// output tiles (one m16 row of tiles, four n8 columns).
constexpr int kFusedThreads = 1024;  // measured: bs 16 decode 5.71 -> 5.50 ms vs 512
constexpr int kFusedWarps = kFusedThreads / detail::kWarp;

struct FusedShape {
  int Lp = 0, Rp = 0, ldx = 0, ldt = 0;
  bool stage_a = false, stage_b = false;
  int64_t off_y = 0, off_apk = 0, off_bpk = 0, off_x16 = 0, off_tt = 0, total = 0;
};

__host__ __device__ inline int round16(int64_t n) { return static_cast<int>((n + 15) / 16 * 16); }
inline int64_t align16(int64_t n) { return (n + 15) / 16 * 16; }

// The layout of one CTA's shared memory; operands are staged while the total stays within `limit`.
FusedShape fused_shape(int64_t L, int64_t R, int64_t K, FusedIn in, bool with_b, int64_t limit) {
  FusedShape s;
  const int64_t raw = align16((in == FusedIn::kRmsNorm ? 8 : 4) * K);
  if (L > 0) {
    s.Lp = round16(L);
    s.Rp = round16(R);
    s.ldx = s.Rp + 8;
    s.ldt = s.Lp + 8;
  }
  for (int pass = 0; pass < 3; ++pass) {
    s.stage_a = L > 0 && pass < 2;
    s.stage_b = L > 0 && with_b && pass < 1;
    int64_t o = raw;
    s.off_y = L > 0 ? 0 : o;
    if (L == 0) o += align16(4 * K);
    s.off_apk = o;
    if (s.stage_a) o += align16(2LL * s.Lp * s.Lp);
    s.off_bpk = o;
    if (s.stage_b) o += align16(2LL * s.Rp * s.Rp);
    s.off_x16 = o;
    if (L > 0 && with_b) o += align16(2LL * s.Lp * s.ldx);
    s.off_tt = o;
    if (L > 0) o += align16(2LL * s.Rp * s.ldt);
    s.total = o;
    if (s.total <= limit) break;
  }
  return s;
}

__device__ __forceinline__ void mma_f16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t lds32(const __half* p) { return *reinterpret_cast<const uint32_t*>(p); }

__global__ void __launch_bounds__(kFusedThreads)
    fused_quant_kernel(FusedQuantArgs a, FusedShape s, int K, int64_t rows, uint8_t* __restrict__ packed,
                       float* __restrict__ scales) {
  extern __shared__ __align__(16) unsigned char smraw[];
  __shared__ float red[2 * detail::kWarp];
  const int64_t t = blockIdx.x;
  const int L = static_cast<int>(a.L), R = static_cast<int>(a.R);
  const bool with_b = a.b_pk != nullptr;
  float* raw = reinterpret_cast<float*>(smraw);
  float* Y = reinterpret_cast<float*>(smraw + s.off_y);
  const __half* apk = s.stage_a ? reinterpret_cast<const __half*>(smraw + s.off_apk) : reinterpret_cast<const __half*>(a.a_pk);
  const __half* bpk = s.stage_b ? reinterpret_cast<const __half*>(smraw + s.off_bpk) : reinterpret_cast<const __half*>(a.b_pk);
  __half* X16 = reinterpret_cast<__half*>(smraw + s.off_x16);
  __half* Tt = reinterpret_cast<__half*>(smraw + s.off_tt);
  const int tid = static_cast<int>(threadIdx.x), lane = tid % detail::kWarp, warp = tid / detail::kWarp;
  const int g = lane / 4, tq = lane % 4;

  // 1. Stage the constants, then (after the previous kernel) the input row.
  detail::pdl_trigger();
  if (a.in == FusedIn::kRmsNorm) detail::stage_async(raw + K, a.norm_w, 4LL * K);
  if (s.stage_a) detail::stage_async(smraw + s.off_apk, a.a_pk, 2LL * s.Lp * s.Lp);
  if (s.stage_b) detail::stage_async(smraw + s.off_bpk, a.b_pk, 2LL * s.Rp * s.Rp);
  detail::pdl_wait();
  if (a.in == FusedIn::kSwiGLU) {
    detail::stage_async(raw, a.gate + t * a.gu_stride, 2LL * K);
    detail::stage_async(reinterpret_cast<__half*>(raw) + K, a.up + t * a.gu_stride, 2LL * K);
  } else {
    detail::stage_async(raw, a.x + t * a.x_stride, 4LL * K);
  }
  detail::async_wait_all();
  __syncthreads();

  // 2. Prologue, in the reference's operations, into Y (fp32, no transform), X16 or Tt (fp16, zero-padded).
  const __half* g16 = reinterpret_cast<const __half*>(raw);
  float inv = 1.0f;
  if (a.in == FusedIn::kRmsNorm) {
    float ss = 0.0f;
    for (int i = tid; i < K; i += kFusedThreads) ss = fmaf(raw[i], raw[i], ss);
    ss = detail::block_reduce(ss, red, detail::SumOp());
    inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, static_cast<float>(K)), a.eps)));
  }
  auto value = [&](int e) -> float {
    if (a.in == FusedIn::kSwiGLU) {
      const float gv = __half2float(g16[e]), uv = __half2float(g16[K + e]);
      return __fmul_rn(__fdiv_rn(gv, __fadd_rn(1.0f, expf(-gv))), uv);
    }
    return a.in == FusedIn::kRmsNorm ? __fmul_rn(raw[K + e], __fmul_rn(raw[e], inv)) : raw[e];
  };
  float vmax = 0.0f, vmin = 0.0f;  // 0 is neutral: the scale takes max(., 0) / min(., 0)
  if (L == 0) {
    for (int e = tid; e < K; e += kFusedThreads) {
      const float v = value(e);
      Y[e] = v;
      vmax = fmaxf(vmax, v);
      vmin = fminf(vmin, v);
    }
  } else {
    const int Lp = s.Lp, Rp = s.Rp;
    for (int l = warp; l < Lp; l += kFusedWarps)
      for (int r = lane; r < Rp; r += detail::kWarp) {
        const __half v = l < L && r < R ? __float2half_rn(value(l * R + r)) : __float2half_rn(0.0f);
        if (with_b)
          X16[l * s.ldx + r] = v;
        else
          Tt[r * s.ldt + l] = v;
      }
    __syncthreads();
    const int ngroups = (Rp / 8 + 3) / 4;
    // 3. T = X B (fp32 sums over k < Rp), written as fp16 T^T.
    if (with_b) {
      const int ks_n = Rp / 16;
      for (int task = warp; task < (Lp / 16) * ngroups; task += kFusedWarps) {
        const int mt = task / ngroups, nt0 = (task % ngroups) * 4, nn = min(4, Rp / 8 - nt0);
        float c[4][4] = {};
        for (int ks = 0; ks < ks_n; ++ks) {
          const __half* xa = X16 + (mt * 16 + g) * s.ldx + ks * 16 + 2 * tq;
          const uint32_t af[4] = {lds32(xa), lds32(xa + 8 * s.ldx), lds32(xa + 8), lds32(xa + 8 * s.ldx + 8)};
#pragma unroll
          for (int j = 0; j < 4; ++j)
            if (j < nn) {
              const uint2* p = reinterpret_cast<const uint2*>(bpk) + ((nt0 + j) * ks_n + ks) * 32 + lane;
              const uint2 bf = s.stage_b ? *p : __ldg(p);
              mma_f16(c[j], af, bf.x, bf.y);
            }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (j < nn) {
            const int n = (nt0 + j) * 8 + 2 * tq, m = mt * 16 + g;
            Tt[n * s.ldt + m] = __float2half_rn(c[j][0]);
            Tt[(n + 1) * s.ldt + m] = __float2half_rn(c[j][1]);
            Tt[n * s.ldt + m + 8] = __float2half_rn(c[j][2]);
            Tt[(n + 1) * s.ldt + m + 8] = __float2half_rn(c[j][3]);
          }
      }
    }
    // raw (read by the prologue) becomes Y; X16 and Tt must be complete.
    __syncthreads();
    // 4. Y = A^T T (fp32), with the row's min/max.
    const int ks_n = Lp / 16;
    for (int task = warp; task < (Lp / 16) * ngroups; task += kFusedWarps) {
      const int mt = task / ngroups, nt0 = (task % ngroups) * 4, nn = min(4, Rp / 8 - nt0);
      float c[4][4] = {};
      for (int ks = 0; ks < ks_n; ++ks) {
        const uint4* p = reinterpret_cast<const uint4*>(apk) + (mt * ks_n + ks) * 32 + lane;
        const uint4 av = s.stage_a ? *p : __ldg(p);
        const uint32_t af[4] = {av.x, av.y, av.z, av.w};
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (j < nn) {
            const __half* tb = Tt + ((nt0 + j) * 8 + g) * s.ldt + ks * 16 + 2 * tq;
            mma_f16(c[j], af, lds32(tb), lds32(tb + 8));
          }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (j < nn)
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            const int i = mt * 16 + g + (q >= 2 ? 8 : 0), n = (nt0 + j) * 8 + 2 * tq + (q & 1);
            if (i < L && n < R) {
              Y[i * R + n] = c[j][q];
              vmax = fmaxf(vmax, c[j][q]);
              vmin = fminf(vmin, c[j][q]);
            }
          }
    }
  }
  // 5. The row's min/max (the reduction's barriers also publish Y), then one packed copy per clip pair, eight
  // values (one 32-bit store) per thread and step when K allows.
  detail::block_minmax(vmax, vmin, red);
  for (int cp = 0; cp < a.clips.n; ++cp) {
    const float scale = detail::sym_int4_scale(vmax, vmin, a.clips.max[cp], a.clips.min[cp]);
    const float inv = __frcp_rn(scale);
    auto code = [&](float v) { return detail::sym_int4_code_fast(v, scale, inv); };
    uint8_t* out = packed + (cp * rows + t) * (K / 2);
    if (K % 8 == 0 && reinterpret_cast<uintptr_t>(out) % 4 == 0) {
      for (int j = tid; j < K / 8; j += kFusedThreads) {
        uint32_t w = 0;
#pragma unroll
        for (int q = 0; q < 4; ++q)
          w |= static_cast<uint32_t>(detail::pack2(code(Y[8 * j + 2 * q]), code(Y[8 * j + 2 * q + 1]))) << (8 * q);
        reinterpret_cast<uint32_t*>(out)[j] = w;
      }
    } else {
      for (int j = tid; j < K / 2; j += kFusedThreads) out[j] = detail::pack2(code(Y[2 * j]), code(Y[2 * j + 1]));
    }
    if (tid == 0) scales[cp * rows + t] = scale;
  }
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
      const int k = (tile % tiles_k) * 16 + 2 * (lane % 4) + (j % 2) + (j / 2) * 8, c = (tile / tiles_k) * 8 + lane / 4;
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
    const float scale = detail::sym_int4_scale(vmax, vmin, clips.max[c], clips.min[c]), inv = __frcp_rn(scale);
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

__global__ void __launch_bounds__(kRopeThreads)
    rope_transform_kernel(__half* qkv, int64_t qkv_stride, int64_t row0, int64_t n_tok, int64_t pos0,
                          const int32_t* __restrict__ d_pos, const float* __restrict__ bias, int n_head,
                          int n_kv, int d, const float* __restrict__ inv_freq, const float* __restrict__ q_mat,
                          const float* __restrict__ k_mat, __half* out, int64_t out_stride, bool stage) {
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
  if (hh >= n_head + n_kv) {  // a v head: the bias only
    __syncthreads();
    for (int i = threadIdx.x; i < d; i += blockDim.x) h[i] = __float2half_rn(v[i]);
    return;
  }
  const int64_t p = (d_pos ? static_cast<int64_t>(d_pos[row / n_tok]) : pos0) + row % n_tok;
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
      // Eight independent partial sums keep eight matrix loads in flight (the decode launch is latency-bound).
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
  }
}

// ---------------------------------------------------------------------------------------------------------
// kv4_dequant_f16: one thread per packed byte (two values) of K and of V.
__global__ void kv4_dequant_kernel(Kv4Layer c, int64_t slot0, int64_t n_pos, int64_t total_bytes,
                                   __half* __restrict__ k_out, __half* __restrict__ v_out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t hb = c.head_dim / 2;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total_bytes; i += stride) {
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

int64_t fused_operand_elems(int64_t n) { return n < 1 ? 0 : static_cast<int64_t>(round16(n)) * round16(n); }

cudaError_t fused_pack_operand(const float* M, int64_t n, bool left, uint16_t* dst, cudaStream_t stream) {
  if (n < 1 || n > 4096 || !M || !dst) return cudaErrorInvalidValue;
  fused_pack_kernel<<<grid_for(fused_operand_elems(n), 256), 256, 0, stream>>>(M, static_cast<int>(n), left,
                                                                               reinterpret_cast<__half*>(dst));
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
}  // namespace

size_t fused_quant_smem(int64_t L, int64_t R, int64_t K, FusedIn in, bool with_b, int device) {
  return static_cast<size_t>(fused_shape(L, R, K, in, with_b, fused_smem_limit(device)).total);
}

bool fused_quant_fits(int64_t L, int64_t R, int64_t K, FusedIn in, bool with_b, int device) {
  return fused_shape_ok(L, R, K) && fused_quant_smem(L, R, K, in, with_b, device) <= static_cast<size_t>(fused_smem_limit(device));
}

cudaError_t fused_quant_int4(const FusedQuantArgs& a, int64_t rows, int64_t K, uint8_t* packed, float* scales,
                             cudaStream_t stream, bool pdl) {
  const auto misaligned = [](const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n != 0; };
  if (rows < 0 || rows > 0x7FFFFFFF || !fused_shape_ok(a.L, a.R, K) || a.clips.n < 1 || a.clips.n > 3 ||
      (a.L > 0 && (!a.a_pk || misaligned(a.a_pk, 16) || misaligned(a.b_pk, 16))) ||
      (rows > 0 && (!packed || !scales)) ||
      (a.in == FusedIn::kSwiGLU && (!a.gate || !a.up || a.gu_stride < K || misaligned(a.gate, 4) || misaligned(a.up, 4) || a.gu_stride % 2 != 0)) ||
      (a.in != FusedIn::kSwiGLU && (!a.x || a.x_stride < K || misaligned(a.x, 4))) ||
      (a.in == FusedIn::kRmsNorm && (!a.norm_w || misaligned(a.norm_w, 4))))
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  int device = 0;
  FQ_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  const int64_t limit = fused_smem_limit(device);
  FusedQuantArgs k = a;
  if (k.L == 0) k.b_pk = nullptr;
  const FusedShape sh = fused_shape(k.L, k.R, K, k.in, k.b_pk != nullptr, limit);
  if (sh.total > limit) return cudaErrorInvalidValue;
  // Always the whole limit, so that launches of different shapes never lower it under another's needs.
  if (sh.total > 48 * 1024)
    FQ_CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(fused_quant_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(limit)));
  const detail::Launch l(dim3(static_cast<unsigned>(rows)), dim3(kFusedThreads), static_cast<size_t>(sh.total), stream,
                         pdl);
  FQ_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&l.cfg, fused_quant_kernel, k, sh, static_cast<int>(K), rows, packed, scales));
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

cudaError_t qkv_rope_transform_f16(uint16_t* qkv, int64_t qkv_stride, int64_t rows, int64_t n_tok,
                                   int64_t pos0, const int32_t* d_pos, const float* bias, int64_t n_head,
                                   int64_t n_head_kv, int64_t head_dim, const float* inv_freq,
                                   const float* q_mat, const float* k_mat, cudaStream_t stream, uint16_t* qk_out,
                                   int64_t qk_stride) {
  if (qk_out && qk_stride < (n_head + n_head_kv) * head_dim) return cudaErrorInvalidValue;
  if (rows < 0 || n_tok < 1 || rows % n_tok != 0 || head_dim < 2 || head_dim % 2 != 0 || head_dim > 256 ||
      n_head < 1 || n_head_kv < 1 || qkv_stride < (n_head + 2 * n_head_kv) * head_dim || !inv_freq ||
      rows > 65535 * 1024LL || (rows > 0 && !qkv))
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  const int64_t heads = n_head + n_head_kv + (bias ? n_head_kv : 0);
  if (rows > 0x7FFFFFFF || heads > 0x7FFFFFFF) return cudaErrorInvalidValue;
  // The matrices are staged in shared memory when they fit (64 KB at head_dim 128).
  const size_t smem = (q_mat || k_mat) && head_dim <= kRopeStageMaxD ? static_cast<size_t>(4 * head_dim * head_dim) : 0;
  if (smem > 48 * 1024)  // always the largest size, so that no launch lowers it under another's needs
    FQ_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(rope_transform_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 4 * kRopeStageMaxD * kRopeStageMaxD));
  // gridDim.y is limited to 65535: rows beyond that go in further launches (the kernel adds row0).
  for (int64_t r0 = 0; r0 < rows; r0 += 65535) {
    const int64_t nr = std::min<int64_t>(rows - r0, 65535);
    rope_transform_kernel<<<dim3(static_cast<unsigned>(heads), static_cast<unsigned>(nr)), kRopeThreads, smem,
                            stream>>>(reinterpret_cast<__half*>(qkv), qkv_stride, r0, n_tok, pos0, d_pos, bias,
                                      static_cast<int>(n_head), static_cast<int>(n_head_kv),
                                      static_cast<int>(head_dim), inv_freq, q_mat, k_mat,
                                      reinterpret_cast<__half*>(qk_out), qk_stride, smem > 0);
    FQ_CUDA_RETURN_LAUNCH_ERROR();
  }
  return cudaSuccess;
}

cudaError_t kv4_dequant_f16(const Kv4Layer& c, int64_t slot0, int64_t n_seq, int64_t n_pos, uint16_t* k_out,
                            uint16_t* v_out, cudaStream_t stream) {
  if (n_seq < 0 || n_pos < 0 || slot0 < 0 || slot0 + n_seq > c.n_slots || n_pos > c.max_ctx ||
      c.head_dim < 2 || c.head_dim % 2 != 0 || c.n_head_kv < 1 || !c.k || !c.v || !c.k_scale || !c.k_zero ||
      !c.v_scale || !c.v_zero || (n_seq * n_pos > 0 && (!k_out || !v_out)))
    return cudaErrorInvalidValue;
  const int64_t total = n_seq * n_pos * c.n_head_kv * (c.head_dim / 2);
  if (total == 0) return cudaSuccess;
  kv4_dequant_kernel<<<grid_for(total, 256), 256, 0, stream>>>(c, slot0, n_pos, total,
                                                              reinterpret_cast<__half*>(k_out),
                                                              reinterpret_cast<__half*>(v_out));
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
