// W4A4 prefill GEMM on FP8 tensor cores (qgemm_fp8.h): the e4m3 conversions and the cuBLASLt plans.
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/qgemm_fp8.h"
#include "kernels/cuda/quant_common.cuh"

namespace fq::cuda {
namespace {

// The e4m3 byte of an integer v in [-8, 8]: |v| = 1.m * 2^e with e = floor(log2 |v|) <= 3, exponent bias 7,
// three mantissa bits (exact: |v| has at most 4 significant bits).
__host__ __device__ __forceinline__ uint32_t e4m3_of_int(int v) {
  const uint32_t a = static_cast<uint32_t>(v < 0 ? -v : v);
  if (a == 0) return 0u;
  const uint32_t e = a >= 8 ? 3u : a >= 4 ? 2u : a >= 2 ? 1u : 0u;
  const uint32_t code = ((e + 7u) << 3) | ((a << (3u - e)) & 7u);
  return v < 0 ? code | 0x80u : code;
}

// One nibble (two's complement int4) -> its e4m3 byte.
__device__ __forceinline__ uint32_t e4m3_of_nibble(uint32_t n) {
  return e4m3_of_int(static_cast<int>(n ^ 8u) - 8);
}

// quantize_sym_int4_fp8_multi: one block per row, the row held in registers as float4 chunks (kMaxChunks per
// thread), one min/max for all copies.
constexpr int kMaxChunks = 8;

__global__ void quant_fp8_kernel(const float* __restrict__ x, int64_t chunks, int64_t x_stride, int64_t rows,
                                 SymClips clips, uint8_t* __restrict__ out, float* __restrict__ scales,
                                 int64_t scale_stride) {
  __shared__ float red[2 * detail::kWarp];
  const int64_t r = blockIdx.x;
  const float4* xr = reinterpret_cast<const float4*>(x + r * x_stride);
  float4 v[kMaxChunks];
  float vmax = 0.0f, vmin = 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxChunks; ++i) {
    const int64_t j = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    v[i] = j < chunks ? xr[j] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    vmax = fmaxf(vmax, fmaxf(fmaxf(v[i].x, v[i].y), fmaxf(v[i].z, v[i].w)));
    vmin = fminf(vmin, fminf(fminf(v[i].x, v[i].y), fminf(v[i].z, v[i].w)));
  }
  detail::block_minmax(vmax, vmin, red);
  for (int c = 0; c < clips.n; ++c) {
    const float scale = detail::sym_int4_scale(vmax, vmin, clips.max[c], clips.min[c]), inv = __frcp_rn(scale);
    uint32_t* o = reinterpret_cast<uint32_t*>(out + (c * rows + r) * (chunks * 4));
    const auto code = [&](float f) { return e4m3_of_int(detail::sym_int4_code_fast(f, scale, inv)); };
#pragma unroll
    for (int i = 0; i < kMaxChunks; ++i) {
      const int64_t j = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
      if (j < chunks) o[j] = code(v[i].x) | (code(v[i].y) << 8) | (code(v[i].z) << 16) | (code(v[i].w) << 24);
    }
    if (threadIdx.x == 0) scales[c * scale_stride + r] = scale;
  }
}

// unpack_int4_fp8: one thread per 4 packed bytes (8 values), or per byte when the size is not a multiple of 4.
__global__ void unpack_fp8_x4_kernel(const uint32_t* __restrict__ qw, int64_t words, uint2* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < words; i += stride) {
    const uint32_t w = qw[i];
    uint2 o;
    o.x = e4m3_of_nibble(w & 0xFu) | (e4m3_of_nibble((w >> 4) & 0xFu) << 8) |
          (e4m3_of_nibble((w >> 8) & 0xFu) << 16) | (e4m3_of_nibble((w >> 12) & 0xFu) << 24);
    o.y = e4m3_of_nibble((w >> 16) & 0xFu) | (e4m3_of_nibble((w >> 20) & 0xFu) << 8) |
          (e4m3_of_nibble((w >> 24) & 0xFu) << 16) | (e4m3_of_nibble(w >> 28) << 24);
    out[i] = o;
  }
}

__global__ void unpack_fp8_kernel(const uint8_t* __restrict__ qw, int64_t bytes, uint16_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < bytes; i += stride)
    out[i] = static_cast<uint16_t>(e4m3_of_nibble(qw[i] & 0xFu) | (e4m3_of_nibble(qw[i] >> 4) << 8));
}

unsigned grid_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 8192 ? 8192 : b));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

uint8_t int4_to_e4m3(int v) { return static_cast<uint8_t>(e4m3_of_int(std::clamp(v, -8, 8))); }

cudaError_t quantize_sym_int4_fp8_multi(const float* x, int64_t rows, int64_t cols, int64_t x_stride,
                                        const SymClips& clips, uint8_t* out, float* scales, int64_t scale_stride,
                                        cudaStream_t stream) {
  constexpr int64_t kMaxThreads = 1024;
  if (rows < 0 || rows > 0x7FFFFFFF || cols < 4 || cols % 4 != 0 || cols > kMaxThreads * kMaxChunks * 4 ||
      x_stride < cols || x_stride % 4 != 0 || clips.n < 1 || clips.n > 3 || scale_stride < rows ||
      (rows > 0 && (!x || !out || !scales || !aligned16(x) || reinterpret_cast<uintptr_t>(out) % 4 != 0)))
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  // About four chunks (16 values) per thread: enough loads in flight per thread, few idle threads.
  const int64_t chunks = cols / 4;
  const int threads = static_cast<int>(std::clamp<int64_t>((chunks / 4 + 31) / 32 * 32, 64, kMaxThreads));
  if (static_cast<int64_t>(threads) * kMaxChunks < chunks) return cudaErrorInvalidValue;
  quant_fp8_kernel<<<static_cast<unsigned>(rows), threads, 0, stream>>>(x, chunks, x_stride, rows, clips, out,
                                                                          scales, scale_stride);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

cudaError_t unpack_int4_fp8(const uint8_t* qw, int64_t N, int64_t K, uint8_t* out, cudaStream_t stream) {
  if (N < 0 || K < 2 || K % 2 != 0 || (N > 0 && (!qw || !out)) || N > (int64_t{1} << 40) / K)
    return cudaErrorInvalidValue;
  const int64_t bytes = N * K / 2;
  if (bytes == 0) return cudaSuccess;
  if (bytes % 4 == 0 && reinterpret_cast<uintptr_t>(qw) % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0) {
    unpack_fp8_x4_kernel<<<grid_for(bytes / 4, 256), 256, 0, stream>>>(reinterpret_cast<const uint32_t*>(qw),
                                                                        bytes / 4, reinterpret_cast<uint2*>(out));
  } else {
    if (reinterpret_cast<uintptr_t>(out) % 2 != 0) return cudaErrorInvalidValue;
    unpack_fp8_kernel<<<grid_for(bytes, 256), 256, 0, stream>>>(qw, bytes, reinterpret_cast<uint16_t*>(out));
  }
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

// ---- cuBLASLt ---------------------------------------------------------------------------------------------------

void QgemmFp8::destroy(Plan& p) {
  if (p.a) cublasLtMatrixLayoutDestroy(p.a);
  if (p.b) cublasLtMatrixLayoutDestroy(p.b);
  if (p.c) cublasLtMatrixLayoutDestroy(p.c);
  if (p.op) cublasLtMatmulDescDestroy(p.op);
  p = Plan{};
}

QgemmFp8::~QgemmFp8() {
  for (auto& kv : plans_) destroy(kv.second);
}

QgemmFp8::Plan* QgemmFp8::plan(int64_t M, int64_t N, int64_t K, int64_t ldy, bool y_f32) {
  if (M < 1 || N < 1 || K < 16 || K % 16 != 0 || ldy < N || ldy % 16 != 0 || !lt_) return nullptr;
  const auto key = std::make_tuple(M, N, K, ldy, y_f32);
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second.ok ? &it->second : nullptr;
  Plan& p = plans_[key];
  // Row-major y[M, N] = x[M, K] w[N, K]^T as column-major y^T[N, M] = op_T(w)[N, K] x^T[K, M] ("TN", the only
  // FP8 layout): cuBLASLt's A is w (its per-row scale vector: sw, N values), B is x (sx, M values).
  bool ok = cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS;
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  const int32_t outer = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
  const int8_t fast_accum = 0;  // exact integer sums (qgemm_fp8.h)
  const auto set = [&](cublasLtMatmulDescAttributes_t a, const void* v, size_t n) {
    ok = ok && cublasLtMatmulDescSetAttribute(p.op, a, v, n) == CUBLAS_STATUS_SUCCESS;
  };
  set(CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
  set(CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
  set(CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &outer, sizeof outer);
  set(CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &outer, sizeof outer);
  set(CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast_accum, sizeof fast_accum);
  const auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
  ok = ok && cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8F_E4M3, u(K), u(N), K) == CUBLAS_STATUS_SUCCESS;
  ok = ok && cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8F_E4M3, u(K), u(M), K) == CUBLAS_STATUS_SUCCESS;
  ok = ok && cublasLtMatrixLayoutCreate(&p.c, y_f32 ? CUDA_R_32F : CUDA_R_16F, u(N), u(M), ldy) ==
                 CUBLAS_STATUS_SUCCESS;
  cublasLtMatmulPreference_t pref = nullptr;
  ok = ok && cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS;
  const size_t ws = ws_bytes_;
  ok = ok && cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws) ==
                 CUBLAS_STATUS_SUCCESS;
  cublasLtMatmulHeuristicResult_t res{};
  int n = 0;
  ok = ok && cublasLtMatmulAlgoGetHeuristic(lt_, p.op, p.a, p.b, p.c, p.c, pref, 1, &res, &n) ==
                 CUBLAS_STATUS_SUCCESS && n > 0;
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (!ok) {  // remembered as unsupported: the caller runs the mma.sync kernel instead
    destroy(p);
    return nullptr;
  }
  p.algo = res.algo;
  p.ok = true;
  return &p;
}

bool QgemmFp8::supported(int64_t M, int64_t N, int64_t K, int64_t ldy, bool y_f32) {
  return plan(M, N, K, ldy, y_f32) != nullptr;
}

cublasStatus_t QgemmFp8::run(const uint8_t* x8, const float* sx, const uint8_t* w8, const float* sw, void* y,
                             int64_t ldy, bool y_f32, bool residual, int64_t M, int64_t N, int64_t K,
                             cudaStream_t stream) {
  if (!x8 || !sx || !w8 || !sw || !y || (residual && !y_f32) || !aligned16(x8) || !aligned16(w8) ||
      !aligned16(y) || !aligned16(sx) || !aligned16(sw))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  Plan* p = plan(M, N, K, ldy, y_f32);
  if (!p) return CUBLAS_STATUS_NOT_SUPPORTED;
  // The scale vectors are per call (segment, layer): descriptor attributes read at launch.
  cublasStatus_t st = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sw, sizeof sw);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sx, sizeof sx);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  const float alpha = 1.0f, beta = residual ? 1.0f : 0.0f;
  return cublasLtMatmul(lt_, p->op, &alpha, w8, p->a, x8, p->b, &beta, y, p->c, y, p->c, &p->algo, ws_, ws_bytes_,
                        stream);
}

}  // namespace fq::cuda
