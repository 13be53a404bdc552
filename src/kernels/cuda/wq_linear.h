// Kernels of the CUDA engine's W4A16 / W8A8 / W4A8 backends (src/runtime/cuda_engine.cpp, docs/runtime.md): a
// weight-only int4 linear over fp16 activations, per-token symmetric int8 activation quantization (one copy per
// consumer clip), and the int8-activation linear over int8 or packed int4 weights with exact int32 sums. Raw
// device pointers, sizes in elements, fp16 as uint16_t (IEEE half bits). Launchers check their arguments before
// any CUDA call (cudaErrorInvalidValue, nothing launched), are asynchronous on `stream` and CUDA-graph safe (no
// allocation, no host synchronization). CPU references are named at each function.
//
// Weight layouts (the artifact's, src/model/artifact.h): 4-bit packed [N, K/2] uint8 (ref::pack_int4: element
// 2j in the low nibble of byte j, two's complement), 8-bit int8 [N, K]; fp32 per-output-channel scales [N].
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/engine_kernels.h"  // F16KvCache
#include "kernels/cuda/w4a4_ops.h"        // SymClips

namespace fq::cuda {

// ---- weight-only int4 (W4A16) -------------------------------------------------------------------------------
// y[M, N] = x[M, K] . (code[N, K] * s[N])^T, computed as s[n] * sum_k f32(x[m, k]) * code[n, k] with fp32 sums
// (the order of the sum is the kernel's). Reference: ref::QuantDecoder's fake mode (dequantized fp32 weights,
// ref::linear), to fp32 rounding. x fp16 [M, K] (row stride K); y fp32 (y_f32) or fp16, row stride N;
// accumulate: y += (fp32 y only: the residual add of o_proj / down_proj). The decode GEMV: a warp streams R
// weight rows in 16-byte chunks (32 codes), several chunks per row in flight per lane, codes turned into fp32 in
// registers (exponent trick, no int->float conversion), x through L1. Needs 1 <= M <= 16, K % 32 == 0, x and qw
// 16-byte aligned (w4a16_gemv_supported); for other shapes and M > 16 the engine dequantizes to fp16
// (dequant_w4_f16) and runs its fp16 GEMM.
constexpr int64_t kWqGemvMaxM = 16;
bool w4a16_gemv_supported(int64_t M, int64_t K, const void* x, const void* qw);
cudaError_t w4a16_gemv(const uint16_t* x, int64_t M, int64_t K, const uint8_t* qw, const float* sw, int64_t N,
                       void* y, bool y_f32, bool accumulate, cudaStream_t stream);

// w16[N, K] = f16(code[n, k] * s[n]) (one fp32 product, rounded to nearest even): the dequantized weight of
// QLinear::dequantize, rounded to fp16, for the engine's fp16 GEMM. K even.
cudaError_t dequant_w4_f16(const uint8_t* qw, const float* sw, int64_t N, int64_t K, uint16_t* w16,
                           cudaStream_t stream);

// ---- per-token symmetric int8 activation quantization, one copy per clip pair ---------------------------------
// For c < clips.n: ref::quantize_sym_row(x row, cols, 8, clips.max[c], clips.min[c]) of every row of x [rows,
// cols] (row stride x_stride; fp32, or fp16 when x_f16: widened exactly) -> codes q + c * copy_stride ([rows,
// cols] int8; copy_stride >= rows * cols, e.g. rounded up so that every copy is 16-byte aligned) and scales +
// c * rows ([rows] fp32). Bit for bit (true IEEE division, round half to even). The row's min/max is read once
// for all copies. 1 <= clips.n <= 3.
cudaError_t quantize_sym_int8_multi(const void* x, bool x_f16, int64_t rows, int64_t cols, int64_t x_stride,
                                    const SymClips& clips, int8_t* q, int64_t copy_stride, float* scales,
                                    cudaStream_t stream);

// ---- int8-activation linear (W8A8, W4A8) ----------------------------------------------------------------------
// Activation copies over column segments of one weight matrix (the fused q|k|v and gate|up weights: each consumer
// has its own clip, hence its own copy): columns [0, end[0]) use qx[0] / sx[0], [end[0], end[1]) qx[1] / sx[1],
// ...; end[n-1] = N. Every copy is int8 [M, K] (row stride K) with fp32 scales [M].
struct Int8Acts {
  int n = 1;
  const int8_t* qx[3] = {nullptr, nullptr, nullptr};
  const float* sx[3] = {nullptr, nullptr, nullptr};
  int64_t end[3] = {0, 0, 0};
};

// Reference: ref::int_linear (QuantDecoder's real mode) without the bias, matched BIT FOR BIT:
//   acc = sum_k qx[m, k] * code[n, k] exactly in int32;  t = float(acc); t = t * sx[m]; t = t * sw[n];
//   if residual: t = t + residual[m, n]   (ref::qgemm_epilogue; one IEEE operation at a time, no FMA)
// then stored as fp32, or rounded to fp16 (y_f16). qw: w_bits 8: int8 [N, K]; w_bits 4: packed [N, K/2].
// residual fp32 [M, N] (row stride N, may alias y; fp32 output only) or nullptr. y row stride N. K <= 65536
// (|acc| <= 2^14 K < 2^31).
constexpr int64_t kWqMaxK = 65536;

// The decode GEMV (dp4a; a warp streams R weight rows in 16-byte chunks, several in flight per lane, the
// activations through L1; int4 codes are unpacked to 16 x value with two logic ops and the activations' bytes
// permuted to match, so dp4a sums 16 x the products exactly). Needs 1 <= M <= 16, K % 16 == 0 (int8) or K % 32
// == 0 (int4), qw and every qx 16-byte aligned.
bool a8_gemv_supported(int w_bits, int64_t M, int64_t K, const Int8Acts& acts, const void* qw);
cudaError_t a8_gemv(const Int8Acts& acts, int w_bits, const void* qw, const float* sw, const float* residual,
                    void* y, bool y_f16, int64_t M, int64_t N, int64_t K, cudaStream_t stream);

// The same result for any shape (a plain exact kernel, one output per thread): small or unaligned shapes.
cudaError_t a8_gemm_simple(const Int8Acts& acts, int w_bits, const void* qw, const float* sw,
                           const float* residual, void* y, bool y_f16, int64_t M, int64_t N, int64_t K,
                           cudaStream_t stream);

// The epilogue alone, after an int32 GEMM (the engine's cuBLASLt s8 x s8 -> s32 route for M > 16): acc [M, n]
// int32 (row stride lda) of columns [col0, col0 + n) -> y[m, col0 + j] as above, with sx [M], sw + col0, residual
// and y of row stride ldy.
cudaError_t a8_epilogue(const int32_t* acc, int64_t lda, const float* sx, const float* sw, const float* residual,
                        void* y, bool y_f16, int64_t ldy, int64_t M, int64_t col0, int64_t n, cudaStream_t stream);

// The gate|up epilogue fused with SwiGLU (the W4A4 engine's int8 prefill route): g = f16(epilogue(acc_g, sx_g,
// sw_g)), u likewise, out[m, j] = silu(g) * u (cuda::swiglu's operations: g / (1 + exp(-g)), times u), fp16 or fp32,
// row stride ldo. acc_g, acc_u [M, n] int32 (row stride lda). Bit for bit a8_epilogue (fp16 out) then swiglu.
cudaError_t a8_swiglu_epilogue(const int32_t* acc_g, const int32_t* acc_u, int64_t lda, const float* sx_g,
                               const float* sx_u, const float* sw_g, const float* sw_u, void* out, bool out_f16,
                               int64_t ldo, int64_t M, int64_t n, cudaStream_t stream);

// Packed int4 [N, K/2] -> int8 [N, K] (ref::unpack_int4), for the int8 GEMM of W4A8 prefill. K even.
cudaError_t unpack_int4_int8(const uint8_t* qw, int64_t N, int64_t K, int8_t* out, cudaStream_t stream);

// ---- K/V rows -> FP16 cache ----------------------------------------------------------------------------------
// k, v: [rows, n_head_kv * head_dim] fp16 (row stride stride), final values (RoPE and the K transform applied by
// qkv_rope_transform_f16) -> cache slot slot0 + r / n_tok, position (d_pos ? d_pos[r / n_tok] : pos0) + r % n_tok,
// copied unchanged: the cache write of qkv_rope_append_f16 without its RoPE. A position outside [0, max_ctx) writes
// nothing and sets *d_overflow = 1 (when given). For artifacts that carry a K transform with a 16-bit KV cache.
cudaError_t f16_kv_append(const uint16_t* k, const uint16_t* v, int64_t stride, int64_t rows, int64_t n_tok,
                          int64_t slot0, int64_t pos0, const int32_t* d_pos, const F16KvCache& cache,
                          int32_t* d_overflow, cudaStream_t stream);

}  // namespace fq::cuda
