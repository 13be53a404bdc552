// The LM head in int8 (EngineOptions::head_int8): per-row symmetric int8 weights and fp32 scales, half the
// bytes of the fp16 head that every decode step streams. References: ref::quantize_sym_row (8 bits, no
// clipping) per row; logits[m, n] = scale[n] * sum_k f32(x[m, k]) * q[n, k] with fp32 sums (the order of
// the sum is the kernel's). fp16 as uint16_t. Arguments are checked before any CUDA call
// (cudaErrorInvalidValue, nothing launched); asynchronous on `stream`, CUDA-graph safe.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace fq::cuda {

// w fp16 [rows, cols] -> q int8 [rows, cols], scales fp32 [rows].
cudaError_t quantize_rows_int8(const uint16_t* w, int64_t rows, int64_t cols, int8_t* q, float* scales,
                               cudaStream_t stream);

// y fp32 [M, N] (row stride N) = x fp16 [M, K] . dequant(q [N, K])^T. Any M >= 1 (16-token slices, each a
// weight-streaming GEMV: meant for decode and last-token logits); K % 16 == 0; x and q 16-byte aligned.
cudaError_t gemv_int8_f16(const uint16_t* x, int64_t M, int64_t K, const int8_t* q, const float* scales,
                          int64_t N, float* y, cudaStream_t stream);

}  // namespace fq::cuda
