// The activation side of the W4A4 prefill GEMM on cuBLASLt's int8 tensor-core GEMM (the engine's "int8
// prefill route", docs/runtime.md): per-token int4 codes written as int8 bytes, which cuBLASLt's s8 x s8 ->
// s32 GEMM reads (weights: unpack_int4_int8 of wq_linear.h; epilogue: a8_epilogue, ref::qgemm_epilogue's
// order). The int32 sums are exact, so the route equals ref::qgemm_w4a4 BIT FOR BIT, as the mma.sync kernel
// of qgemm.h does.
//
// Why: the mma.sync kernel caps at ~630 TOPS on prefill shapes; cuBLASLt's int8 GEMM (wgmma) runs at ~1.5
// POPS (bench/results/qgemm_notes.md). cuBLASLt cannot scale per token inside an int8 GEMM, and its FP8
// GEMM's per-row scale vectors (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F) have no algorithm on the H100
// with cuBLASLt 13.1 (probed for fp16, bf16 and fp32 outputs), so the sums go through an int32 buffer.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/w4a4_ops.h"

namespace fq::cuda {

// Per-token symmetric int4 quantization (ref::quantize_sym_int4, bit for bit) with the codes written as int8
// bytes instead of packed nibbles: for c < clips.n, copy c of x [rows, cols] (row stride x_stride, fp32) goes
// to out + c * rows * cols ([rows, cols], one byte per value) and its scales to scales + c * scale_stride (>=
// rows). One read of each row (held in registers) for all copies. cols % 4 == 0, cols <= 32768, x 16-byte
// aligned, x_stride % 4 == 0, out 4-byte aligned.
cudaError_t quantize_sym_int4_i8_multi(const float* x, int64_t rows, int64_t cols, int64_t x_stride,
                                       const SymClips& clips, int8_t* out, float* scales,
                                       int64_t scale_stride, cudaStream_t stream);

// The same int8 copies of the FlatQuant-transformed rows, transform fused in (prefill_kron.cu): per token, X
// = x_t viewed as [L, R] (fp16, row stride x_stride between tokens), T = X B rounded to fp16, Y = A^T T with
// fp32 sums on fp16 tensor cores (b_pk nullptr: no B, Y = A^T X), then quantize_sym_int4_i8_multi's copies of
// Y (codes to out + c * rows * L * R, scales to scales + c * scale_stride). These are the fused decode
// kernel's operations and rounding points (w4a4_ops.h: fused_quant_int4 with a plain input), so for the same
// fp16 row both give the same codes and scales. a_pk / b_pk: fused_pack_operand of A (left) and B (right),
// 16-byte aligned. kron_quant_i8_fits: whether the device's shared memory holds the operands and one row
// (else cudaErrorInvalidValue).
bool kron_quant_i8_fits(int64_t L, int64_t R, bool with_b, int device);
cudaError_t kron_quant_i8_multi(const uint16_t* x, int64_t rows, int64_t x_stride, const uint16_t* a_pk,
                                int64_t L, const uint16_t* b_pk, int64_t R, const SymClips& clips,
                                int8_t* out, float* scales, int64_t scale_stride, cudaStream_t stream);

}  // namespace fq::cuda
