// RMSNorm, RoPE, SwiGLU, embedding gather and greedy argmax (layer_ops.h). Each mirrors its fp32 CPU
// reference operation by operation (explicit-rounding intrinsics, so that nvcc cannot contract products into
// FMAs); what differs is stated per kernel.
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/layer_ops.h"
#include "kernels/cuda/reduce.cuh"

namespace fq::cuda {
namespace {

__device__ __forceinline__ float load_act(const void* p, bool f16, int64_t i) {
  return f16 ? __half2float(static_cast<const __half*>(p)[i]) : static_cast<const float*>(p)[i];
}
__device__ __forceinline__ void store_act(void* p, bool f16, int64_t i, float x) {
  if (f16)
    static_cast<__half*>(p)[i] = __float2half_rn(x);
  else
    static_cast<float*>(p)[i] = x;
}

bool is_act(DType t) {
  return t == DType::F32 || t == DType::F16;
}

// ---- RMSNorm: one block per row. The sum of squares is fp32 (tree order); the reference sums in double, so
// the mean can differ in its last bits; everything after it is the reference's operations.
constexpr int kNormThreads = 256;

__global__ void __launch_bounds__(kNormThreads)
    rmsnorm_kernel(const void* x, bool x16, int64_t x_stride, const float* __restrict__ w, int64_t dim,
                   float eps, void* y, bool y16) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = load_act(x, x16, r * x_stride + i);
    ss = fmaf(v, v, ss);
  }
  ss = detail::block_reduce(ss, red, detail::SumOp());
  const float mean = __fdiv_rn(ss, static_cast<float>(dim));
  const float inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean, eps)));
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = load_act(x, x16, r * x_stride + i);
    store_act(y, y16, r * dim + i, __fmul_rn(w[i], __fmul_rn(v, inv)));
  }
}

// The same for fp32 rows (dim % 4 == 0, x_stride % 4 == 0, 16-byte aligned x; y 8-byte aligned if fp16)
// of up to kNormThreads * 4 * kVec elements: each thread loads its float4 chunks t, t + 256, ... at once
// (all in flight) and keeps them in registers for the second pass (the scalar kernel above took 2x the
// memory time of a 2048 x 4096 prefill row set: one dependent 4-byte load per iteration). Only the
// summation order differs from it (per thread 4 consecutive elements per chunk).
constexpr int kVec = 8;
template <bool kY16>
__global__ void __launch_bounds__(kNormThreads)
    rmsnorm_vec_kernel(const float* __restrict__ x, int64_t x_stride, const float* __restrict__ w, int dim,
                       float eps, void* y) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  const float4* xr = reinterpret_cast<const float4*>(x + r * x_stride);
  const int n4 = dim / 4;
  float4 v[kVec];
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int c = static_cast<int>(threadIdx.x) + k * kNormThreads;
    v[k] = c < n4 ? xr[c] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    ss = fmaf(v[k].x, v[k].x, ss);
    ss = fmaf(v[k].y, v[k].y, ss);
    ss = fmaf(v[k].z, v[k].z, ss);
    ss = fmaf(v[k].w, v[k].w, ss);
  }
  ss = detail::block_reduce(ss, red, detail::SumOp());
  const float mean = __fdiv_rn(ss, static_cast<float>(dim));
  const float inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean, eps)));
  const float4* w4 = reinterpret_cast<const float4*>(w);
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int c = static_cast<int>(threadIdx.x) + k * kNormThreads;
    if (c >= n4) break;
    const float4 wc = w4[c];
    const float o0 = __fmul_rn(wc.x, __fmul_rn(v[k].x, inv)), o1 = __fmul_rn(wc.y, __fmul_rn(v[k].y, inv)),
                o2 = __fmul_rn(wc.z, __fmul_rn(v[k].z, inv)), o3 = __fmul_rn(wc.w, __fmul_rn(v[k].w, inv));
    if (kY16) {
      const __half2 lo = __floats2half2_rn(o0, o1), hi = __floats2half2_rn(o2, o3);
      uint2 u;
      u.x = *reinterpret_cast<const uint32_t*>(&lo);
      u.y = *reinterpret_cast<const uint32_t*>(&hi);
      reinterpret_cast<uint2*>(static_cast<__half*>(y) + r * dim)[c] = u;
    } else {
      reinterpret_cast<float4*>(static_cast<float*>(y) + r * dim)[c] = make_float4(o0, o1, o2, o3);
    }
  }
}

// ---- RoPE: one block per token; thread pairs (d, d + half) of every head of q and k. A thread's pairs share
// their frequency index while blockDim is a multiple of half (the usual case), so sincosf runs once per
// distinct index.
__global__ void rope_kernel(void* q, int64_t q_stride, int n_hq, void* k, int64_t k_stride, int n_hk,
                            bool f16, int head_dim, const int32_t* __restrict__ pos,
                            const float* __restrict__ inv_freq) {
  const int64_t t = blockIdx.x;
  const int half = head_dim / 2;
  const float p = static_cast<float>(pos[t]);
  const int n_pairs = (n_hq + n_hk) * half;
  int last = -1;
  float s = 0.0f, c = 1.0f;
  for (int j = threadIdx.x; j < n_pairs; j += blockDim.x) {
    const int head = j / half, i = j - head * half;
    const bool is_q = head < n_hq;
    void* base = is_q ? q : k;
    const int64_t off =
        t * (is_q ? q_stride : k_stride) + static_cast<int64_t>(is_q ? head : head - n_hq) * head_dim;
    if (i != last) {
      sincosf(__fmul_rn(inv_freq[i], p), &s, &c);
      last = i;
    }
    const float a = load_act(base, f16, off + i), b = load_act(base, f16, off + i + half);
    store_act(base, f16, off + i, __fadd_rn(__fmul_rn(a, c), __fmul_rn(-b, s)));
    store_act(base, f16, off + i + half, __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
  }
}

// ---- SwiGLU: grid-stride over [n, ff]; expf (<= 2 ulp) where the reference uses std::exp.
__global__ void swiglu_kernel(const void* gate, const void* up, bool in16, int64_t gs, int64_t us, int64_t n,
                              int64_t ff, void* out, bool out16) {
  const int64_t total = n * ff;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / ff, c = i % ff;
    const float g = load_act(gate, in16, r * gs + c), u = load_act(up, in16, r * us + c);
    const float silu = __fdiv_rn(g, __fadd_rn(1.0f, expf(-g)));
    store_act(out, out16, i, __fmul_rn(silu, u));
  }
}

// ---- Embedding: one block per token.
__global__ void embedding_kernel(const void* table, bool t16, int64_t vocab, int64_t dim,
                                 const int32_t* __restrict__ ids, void* out, bool o16, int32_t* d_error) {
  const int64_t r = blockIdx.x;
  const int64_t id = ids[r];
  const bool ok = id >= 0 && id < vocab;
  if (!ok && threadIdx.x == 0 && d_error) *d_error = 1;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
    store_act(out, o16, r * dim + i, ok ? load_act(table, t16, id * dim + i) : 0.0f);
}

// ---- Argmax: one block per row; (key, ~index) packed in 64 bits so that one max picks the largest value
// and, among equal values, the lowest index.
constexpr int kArgmaxThreads = 1024;

__global__ void __launch_bounds__(kArgmaxThreads)
    argmax_kernel(const void* logits, bool f16, int64_t vocab, int64_t stride, int32_t* out) {
  __shared__ unsigned long long red[32];
  const int64_t r = blockIdx.x;
  unsigned long long best = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const uint32_t key = detail::order_key(load_act(logits, f16, r * stride + i));
    const unsigned long long v =
        (static_cast<unsigned long long>(key) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(i));
    best = v > best ? v : best;
  }
  best = detail::block_reduce(best, red, detail::MaxOp());
  if (threadIdx.x == 0)
    out[r] = static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(best & 0xFFFFFFFFu));
}

unsigned grid_for(int64_t total, int threads) {
  const int64_t blocks = (total + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
}

}  // namespace

cudaError_t rmsnorm(const void* x, DType x_dtype, int64_t x_stride, const float* weight, int64_t n,
                    int64_t dim, float eps, void* y, DType y_dtype, cudaStream_t stream) {
  if (!is_act(x_dtype) || !is_act(y_dtype) || n < 0 || dim < 1 || x_stride < dim || n > 0x7fffffff)
    return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const auto aligned = [](const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; };
  if (x_dtype == DType::F32 && dim % 4 == 0 && x_stride % 4 == 0 && dim <= 4 * kNormThreads * kVec &&
      aligned(x, 16) && aligned(weight, 16) && aligned(y, y_dtype == DType::F16 ? 8 : 16)) {
    const auto kernel = y_dtype == DType::F16 ? rmsnorm_vec_kernel<true> : rmsnorm_vec_kernel<false>;
    kernel<<<static_cast<unsigned>(n), kNormThreads, 0, stream>>>(static_cast<const float*>(x), x_stride,
                                                                  weight, static_cast<int>(dim), eps, y);
    FQ_CUDA_RETURN_LAUNCH_ERROR();
    return cudaSuccess;
  }
  rmsnorm_kernel<<<static_cast<unsigned>(n), kNormThreads, 0, stream>>>(
      x, x_dtype == DType::F16, x_stride, weight, dim, eps, y, y_dtype == DType::F16);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t rope(void* q, int64_t q_stride, int64_t n_head_q, void* k, int64_t k_stride, int64_t n_head_k,
                 DType dtype, int64_t n_tok, int64_t head_dim, const int32_t* d_pos, const float* inv_freq,
                 cudaStream_t stream) {
  if (k == nullptr) n_head_k = 0;
  if (!is_act(dtype) || n_tok < 0 || head_dim < 2 || head_dim % 2 != 0 || n_head_q < 0 || n_head_k < 0 ||
      n_head_q + n_head_k > 65536 || q_stride < n_head_q * head_dim ||
      (k && k_stride < n_head_k * head_dim) || n_tok > 0x7fffffff)
    return cudaErrorInvalidValue;
  if (n_tok == 0 || n_head_q + n_head_k == 0) return cudaSuccess;
  const int64_t pairs = (n_head_q + n_head_k) * head_dim / 2;
  const int threads = pairs >= 256 ? 256 : static_cast<int>((pairs + 31) / 32 * 32);
  rope_kernel<<<static_cast<unsigned>(n_tok), threads, 0, stream>>>(
      q, q_stride, static_cast<int>(n_head_q), k, k_stride, static_cast<int>(n_head_k), dtype == DType::F16,
      static_cast<int>(head_dim), d_pos, inv_freq);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t swiglu(const void* gate, const void* up, DType in_dtype, int64_t gate_stride, int64_t up_stride,
                   int64_t n, int64_t ff, void* out, DType out_dtype, cudaStream_t stream) {
  if (!is_act(in_dtype) || !is_act(out_dtype) || n < 0 || ff < 1 || gate_stride < ff || up_stride < ff)
    return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  swiglu_kernel<<<grid_for(n * ff, 256), 256, 0, stream>>>(gate, up, in_dtype == DType::F16, gate_stride,
                                                           up_stride, n, ff, out, out_dtype == DType::F16);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t embedding(const void* table, DType table_dtype, int64_t vocab, int64_t dim, const int32_t* ids,
                      int64_t n, void* out, DType out_dtype, int32_t* d_error, cudaStream_t stream) {
  if (!is_act(table_dtype) || !is_act(out_dtype) || vocab < 1 || dim < 1 || n < 0 || n > 0x7fffffff)
    return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  embedding_kernel<<<static_cast<unsigned>(n), 256, 0, stream>>>(table, table_dtype == DType::F16, vocab, dim,
                                                                 ids, out, out_dtype == DType::F16, d_error);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t argmax(const void* logits, DType dtype, int64_t rows, int64_t vocab, int64_t stride, int32_t* out,
                   cudaStream_t stream) {
  if (!is_act(dtype) || rows < 0 || vocab < 1 || vocab > 0x7fffffff || stride < vocab || rows > 0x7fffffff)
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  argmax_kernel<<<static_cast<unsigned>(rows), kArgmaxThreads, 0, stream>>>(logits, dtype == DType::F16,
                                                                            vocab, stride, out);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

}  // namespace fq::cuda
