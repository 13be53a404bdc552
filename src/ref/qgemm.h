// W4A4 linear reference (plain loops): y[m, n] = float(acc) * sx[m] * sw[n] (+ residual[m, n]) with
// acc = sum_k qx[m, k] * qw[n, k] accumulated EXACTLY in int32. The oracle for the CUDA decode GEMV
// (src/kernels/cuda/qgemv.cu) and the later prefill GEMM, which must match it bit for bit.
//
// Contract:
// - qx: packed int4 activations [M, K/2] (src/ref/quant.h layout: element 2j low nibble of byte j), sx [M]
//   fp32 per-token scales; qw: packed int4 weights [N, K/2], sw [N] fp32 per-output-channel scales.
// - epilogue, one IEEE fp32 operation at a time, no fused multiply-add, in this order:
//     t = float(acc);  t = t * sx[m];  t = t * sw[n];  if residual: t = t + residual[m * N + n]
//   float(acc) is exact for |acc| < 2^24 and otherwise round-to-nearest-even (as __int2float_rn).
// - K must be even and K <= kQgemmMaxK (the CUDA kernel's int32 headroom, see qgemv.h); throws fq::Error.
// - y [M, N] fp32 row-major; residual [M, N] or nullptr (may alias y).
#pragma once
#include <cstdint>

namespace fq::ref {

constexpr int64_t kQgemmMaxK = 65536;

void qgemm_w4a4(const uint8_t* qx, const float* sx, const uint8_t* qw, const float* sw, const float* residual,
                int64_t M, int64_t N, int64_t K, float* y);

// The integer part alone: acc [M, N] int32 (tests and the later GEMM use it to separate integer errors from
// epilogue errors).
void qgemm_w4a4_acc(const uint8_t* qx, const uint8_t* qw, int64_t M, int64_t N, int64_t K, int32_t* acc);

// The epilogue above for one element (shared by the reference and its tests).
float qgemm_epilogue(int32_t acc, float sx, float sw, const float* residual);

}  // namespace fq::ref
