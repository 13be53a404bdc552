// Decode attention over the 4-bit KV cache (flash-decoding). Reference: dequantize the cache with
// ref::dequantize_kv_asym_int4, then ref::attention (fp32); equal within fp32 rounding (~1e-6 relative), not
// bit for bit (different summation order, exp2 instead of exp).
//
// Grid (n_split, n_head_kv * head_chunks, batch). A CTA of 128 threads owns one kv head of one sequence, the
// (up to 8) query heads of its GQA group, and one contiguous key range: every K/V byte is read once per
// sequence. The range is walked in tiles of 128 keys with an online softmax (base-2 exponent, the scale
// 1/sqrt(d) * log2(e) folded into q):
//  - scores: thread j owns key j of the tile; it loads the key's d/2 code bytes (16-byte loads) and computes
//  the
//    dots with all G query heads (q in shared memory): s_g = k_scale * sum_i q_gi * (code_i - k_zero). code -
//    zero is an exact small integer, so no cancellation.
//  - tile max per head (warp shuffles + shared memory), rescale factor, p = 2^(s - m); thread j keeps its own
//    partial row sums (rescaled like the accumulators) and publishes w = p * v_scale and v_zero.
//  - P.V: thread t owns one 32-bit word (8 dims) of the value rows and every (128/W)-th key of the tile (W =
//    d/8 words per row): acc[g][e] += w_gj * (code_je - v_zero_j).
// At the end the per-thread accumulators are reduced over the key lanes (shuffles, then across warps in
// shared memory). With one split the CTA writes out = acc / l; otherwise it writes (m, l, acc) to the
// workspace and a combine kernel merges the splits: M = max m_s, out = sum 2^(m_s - M) acc_s / sum 2^(m_s -
// M) l_s. Split ranges are computed on the device from d_len[b] (ceil(len / n_split) rounded up to whole
// tiles), so one launch configuration (fixed at CUDA-graph capture) serves every length.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_check.cuh"

namespace fq::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kTile = 128;  // keys per tile (= threads: one key per thread in the score phase)
constexpr int kWarps = kThreads / 32;
constexpr int kMaxHeadsPerCta = 8;
constexpr int kMaxSplit = 256;
constexpr int kMinKeysPerSplit = 128;
constexpr unsigned kFull = 0xffffffffu;

// Nibble e of w as a float, minus zb - 2^23: the float with bits 0x4B000000 | n is exactly 2^23 + n.
__device__ __forceinline__ float nib_minus(uint32_t w, int e, float zb) {
  return __int_as_float(0x4B000000u | ((w >> (4 * e)) & 0xFu)) - zb;
}

struct Smem {
  float* q;    // [GM][d] (pre-scaled by 1/sqrt(d) * log2 e)
  float* w;    // [kTile][GM]  p * v_scale
  float* vz;   // [kTile]      2^23 + v_zero
  float* red;  // [kWarps][GM]
  float* fin;  // [kWarps][GM][d]
};

template <int GM>
__host__ __device__ constexpr size_t smem_floats(int d) {
  return static_cast<size_t>(GM) * d + kTile * GM + kTile + kWarps * GM +
         static_cast<size_t>(kWarps) * GM * d;
}

// D: head_dim, or 0 for a run-time head_dim (d). GM: compile-time bound on the query heads per CTA.
template <int D, int GM>
__global__ void __launch_bounds__(kThreads)
    decode_attn_kernel(Kv4Layer c, const void* __restrict__ qv, bool q_f16, int64_t q_stride, int n_head,
                       int heads_per_cta, const int32_t* __restrict__ d_len, void* __restrict__ outv,
                       bool out_f16, float* __restrict__ ws, int n_split, int32_t* d_overflow) {
  extern __shared__ float smem_raw[];
  const int d = D > 0 ? D : static_cast<int>(c.head_dim);
  const int W = d / 8;  // 32-bit code words per row (a power of two <= 32)
  const int H = static_cast<int>(c.n_head_kv);
  Smem sm;
  sm.q = smem_raw;
  sm.w = sm.q + GM * d;
  sm.vz = sm.w + kTile * GM;
  sm.red = sm.vz + kTile;
  sm.fin = sm.red + kWarps * GM;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int split = blockIdx.x, b = blockIdx.z;
  const int G = n_head / H;
  const int n_chunk = (G + heads_per_cta - 1) / heads_per_cta;
  const int kvh = blockIdx.y / n_chunk, chunk = blockIdx.y % n_chunk;
  const int h0 = kvh * G + chunk * heads_per_cta;
  const int ng = min(heads_per_cta, G - chunk * heads_per_cta);

  int len = d_len[b];
  if (len > c.max_ctx) {
    if (tid == 0 && d_overflow) *d_overflow = 1;
    len = static_cast<int>(c.max_ctx);
  }
  len = max(len, 0);
  const int per = ((len + n_split - 1) / n_split + kTile - 1) / kTile * kTile;
  const int k0 = min(len, split * per), k1 = min(len, k0 + per);

  // q, scaled, into shared memory; rows g >= ng are zero.
  const float qscale = rsqrtf(static_cast<float>(d)) * 1.4426950408889634f;
  for (int i = tid; i < GM * d; i += kThreads) {
    const int g = i / d, e = i % d;
    float x = 0.0f;
    if (g < ng) {
      const int64_t off = b * q_stride + static_cast<int64_t>(h0 + g) * d + e;
      x = q_f16 ? __half2float(static_cast<const __half*>(qv)[off]) : static_cast<const float*>(qv)[off];
    }
    sm.q[i] = x * qscale;
  }
  __syncthreads();

  const int64_t row_cells = static_cast<int64_t>(b) * c.max_ctx;  // slot b
  float m_run[GM], l_part[GM], acc[GM][8];
#pragma unroll
  for (int g = 0; g < GM; ++g) {
    m_run[g] = -INFINITY;
    l_part[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
  }
  const int word = tid % W, kl = tid / W, n_kl = kThreads / W;

  for (int t0 = k0; t0 < k1; t0 += kTile) {
    const int j = t0 + tid;
    const bool valid = j < k1;
    float s[GM];
    float vs = 0.0f, vz = 0.0f;
    if (valid) {
      const int64_t cell = (row_cells + j) * H + kvh;
      const float ks = c.k_scale[cell];
      const float kzb = 8388608.0f + c.k_zero[cell];
      vs = c.v_scale[cell];
      vz = c.v_zero[cell];
      float dot[GM];
#pragma unroll
      for (int g = 0; g < GM; ++g) dot[g] = 0.0f;
      const uint8_t* kp = c.k + cell * (d / 2);
      if constexpr (D > 0 && D % 32 == 0) {
        constexpr int kChunks = D / 32;  // 16-byte chunks per row
        uint4 kc[kChunks];
#pragma unroll
        for (int u = 0; u < kChunks; ++u) kc[u] = reinterpret_cast<const uint4*>(kp)[u];
#pragma unroll
        for (int u = 0; u < kChunks; ++u) {
          const uint32_t wv[4] = {kc[u].x, kc[u].y, kc[u].z, kc[u].w};
#pragma unroll
          for (int x = 0; x < 4; ++x) {
#pragma unroll
            for (int e = 0; e < 8; ++e) {
              const float kv = nib_minus(wv[x], e, kzb);
              const int col = (u * 4 + x) * 8 + e;
#pragma unroll
              for (int g = 0; g < GM; ++g) dot[g] = fmaf(sm.q[g * d + col], kv, dot[g]);
            }
          }
        }
      } else {
        for (int x = 0; x < W; ++x) {
          const uint32_t wv = reinterpret_cast<const uint32_t*>(kp)[x];
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            const float kv = nib_minus(wv, e, kzb);
#pragma unroll
            for (int g = 0; g < GM; ++g) dot[g] = fmaf(sm.q[g * d + x * 8 + e], kv, dot[g]);
          }
        }
      }
#pragma unroll
      for (int g = 0; g < GM; ++g) s[g] = dot[g] * ks;
    } else {
#pragma unroll
      for (int g = 0; g < GM; ++g) s[g] = -INFINITY;
    }
    // Tile max per head.
#pragma unroll
    for (int g = 0; g < GM; ++g) {
      float mx = s[g];
      for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, off));
      if (lane == 0) sm.red[warp * GM + g] = mx;
    }
    __syncthreads();
    float alpha[GM];
#pragma unroll
    for (int g = 0; g < GM; ++g) {
      float tmax = sm.red[g];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) tmax = fmaxf(tmax, sm.red[w * GM + g]);
      const float m_new = fmaxf(m_run[g], tmax);  // finite: the tile has at least one valid key
      alpha[g] = exp2f(m_run[g] - m_new);
      m_run[g] = m_new;
      const float p = valid ? exp2f(s[g] - m_new) : 0.0f;
      l_part[g] = l_part[g] * alpha[g] + p;
      sm.w[tid * GM + g] = p * vs;
    }
    sm.vz[tid] = 8388608.0f + vz;
    __syncthreads();
#pragma unroll
    for (int g = 0; g < GM; ++g)
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] *= alpha[g];
    const int n_valid = k1 - t0;
    // Four keys per step, loads first, so that several global loads are in flight.
    for (int jj = kl; jj < min(n_valid, kTile); jj += 4 * n_kl) {
      uint32_t vw[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int jx = jj + u * n_kl;
        vw[u] = 0;
        if (jx < n_valid && jx < kTile)
          vw[u] = reinterpret_cast<const uint32_t*>(c.v + ((row_cells + t0 + jx) * H + kvh) * (d / 2))[word];
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int jx = jj + u * n_kl;
        if (jx < n_valid && jx < kTile) {
          const float zb = sm.vz[jx];
          float wg[GM];
#pragma unroll
          for (int g = 0; g < GM; ++g) wg[g] = sm.w[jx * GM + g];
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            const float val = nib_minus(vw[u], e, zb);
#pragma unroll
            for (int g = 0; g < GM; ++g) acc[g][e] = fmaf(wg[g], val, acc[g][e]);
          }
        }
      }
    }
  }

  // Row sums: block reduction of the per-thread partials (all threads share m_run).
  __syncthreads();  // sm.red is reused
#pragma unroll
  for (int g = 0; g < GM; ++g) {
    float l = l_part[g];
    for (int off = 16; off > 0; off /= 2) l += __shfl_xor_sync(kFull, l, off);
    if (lane == 0) sm.red[warp * GM + g] = l;
  }
  // Accumulators: over the key lanes of a warp (lanes that share `word` differ by multiples of W), then over
  // the warps.
#pragma unroll
  for (int g = 0; g < GM; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float a = acc[g][e];
      for (int off = 16; off >= W; off /= 2) a += __shfl_xor_sync(kFull, a, off);
      acc[g][e] = a;
    }
  if (lane < W) {
#pragma unroll
    for (int g = 0; g < GM; ++g)
#pragma unroll
      for (int e = 0; e < 8; ++e) sm.fin[(warp * GM + g) * d + word * 8 + e] = acc[g][e];
  }
  __syncthreads();
  const int64_t bh0 = static_cast<int64_t>(b) * n_head + h0;
  for (int i = tid; i < ng * d; i += kThreads) {
    const int g = i / d, e = i % d;
    float o = 0.0f, l = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      o += sm.fin[(w * GM + g) * d + e];
      l += sm.red[w * GM + g];
    }
    float mg = -INFINITY;
#pragma unroll
    for (int gg = 0; gg < GM; ++gg)
      if (gg == g) mg = m_run[gg];  // constant-index register access
    if (n_split == 1) {
      const float r = l > 0.0f ? o / l : 0.0f;
      const int64_t off = (bh0 + g) * d + e;
      if (out_f16)
        static_cast<__half*>(outv)[off] = __float2half_rn(r);
      else
        static_cast<float*>(outv)[off] = r;
    } else {
      const int64_t row = (bh0 + g) * n_split + split;
      ws[row * d + e] = o;
      if (e == 0) {
        const int64_t n_rows = static_cast<int64_t>(gridDim.z) * n_head * n_split;
        ws[n_rows * d + row] = mg;          // max (base-2 domain)
        ws[n_rows * d + n_rows + row] = l;  // sum
      }
    }
  }
}

// One CTA per (sequence, query head); thread e owns output element e.
__global__ void decode_combine_kernel(const float* __restrict__ ws, int64_t n_part_rows, int n_split, int d,
                                      void* __restrict__ outv, bool out_f16) {
  // The next kernel, when launched as a programmatic dependent (the W4A4 engine's fused o_proj input kernel),
  // may start now and stage its constants while the combine runs; it waits for this grid before its reads.
  // (Measured, Llama-3-8B decode bs 1: 3.05-3.08 -> 3.00-3.03 ms. The same trigger in the attention kernel,
  // whose dependent is that fused kernel at batch 16 (one split, no combine), made bs 16 4.28 -> 5.45 ms.)
  detail::pdl_trigger();
  const int64_t bh = blockIdx.x;
  const float* m = ws + n_part_rows * d + bh * n_split;
  const float* l = ws + n_part_rows * d + n_part_rows + bh * n_split;
  float M = -INFINITY;
  for (int s = 0; s < n_split; ++s) M = fmaxf(M, m[s]);
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    float o = 0.0f, L = 0.0f;
    if (M != -INFINITY) {
      for (int s = 0; s < n_split; ++s) {
        const float f = exp2f(m[s] - M);  // 0 for empty splits (m = -inf)
        L += f * l[s];
        o += f * ws[(bh * n_split + s) * d + e];
      }
    }
    const float r = L > 0.0f ? o / L : 0.0f;
    if (out_f16)
      static_cast<__half*>(outv)[bh * d + e] = __float2half_rn(r);
    else
      static_cast<float*>(outv)[bh * d + e] = r;
  }
}

// ---- tensor-core kernel (head_dim 64 / 128) --------------------------------------------------------------
// The CUDA-core kernel above issues ~75 warp instructions per (key, kv head) cell (a float conversion and G
// FMAs per code, q from shared memory), so it is issue-bound far below the memory bandwidth. This one does
// both products on the tensor cores (mma.sync m16n8k16, fp16 inputs, fp32 accumulation) without losing the
// fp32 reference accuracy:
//  - codes minus zero points are exact small integers (|x| <= 15), exact in fp16: a code nibble n becomes the
//    half 1024 + n by OR-ing it into 0x6400, then one HSUB2 by 1024 + zero (requires integer zero points,
//    which ref::quantize_kv_asym_int4 / kv4_append produce);
//  - the fp32 operand (q, resp. p * v_scale) is split into hi + lo halves, put in rows g and g + 8 of the A
//    operand (g = query head of the group, <= 8): one MMA yields both partial products, whose sum has ~22
//    bits of the fp32 operand (error ~1e-7 relative, like the fp32 reference);
//  - scores S[g][key] = sum_i q[g][i] * (k_code - k_zero): A = q (hi/lo rows), B = K codes (k = dims, n = 8
//    keys). The C fragment (head g = lane / 4, keys 2t, 2t + 1 with t = lane % 4) is exactly the layout of
//    the A fragment of P.V (rows = heads, k = keys), so p never leaves the registers;
//  - out[g][dim] += sum_key w[g][key] * (v_code - v_zero): A = w (hi/lo rows), B = V codes (k = 16 keys,
//    n = 8 dims); a byte permute pairs two keys' nibbles of one dim in a half2;
//  - w = p * v_scale * 2^E with 2^E chosen per chunk from the largest v_scale, so w never underflows fp16;
//    the accumulators are rescaled by the (exact, power-of-two) ratio together with the softmax factor.
// The reduction dimension (head dims for scores, keys for P.V) may be permuted freely as long as both
// operands agree: thread t loads dims [t*D/4, (t+1)*D/4) of its key row for the scores (one 16-byte load at
// D = 128), and the q fragments follow that order. For P.V, thread (g, t) loads dims [g*D/8, (g+1)*D/8) of
// the four keys it needs, so output n-block j, column c is dim c*D/8 + j.
// Each warp runs its own online softmax over chunks of 32 keys (warp w takes chunks w, w + 4, ... of the
// CTA's key range); the four warps are merged in shared memory at the end. No __syncthreads in the loop.
// Per-warp cp.async pipeline (kMmaStages buffers per warp): the codes, scales and zeros of a chunk are copied
// into the warp's shared-memory stage kMmaStages - 1 chunks ahead of their use, so while a chunk is computed
// the next two are in flight (the register-staged loads of the previous version kept one chunk per warp in
// flight and waited for it before computing: latency-bound, bench/results/attn_notes.md). The lanes copy
// whole 16-byte pieces of the code rows (cp.async.cg) and the four per-key floats (4-byte cp.async.ca: they
// sit n_head_kv floats apart, one per 32-byte sector); keys past the range are zero-filled, which gives the
// same zeros as the old register path. Only __syncwarp orders the stages (a stage is rewritten one iteration
// after its last read: the warp barrier at the top of each iteration covers it).
__device__ __forceinline__ uint32_t h2_bits(__half2 h) {
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ __half2 bits_h2(uint32_t u) {
  return *reinterpret_cast<const __half2*>(&u);
}

// Nibbles at bit `shift` and `shift + 16` of x as the half2 (1024 + n_lo, 1024 + n_hi) minus z (half2).
__device__ __forceinline__ uint32_t nib_h2(uint32_t x, int shift, __half2 z) {
  return h2_bits(__hsub2(bits_h2(((x >> shift) & 0x000F000Fu) | 0x64006400u), z));
}

__device__ __forceinline__ void mma_f16_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                              uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// x = hi + lo, both halves (lo carries the next 11 bits).
__device__ __forceinline__ void split_half(float x, __half& hi, __half& lo) {
  hi = __float2half_rn(x);
  lo = __float2half_rn(x - __half2float(hi));
}
__device__ __forceinline__ void split_pair(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  __half h0, l0, h1, l1;
  split_half(x0, h0, l0);
  split_half(x1, h1, l1);
  hi = h2_bits(__halves2half2(h0, h1));
  lo = h2_bits(__halves2half2(l0, l1));
}

template <int N>
__device__ __forceinline__ void load_words(const uint8_t* p, uint32_t (&w)[N]) {
  if constexpr (N == 4) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    w[0] = u.x, w[1] = u.y, w[2] = u.z, w[3] = u.w;
  } else if constexpr (N == 2) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    w[0] = u.x, w[1] = u.y;
  } else {
    static_assert(N == 1, "1, 2 or 4 words");
    w[0] = *reinterpret_cast<const uint32_t*>(p);
  }
}

constexpr int kMmaNb = 4;  // 8-key n-blocks per warp step (32 keys)
constexpr int kMmaChunk = 8 * kMmaNb;
// Stage buffers per warp. With 3 a warp has two chunks in flight while it computes one (9.2 KB of codes and
// scales at D = 128, ~110 KB per SM at 3 CTAs): by Little's law at ~1.5 us HBM latency that is several times
// what 3 TB/s needs (expected). 4 stages would not fit 3 CTAs per SM (80 KB each).
constexpr int kMmaStages = 3;
// __launch_bounds__ minimum: 3 CTAs (12 warps) per SM caps the kernel at 168 registers; the shared memory
// (60 KB per CTA at D = 128) also allows 3. decode_attention_plan sizes its wave with this.
constexpr int kMmaCtasPerSm = 3;

// Byte layout of one warp's stage (one chunk of 32 keys): K codes [32][D/2], V codes [32][D/2 + 16] (rows
// padded by 16 bytes: the P.V loads of a half warp, rows 2t + e at byte g * D/16, then hit 32 distinct banks;
// unpadded rows 2 keys apart share banks), then k_scale, k_zero, v_scale, v_zero [4][32] floats. The score
// loads (rows g, bytes t * D/8) read whole 128-byte lines per phase, conflict-free without padding.
template <int D>
struct MmaStage {
  static constexpr int kRow = D / 2;
  static constexpr int kVRow = D / 2 + 16;
  static constexpr int kK = 0;
  static constexpr int kV = kK + kMmaChunk * kRow;
  static constexpr int kScales = kV + kMmaChunk * kVRow;
  static constexpr int kBytes = kScales + 4 * kMmaChunk * static_cast<int>(sizeof(float));
  static constexpr int kWarpBytes = kMmaStages * kBytes;
  static constexpr int kCtaBytes = kWarps * kWarpBytes;
  // After the loop a warp's merge rows [8][D] floats reuse its own stage buffers.
  static_assert(8 * D * static_cast<int>(sizeof(float)) <= kWarpBytes, "merge rows fit the stages");
  static_assert(kV % 16 == 0 && kScales % 16 == 0 && kBytes % 16 == 0, "16-byte aligned copies");
};

template <int D>
__global__ void __launch_bounds__(kThreads, kMmaCtasPerSm)
    decode_attn_mma_kernel(Kv4Layer c, const void* __restrict__ qv, bool q_f16, int64_t q_stride, int n_head,
                           int heads_per_cta, const int32_t* __restrict__ d_len, void* __restrict__ outv,
                           bool out_f16, float* __restrict__ ws, int n_split, int32_t* d_overflow) {
  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  using L = MmaStage<D>;
  constexpr int KW = D / 32;   // K code words per thread and key row (dims [t*D/4, (t+1)*D/4))
  constexpr int KB = D / 16;   // k-blocks of the score MMA
  constexpr int VW = D / 64;   // V code words per thread and key (dims [g*D/8, (g+1)*D/8))
  constexpr int NB = D / 8;    // n-blocks (8 dims) of the P.V MMA
  constexpr int PPR = D / 32;  // 16-byte pieces per code row; lane copies pieces lane, lane + 32, ...
  extern __shared__ __align__(16) unsigned char mma_smem[];
  __shared__ float s_m[kWarps][8], s_l[kWarps][8];

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = lane / 4, t = lane % 4;
  const int H = static_cast<int>(c.n_head_kv);
  const int split = blockIdx.x, b = blockIdx.z;
  const int G = n_head / H;
  const int n_chunk = (G + heads_per_cta - 1) / heads_per_cta;
  const int kvh = blockIdx.y / n_chunk, chunk = blockIdx.y % n_chunk;
  const int h0 = kvh * G + chunk * heads_per_cta;
  const int ng = min(heads_per_cta, G - chunk * heads_per_cta);

  int len = d_len[b];
  if (len > c.max_ctx) {
    if (tid == 0 && d_overflow) *d_overflow = 1;
    len = static_cast<int>(c.max_ctx);
  }
  len = max(len, 0);
  const int per = ((len + n_split - 1) / n_split + kTile - 1) / kTile * kTile;
  const int k0 = min(len, split * per), k1 = min(len, k0 + per);

  // This warp's chunks: c0 = k0 + (warp + kWarps * i) * 32 for i < n_mine.
  const int first = k0 + warp * kMmaChunk;
  const int n_mine = first < k1 ? (k1 - first + kWarps * kMmaChunk - 1) / (kWarps * kMmaChunk) : 0;
  unsigned char* const wbuf = mma_smem + warp * L::kWarpBytes;

  // Producer side: lane copies the 16-byte pieces (key pkey + (32 / PPR) * i, part ppart) of the K and V rows
  // and the four floats of key `lane`. Invalid keys (>= k1) zero-fill and read nothing; their source address
  // is the chunk's first key, which exists.
  const int64_t row_cells = static_cast<int64_t>(b) * c.max_ctx;  // slot b
  const int pkey = lane / PPR, ppart = lane % PPR;
  const int64_t pos_bytes = static_cast<int64_t>(H) * (D / 2);  // global distance of consecutive positions
  auto issue = [&](int c0, int stage) {
    unsigned char* sb = wbuf + stage * L::kBytes;
    const int64_t cell0 = (row_cells + c0) * H + kvh;
    const uint8_t* kg = c.k + cell0 * (D / 2) + ppart * 16;
    const uint8_t* vg = c.v + cell0 * (D / 2) + ppart * 16;
#pragma unroll
    for (int i = 0; i < PPR; ++i) {
      const int key = pkey + (32 / PPR) * i;
      const bool ok = c0 + key < k1;
      const int64_t off = ok ? key * pos_bytes : 0;
      detail::cp_async16(sb + L::kK + key * L::kRow + ppart * 16, kg + off, ok);
      detail::cp_async16(sb + L::kV + key * L::kVRow + ppart * 16, vg + off, ok);
    }
    const bool ok = c0 + lane < k1;
    const int64_t cell = cell0 + (ok ? static_cast<int64_t>(lane) * H : 0);
    float* ss = reinterpret_cast<float*>(sb + L::kScales);
    detail::cp_async4(ss + lane, c.k_scale + cell, ok);
    detail::cp_async4(ss + kMmaChunk + lane, c.k_zero + cell, ok);
    detail::cp_async4(ss + 2 * kMmaChunk + lane, c.v_scale + cell, ok);
    detail::cp_async4(ss + 3 * kMmaChunk + lane, c.v_zero + cell, ok);
  };
  // Prologue: the first kMmaStages - 1 chunks, one commit group each (empty groups keep the count uniform),
  // issued before the q loads so that both latencies overlap.
#pragma unroll
  for (int s = 0; s < kMmaStages - 1; ++s) {
    if (s < n_mine) issue(first + s * kWarps * kMmaChunk, s);
    detail::async_commit();
  }

  // q fragments (A of the score MMA): rows g = hi, g + 8 = lo of head h0 + g, in this thread's dim order.
  uint32_t qa[KB][4];
  {
    const float qscale = rsqrtf(static_cast<float>(D)) * 1.4426950408889634f;
    float qf[D / 4];
    const int64_t off = b * q_stride + static_cast<int64_t>(h0 + g) * D + t * (D / 4);
#pragma unroll
    for (int i = 0; i < D / 4; ++i) {
      float x = 0.0f;
      if (g < ng)
        x = q_f16 ? __half2float(static_cast<const __half*>(qv)[off + i])
                  : static_cast<const float*>(qv)[off + i];
      qf[i] = x * qscale;
    }
#pragma unroll
    for (int u = 0; u < KW; ++u)
#pragma unroll
      for (int v = 0; v < 2; ++v) {
        // Word u gives, via nib_h2 at shifts 0/4/8/12, the dim pairs (8u + s, 8u + s + 4), s = 0..3.
        const int kb = 2 * u + v, base = 8 * u + 2 * v;
        split_pair(qf[base], qf[base + 4], qa[kb][0], qa[kb][1]);
        split_pair(qf[base + 1], qf[base + 5], qa[kb][2], qa[kb][3]);
      }
  }

  float m_run = -INFINITY, l_part = 0.0f, sc_run = 1.0f;
  float acc[NB][4];
#pragma unroll
  for (int j = 0; j < NB; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

  int stage = 0;
  for (int i = 0; i < n_mine; ++i) {
    const int c0 = first + i * kWarps * kMmaChunk;
    // Chunk i has landed (this lane's copies); the warp barrier makes every lane's copies visible and ends
    // all reads of the stage the next copy overwrites (chunk i - 1's).
    detail::async_wait<kMmaStages - 2>();
    __syncwarp();
    {
      const int ahead = i + kMmaStages - 1;
      int st = stage + kMmaStages - 1;
      st = st >= kMmaStages ? st - kMmaStages : st;
      if (ahead < n_mine) issue(c0 + (kMmaStages - 1) * kWarps * kMmaChunk, st);
      detail::async_commit();
    }
    const unsigned char* sb = wbuf + stage * L::kBytes;
    const float* ss = reinterpret_cast<const float*>(sb + L::kScales);
    stage = stage + 1 == kMmaStages ? 0 : stage + 1;

    // Scores (base-2 logits) of head g for keys c0 + 8nb + 2t + e. Zero-filled keys give finite scores
    // (codes and zero 0, scale 0) that the j < k1 test replaces by -inf.
    float sv[kMmaNb][2];
#pragma unroll
    for (int nb = 0; nb < kMmaNb; ++nb) {
      uint32_t kw[KW];
      load_words(sb + L::kK + (nb * 8 + g) * L::kRow + t * (D / 8), kw);
      const float kz = ss[kMmaChunk + nb * 8 + g];
      const float2 ks = *reinterpret_cast<const float2*>(ss + nb * 8 + 2 * t);
      float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      const __half2 z = __float2half2_rn(1024.0f + kz);
#pragma unroll
      for (int u = 0; u < KW; ++u) {
        const uint32_t x = kw[u];
        mma_f16_16816(s, qa[2 * u][0], qa[2 * u][1], qa[2 * u][2], qa[2 * u][3], nib_h2(x, 0, z),
                      nib_h2(x, 4, z));
        mma_f16_16816(s, qa[2 * u + 1][0], qa[2 * u + 1][1], qa[2 * u + 1][2], qa[2 * u + 1][3],
                      nib_h2(x, 8, z), nib_h2(x, 12, z));
      }
      const int j = c0 + nb * 8 + 2 * t;
      sv[nb][0] = j < k1 ? (s[0] + s[2]) * ks.x : -INFINITY;
      sv[nb][1] = j + 1 < k1 ? (s[1] + s[3]) * ks.y : -INFINITY;
    }
    float vs[kMmaNb][2];
#pragma unroll
    for (int nb = 0; nb < kMmaNb; ++nb) {
      const float2 v2 = *reinterpret_cast<const float2*>(ss + 2 * kMmaChunk + nb * 8 + 2 * t);
      vs[nb][0] = v2.x;
      vs[nb][1] = v2.y;
    }
    // Chunk max of head g and of v_scale (the four lanes of group g hold all 32 keys).
    float mx = -INFINITY, vmx = 0.0f;
#pragma unroll
    for (int nb = 0; nb < kMmaNb; ++nb)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        mx = fmaxf(mx, sv[nb][e]);
        vmx = fmaxf(vmx, vs[nb][e]);
      }
#pragma unroll
    for (int off = 1; off <= 2; off *= 2) {
      mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, off));
      vmx = fmaxf(vmx, __shfl_xor_sync(kFull, vmx, off));
    }
    const float m_new = fmaxf(m_run, mx);  // finite: the chunk has a valid key
    // 2^E with vmx * 2^E in [2^13, 2^14): p * v_scale * 2^E <= 2^14 fits fp16, and is far from underflow.
    const int ebits = max((__float_as_int(vmx) >> 23) & 0xff, 14);
    const float sc_new = __int_as_float((267 - ebits) << 23);
    const float alpha = exp2f(m_run - m_new);  // 0 on the first chunk (m_run = -inf)
    const float factor = alpha * (sc_new / sc_run);
    m_run = m_new;
    sc_run = sc_new;
    float psum = 0.0f;
    uint32_t wa[kMmaNb][2];  // [nb][hi, lo]: half2 of keys 2t, 2t + 1
#pragma unroll
    for (int nb = 0; nb < kMmaNb; ++nb) {
      const float p0 = exp2f(sv[nb][0] - m_new), p1 = exp2f(sv[nb][1] - m_new);
      psum += p0 + p1;
      split_pair(p0 * vs[nb][0] * sc_new, p1 * vs[nb][1] * sc_new, wa[nb][0], wa[nb][1]);
    }
    l_part = l_part * alpha + psum;
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[j][e] *= factor;
        // P.V over the two 16-key halves of the chunk.
#pragma unroll
    for (int hh = 0; hh < kMmaNb / 2; ++hh) {
      uint32_t bv[2][NB];  // [b0 / b1][n-block]
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int nb = 2 * hh + r;
        const float2 vz = *reinterpret_cast<const float2*>(ss + 3 * kMmaChunk + nb * 8 + 2 * t);
        uint32_t vw[2][VW];
#pragma unroll
        for (int e = 0; e < 2; ++e)
          load_words(sb + L::kV + (nb * 8 + 2 * t + e) * L::kVRow + g * (D / 16), vw[e]);
        const __half2 z = __floats2half2_rn(1024.0f + vz.x, 1024.0f + vz.y);
#pragma unroll
        for (int u = 0; u < VW; ++u) {
          const uint32_t x = __byte_perm(vw[0][u], vw[1][u], 0x5410);  // bytes 0, 1 of both keys
          const uint32_t y = __byte_perm(vw[0][u], vw[1][u], 0x7632);  // bytes 2, 3
          bv[r][8 * u + 0] = nib_h2(x, 0, z);
          bv[r][8 * u + 1] = nib_h2(x, 4, z);
          bv[r][8 * u + 2] = nib_h2(x, 8, z);
          bv[r][8 * u + 3] = nib_h2(x, 12, z);
          bv[r][8 * u + 4] = nib_h2(y, 0, z);
          bv[r][8 * u + 5] = nib_h2(y, 4, z);
          bv[r][8 * u + 6] = nib_h2(y, 8, z);
          bv[r][8 * u + 7] = nib_h2(y, 12, z);
        }
      }
#pragma unroll
      for (int j = 0; j < NB; ++j)
        mma_f16_16816(acc[j], wa[2 * hh][0], wa[2 * hh][1], wa[2 * hh + 1][0], wa[2 * hh + 1][1], bv[0][j],
                      bv[1][j]);
    }
  }

  // Merge: the warp's row sum (over the 4 lanes of group g), its output rows (hi + lo accumulators, scale
  // 2^E undone) into its own stage buffers (after its copies and reads are done: no copy is pending, only
  // empty groups), then the 4 warps of the CTA as in the split combine.
  detail::async_wait<0>();
  __syncwarp();
  l_part += __shfl_xor_sync(kFull, l_part, 1);
  l_part += __shfl_xor_sync(kFull, l_part, 2);
  const float inv_sc = 1.0f / sc_run;
  float(*const s_o)[D] = reinterpret_cast<float(*)[D]>(wbuf);  // [8][D]
#pragma unroll
  for (int j = 0; j < NB; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) s_o[g][(2 * t + e) * (D / 8) + j] = (acc[j][e] + acc[j][2 + e]) * inv_sc;
  if (t == 0) {
    s_m[warp][g] = m_run;
    s_l[warp][g] = l_part;
  }
  __syncthreads();
  const int64_t bh0 = static_cast<int64_t>(b) * n_head + h0;
  for (int i = tid; i < ng * D; i += kThreads) {
    const int gg = i / D, e = i % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, s_m[w][gg]);
    float o = 0.0f, l = 0.0f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = exp2f(s_m[w][gg] - M);  // 0 for a warp without keys
        o += f * reinterpret_cast<const float*>(mma_smem + w * L::kWarpBytes)[gg * D + e];
        l += f * s_l[w][gg];
      }
    }
    if (n_split == 1) {
      const float r = l > 0.0f ? o / l : 0.0f;
      const int64_t off = (bh0 + gg) * D + e;
      if (out_f16)
        static_cast<__half*>(outv)[off] = __float2half_rn(r);
      else
        static_cast<float*>(outv)[off] = r;
    } else {
      const int64_t row = (bh0 + gg) * n_split + split;
      ws[row * D + e] = o;
      if (e == 0) {
        const int64_t n_rows = static_cast<int64_t>(gridDim.z) * n_head * n_split;
        ws[n_rows * D + row] = M;
        ws[n_rows * D + n_rows + row] = l;
      }
    }
  }
}

// Shared-memory opt-in (60 KB at D = 128, over the 48 KB default) and the carveout that lets kMmaCtasPerSm
// CTAs share an SM, set once per process (a function-local static in the caller): not again inside a
// CUDA-graph capture, where the runtime may refuse non-stream calls. (One device per process is assumed.)
template <int D>
cudaError_t set_mma_attributes() {
  auto kernel = decode_attn_mma_kernel<D>;
  FQ_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, MmaStage<D>::kCtaBytes));
  FQ_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                               cudaSharedmemCarveoutMaxShared));
  return cudaSuccess;
}

template <int D>
cudaError_t launch_decode_mma(const Kv4Layer& c, const void* q, bool q_f16, int64_t q_stride, int64_t batch,
                              int64_t n_head, int heads_per_cta, int n_chunk, const int32_t* d_len, void* out,
                              bool out_f16, float* ws, int n_split, int32_t* d_overflow,
                              cudaStream_t stream) {
  static const cudaError_t attr = set_mma_attributes<D>();
  FQ_CUDA_RETURN_IF_ERROR(attr);
  const dim3 grid(static_cast<unsigned>(n_split), static_cast<unsigned>(c.n_head_kv * n_chunk),
                  static_cast<unsigned>(batch));
  decode_attn_mma_kernel<D><<<grid, kThreads, MmaStage<D>::kCtaBytes, stream>>>(
      c, q, q_f16, q_stride, static_cast<int>(n_head), heads_per_cta, d_len, out, out_f16, ws, n_split,
      d_overflow);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

template <int D, int GM>
cudaError_t launch_decode(const Kv4Layer& c, const void* q, bool q_f16, int64_t q_stride, int64_t batch,
                          int64_t n_head, int heads_per_cta, int n_chunk, const int32_t* d_len, void* out,
                          bool out_f16, float* ws, int n_split, int32_t* d_overflow, cudaStream_t stream) {
  const size_t smem = smem_floats<GM>(static_cast<int>(c.head_dim)) * sizeof(float);
  auto kernel = decode_attn_kernel<D, GM>;
  // At most 8*256 + 128*8 + 128 + 32 + 4*8*256 floats = 45.7 KB: under the 48 KB default, no opt-in needed
  // (so nothing but the launch happens inside a CUDA-graph capture).
  if (smem > 48 * 1024) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(n_split), static_cast<unsigned>(c.n_head_kv * n_chunk),
                  static_cast<unsigned>(batch));
  kernel<<<grid, kThreads, smem, stream>>>(c, q, q_f16, q_stride, static_cast<int>(n_head), heads_per_cta,
                                           d_len, out, out_f16, ws, n_split, d_overflow);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

template <int GM>
cudaError_t dispatch_d(const Kv4Layer& c, const void* q, bool q_f16, int64_t q_stride, int64_t batch,
                       int64_t n_head, int heads_per_cta, int n_chunk, const int32_t* d_len, void* out,
                       bool out_f16, float* ws, int n_split, int32_t* d_overflow, cudaStream_t stream) {
  switch (c.head_dim) {
    case 64:
      return launch_decode<64, GM>(c, q, q_f16, q_stride, batch, n_head, heads_per_cta, n_chunk, d_len, out,
                                   out_f16, ws, n_split, d_overflow, stream);
    case 128:
      return launch_decode<128, GM>(c, q, q_f16, q_stride, batch, n_head, heads_per_cta, n_chunk, d_len, out,
                                    out_f16, ws, n_split, d_overflow, stream);
    default:
      return launch_decode<0, GM>(c, q, q_f16, q_stride, batch, n_head, heads_per_cta, n_chunk, d_len, out,
                                  out_f16, ws, n_split, d_overflow, stream);
  }
}

}  // namespace

DecodeAttnPlan decode_attention_plan(int64_t batch, int64_t n_head, int64_t n_head_kv, int64_t max_len,
                                     int n_sm, int64_t head_dim) {
  DecodeAttnPlan p;
  if (batch < 1 || n_head_kv < 1 || n_head < n_head_kv) return p;
  const int64_t G = n_head / n_head_kv;
  p.heads_per_cta = static_cast<int>(std::min<int64_t>(G, kMaxHeadsPerCta));
  const int64_t n_chunk = (G + p.heads_per_cta - 1) / p.heads_per_cta;
  const int64_t base = batch * n_head_kv * n_chunk;
  // The largest split count whose CTAs fit one wave (with more CTAs than a wave: no split); a split shorter
  // than one tile is pure overhead. A wave:
  //  - the tensor-core kernel (head_dim 64 / 128): one CTA per SM, although 3 fit (165 registers, 60 KB of
  //    shared memory at head_dim 128). Fewer, longer splits won wherever the split sweep measured them
  //    (bench_attn, H100, us per launch including the combine; bench/results/attn_h100_2026-11-24_pipe.json):
  //    batch 16 x 2048 keys 1 split 24.6 vs 3 splits 29.6 (no partials, no combine, no start-up of extra
  //    CTAs), batch 1 x 8192 16 splits 13.7 vs 32 15.6, batch 1 x 2048 16 vs 8 within 3 %, batch 16 x 8192
  //    1..4 splits within 1 %. (Until 2026-11-25: 3 CTAs per SM, i.e. 3 splits at batch 16.)
  //  - the CUDA-core kernel (other head_dims): 3 CTAs per SM (kMmaCtasPerSm); it is issue-bound and
  //    gains from every resident CTA (batch 16 x 2048: 1 split 105 us, 3 splits 57).
  const bool mma = head_dim == 64 || head_dim == 128;
  const int64_t wave = (mma ? 1 : kMmaCtasPerSm) * static_cast<int64_t>(std::max(n_sm, 1));
  int64_t n = std::max<int64_t>(1, wave / base);
  n = std::min(n, std::max<int64_t>(1, (max_len + kMinKeysPerSplit - 1) / kMinKeysPerSplit));
  // The kernels round a split up to whole tiles, so some counts leave the last splits empty at max_len
  // (batch 1 x 8192: 33 or 49 splits are 256 keys each, 32 of them hold keys): drop those CTAs, which only
  // cost a launch slot and combine work.
  if (max_len > 0) {
    const int64_t per = ((max_len + n - 1) / n + kTile - 1) / kTile * kTile;
    n = (max_len + per - 1) / per;
  }
  p.n_split = static_cast<int>(std::clamp<int64_t>(n, 1, kMaxSplit));
  return p;
}

size_t decode_attention_workspace_bytes(int64_t batch, int64_t n_head, int64_t head_dim,
                                        const DecodeAttnPlan& plan) {
  if (plan.n_split <= 1) return 0;
  const int64_t rows = batch * n_head * plan.n_split;
  return static_cast<size_t>(rows * (head_dim + 2)) * sizeof(float);
}

cudaError_t decode_attention(const Kv4Layer& cache, const void* q, DType q_dtype, int64_t q_stride,
                             int64_t batch, int64_t n_head, const int32_t* d_len, void* out, DType out_dtype,
                             const DecodeAttnPlan& plan, void* workspace, int32_t* d_overflow,
                             cudaStream_t stream) {
  const Kv4Layer& c = cache;
  const int64_t d = c.head_dim, H = c.n_head_kv;
  const bool d_ok = d == 8 || d == 16 || d == 32 || d == 64 || d == 128 || d == 256;
  if (!d_ok || H < 1 || n_head < H || n_head % H != 0 || batch < 1 || batch > c.n_slots || c.max_ctx < 1 ||
      c.max_ctx > 0x7fffffff || q_stride < n_head * d || batch > 65535)
    return cudaErrorInvalidValue;
  if ((q_dtype != DType::F32 && q_dtype != DType::F16) ||
      (out_dtype != DType::F32 && out_dtype != DType::F16))
    return cudaErrorInvalidValue;
  const int64_t G = n_head / H;
  if (plan.n_split < 1 || plan.n_split > kMaxSplit || plan.heads_per_cta < 1 ||
      plan.heads_per_cta > kMaxHeadsPerCta || plan.heads_per_cta > G)
    return cudaErrorInvalidValue;
  if (plan.n_split > 1 && workspace == nullptr) return cudaErrorInvalidValue;
  // The 16-byte code loads need aligned rows.
  if (reinterpret_cast<uintptr_t>(c.k) % 16 != 0 || reinterpret_cast<uintptr_t>(c.v) % 16 != 0)
    return cudaErrorInvalidValue;
  const int n_chunk = static_cast<int>((G + plan.heads_per_cta - 1) / plan.heads_per_cta);
  if (H * n_chunk > 65535) return cudaErrorInvalidValue;
  const bool q16 = q_dtype == DType::F16, o16 = out_dtype == DType::F16;
  auto* ws = static_cast<float*>(workspace);
  // With one split the attention kernel writes `out` itself.
  void* direct = out;
  cudaError_t err;
  const int hpc = plan.heads_per_cta;
  if (!plan.cuda_cores && d == 128)
    err = launch_decode_mma<128>(c, q, q16, q_stride, batch, n_head, hpc, n_chunk, d_len, direct, o16, ws,
                                 plan.n_split, d_overflow, stream);
  else if (!plan.cuda_cores && d == 64)
    err = launch_decode_mma<64>(c, q, q16, q_stride, batch, n_head, hpc, n_chunk, d_len, direct, o16, ws,
                                plan.n_split, d_overflow, stream);
  else if (hpc <= 1)
    err = dispatch_d<1>(c, q, q16, q_stride, batch, n_head, hpc, n_chunk, d_len, direct, o16, ws,
                        plan.n_split, d_overflow, stream);
  else if (hpc <= 2)
    err = dispatch_d<2>(c, q, q16, q_stride, batch, n_head, hpc, n_chunk, d_len, direct, o16, ws,
                        plan.n_split, d_overflow, stream);
  else if (hpc <= 4)
    err = dispatch_d<4>(c, q, q16, q_stride, batch, n_head, hpc, n_chunk, d_len, direct, o16, ws,
                        plan.n_split, d_overflow, stream);
  else
    err = dispatch_d<8>(c, q, q16, q_stride, batch, n_head, hpc, n_chunk, d_len, direct, o16, ws,
                        plan.n_split, d_overflow, stream);
  if (err != cudaSuccess || plan.n_split == 1) return err;
  const int64_t n_rows = batch * n_head;
  decode_combine_kernel<<<static_cast<unsigned>(n_rows), static_cast<unsigned>(std::min<int64_t>(d, 128)), 0,
                          stream>>>(ws, n_rows * plan.n_split, plan.n_split, static_cast<int>(d), out, o16);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

}  // namespace fq::cuda
