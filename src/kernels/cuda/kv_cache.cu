// KV4 cache append: quantize new K and V rows (asymmetric 4-bit per (token, head), exactly as
// ref::quantize_kv_asym_int4) straight into the static cache at their positions.
#include <cuda_fp16.h>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/kv4_store.cuh"

namespace fq::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ float to_f32(float x) {
  return x;
}
__device__ __forceinline__ float to_f32(__half x) {
  return __half2float(x);
}

// The warp's (sequence, token, kv head) row: its input offset and its cache cell; cell -1 past the rows or
// outside the context (which sets the overflow flag).
struct RowAt {
  int64_t x = 0, cell = -1;
};
__device__ __forceinline__ RowAt row_at(const Kv4Layer& c, int64_t n_rows, int64_t n_tok, int64_t x_stride,
                                        int64_t slot0, int64_t pos0, const int32_t* d_pos,
                                        int32_t* d_overflow) {
  RowAt a;
  // blockIdx.z: the sequence b; x: warps over its n_tok * H rows (fewer than 2^31: 32-bit index math).
  const unsigned r = blockIdx.x * kWarpsPerBlock + threadIdx.x / detail::kWarp, H = c.n_head_kv;
  if (r >= static_cast<uint64_t>(n_rows)) return a;
  const int64_t h = r % H, t = r / H, b = blockIdx.z;
  const int64_t pos = (d_pos ? static_cast<int64_t>(d_pos[b]) : pos0) + t;
  if (pos < 0 || pos >= c.max_ctx) {
    if (threadIdx.x % detail::kWarp == 0 && d_overflow) *d_overflow = 1;
    return a;
  }
  a.x = (b * n_tok + t) * x_stride + h * c.head_dim;
  a.cell = ((slot0 + b) * c.max_ctx + pos) * H + h;
  return a;
}

// One warp per (sequence, token, kv head) row; blockIdx.y = 0 quantizes K, 1 quantizes V.
template <typename T>
__global__ void kv4_append_kernel(Kv4Layer c, const T* __restrict__ k, const T* __restrict__ v,
                                  int64_t n_rows, int64_t n_tok, int64_t x_stride, int64_t slot0,
                                  int64_t pos0, const int32_t* __restrict__ d_pos, int32_t* d_overflow,
                                  Kv4Clip clip) {
  const RowAt a = row_at(c, n_rows, n_tok, x_stride, slot0, pos0, d_pos, d_overflow);
  if (a.cell < 0) return;  // whole warps leave together
  const bool is_v = blockIdx.y == 1;
  const T* row = (is_v ? v : k) + a.x;
  detail::kv4_store_row(c, is_v, a.cell, clip, [&](int64_t i) { return to_f32(row[i]); });
}

// fp16 rows of D = 64, 128 or 256: each lane loads its V = D / 32 consecutive values once (one 4-, 8- or
// 16-byte load), keeps them for the codes and stores V / 2 code bytes at once; the generic kernel above reads
// every value twice through 2-byte loads and stores single bytes (per 2048-token Llama-3-8B prefill 0.70 ms,
// this one 0.52). The codes come from a multiplication by the rounded reciprocal instead of an IEEE division
// per value, with an exact redo where a value lies next to a half-integer (asym_int4_code_fast_dev): the same
// codes, scales and zeros.
template <int D>
__global__ void kv4_append_f16_kernel(Kv4Layer c, const __half* __restrict__ k, const __half* __restrict__ v,
                                      int64_t n_rows, int64_t n_tok, int64_t x_stride, int64_t slot0,
                                      int64_t pos0, const int32_t* __restrict__ d_pos, int32_t* d_overflow,
                                      Kv4Clip clip) {
  constexpr int V = D / 32;
  struct alignas(2 * V) Halves {
    __half h[V];
  };
  struct alignas(V / 2) Codes {
    uint8_t b[V / 2];
  };
  const int lane = threadIdx.x % detail::kWarp;
  const RowAt a = row_at(c, n_rows, n_tok, x_stride, slot0, pos0, d_pos, d_overflow);
  if (a.cell < 0) return;  // whole warps leave together
  const bool is_v = blockIdx.y == 1;
  const Halves x = reinterpret_cast<const Halves*>((is_v ? v : k) + a.x)[lane];
  float f[V];
  float vmax = 0.0f, vmin = 0.0f;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    f[i] = __half2float(x.h[i]);
    vmax = fmaxf(vmax, f[i]);
    vmin = fminf(vmin, f[i]);
  }
  detail::warp_minmax(vmax, vmin);
  float sc, z;
  detail::asym_int4_params(vmax, vmin, is_v ? clip.v_max : clip.k_max, is_v ? clip.v_min : clip.k_min, sc, z);
  const int64_t cell = a.cell;
  // The codes without divisions; a lane whose values come next to a half-integer redoes them exactly.
  const float inv = __frcp_rn(sc);
  float dev = 0.0f;
  Codes o;
#pragma unroll
  for (int j = 0; j < V / 2; ++j)
    o.b[j] = static_cast<uint8_t>(detail::asym_int4_code_fast_dev(f[2 * j], inv, z, dev) |
                                  (detail::asym_int4_code_fast_dev(f[2 * j + 1], inv, z, dev) << 4));
  if (dev > detail::kTieDev)
#pragma unroll
    for (int j = 0; j < V / 2; ++j)
      o.b[j] = static_cast<uint8_t>(detail::asym_int4_code(f[2 * j], sc, z) |
                                    (detail::asym_int4_code(f[2 * j + 1], sc, z) << 4));
  reinterpret_cast<Codes*>((is_v ? c.v : c.k) + cell * (D / 2))[lane] = o;
  if (lane == 0) {
    (is_v ? c.v_scale : c.k_scale)[cell] = sc;
    (is_v ? c.v_zero : c.k_zero)[cell] = z;
  }
}

}  // namespace

cudaError_t kv4_append(const Kv4Layer& cache, const void* k, const void* v, DType dtype, int64_t n_seq,
                       int64_t n_tok, int64_t x_stride, int64_t slot0, int64_t pos0, const int32_t* d_pos,
                       int32_t* d_overflow, const Kv4Clip& clip, cudaStream_t stream) {
  const Kv4Layer& c = cache;
  if (dtype != DType::F32 && dtype != DType::F16) return cudaErrorInvalidValue;
  if (c.n_slots < 1 || c.max_ctx < 1 || c.n_head_kv < 1 || c.head_dim < 2 || c.head_dim % 2 != 0)
    return cudaErrorInvalidValue;
  if (n_seq < 0 || n_tok < 0 || x_stride < c.n_head_kv * c.head_dim || slot0 < 0 || slot0 + n_seq > c.n_slots)
    return cudaErrorInvalidValue;
  // Host-known positions are checked here; device positions need the overflow flag.
  if (d_pos ? d_overflow == nullptr : (pos0 < 0 || pos0 + n_tok > c.max_ctx)) return cudaErrorInvalidValue;
  // n_rows: the rows of one sequence (grid z = the sequences).
  const int64_t n_rows = n_tok * c.n_head_kv;
  if (n_rows == 0 || n_seq == 0) return cudaSuccess;
  if (n_rows > 0x7fffffff || n_seq > 65535) return cudaErrorInvalidValue;
  const int64_t blocks = (n_rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const dim3 grid(static_cast<unsigned>(blocks), 2, static_cast<unsigned>(n_seq));
  const auto al = [](const void* q, uintptr_t a) { return reinterpret_cast<uintptr_t>(q) % a == 0; };
  const int64_t d = c.head_dim, vb = d / 16;  // a lane's bytes of fp16 input
  if (dtype == DType::F16 && (d == 64 || d == 128 || d == 256) && x_stride % (d / 32) == 0 && al(k, vb) &&
      al(v, vb) && al(c.k, vb / 4) && al(c.v, vb / 4)) {
    const auto kernel = d == 64    ? kv4_append_f16_kernel<64>
                        : d == 128 ? kv4_append_f16_kernel<128>
                                   : kv4_append_f16_kernel<256>;
    kernel<<<grid, kWarpsPerBlock * detail::kWarp, 0, stream>>>(
        c, static_cast<const __half*>(k), static_cast<const __half*>(v), n_rows, n_tok, x_stride, slot0, pos0,
        d_pos, d_overflow, clip);
    FQ_CUDA_RETURN_LAUNCH_ERROR();
    return cudaSuccess;
  }
  if (dtype == DType::F32) {
    kv4_append_kernel<float><<<grid, kWarpsPerBlock * detail::kWarp, 0, stream>>>(
        c, static_cast<const float*>(k), static_cast<const float*>(v), n_rows, n_tok, x_stride, slot0, pos0,
        d_pos, d_overflow, clip);
  } else {
    kv4_append_kernel<__half><<<grid, kWarpsPerBlock * detail::kWarp, 0, stream>>>(
        c, static_cast<const __half*>(k), static_cast<const __half*>(v), n_rows, n_tok, x_stride, slot0, pos0,
        d_pos, d_overflow, clip);
  }
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

}  // namespace fq::cuda
