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

}  // namespace fq::cuda
