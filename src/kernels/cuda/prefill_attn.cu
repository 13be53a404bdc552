// Causal prefill attention on fp16 q/k/v (the prompt's own K/V, unquantized, as the original's prefill does).
// Reference: ref::attention (fp32) on the same fp16 values; the tensor-core kernel rounds the softmax
// probabilities to fp16 for the P.V product (as flash attention does), so it matches within fp16 tolerance.
//
// Tensor-core kernel (head_dim D = 64 or 128): one CTA of 4 warps per (query tile, query head, sequence).
// From 128 queries per sequence, 128-query tiles: warp w owns rows 32w..32w+31 as two m16 row blocks, so that
// every K and V fragment read from shared memory feeds two mmas (Q is read from its shared buffer per key
// tile). Below, 64-query tiles: warp w owns rows 16w..16w+15 and Q's fragments stay in registers (loaded
// once, staged in the second stage's space before the pipeline starts). K and V tiles of 64 keys stream
// through a two-stage cp.async pipeline (rows padded by 16 bytes, so the 8 row addresses of every ldmatrix
// fall in distinct bank groups). Per key tile:
//   S = Q K^T   mma.sync m16n8k16 (f16 x f16 -> f32); K rows are the B operand's columns ("col" layout), read
//               with ldmatrix (no transpose);
//   softmax     online, per row, in the base-2 domain (scale * log2 e folded in), causal mask on the
//               diagonal tiles;
//   O += P V    P re-packed from the S accumulators straight into A fragments (the m16n8 C layout of two
//               adjacent key blocks is the m16k16 A layout), V read with ldmatrix.trans.
// Query tiles are scheduled longest first (the last tile attends to the most keys), all heads of a tile index
// together.
//
// Fallback (any even head_dim <= 256): one CTA per (query, head, sequence), 128 keys per step, fp32
// throughout.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_check.cuh"

namespace fq::cuda {
namespace {

constexpr int kBN = 64;  // keys per tile
constexpr int kThreads = 128;
constexpr unsigned kFull = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; src_bytes = 0 zero-fills the destination (rows past the end).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// D += A * B, m16n8k16, fp16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

struct PrefillArgs {
  const __half* q;
  const __half* k;
  const __half* v;
  void* out;
  bool out_f16;
  int n, p0, n_head, n_head_kv;
  int64_t q_stride, q_batch_stride, kv_stride, kv_batch_stride;
  float scale_log2;  // 1/sqrt(d) * log2 e
};

// Copies `rows` rows of D halves (row r from src + r * stride) into shared rows of D + 8 halves; rows at or
// beyond `valid` are zero-filled.
template <int D>
__device__ __forceinline__ void load_tile(__half* dst, const __half* src, int64_t stride, int rows,
                                          int valid) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  for (int i = threadIdx.x; i < rows * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const bool ok = r < valid;
    const __half* s = ok ? src + r * stride + c * 8 : src;
    cp_async16(dst + r * (D + 8) + c * 8, s, ok ? 16 : 0);
  }
}

// kMB m16 row blocks per warp (BM = 64 kMB queries per CTA). kMB = 1: Q's fragments stay in registers, Q
// staged in stage 1 before the pipeline starts: 70 KB for D = 128, three CTAs per SM. kMB = 2: each K and V
// fragment read from shared memory feeds two row blocks (half the K/V ldmatrix bytes per mma: 5.5 -> 4.4 ms
// per 2048-token Llama-3-8B prefill), Q in its own buffer and read per key tile (its fragments would not fit
// in registers next to 2 x 64 output accumulators): 104 KB for D = 128, two CTAs per SM.
template <int kMB>
__host__ __device__ constexpr int prefill_bm() {
  return 64 * kMB;
}
template <int D, int kMB>
constexpr size_t prefill_smem() {
  return static_cast<size_t>(kMB == 1 ? 4 * kBN : 4 * kBN + prefill_bm<kMB>()) * (D + 8) * sizeof(__half);
}

template <int D, int kMB>
__global__ void __launch_bounds__(kThreads, kMB == 1 ? 3 : 2) prefill_attn_mma_kernel(PrefillArgs a) {
  constexpr int BM = prefill_bm<kMB>();
  constexpr int LD = D + 8;   // padded row, in halves
  constexpr int KS = D / 16;  // k-steps of Q K^T
  constexpr int ND = D / 8;   // n-tiles of the output
  extern __shared__ __align__(16) unsigned char smem_raw[];
  static_assert(kMB == 2 || BM <= 2 * kBN, "Q must fit in one stage");
  __half* const sK = reinterpret_cast<__half*>(smem_raw);  // stage s: K at sK + s * 2 kBN LD
  __half* const sV = sK + kBN * LD;                        //          V at sV + s * 2 kBN LD
  __half* const sQ = sK + (kMB == 1 ? 2 : 4) * kBN * LD;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = lane / 4, t = lane % 4;
  const int n_qt = (a.n + BM - 1) / BM;
  const int qt = n_qt - 1 - static_cast<int>(blockIdx.y);  // longest tiles first
  const int h = blockIdx.x, b = blockIdx.z;
  const int kvh = h / (a.n_head / a.n_head_kv);
  const int i0 = qt * BM;
  const int q_valid = min(BM, a.n - i0);
  const int n_keys = a.p0 + i0 + q_valid;  // keys any query of the tile can see
  const int n_kt = (n_keys + kBN - 1) / kBN;

  const __half* qg = a.q + b * a.q_batch_stride + static_cast<int64_t>(i0) * a.q_stride + h * D;
  const __half* kg = a.k + b * a.kv_batch_stride + kvh * D;
  const __half* vg = a.v + b * a.kv_batch_stride + kvh * D;

  load_tile<D>(sQ, qg, a.q_stride, BM, q_valid);
  load_tile<D>(sK, kg, a.kv_stride, kBN, min(kBN, n_keys));
  load_tile<D>(sV, vg, a.kv_stride, kBN, min(kBN, n_keys));
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  // Q fragments (ldmatrix x4): matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows
  // 8-15, k 8-15) of row block mb, k-step ks.
  const auto q_frag = [&](uint32_t(&r)[4], int mb, int ks) {
    ldmatrix_x4(r, sQ + ((warp * kMB + mb) * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * LD + ks * 16 +
                       8 * (lane / 16));
  };
  uint32_t qf[kMB == 1 ? KS : 1][4];
  if (kMB == 1) {
#pragma unroll
    for (int ks = 0; ks < (kMB == 1 ? KS : 0); ++ks) q_frag(qf[ks], 0, ks);
    __syncthreads();  // stage 1 (Q) is the first prefetch target
  }

  float o[kMB][ND][4];
#pragma unroll
  for (int mb = 0; mb < kMB; ++mb)
#pragma unroll
    for (int i = 0; i < ND; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) o[mb][i][j] = 0.0f;
  // Row block mb: this thread's tile rows (warp * kMB + mb) * 16 + g (index 0) and that + 8 (index 1).
  float m[kMB][2], l[kMB][2];
  int qp[kMB][2];
#pragma unroll
  for (int mb = 0; mb < kMB; ++mb)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      m[mb][e] = -INFINITY;
      l[mb][e] = 0.0f;
      qp[mb][e] = a.p0 + i0 + (warp * kMB + mb) * 16 + g + 8 * e;
    }

  for (int kt = 0; kt < n_kt; ++kt) {
    const int buf = kt & 1;
    if (kt + 1 < n_kt) {
      const int nb = (kt + 1) & 1, key0 = (kt + 1) * kBN;
      load_tile<D>(sK + nb * 2 * kBN * LD, kg + static_cast<int64_t>(key0) * a.kv_stride, a.kv_stride, kBN,
                   min(kBN, n_keys - key0));
      load_tile<D>(sV + nb * 2 * kBN * LD, vg + static_cast<int64_t>(key0) * a.kv_stride, a.kv_stride, kBN,
                   min(kBN, n_keys - key0));
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const __half* k_s = sK + buf * 2 * kBN * LD;
    const __half* v_s = sV + buf * 2 * kBN * LD;

    // S = Q K^T for 64 keys: 8 n-tiles of 8 keys per row block.
    float s[kMB][kBN / 8][4];
#pragma unroll
    for (int mb = 0; mb < kMB; ++mb)
#pragma unroll
      for (int nt = 0; nt < kBN / 8; ++nt)
#pragma unroll
        for (int j = 0; j < 4; ++j) s[mb][nt][j] = 0.0f;
    if (kMB == 1) {
#pragma unroll
      for (int nt = 0; nt < kBN / 8; ++nt)
#pragma unroll
        for (int ks = 0; ks < KS; ks += 2) {
          uint32_t bk[4];  // b0, b1 of k-step ks, then of ks + 1
          ldmatrix_x4(bk, k_s + (nt * 8 + lane % 8) * LD + ks * 16 + 8 * (lane / 8));
          mma_16816(s[0][nt], qf[kMB == 1 ? ks : 0], bk[0], bk[1]);
          mma_16816(s[0][nt], qf[kMB == 1 ? ks + 1 : 0], bk[2], bk[3]);
        }
    } else {
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {  // one k-step at a time: fewer live fragment registers
        uint32_t qa[kMB][4];
#pragma unroll
        for (int mb = 0; mb < kMB; ++mb) q_frag(qa[mb], mb, ks);
#pragma unroll
        for (int nt = 0; nt < kBN / 8; nt += 2) {
          uint32_t bk[4];  // b0, b1 of keys nt * 8.., then of (nt + 1) * 8..
          ldmatrix_x4(bk, k_s + (nt * 8 + lane % 8 + 8 * (lane / 16)) * LD + ks * 16 + 8 * ((lane / 8) % 2));
#pragma unroll
          for (int mb = 0; mb < kMB; ++mb) {
            mma_16816(s[mb][nt], qa[mb], bk[0], bk[1]);
            mma_16816(s[mb][nt + 1], qa[mb], bk[2], bk[3]);
          }
        }
      }
    }
    // Scale, causal mask (only tiles that reach past the first query of the tile need it), online softmax.
    const int key_base = kt * kBN;
    const bool need_mask = key_base + kBN - 1 > a.p0 + i0;
    uint32_t pf[kMB][kBN / 16][4];  // P as A fragments, one per 16-key step
#pragma unroll
    for (int mb = 0; mb < kMB; ++mb) {
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kBN / 8; ++nt)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          float x = s[mb][nt][j] * a.scale_log2;
          if (need_mask) {
            const int key = key_base + nt * 8 + 2 * t + (j & 1);
            if (key > qp[mb][j / 2]) x = -INFINITY;
          }
          s[mb][nt][j] = x;
          if (j < 2)
            mx0 = fmaxf(mx0, x);
          else
            mx1 = fmaxf(mx1, x);
        }
#pragma unroll
      for (int off = 1; off <= 2; off *= 2) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(kFull, mx0, off));
        mx1 = fmaxf(mx1, __shfl_xor_sync(kFull, mx1, off));
      }
      const float mn0 = fmaxf(m[mb][0], mx0), mn1 = fmaxf(m[mb][1], mx1);
      // A row can only be fully masked so far if it has no key yet (never: key 0 is in tile 0); guard anyway.
      const float mu0 = mn0 == -INFINITY ? 0.0f : mn0, mu1 = mn1 == -INFINITY ? 0.0f : mn1;
      const float al0 = exp2f(m[mb][0] - mu0), al1 = exp2f(m[mb][1] - mu1);
      m[mb][0] = mn0;
      m[mb][1] = mn1;
      float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
      for (int nt = 0; nt < kBN / 8; ++nt) {
        const float e0 = exp2f(s[mb][nt][0] - mu0), e1 = exp2f(s[mb][nt][1] - mu0);
        const float e2 = exp2f(s[mb][nt][2] - mu1), e3 = exp2f(s[mb][nt][3] - mu1);
        ps0 += e0 + e1;
        ps1 += e2 + e3;
        pf[mb][nt / 2][(nt % 2) * 2 + 0] = pack_half2(e0, e1);
        pf[mb][nt / 2][(nt % 2) * 2 + 1] = pack_half2(e2, e3);
      }
      l[mb][0] = l[mb][0] * al0 + ps0;
      l[mb][1] = l[mb][1] * al1 + ps1;
#pragma unroll
      for (int dt = 0; dt < ND; ++dt) {
        o[mb][dt][0] *= al0;
        o[mb][dt][1] *= al0;
        o[mb][dt][2] *= al1;
        o[mb][dt][3] *= al1;
      }
    }
    // O += P V: k-steps of 16 keys, output n-tiles of 8 dims in pairs; each V fragment feeds every row block.
#pragma unroll
    for (int j = 0; j < kBN / 16; ++j) {
#pragma unroll
      for (int dt = 0; dt < ND; dt += 2) {
        uint32_t bv[4];  // b0, b1 of dims dt*8.., then of (dt+1)*8..
        ldmatrix_x4_trans(bv,
                          v_s + (j * 16 + lane % 8 + 8 * ((lane / 8) % 2)) * LD + dt * 8 + 8 * (lane / 16));
#pragma unroll
        for (int mb = 0; mb < kMB; ++mb) {
          mma_16816(o[mb][dt], pf[mb][j], bv[0], bv[1]);
          mma_16816(o[mb][dt + 1], pf[mb][j], bv[2], bv[3]);
        }
      }
    }
    __syncthreads();  // the buffer just read is the next prefetch target
  }

  const int64_t out_row = static_cast<int64_t>(a.n_head) * D;
#pragma unroll
  for (int mb = 0; mb < kMB; ++mb) {
    float l0 = l[mb][0], l1 = l[mb][1];
#pragma unroll
    for (int off = 1; off <= 2; off *= 2) {
      l0 += __shfl_xor_sync(kFull, l0, off);
      l1 += __shfl_xor_sync(kFull, l1, off);
    }
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = (warp * kMB + mb) * 16 + g + 8 * half;
      if (r >= q_valid) continue;
      const float inv = half ? inv1 : inv0;
      const int64_t base = (static_cast<int64_t>(b) * a.n + i0 + r) * out_row + static_cast<int64_t>(h) * D;
#pragma unroll
      for (int dt = 0; dt < ND; ++dt) {
        const float x0 = o[mb][dt][2 * half] * inv, x1 = o[mb][dt][2 * half + 1] * inv;
        const int64_t off = base + dt * 8 + 2 * t;
        if (a.out_f16)
          *reinterpret_cast<__half2*>(static_cast<__half*>(a.out) + off) = __floats2half2_rn(x0, x1);
        else
          *reinterpret_cast<float2*>(static_cast<float*>(a.out) + off) = make_float2(x0, x1);
      }
    }
  }
}

// Fallback: one CTA per (query i, head h, sequence b); fp32 online softmax over tiles of 128 keys.
__global__ void __launch_bounds__(kThreads) prefill_attn_simple_kernel(PrefillArgs a, int d) {
  __shared__ float sq[256];
  __shared__ float sp[kThreads];
  __shared__ float sred[kThreads / 32];
  const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int kvh = h / (a.n_head / a.n_head_kv);
  const __half* qr = a.q + b * a.q_batch_stride + static_cast<int64_t>(i) * a.q_stride + h * d;
  const __half* kg = a.k + b * a.kv_batch_stride + kvh * d;
  const __half* vg = a.v + b * a.kv_batch_stride + kvh * d;
  for (int e = tid; e < d; e += kThreads) sq[e] = __half2float(qr[e]);
  __syncthreads();
  const int n_keys = a.p0 + i + 1;
  float m = -INFINITY, l = 0.0f;
  float acc0 = 0.0f, acc1 = 0.0f;  // output elements tid and tid + 128
  for (int t0 = 0; t0 < n_keys; t0 += kThreads) {
    const int j = t0 + tid;
    float s = -INFINITY;
    if (j < n_keys) {
      const __half* kr = kg + static_cast<int64_t>(j) * a.kv_stride;
      float dot = 0.0f;
      for (int e = 0; e < d; ++e) dot = fmaf(sq[e], __half2float(kr[e]), dot);
      s = dot * a.scale_log2;
    }
    float mx = s;
    for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, off));
    if (lane == 0) sred[warp] = mx;
    __syncthreads();
    float tmax = sred[0];
    for (int w = 1; w < kThreads / 32; ++w) tmax = fmaxf(tmax, sred[w]);
    const float mn = fmaxf(m, tmax);
    const float alpha = exp2f(m - mn);
    m = mn;
    const float p = j < n_keys ? exp2f(s - mn) : 0.0f;
    sp[tid] = p;
    __syncthreads();
    float psum = 0.0f;
    const int cnt = min(kThreads, n_keys - t0);
    acc0 *= alpha;
    acc1 *= alpha;
    for (int jj = 0; jj < cnt; ++jj) {
      const float pj = sp[jj];
      psum += pj;
      const __half* vr = vg + static_cast<int64_t>(t0 + jj) * a.kv_stride;
      if (tid < d) acc0 = fmaf(pj, __half2float(vr[tid]), acc0);
      if (tid + kThreads < d) acc1 = fmaf(pj, __half2float(vr[tid + kThreads]), acc1);
    }
    l = l * alpha + psum;
    __syncthreads();  // sp and sred are rewritten by the next tile
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  const int64_t base = (static_cast<int64_t>(b) * a.n + i) * a.n_head * d + static_cast<int64_t>(h) * d;
  for (int e = tid, k = 0; e < d; e += kThreads, ++k) {
    const float x = (k == 0 ? acc0 : acc1) * inv;
    if (a.out_f16)
      static_cast<__half*>(a.out)[base + e] = __float2half_rn(x);
    else
      static_cast<float*>(a.out)[base + e] = x;
  }
}

bool common_args_ok(int64_t batch, int64_t n, int64_t p0, int64_t n_head, int64_t n_head_kv, int64_t head_dim,
                    int64_t q_stride, int64_t kv_stride, DType out_dtype) {
  if (batch < 1 || n < 0 || p0 < 0 || n_head_kv < 1 || n_head < n_head_kv || n_head % n_head_kv != 0)
    return false;
  if (head_dim < 2 || head_dim % 2 != 0 || head_dim > 256) return false;
  if (q_stride < n_head * head_dim || kv_stride < n_head_kv * head_dim) return false;
  if (out_dtype != DType::F32 && out_dtype != DType::F16) return false;
  if (p0 + n > 0x7fffffff || batch > 65535 || n_head > 65535) return false;
  return true;
}

PrefillArgs make_args(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t n, int64_t p0,
                      int64_t n_head, int64_t n_head_kv, int64_t head_dim, int64_t q_stride,
                      int64_t q_batch_stride, int64_t kv_stride, int64_t kv_batch_stride, void* out,
                      DType out_dtype) {
  PrefillArgs a;
  a.q = reinterpret_cast<const __half*>(q);
  a.k = reinterpret_cast<const __half*>(k);
  a.v = reinterpret_cast<const __half*>(v);
  a.out = out;
  a.out_f16 = out_dtype == DType::F16;
  a.n = static_cast<int>(n);
  a.p0 = static_cast<int>(p0);
  a.n_head = static_cast<int>(n_head);
  a.n_head_kv = static_cast<int>(n_head_kv);
  a.q_stride = q_stride;
  a.q_batch_stride = q_batch_stride;
  a.kv_stride = kv_stride;
  a.kv_batch_stride = kv_batch_stride;
  a.scale_log2 = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim))) * kLog2e;
  return a;
}

// The shared-memory opt-in is set once per process per kernel (a function-local static): not again inside a
// CUDA-graph capture, where the runtime may refuse non-stream calls. (One device per process is assumed.)
template <int D, int kMB>
cudaError_t launch_mma(const PrefillArgs& a, dim3 grid, cudaStream_t stream) {
  constexpr size_t smem = prefill_smem<D, kMB>();
  static const cudaError_t attr = cudaFuncSetAttribute(
      prefill_attn_mma_kernel<D, kMB>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  FQ_CUDA_RETURN_IF_ERROR(attr);
  prefill_attn_mma_kernel<D, kMB><<<grid, kThreads, smem, stream>>>(a);
  return cudaSuccess;
}

}  // namespace

cudaError_t prefill_attention_simple(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t batch,
                                     int64_t n, int64_t p0, int64_t n_head, int64_t n_head_kv,
                                     int64_t head_dim, int64_t q_stride, int64_t q_batch_stride,
                                     int64_t kv_stride, int64_t kv_batch_stride, void* out, DType out_dtype,
                                     cudaStream_t stream) {
  if (!common_args_ok(batch, n, p0, n_head, n_head_kv, head_dim, q_stride, kv_stride, out_dtype))
    return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (n > 0x7fffffff) return cudaErrorInvalidValue;
  const PrefillArgs a = make_args(q, k, v, n, p0, n_head, n_head_kv, head_dim, q_stride, q_batch_stride,
                                  kv_stride, kv_batch_stride, out, out_dtype);
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(n_head), static_cast<unsigned>(batch));
  prefill_attn_simple_kernel<<<grid, kThreads, 0, stream>>>(a, static_cast<int>(head_dim));
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t prefill_attention(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t batch,
                              int64_t n, int64_t p0, int64_t n_head, int64_t n_head_kv, int64_t head_dim,
                              int64_t q_stride, int64_t q_batch_stride, int64_t kv_stride,
                              int64_t kv_batch_stride, void* out, DType out_dtype, cudaStream_t stream) {
  if (!common_args_ok(batch, n, p0, n_head, n_head_kv, head_dim, q_stride, kv_stride, out_dtype))
    return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  // The tensor-core kernel copies 16-byte chunks: rows and bases must be 16-byte aligned.
  const bool aligned = q_stride % 8 == 0 && kv_stride % 8 == 0 && q_batch_stride % 8 == 0 &&
                       kv_batch_stride % 8 == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(k) % 16 == 0 && reinterpret_cast<uintptr_t>(v) % 16 == 0;
  const bool out_aligned = reinterpret_cast<uintptr_t>(out) % 8 == 0;
  if (!aligned || !out_aligned || (head_dim != 64 && head_dim != 128))
    return prefill_attention_simple(q, k, v, batch, n, p0, n_head, n_head_kv, head_dim, q_stride,
                                    q_batch_stride, kv_stride, kv_batch_stride, out, out_dtype, stream);
  const PrefillArgs a = make_args(q, k, v, n, p0, n_head, n_head_kv, head_dim, q_stride, q_batch_stride,
                                  kv_stride, kv_batch_stride, out, out_dtype);
  // Heads fastest, then query tiles longest first: the first wave holds every head's longest tiles (the short
  // ones fill the tail), and the query heads of one KV head run side by side (their K/V tiles shared in L2).
  // 128-query tiles (two row blocks per warp) from 128 queries per sequence, else 64.
  const bool two = n >= 128;
  const int64_t bm = two ? prefill_bm<2>() : prefill_bm<1>();
  if ((n + bm - 1) / bm > 65535) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(n_head), static_cast<unsigned>((n + bm - 1) / bm),
                  static_cast<unsigned>(batch));
  const cudaError_t e =
      head_dim == 64 ? (two ? launch_mma<64, 2>(a, grid, stream) : launch_mma<64, 1>(a, grid, stream))
                     : (two ? launch_mma<128, 2>(a, grid, stream) : launch_mma<128, 1>(a, grid, stream));
  FQ_CUDA_RETURN_IF_ERROR(e);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

}  // namespace fq::cuda
