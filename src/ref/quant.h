// 4-bit quantization references (plain loops, fp32): int4 packing, symmetric per-token activation
// quantization with activation clipping (LAC), and asymmetric per-(token, head) KV-cache quantization. These
// are the oracles the CUDA kernels in src/kernels/cuda/quant.cu and kv_quant.cu must match bit for bit
// (docs/numerics.md, "Runtime 4-bit quantization").
//
// Numerics shared by every function here:
// - all arithmetic is fp32, one IEEE operation at a time (no fused multiply-add);
// - rounding is round-half-to-even (torch.round; std::nearbyint in the default rounding mode, rintf /
//   __float2int_rn on the GPU);
// - x / scale is a true IEEE division (never x * (1/scale)).
#pragma once
#include <cstdint>

namespace fq::ref {

// ---- int4 packing ----------------------------------------------------------------------------------------
// Packed layout: [rows, cols/2] uint8; element 2j of a row sits in the LOW nibble of byte j and element 2j+1
// in the HIGH nibble, each as a two's complement nibble (-8..7 -> 0x8..0x7). cols must be even (throws
// fq::Error). This is CUTLASS int4b_t order and the original's pack_i4.
void pack_int4(const int8_t* q, int64_t rows, int64_t cols, uint8_t* packed);
// Inverse of pack_int4: q [rows, cols] in -8..7.
void unpack_int4(const uint8_t* packed, int64_t rows, int64_t cols, int8_t* q);
// Unsigned variant for asymmetric codes 0..15 (plain nibbles, same order).
void pack_uint4(const uint8_t* q, int64_t rows, int64_t cols, uint8_t* packed);
void unpack_uint4(const uint8_t* packed, int64_t rows, int64_t cols, uint8_t* q);

// ---- symmetric per-token activation quantization (ActivationQuantizer, sym, 4 bits)
// ------------------------ For one row x[0..n):
//   xmax = max(max_i x_i, 0) * clip_max,  xmin = min(min_i x_i, 0) * clip_min   (clip_* = sigmoid(c_*)
//   values; pass 1.0 for no clipping) scale = max(|xmin|, xmax) / 7, or 1 when that is 0 q_i =
//   clamp(round_half_even(x_i / scale), -8, 7)
// Returns the scale and writes q[0..n).
float quantize_sym_int4_row(const float* x, int64_t n, float clip_max, float clip_min, int8_t* q);
// The scale alone (the first two lines above), for the fused transform kernels' shared contract.
float sym_int4_scale(float rowmax, float rowmin, float clip_max, float clip_min);
// One code: clamp(round_half_even(x / scale), -8, 7).
int sym_int4_code(float x, float scale);

// x [rows, cols] (row stride x_stride floats) -> packed [rows, cols/2] + scales [rows] (fp32). cols even.
void quantize_sym_int4(const float* x, int64_t rows, int64_t cols, int64_t x_stride, float clip_max,
                       float clip_min, uint8_t* packed, float* scales);
// packed [rows, cols/2] + scales [rows] -> x [rows, cols] = q * scale.
void dequantize_sym_int4(const uint8_t* packed, const float* scales, int64_t rows, int64_t cols, float* x);

// ---- asymmetric KV-cache quantization (ActivationQuantizer, asym, 4 bits), per (token, head) --------------
// For one row x[0..d) (one head of one token):
//   xmax = max(max_i x_i, 0) * clip_max,  xmin = min(min_i x_i, 0) * clip_min;  if xmax == xmin (== 0 only):
//   xmin = -1, xmax = 1
//   scale = (xmax - xmin) / 15,  zero = round_half_even(-xmin / scale)   (an integer in 0..15)
//   q_i = clamp(round_half_even(x_i / scale) + zero, 0, 15);  dequant x_i ~ (q_i - zero) * scale
// x: [n_tokens, n_head, head_dim] (token stride x_stride floats, heads contiguous) -> packed [n_tokens,
// n_head, head_dim/2] uint8 (plain nibbles, low = even), scale and zero [n_tokens, n_head] fp32. head_dim
// even.
void quantize_kv_asym_int4(const float* x, int64_t n_tokens, int64_t n_head, int64_t head_dim,
                           int64_t x_stride, float clip_max, float clip_min, uint8_t* packed, float* scale,
                           float* zero);
void dequantize_kv_asym_int4(const uint8_t* packed, const float* scale, const float* zero, int64_t n_tokens,
                             int64_t n_head, int64_t head_dim, float* x);

}  // namespace fq::ref
