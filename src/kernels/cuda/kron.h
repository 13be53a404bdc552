// Host-callable fused online transform + int4 quantization kernels (src/kernels/cuda/kron.cu). Raw device
// pointers, sizes and strides in elements; asynchronous on `stream`; return the first CUDA error
// (cudaErrorInvalidValue for bad sizes, including a token too large for shared memory). References:
// src/ref/kron.h, same names.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace fq::cuda {

// ref::kron_quant_int4: per token x' = vec(A^T · reshape(x ⊙ s, L, R) · B), then symmetric int4 with
// clipping. x [n_tokens, L*R] fp32 (row stride x_stride); s [L*R] or nullptr; A [L, L], B [R, R] row-major
// fp32 (B may be nullptr = identity); packed [n_tokens, L*R/2] uint8; scales [n_tokens] fp32. L*R even, any L
// and R.
cudaError_t kron_quant_int4(const float* x, int64_t n_tokens, int64_t x_stride, const float* s,
                            const float* A, int64_t L, const float* B, int64_t R, float clip_max,
                            float clip_min, uint8_t* packed, float* scales, cudaStream_t stream);

// ref::head_mix_quant_int4: attn [n_tokens, n_head, head_dim] (token stride attn_stride), Po [n_head, n_head]
// row-major; per token vec(Po^T · attn_t) head-major, then symmetric int4: packed [n_tokens,
// n_head*head_dim/2], scales [n_tokens].
cudaError_t head_mix_quant_int4(const float* attn, int64_t n_tokens, int64_t n_head, int64_t head_dim,
                                int64_t attn_stride, const float* Po, float clip_max, float clip_min,
                                uint8_t* packed, float* scales, cudaStream_t stream);

}  // namespace fq::cuda
