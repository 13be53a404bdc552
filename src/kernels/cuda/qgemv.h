// W4A4 linear for decode (M = 1..16 tokens): y = (qx * sx) (qw * sw)^T (+ residual), integer dot products
// accumulated exactly in int32 and scaled in an fp32 epilogue. Reference: fq::ref::qgemm_w4a4
// (src/ref/qgemm.h), matched bit for bit (same int32 sum, same epilogue operation order, no FMA).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace fq::cuda {

constexpr int64_t kQgemvMaxM = 16;
// int32 headroom of the kernel's scaled dot products: |acc| <= 256 * 64 * K < 2^31 (see qgemv.cu).
constexpr int64_t kQgemvMaxK = 65536;

// qx: packed int4 activations [M, K/2] (low nibble = even element), sx [M] fp32 per-token scales;
// qw: packed int4 weights [N, K/2], sw [N] fp32 per-channel scales; residual [M, N] fp32 or nullptr (may
// alias y). Outputs (either may be nullptr, not both): y [M, N] fp32, y_f16 [M, N] IEEE half bits of the same
// fp32 value rounded to nearest even. Requires 1 <= M <= 16, N >= 1, K a multiple of 32 in [32, 65536], qx
// and qw 16-byte aligned; otherwise returns cudaErrorInvalidValue without launching. Asynchronous on
// `stream`.
cudaError_t qgemv_w4a4(const uint8_t* qx, const float* sx, const uint8_t* qw, const float* sw,
                       const float* residual, float* y, uint16_t* y_f16, int64_t M, int64_t N, int64_t K,
                       cudaStream_t stream);

}  // namespace fq::cuda
