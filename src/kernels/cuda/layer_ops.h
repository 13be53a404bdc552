// Small per-layer kernels of the runtime (src/kernels/cuda/layer_ops.cu): RMSNorm, RoPE, SwiGLU, embedding
// gather, greedy argmax. Activations are fp32 or IEEE fp16 (DType::F32 / DType::F16 behind void pointers),
// math in fp32. Launchers check their arguments before any CUDA call (cudaErrorInvalidValue, nothing
// launched) and are asynchronous on `stream`. References: src/ref/rmsnorm.h, rope.h, swiglu.h,
// runtime::argmax.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace fq::cuda {

// y = weight * (x * rsqrt(mean(x^2) + eps)) per row. x: [n, dim] (row stride x_stride), weight: [dim] fp32,
// y: [n, dim] contiguous (may alias x when the types and strides agree). Sum of squares in fp32 (the
// reference uses double: results agree to ~1e-6 relative), then ref's operation order.
cudaError_t rmsnorm(const void* x, DType x_dtype, int64_t x_stride, const float* weight, int64_t n,
                    int64_t dim, float eps, void* y, DType y_dtype, cudaStream_t stream);

// Rotary embedding in place (HF rotate_half pairs d, d + head_dim/2) on q: [n_tok, n_head_q, head_dim] (token
// stride q_stride) and k: [n_tok, n_head_k, head_dim] (token stride k_stride; k may be nullptr). Token t uses
// position d_pos[t] (device int32 [n_tok]) and inv_freq (device fp32 [head_dim/2], from ref::rope_inv_freq,
// so default / linear / llama3 scaling are all the table). angle = inv_freq[i] * float(pos), full-precision
// sincosf, then ref::rope_apply's operations.
cudaError_t rope(void* q, int64_t q_stride, int64_t n_head_q, void* k, int64_t k_stride, int64_t n_head_k,
                 DType dtype, int64_t n_tok, int64_t head_dim, const int32_t* d_pos, const float* inv_freq,
                 cudaStream_t stream);

// out = silu(gate) * up, silu(g) = g / (1 + exp(-g)). gate/up: [n, ff] (row strides gate_stride, up_stride,
// so a fused [n, 2*ff] gate|up buffer works), out: [n, ff] contiguous.
cudaError_t swiglu(const void* gate, const void* up, DType in_dtype, int64_t gate_stride, int64_t up_stride,
                   int64_t n, int64_t ff, void* out, DType out_dtype, cudaStream_t stream);

// out[i] = table[ids[i]]: table [vocab, dim], out [n, dim] contiguous. An id outside [0, vocab) gives a zero
// row and sets *d_error = 1 when d_error is given (never a read out of bounds).
cudaError_t embedding(const void* table, DType table_dtype, int64_t vocab, int64_t dim, const int32_t* ids,
                      int64_t n, void* out, DType out_dtype, int32_t* d_error, cudaStream_t stream);

// Greedy decoding: out[r] = index of the largest logit of row r (lowest index among equal values, NaN below
// every number, as runtime::argmax). logits [rows, vocab] (row stride `stride`).
cudaError_t argmax(const void* logits, DType dtype, int64_t rows, int64_t vocab, int64_t stride, int32_t* out,
                   cudaStream_t stream);

}  // namespace fq::cuda
