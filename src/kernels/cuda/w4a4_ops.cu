// W4A4KV4 engine kernels (w4a4_ops.h). Each mirrors a CPU reference named in the header; fp32 sums are
// written with explicit-rounding intrinsics (no FMA contraction) so that they follow the reference's
// operations.
#include <cooperative_groups.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/quant_common.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/w4a4_ops.h"

namespace fq::cuda {
namespace {

// ---------------------------------------------------------------------------------------------------------
// kron_transform_f32: grid (ceil(L / kKronRows), n_tok). Shared: X [L*R] (the token), Ac [L][kKronRows] (the
// CTA's columns of A), T [kKronRows][R] (its rows of A^T X).
constexpr int kKronRows = 4;
constexpr int kKronThreads = 256;
constexpr int64_t kKronMaxElems = 40960;

__global__ void __launch_bounds__(kKronThreads)
    kron_transform_kernel(const float* __restrict__ x, int64_t x_stride, const float* __restrict__ A, int L,
                          const float* __restrict__ B, int R, float* __restrict__ y) {
  extern __shared__ float smem[];
  const int n = L * R;
  float* X = smem;
  float* Ac = X + n;
  float* T = Ac + L * kKronRows;
  const int64_t t = blockIdx.y;
  const int i0 = static_cast<int>(blockIdx.x) * kKronRows;
  const float* xt = x + t * x_stride;
  for (int c = threadIdx.x; c < n; c += blockDim.x) X[c] = xt[c];
  for (int idx = threadIdx.x; idx < L * kKronRows; idx += blockDim.x) {
    const int k = idx / kKronRows, ii = idx % kKronRows;
    Ac[idx] = i0 + ii < L ? A[k * L + i0 + ii] : 0.0f;
  }
  __syncthreads();
  // T[ii][l] = sum_k A[k][i0 + ii] X[k][l]
  for (int idx = threadIdx.x; idx < kKronRows * R; idx += blockDim.x) {
    const int ii = idx / R, l = idx % R;
    float acc = 0.0f;
    for (int k = 0; k < L; ++k) acc = __fadd_rn(acc, __fmul_rn(Ac[k * kKronRows + ii], X[k * R + l]));
    T[idx] = acc;
  }
  __syncthreads();
  float* yt = y + t * n;
  for (int idx = threadIdx.x; idx < kKronRows * R; idx += blockDim.x) {
    const int ii = idx / R, j = idx % R;
    if (i0 + ii >= L) continue;
    float acc;
    if (B) {
      acc = 0.0f;
      for (int l = 0; l < R; ++l) acc = __fadd_rn(acc, __fmul_rn(T[ii * R + l], B[l * R + j]));
    } else {
      acc = T[idx];
    }
    yt[(i0 + ii) * R + j] = acc;
  }
}

// ---------------------------------------------------------------------------------------------------------
// fused_quant_int4: grid (cluster CTAs, tokens), cluster (n_cta, 1, 1). Shared: X [K] (the prologue's output),
// Ac [L][rb] (this CTA's columns of A), T [rb][R], Y [rb][R], B [R][R], partial sums (< 512); rb rows of
// A^T X B per CTA (even when R is odd, so that every slice starts on a packed byte). Without a transform the CTA
// owns `chunk` elements of X.
constexpr int kFusedThreads = 512;

__global__ void __launch_bounds__(kFusedThreads)
    fused_quant_kernel(FusedQuantArgs a, int K, int rb, int chunk, int64_t rows, uint8_t* __restrict__ packed,
                       float* __restrict__ scales) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  extern __shared__ float sm[];
  __shared__ float red[2 * detail::kWarp];
  __shared__ float part[2];
  const int c = static_cast<int>(cluster.block_rank()), n_cta = static_cast<int>(cluster.num_blocks());
  const int64_t t = blockIdx.y;
  const int L = static_cast<int>(a.L), R = static_cast<int>(a.R);
  float* X = sm;
  // 1. Prologue: the token's input row, in the reference's operations.
  if (a.in == FusedIn::kSwiGLU) {
    const __half* g = reinterpret_cast<const __half*>(a.gate) + t * a.gu_stride;
    const __half* u = reinterpret_cast<const __half*>(a.up) + t * a.gu_stride;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
      const float gv = __half2float(g[i]), uv = __half2float(u[i]);
      X[i] = __fmul_rn(__fdiv_rn(gv, __fadd_rn(1.0f, expf(-gv))), uv);
    }
  } else {
    const float* xr = a.x + t * a.x_stride;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
      const float v = xr[i];
      X[i] = v;
      ss = fmaf(v, v, ss);
    }
    if (a.in == FusedIn::kRmsNorm) {
      ss = detail::block_reduce(ss, red, detail::SumOp());
      const float inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, static_cast<float>(K)), a.eps)));
      for (int i = threadIdx.x; i < K; i += blockDim.x) X[i] = __fmul_rn(a.norm_w[i], __fmul_rn(X[i], inv));
    }
  }
  __syncthreads();
  // 2. This CTA's slice of vec(A^T X B) (or of X), fp32 with fused multiply-adds (the sums run in another
  // order than the reference's; results agree to rounding).
  const float* src;
  int e0, e1;
  if (L > 0) {
    float* Ac = X + K;
    float* T = Ac + L * rb;
    float* Y = T + rb * R;
    float* Bs = Y + rb * R;  // B staged in shared memory (R * R floats) when given
    const int i0 = min(L, c * rb), i1 = min(L, i0 + rb), nr = i1 - i0;
    for (int idx = threadIdx.x; idx < L * rb; idx += blockDim.x) {
      const int k = idx / rb, ii = idx % rb;
      Ac[idx] = ii < nr ? a.A[k * L + i0 + ii] : 0.0f;
    }
    if (a.B)
      for (int idx = threadIdx.x; idx < R * R; idx += blockDim.x) Bs[idx] = a.B[idx];
    __syncthreads();
    // Every output (ii, col) of the slice is one dot product of length L (T) or R (Y). Outputs go to threads;
    // when there are fewer outputs than threads, the sum is split S ways (S a power of two) and the parts are
    // added in shared memory. Each part runs four independent accumulators, so loads overlap.
    const int bd = static_cast<int>(blockDim.x), n_out = nr * R;
    int S = 1;
    while (S < 8 && n_out * S * 2 <= bd) S *= 2;
    const int split = static_cast<int>(threadIdx.x) / max(n_out, 1), o0 = static_cast<int>(threadIdx.x) % max(n_out, 1);
    float* scratch = Bs + (a.B ? R * R : 0);  // [S - 1][n_out] partial sums
    auto dot_pass = [&](bool second) {
      const int len = second ? R : L;
      const int k0 = split * len / S, k1 = (split + 1) * len / S;
      for (int o = o0; split < S && o < n_out; o += (S > 1 ? n_out : bd)) {
        const int ii = o / R, col = o % R;
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        int k = k0;
        if (!second) {
          for (; k + 3 < k1; k += 4)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[q] = fmaf(Ac[(k + q) * rb + ii], X[(k + q) * R + col], acc[q]);
          for (; k < k1; ++k) acc[0] = fmaf(Ac[k * rb + ii], X[k * R + col], acc[0]);
        } else {
          for (; k + 3 < k1; k += 4)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[q] = fmaf(T[ii * R + k + q], Bs[(k + q) * R + col], acc[q]);
          for (; k < k1; ++k) acc[0] = fmaf(T[ii * R + k], Bs[k * R + col], acc[0]);
        }
        const float v = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        if (split == 0)
          (second ? Y : T)[o] = v;
        else
          scratch[(split - 1) * n_out + o] = v;
      }
      __syncthreads();
      if (S > 1) {
        for (int o = threadIdx.x; o < n_out; o += bd) {
          float v = (second ? Y : T)[o];
          for (int p2 = 1; p2 < S; ++p2) v += scratch[(p2 - 1) * n_out + o];
          (second ? Y : T)[o] = v;
        }
        __syncthreads();
      }
    };
    dot_pass(false);
    if (a.B) {
      dot_pass(true);
      src = Y;
    } else {
      src = T;
    }
    e0 = i0 * R;
    e1 = i1 * R;
  } else {
    e0 = min(K, c * chunk);
    e1 = min(K, e0 + chunk);
    src = X + e0;
  }
  // 3. The row's min/max over the cluster (0 is neutral: the scale takes max(., 0) / min(., 0)).
  float vmax = 0.0f, vmin = 0.0f;
  for (int i = threadIdx.x; i < e1 - e0; i += blockDim.x) {
    vmax = fmaxf(vmax, src[i]);
    vmin = fminf(vmin, src[i]);
  }
  detail::block_minmax(vmax, vmin, red);
  if (threadIdx.x == 0) part[0] = vmax, part[1] = vmin;
  cluster.sync();
  vmax = 0.0f, vmin = 0.0f;
  for (int r = 0; r < n_cta; ++r) {
    const float* p = cluster.map_shared_rank(part, r);
    vmax = fmaxf(vmax, p[0]);
    vmin = fminf(vmin, p[1]);
  }
  // 4. One packed copy per clip pair.
  for (int cp = 0; cp < a.clips.n; ++cp) {
    const float scale = detail::sym_int4_scale(vmax, vmin, a.clips.max[cp], a.clips.min[cp]);
    uint8_t* out = packed + (cp * rows + t) * (K / 2) + e0 / 2;
    for (int j = threadIdx.x; j < (e1 - e0) / 2; j += blockDim.x)
      out[j] = detail::pack2(detail::sym_int4_code(src[2 * j], scale), detail::sym_int4_code(src[2 * j + 1], scale));
    if (c == 0 && threadIdx.x == 0) scales[cp * rows + t] = scale;
  }
  cluster.sync();  // the other CTAs may still read `part`
#endif
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
    const float scale = detail::sym_int4_scale(vmax, vmin, clips.max[c], clips.min[c]);
    detail::store_sym_int4_row(xr, cols, scale, packed + (c * rows + r) * (cols / 2));
    if (threadIdx.x == 0) scales[c * rows + r] = scale;
  }
}

// ---------------------------------------------------------------------------------------------------------
// qkv_rope_transform_f16: grid (heads, rows) with heads = n_head + n_head_kv (+ n_head_kv when there is a
// bias, for v), one head vector per block.
constexpr int kRopeThreads = 128;

__global__ void __launch_bounds__(kRopeThreads)
    rope_transform_kernel(__half* qkv, int64_t qkv_stride, int64_t row0, int64_t n_tok, int64_t pos0,
                          const int32_t* __restrict__ d_pos, const float* __restrict__ bias, int n_head,
                          int n_kv, int d, const float* __restrict__ inv_freq, const float* __restrict__ q_mat,
                          const float* __restrict__ k_mat, __half* out, int64_t out_stride) {
  __shared__ float v[256], r[256], cs[256];
  const int hh = blockIdx.x;
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
  const float* M = hh < n_head ? q_mat : k_mat;
  __half* o = out ? out + row * out_stride + static_cast<int64_t>(hh) * d : h;
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    float acc;
    if (M) {
      // Eight independent partial sums keep eight matrix loads in flight (the decode launch is latency-bound).
      float p[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
      int j = 0;
      for (; j + 7 < d; j += 8)
#pragma unroll
        for (int q = 0; q < 8; ++q) p[q] = fmaf(r[j + q], __ldg(M + (j + q) * d + e), p[q]);
      for (; j < d; ++j) p[0] = fmaf(r[j], __ldg(M + j * d + e), p[0]);
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

cudaError_t kron_transform_f32(const float* x, int64_t n_tok, int64_t x_stride, const float* A, int64_t L,
                               const float* B, int64_t R, float* y, cudaStream_t stream) {
  if (n_tok < 0 || L < 1 || R < 1 || L * R > kKronMaxElems || x_stride < L * R || n_tok > 65535 || !A ||
      (n_tok > 0 && (!x || !y)))
    return cudaErrorInvalidValue;
  if (n_tok == 0) return cudaSuccess;
  const size_t smem = static_cast<size_t>(L * R + L * kKronRows + kKronRows * R) * sizeof(float);
  if (smem > 48 * 1024)
    FQ_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kron_transform_kernel,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>((L + kKronRows - 1) / kKronRows), static_cast<unsigned>(n_tok));
  kron_transform_kernel<<<grid, kKronThreads, smem, stream>>>(x, x_stride, A, static_cast<int>(L), B,
                                                               static_cast<int>(R), y);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

namespace {
// Rows of A^T X B per CTA (even when R is odd) and the CTAs that need; elements per CTA without a transform.
void fused_split(int64_t L, int64_t R, int64_t K, int cl, int* rb, int* chunk, int* n_cta) {
  if (L > 0) {
    int r = static_cast<int>((L + cl - 1) / cl);
    if (R % 2 != 0 && r % 2 != 0) ++r;
    *rb = r;
    *chunk = 0;
    *n_cta = static_cast<int>((L + r - 1) / r);
  } else {
    int ch = static_cast<int>((K + cl - 1) / cl);
    ch += ch % 2;
    *rb = 0;
    *chunk = ch;
    *n_cta = static_cast<int>((K + ch - 1) / ch);
  }
}

size_t fused_smem(int64_t L, int64_t R, int64_t K, int cl) {
  int rb, chunk, n;
  fused_split(L, R, K, cl, &rb, &chunk, &n);
  // X, A's columns, T, Y, B, and the partial sums of split dot products ((S - 1) * n_out < kFusedThreads).
  return static_cast<size_t>(K + (L > 0 ? L * rb + 2 * rb * R + R * R + kFusedThreads : 0)) * sizeof(float);
}
}  // namespace

namespace {
// Grid (n_cta, rows) in clusters of (n_cta, 1, 1); *attr must outlive the returned config.
cudaLaunchConfig_t fused_config(int n_cta, int64_t rows, size_t smem, cudaStream_t stream, cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(n_cta), static_cast<unsigned>(rows));
  cfg.blockDim = dim3(kFusedThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = static_cast<unsigned>(n_cta);
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}
}  // namespace

int fused_quant_cluster(int64_t L, int64_t R, int64_t K, int device, int max_cluster) {
  int major = 0, optin = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  if (major < 9 || K < 2 || K % 2 != 0 || K > kKronMaxElems || (L > 0 && L * R != K)) return 0;
  for (int cl : {16, 8}) {
    if (cl > max_cluster) continue;
    const size_t smem = fused_smem(L, R, K, cl);
    if (smem + 1024 > static_cast<size_t>(optin)) continue;
    if (cudaFuncSetAttribute(fused_quant_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin - 1024) !=
            cudaSuccess ||
        (cl > 8 && cudaFuncSetAttribute(fused_quant_kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) !=
                       cudaSuccess)) {
      (void)cudaGetLastError();
      continue;
    }
    int rb, chunk, n_cta;
    fused_split(L, R, K, cl, &rb, &chunk, &n_cta);
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = fused_config(n_cta, 1, smem, nullptr, &attr);
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, fused_quant_kernel, &cfg) == cudaSuccess && clusters > 0) return cl;
    (void)cudaGetLastError();
  }
  return 0;
}

cudaError_t fused_quant_int4(const FusedQuantArgs& a, int64_t rows, int64_t K, uint8_t* packed, float* scales,
                             cudaStream_t stream) {
  if (rows < 0 || K < 2 || K % 2 != 0 || K > kKronMaxElems || rows > 65535 || a.clips.n < 1 || a.clips.n > 3 ||
      (a.cluster != 8 && a.cluster != 16) ||
      (a.L > 0 && (a.L * a.R != K || !a.A)) || a.L < 0 || (rows > 0 && (!packed || !scales)) ||
      (a.in == FusedIn::kSwiGLU && (!a.gate || !a.up || a.gu_stride < K)) ||
      (a.in != FusedIn::kSwiGLU && (!a.x || a.x_stride < K)) || (a.in == FusedIn::kRmsNorm && !a.norm_w))
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  int rb, chunk, n_cta;
  fused_split(a.L, a.R, K, a.cluster, &rb, &chunk, &n_cta);
  const size_t smem = fused_smem(a.L, a.R, K, a.cluster);
  // The attribute is always the device's whole opt-in shared memory (less the static part), so launches of any
  // shape never lower it under another's needs.
  if (smem > 48 * 1024) {
    int device = 0, optin = 0;
    FQ_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
    FQ_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (smem + 1024 > static_cast<size_t>(optin)) return cudaErrorInvalidValue;
    FQ_CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(fused_quant_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin - 1024));
  }
  if (a.cluster > 8)
    FQ_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(fused_quant_kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = fused_config(n_cta, rows, smem, stream, &attr);
  FQ_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, fused_quant_kernel, a, static_cast<int>(K), rb, chunk, rows,
                                             packed, scales));
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
  // gridDim.y is limited to 65535: rows beyond that go in further launches (the kernel adds row0).
  for (int64_t r0 = 0; r0 < rows; r0 += 65535) {
    const int64_t nr = std::min<int64_t>(rows - r0, 65535);
    rope_transform_kernel<<<dim3(static_cast<unsigned>(heads), static_cast<unsigned>(nr)), kRopeThreads, 0,
                            stream>>>(reinterpret_cast<__half*>(qkv), qkv_stride, r0, n_tok, pos0, d_pos, bias,
                                      static_cast<int>(n_head), static_cast<int>(n_head_kv),
                                      static_cast<int>(head_dim), inv_freq, q_mat, k_mat,
                                      reinterpret_cast<__half*>(qk_out), qk_stride);
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
