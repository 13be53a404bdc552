// Device helpers shared by the 4-bit quantization kernels. Each mirrors a function of src/ref/quant.cpp and
// must round exactly like it: IEEE fp32 operations written with explicit-rounding intrinsics so that nvcc
// cannot contract them into FMAs or replace the division by a reciprocal; round-half-to-even via
// __float2int_rn.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace fq::cuda::detail {

constexpr int kWarp = 32;

// Mirrors ref::sym_int4_scale.
__device__ __forceinline__ float sym_int4_scale(float rowmax, float rowmin, float clip_max, float clip_min) {
  float xmax = __fmul_rn(fmaxf(rowmax, 0.0f), clip_max);
  float xmin = __fmul_rn(fminf(rowmin, 0.0f), clip_min);
  float amax = fmaxf(fabsf(xmin), xmax);
  float scale = __fdiv_rn(amax, 7.0f);
  return scale == 0.0f ? 1.0f : scale;
}

// Mirrors ref::sym_int4_code: clamp(round_half_even(x / scale), -8, 7).
__device__ __forceinline__ int sym_int4_code(float x, float scale) {
  int q = __float2int_rn(__fdiv_rn(x, scale));
  return min(max(q, -8), 7);
}

// sym_int4_code bit for bit, cheaper: x * inv (inv = __frcp_rn(scale)) is within 1e-6 of x / scale wherever
// the code is not clamped (|x / scale| < 8.5, two roundings of 2^-24 each), so its nearest integer is the
// same unless it lies within 1e-5 of a half-integer; there (rarely) the exact division decides.
__device__ __forceinline__ int sym_int4_code_fast(float x, float scale, float inv) {
  const float r = __fmul_rn(x, inv);
  const float f = r - floorf(r);
  if (fabsf(f - 0.5f) < 1e-5f) return sym_int4_code(x, scale);
  return min(max(__float2int_rn(r), -8), 7);
}

// sym_int4_code bit for bit as a byte (the code in the low 8 bits, two's complement; the upper bits are not
// zero), on full-rate ALU operations only (sym_int4_code_fast's floorf and float-to-int conversions run on
// the quarter-rate conversion pipe, which bounded the prefill transform kernel): clamp first (the bounds are
// integers, so clamping and rounding commute), then round half to even by adding 1.5 * 2^23, whose sum's last
// mantissa bits are the code. As in sym_int4_code_fast, the exact division decides within 1e-5 of a
// half-integer; clamped values are integers and never land there, and next to a clamp bound both roundings
// clamp to the same code.
// m = r + 1.5 * 2^23: its low mantissa bits hold round_half_even(r) (|r| < 2^22), m - kRoundMagic is that
// integer as a float; dev collects |r - round(r)|.
constexpr float kRoundMagic = 12582912.0f;
__device__ __forceinline__ float round_magic_dev(float r, float& dev) {
  const float m = __fadd_rn(r, kRoundMagic);
  dev = fmaxf(dev, fabsf(__fsub_rn(r, __fsub_rn(m, kRoundMagic))));
  return m;
}
// sym_int4_byte_fast's fast rounding alone. `dev` becomes the max of itself and the rounded value's distance
// from its integer; where it exceeds kTieDev the exact division must decide (the byte is then not the code).
// For loops that store first and redo the rare ties after one check (several independent `dev` chains keep
// the max off the critical path).
constexpr float kTieDev = 0.5f - 1e-5f;
__device__ __forceinline__ uint32_t sym_int4_byte_fast_dev(float x, float inv, float& dev) {
  return __float_as_uint(round_magic_dev(fminf(fmaxf(__fmul_rn(x, inv), -8.0f), 7.0f), dev));
}

__device__ __forceinline__ uint32_t sym_int4_byte_fast(float x, float scale, float inv) {
  float dev = 0.0f;
  const uint32_t b = sym_int4_byte_fast_dev(x, inv, dev);
  return dev > kTieDev ? static_cast<uint32_t>(sym_int4_code(x, scale)) & 0xFFu : b;
}

// Mirrors the per-row parameters of ref::quantize_kv_asym_int4 (asymmetric 4-bit, integer zero point):
// from the row's max(., 0) / min(., 0) and the clipping factors to (scale, zero).
__device__ __forceinline__ void asym_int4_params(float rowmax, float rowmin, float clip_max, float clip_min,
                                                 float& scale, float& zero) {
  float xmax = __fmul_rn(rowmax, clip_max), xmin = __fmul_rn(rowmin, clip_min);
  if (xmax == xmin) {  // an all-zero row
    xmin = -1.0f;
    xmax = 1.0f;
  }
  scale = __fdiv_rn(__fsub_rn(xmax, xmin), 15.0f);
  zero = rintf(__fdiv_rn(-xmin, scale));
}

// One asymmetric code: clamp(round_half_even(x / scale) + zero, 0, 15).
__device__ __forceinline__ int asym_int4_code(float x, float scale, float zero) {
  return static_cast<int>(fminf(fmaxf(__fadd_rn(rintf(__fdiv_rn(x, scale)), zero), 0.0f), 15.0f));
}

// asym_int4_code without the IEEE division: r = x * inv (inv = 1 / scale rounded), clamped to [-16, 16]
// (every code of a quotient outside is 0 or 15 either way: zero is in [0, 15]), rounded by the magic-number
// addition. r is within ~2 ulp of x / scale, so the codes differ only where r lies next to a half-integer:
// dev collects |r - round(r)| and the caller redoes its values exactly where it exceeds kTieDev.
__device__ __forceinline__ int asym_int4_code_fast_dev(float x, float inv, float zero, float& dev) {
  const float r = fminf(fmaxf(__fmul_rn(x, inv), -16.0f), 16.0f);
  const float q = __fsub_rn(round_magic_dev(r, dev), kRoundMagic);
  return static_cast<int>(fminf(fmaxf(__fadd_rn(q, zero), 0.0f), 15.0f));
}

__device__ __forceinline__ uint8_t pack2(int lo, int hi) {
  return static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
}

__device__ __forceinline__ void warp_minmax(float& vmax, float& vmin) {
  for (int off = kWarp / 2; off > 0; off /= 2) {
    vmax = fmaxf(vmax, __shfl_xor_sync(0xffffffffu, vmax, off));
    vmin = fminf(vmin, __shfl_xor_sync(0xffffffffu, vmin, off));
  }
}

// Block-wide max and min (max/min are exact, so the reduction order does not matter). red: 2*32 floats of
// shared memory. Every thread of the block must call it; all get the result.
__device__ __forceinline__ void block_minmax(float& vmax, float& vmin, float* red) {
  warp_minmax(vmax, vmin);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int n_warps = (blockDim.x + kWarp - 1) / kWarp;
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) {
    red[warp] = vmax;
    red[kWarp + warp] = vmin;
  }
  __syncthreads();
  vmax = lane < n_warps ? red[lane] : 0.0f;  // 0 is neutral: the definition takes max(., 0) / min(., 0)
  vmin = lane < n_warps ? red[kWarp + lane] : 0.0f;
  warp_minmax(vmax, vmin);
}

// The block quantizes the row y[0..n) (any memory space) with `scale` and writes n/2 packed bytes to out.
__device__ __forceinline__ void store_sym_int4_row(const float* y, int64_t n, float scale, uint8_t* out) {
  for (int64_t j = threadIdx.x; j < n / 2; j += blockDim.x)
    out[j] = pack2(sym_int4_code(y[2 * j], scale), sym_int4_code(y[2 * j + 1], scale));
}

// The whole per-token symmetric int4 quantizer for one row: block min/max, the clipped scale, the packed
// codes (n/2 bytes to out); thread 0 stores the scale. Every thread of the block must call it.
__device__ __forceinline__ void quantize_row_sym_int4(const float* y, int64_t n, float clip_max,
                                                      float clip_min, float* red, uint8_t* out,
                                                      float* scale_out) {
  float vmax = 0.0f, vmin = 0.0f;
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
    vmax = fmaxf(vmax, y[c]);
    vmin = fminf(vmin, y[c]);
  }
  block_minmax(vmax, vmin, red);
  const float scale = sym_int4_scale(vmax, vmin, clip_max, clip_min);
  store_sym_int4_row(y, n, scale, out);
  if (threadIdx.x == 0) *scale_out = scale;
}

}  // namespace fq::cuda::detail
