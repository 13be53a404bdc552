// W4A4 linear for decode (M = 1..16 tokens): y = (qx * sx) (qw * sw)^T (+ residual), integer dot products
// accumulated exactly in int32 and scaled in an fp32 epilogue. Reference: fq::ref::qgemm_w4a4
// (src/ref/qgemm.h), matched bit for bit (same int32 sum, same epilogue operation order, no FMA).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/qgemm.h"

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

// The same over activation copies on column segments (QgemmActs, qgemm.h; boundaries multiples of 4 rows
// when M > 7, of 2 when M > 2) with output row stride ldy >= N. f16: residual and y are fp16 (IEEE half bits;
// y = f16(epilogue with the residual widened to fp32)) and y_f16 must be nullptr; else fp32 as above. pdl:
// launched as a programmatic dependent of the previous kernel on `stream` (sm_90: its launch overlaps the
// previous kernel's tail).
cudaError_t qgemv_w4a4_segments(const QgemmActs& acts, const uint8_t* qw, const float* sw, const void* residual,
                                void* y, uint16_t* y_f16, bool f16, int64_t M, int64_t N, int64_t K, int64_t ldy,
                                cudaStream_t stream, bool pdl);

}  // namespace fq::cuda
