// Decode attention over the FP16 KV cache (flash-decoding), the FP16 engine's twin of decode_attn.cu (KV4).
// Reference: ref::attention in fp32 on the fp16 cache values; equal within fp32 rounding.
//
// Grid (n_split, n_head_kv * head_chunks, batch), 128 threads. A CTA owns one kv head of one sequence, up to
// HPC query heads of its GQA group (q in registers, pre-scaled by 1/sqrt(d) * log2 e) and one contiguous key
// range. A key row (d fp16) is read by LPK lanes, 16 bytes each (LPK = d/8 rounded up to a power of two), so
// a CTA walks 128/LPK keys at once, kUnroll of them per lane before the first use (the loads are in flight
// together). Each lane group keeps its own online softmax (m, l, acc[8 dims]); the groups are merged in
// shared memory at the end. One split: out = acc / l. Several: (m, l, acc) to the workspace, then the combine
// kernel: M = max m_s, out = sum 2^(m_s - M) acc_s / sum 2^(m_s - M) l_s. Split ranges come from d_len on the
// device, so one captured launch serves every length.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/engine_kernels.h"

namespace fq::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kUnroll = 4;
constexpr int kMaxSplit = 128;
constexpr int kMinKeysPerSplit = 64;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ void unpack8(const uint4& u, float* f) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __half22float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

template <int HPC, int LPK>
__global__ void __launch_bounds__(kThreads)
    decode_f16_kernel(F16KvCache c, const __half* __restrict__ q, int64_t q_stride, int n_head, int group,
                      int chunks, int64_t slot0, const int32_t* __restrict__ d_len, __half* __restrict__ out,
                      float* __restrict__ ws, int n_split, int32_t* d_overflow, float qscale) {
  constexpr int kGroups = kThreads / LPK;
  extern __shared__ float smem[];
  const int d = static_cast<int>(c.head_dim), n_kv = static_cast<int>(c.n_head_kv);
  float* sm_m = smem;                    // [kGroups][HPC]
  float* sm_l = sm_m + kGroups * HPC;    // [kGroups][HPC]
  float* sm_acc = sm_l + kGroups * HPC;  // [kGroups][HPC][d]

  const int split = blockIdx.x, kvh = blockIdx.y / chunks, hc = blockIdx.y % chunks, b = blockIdx.z;
  const int lk = threadIdx.x % LPK, grp = threadIdx.x / LPK;
  const bool active = lk < d / 8;
  const int h0 = kvh * group + hc * HPC;
  const int nh = min(HPC, group - hc * HPC);

  int len = d_len[b];
  if (len > c.max_ctx) {
    len = static_cast<int>(c.max_ctx);
    if (d_overflow && threadIdx.x == 0 && split == 0 && blockIdx.y == 0) *d_overflow = 1;
  }
  len = max(len, 0);
  const int per = (len + n_split - 1) / n_split;
  const int start = split * per, end = min(len, start + per);

  float qr[HPC][8];
#pragma unroll
  for (int g = 0; g < HPC; ++g) {
    if (g < nh && active) {
      const uint4 u =
          *reinterpret_cast<const uint4*>(q + b * q_stride + static_cast<int64_t>(h0 + g) * d + lk * 8);
      unpack8(u, qr[g]);
#pragma unroll
      for (int e = 0; e < 8; ++e) qr[g][e] *= qscale;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) qr[g][e] = 0.0f;
    }
  }
  float m[HPC], l[HPC], acc[HPC][8];
#pragma unroll
  for (int g = 0; g < HPC; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
  }

  const int64_t rs = static_cast<int64_t>(n_kv) * d;  // elements between consecutive positions
  const int64_t base_off = ((slot0 + b) * c.max_ctx) * rs + static_cast<int64_t>(kvh) * d + lk * 8;
  const __half* kb = reinterpret_cast<const __half*>(c.k) + base_off;
  const __half* vb = reinterpret_cast<const __half*>(c.v) + base_off;

  // The trip count is uniform over the CTA (the shuffles below need whole warps).
  for (int j0 = start; j0 < end; j0 += kGroups * kUnroll) {
    uint4 kk[kUnroll], vv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = j0 + u * kGroups + grp;
      if (j < end && active) {
        kk[u] = __ldg(reinterpret_cast<const uint4*>(kb + j * rs));
        vv[u] = __ldg(reinterpret_cast<const uint4*>(vb + j * rs));
      } else {
        kk[u] = make_uint4(0, 0, 0, 0);
        vv[u] = kk[u];
      }
    }
    float s[kUnroll][HPC];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float kf[8];
      unpack8(kk[u], kf);
#pragma unroll
      for (int g = 0; g < HPC; ++g) {
        float t = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) t = fmaf(qr[g][e], kf[e], t);
#pragma unroll
        for (int off = LPK / 2; off > 0; off /= 2) t += __shfl_xor_sync(kFull, t, off);
        s[u][g] = (j0 + u * kGroups + grp < end) ? t : -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < HPC; ++g) {
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) mx = fmaxf(mx, s[u][g]);
      if (mx == -INFINITY) continue;  // no valid key for this group yet
      const float corr = exp2f(m[g] - mx);
      l[g] *= corr;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] *= corr;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const float p = exp2f(s[u][g] - mx);
        float vf[8];
        unpack8(vv[u], vf);
        l[g] += p;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(p, vf[e], acc[g][e]);
      }
      m[g] = mx;
    }
  }

  // Merge the lane groups.
#pragma unroll
  for (int g = 0; g < HPC; ++g) {
    if (lk == 0) {
      sm_m[grp * HPC + g] = m[g];
      sm_l[grp * HPC + g] = l[g];
    }
    if (active)
#pragma unroll
      for (int e = 0; e < 8; ++e) sm_acc[(grp * HPC + g) * d + lk * 8 + e] = acc[g][e];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < nh * d; idx += kThreads) {
    const int g = idx / d, e = idx % d;
    float M = -INFINITY;
    for (int r = 0; r < kGroups; ++r) M = fmaxf(M, sm_m[r * HPC + g]);
    float L = 0.0f, A = 0.0f;
    if (M != -INFINITY)
      for (int r = 0; r < kGroups; ++r) {
        const float mr = sm_m[r * HPC + g];
        if (mr == -INFINITY) continue;
        const float w = exp2f(mr - M);
        L = fmaf(sm_l[r * HPC + g], w, L);
        A = fmaf(sm_acc[(r * HPC + g) * d + e], w, A);
      }
    const int h = h0 + g;
    if (n_split == 1) {
      out[(static_cast<int64_t>(b) * n_head + h) * d + e] = __float2half_rn(L > 0.0f ? A / L : 0.0f);
    } else {
      float* w = ws + ((static_cast<int64_t>(b) * n_head + h) * n_split + split) * (d + 2);
      w[e] = A;
      if (e == 0) {
        w[d] = M;
        w[d + 1] = L;
      }
    }
  }
}

__global__ void combine_kernel(const float* __restrict__ ws, int n_split, int d, int n_head,
                               __half* __restrict__ out) {
  const int h = blockIdx.x, b = blockIdx.y;
  const float* w = ws + (static_cast<int64_t>(b) * n_head + h) * n_split * (d + 2);
  float M = -INFINITY;
  for (int s = 0; s < n_split; ++s) M = fmaxf(M, w[s * (d + 2) + d]);
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    float L = 0.0f, A = 0.0f;
    if (M != -INFINITY)
      for (int s = 0; s < n_split; ++s) {
        const float* p = w + s * (d + 2);
        if (p[d] == -INFINITY) continue;
        const float f = exp2f(p[d] - M);
        L = fmaf(p[d + 1], f, L);
        A = fmaf(p[e], f, A);
      }
    out[(static_cast<int64_t>(b) * n_head + h) * d + e] = __float2half_rn(L > 0.0f ? A / L : 0.0f);
  }
}

int next_pow2(int x) {
  int p = 1;
  while (p < x) p *= 2;
  return p;
}

template <int HPC, int LPK>
cudaError_t launch(cudaStream_t stream, const F16KvCache& c, const __half* q, int64_t q_stride, int64_t batch,
                   int n_head, int group, int chunks, int64_t slot0, const int32_t* d_len, __half* out,
                   float* ws, int n_split, int32_t* d_overflow) {
  constexpr int kGroups = kThreads / LPK;
  const size_t smem = (2 * kGroups * HPC + static_cast<size_t>(kGroups) * HPC * c.head_dim) * sizeof(float);
  if (smem > 48 * 1024) return cudaErrorInvalidValue;
  const float qscale =
      static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)) * 1.4426950408889634);
  const dim3 grid(n_split, static_cast<unsigned>(c.n_head_kv * chunks), static_cast<unsigned>(batch));
  decode_f16_kernel<HPC, LPK><<<grid, kThreads, smem, stream>>>(c, q, q_stride, n_head, group, chunks, slot0,
                                                                d_len, out, ws, n_split, d_overflow, qscale);
  return cudaGetLastError();
}

}  // namespace

DecodeF16Plan decode_attention_f16_plan(int64_t batch, int64_t n_head, int64_t n_head_kv, int64_t max_len,
                                        int n_sm) {
  DecodeF16Plan p;
  const int64_t group = n_head_kv > 0 ? n_head / n_head_kv : 1;
  p.heads_per_cta = group >= 8 ? 8 : next_pow2(static_cast<int>(std::max<int64_t>(group, 1)));
  const int64_t chunks = (group + p.heads_per_cta - 1) / p.heads_per_cta;
  const int64_t ctas = std::max<int64_t>(1, batch * n_head_kv * chunks);
  int64_t split = (2 * std::max(n_sm, 1) + ctas - 1) / ctas;
  split = std::min<int64_t>(split, (max_len + kMinKeysPerSplit - 1) / kMinKeysPerSplit);
  p.n_split = static_cast<int>(std::clamp<int64_t>(split, 1, kMaxSplit));
  return p;
}

size_t decode_attention_f16_workspace_bytes(int64_t batch, int64_t n_head, int64_t head_dim,
                                            const DecodeF16Plan& plan) {
  if (plan.n_split <= 1) return 0;
  return static_cast<size_t>(batch * n_head * plan.n_split * (head_dim + 2)) * sizeof(float);
}

cudaError_t decode_attention_f16(const F16KvCache& cache, const uint16_t* q, int64_t q_stride, int64_t batch,
                                 int64_t n_head, int64_t slot0, const int32_t* d_len, uint16_t* out,
                                 const DecodeF16Plan& plan, void* workspace, int32_t* d_overflow,
                                 cudaStream_t stream) {
  const int64_t d = cache.head_dim, n_kv = cache.n_head_kv;
  if (batch <= 0 || batch > 65535 || n_kv <= 0 || n_head <= 0 || n_head % n_kv != 0 || d < 8 || d > 256 ||
      d % 8 != 0 || q_stride < n_head * d || q_stride % 8 != 0 || !q || !out || !d_len || !cache.k ||
      !cache.v || slot0 < 0 || slot0 + batch > cache.n_slots || plan.n_split < 1 ||
      plan.n_split > kMaxSplit || (plan.n_split > 1 && !workspace))
    return cudaErrorInvalidValue;
  const int hpc = plan.heads_per_cta;
  if (hpc != 1 && hpc != 2 && hpc != 4 && hpc != 8) return cudaErrorInvalidValue;
  const int group = static_cast<int>(n_head / n_kv);
  const int chunks = (group + hpc - 1) / hpc;
  if (n_kv * chunks > 65535) return cudaErrorInvalidValue;
  const int lpk = next_pow2(static_cast<int>(d / 8));
  const __half* qh = reinterpret_cast<const __half*>(q);
  __half* oh = reinterpret_cast<__half*>(out);
  float* ws = static_cast<float*>(workspace);
  cudaError_t err = cudaErrorInvalidValue;
#define FQ_DECODE_F16_CASE(H, L)                                                                       \
  else if (hpc == H && lpk == L) err =                                                                 \
      launch<H, L>(stream, cache, qh, q_stride, batch, static_cast<int>(n_head), group, chunks, slot0, \
                   d_len, oh, ws, plan.n_split, d_overflow);
#define FQ_DECODE_F16_HPC(H)                                                                           \
  FQ_DECODE_F16_CASE(H, 1)                                                                             \
  FQ_DECODE_F16_CASE(H, 2) FQ_DECODE_F16_CASE(H, 4) FQ_DECODE_F16_CASE(H, 8) FQ_DECODE_F16_CASE(H, 16) \
      FQ_DECODE_F16_CASE(H, 32)
  if (false) {
  }
  FQ_DECODE_F16_HPC(1)
  FQ_DECODE_F16_HPC(2) FQ_DECODE_F16_HPC(4) FQ_DECODE_F16_HPC(8)
#undef FQ_DECODE_F16_HPC
#undef FQ_DECODE_F16_CASE
      FQ_CUDA_RETURN_IF_ERROR(err);
  if (plan.n_split > 1) {
    combine_kernel<<<dim3(static_cast<unsigned>(n_head), static_cast<unsigned>(batch)), 128, 0, stream>>>(
        ws, plan.n_split, static_cast<int>(d), static_cast<int>(n_head), oh);
    FQ_CUDA_RETURN_LAUNCH_ERROR();
  }
  return cudaSuccess;
}

}  // namespace fq::cuda
