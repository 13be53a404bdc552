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
                                     int n_sm) {
  DecodeAttnPlan p;
  if (batch < 1 || n_head_kv < 1 || n_head < n_head_kv) return p;
  const int64_t G = n_head / n_head_kv;
  p.heads_per_cta = static_cast<int>(std::min<int64_t>(G, kMaxHeadsPerCta));
  const int64_t n_chunk = (G + p.heads_per_cta - 1) / p.heads_per_cta;
  const int64_t base = batch * n_head_kv * n_chunk;
  // About four CTAs per SM keep enough loads in flight; a split shorter than one tile is pure overhead.
  const int64_t target = 4 * static_cast<int64_t>(std::max(n_sm, 1));
  int64_t n = (target + base - 1) / base;
  n = std::min(n, std::max<int64_t>(1, (max_len + kMinKeysPerSplit - 1) / kMinKeysPerSplit));
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
  if (hpc <= 1)
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
