// n-bit generalisations of the 4-bit quantizers of ref/quant.h, for the artifact runtime (4 and 8 bits; the
// recipes allow nothing else). Same numerics as quant.h: fp32, one IEEE operation at a time, true division,
// round-half-to-even. For bits == 4 every function here equals its quant.h twin bit for bit (tested).
//
// Symmetric (activations, per token):  qmax = 2^(b-1) - 1
//   xmax = max(max_i x_i, 0) * clip_max,  xmin = min(min_i x_i, 0) * clip_min
//   scale = max(|xmin|, xmax) / qmax  (1 when 0),  q_i = clamp(round(x_i / scale), -qmax-1, qmax)
// Asymmetric (KV cache, per token and head):  levels = 2^b - 1
//   xmax, xmin as above; both 0 -> xmin = -1, xmax = 1
//   scale = (xmax - xmin) / levels,  zero = round(-xmin / scale)
//   q_i = clamp(round(x_i / scale) + zero, 0, levels),  dequantized x_i ~ (q_i - zero) * scale
#pragma once
#include <cstdint>

namespace fq::ref {

// Codes of one row; returns the scale. bits in 2..8.
float quantize_sym_row(const float* x, int64_t n, int bits, float clip_max, float clip_min, int8_t* q);
// y = q * scale (the fake-quantized row; y may alias x). Returns the scale.
float fake_quant_sym_row(const float* x, int64_t n, int bits, float clip_max, float clip_min, float* y);
// The asymmetric quantize-dequantize of one row (y may alias x). bits in 2..8.
void fake_quant_asym_row(const float* x, int64_t n, int bits, float clip_max, float clip_min, float* y);

}  // namespace fq::ref
