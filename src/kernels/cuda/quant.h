// Host-callable 4-bit quantization kernels (src/kernels/cuda/quant.cu, kv_quant.cu). Raw device pointers,
// sizes in elements, strides in elements; every launcher returns the first CUDA error (cudaErrorInvalidValue
// for bad sizes) and is asynchronous on `stream`. References: src/ref/quant.h, same names.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace fq::cuda {

// ref::quantize_sym_int4. x [rows, cols] (row stride x_stride) fp32 -> packed [rows, cols/2] uint8 (low
// nibble = even element) + scales [rows] fp32. cols must be even.
cudaError_t quantize_sym_int4(const float* x, int64_t rows, int64_t cols, int64_t x_stride, float clip_max,
                              float clip_min, uint8_t* packed, float* scales, cudaStream_t stream);

// ref::quantize_kv_asym_int4. x [n_tokens, n_head, head_dim] (token stride x_stride, heads contiguous) fp32
// -> packed [n_tokens, n_head, head_dim/2] uint8 + scale, zero [n_tokens, n_head] fp32. head_dim must be
// even.
cudaError_t quantize_kv_asym_int4(const float* x, int64_t n_tokens, int64_t n_head, int64_t head_dim,
                                  int64_t x_stride, float clip_max, float clip_min, uint8_t* packed,
                                  float* scale, float* zero, cudaStream_t stream);

}  // namespace fq::cuda
