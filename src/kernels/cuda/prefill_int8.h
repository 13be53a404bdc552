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
// aligned, x_stride % 4 == 0, out 4-byte aligned. perm: the code of column k at column wgmma_perm_col(k)
// (the W4A8 GEMM's order below; cols % 128 == 0).
cudaError_t quantize_sym_int4_i8_multi(const float* x, int64_t rows, int64_t cols, int64_t x_stride,
                                       const SymClips& clips, int8_t* out, float* scales,
                                       int64_t scale_stride, cudaStream_t stream, bool perm = false);

// The same int8 copies of the FlatQuant-transformed rows, transform fused in (prefill_kron.cu): per token, X
// = x_t viewed as [L, R] (fp16, row stride x_stride between tokens), T = X B rounded to fp16, Y = A^T T with
// fp32 sums on fp16 tensor cores (b_pk nullptr: no B, Y = A^T X), then quantize_sym_int4_i8_multi's copies of
// Y (codes to out + c * rows * L * R, scales to scales + c * scale_stride). These are the fused decode
// kernel's operations and rounding points (w4a4_ops.h: fused_quant_int4 with a plain input), so for the same
// fp16 row both give the same codes and scales. a_pk / b_pk: fused_pack_operand of A (left) and B (right),
// 16-byte aligned. kron_quant_i8_fits: whether the device's shared memory holds the operands and one row
// (else cudaErrorInvalidValue). perm: as quantize_sym_int4_i8_multi's (L * R % 128 == 0). launch: how the
// rows are spread (the results do not depend on it): tokens per step of a CTA (1 or 2; 0 = automatic: 2 for
// shapes of 17..28 tiles of 16 x 32 where they fit, else 1; cudaErrorInvalidValue where a forced 2 does not
// fit) and a cap on the CTAs (0: the resident CTAs; tests use it to make each CTA loop over many steps).
struct KronQuantLaunch {
  int tokens = 0;
  int64_t max_blocks = 0;
  // Store the codes from the registers instead of staging each token's codes in shared memory and sending
  // them with bulk copies (which the kernel does on sm_90 where L * R % 16 == 0, out is 16-byte aligned and
  // shared memory allows).
  bool direct_stores = false;
};
bool kron_quant_i8_fits(int64_t L, int64_t R, bool with_b, int device);
cudaError_t kron_quant_i8_multi(const uint16_t* x, int64_t rows, int64_t x_stride, const uint16_t* a_pk,
                                int64_t L, const uint16_t* b_pk, int64_t R, const SymClips& clips,
                                int8_t* out, float* scales, int64_t scale_stride, cudaStream_t stream,
                                bool perm = false, KronQuantLaunch launch = {});

// ---- The sm_90a W4A8 GEMM (prefill_wgmma.cu): the int8 route's GEMM without cuBLASLt ---------------------
// y = epilogue(codes x int4 weights) as the cuBLASLt route computes it (unpack_int4_int8 + s8 GEMM +
// a8_epilogue / a8_swiglu_epilogue), BIT FOR BIT, in one kernel: the packed int4 weights are read as they are
// stored (TMA into shared memory, unpacked to s8 in registers as wgmma's A operand), the codes by TMA as its
// B operand, int32 sums on the INT8 tensor cores (wgmma, sm_90a), the epilogue from the registers. No int32
// buffer, no unpacked weight copy.
//
// The codes must be stored column-PERMUTED within each group of 128 (so that each thread's weight bytes are
// one contiguous 16-byte load): code of natural column k at column wgmma_perm_col(k). The quantizers write
// that order when asked (`perm` of quantize_sym_int4_i8_multi / kron_quant_i8_multi). The int form is for
// kernels whose row offsets fit 32 bits (cheaper address arithmetic).
template <typename I>
__host__ __device__ constexpr I wgmma_perm_col_t(I k) {
  // k = 128 T + 32 t + 8 s + 4 h + j  ->  128 T + 32 s + 16 h + 4 t + j
  return (k & ~I{127}) | (k & 3) | (((k >> 5) & 3) << 2) | (((k >> 2) & 1) << 4) | (((k >> 3) & 3) << 5);
}
__host__ __device__ constexpr int64_t wgmma_perm_col(int64_t k) {
  return wgmma_perm_col_t<int64_t>(k);
}

struct W4A8Gemm {
  const uint8_t* w = nullptr;  // packed int4 weights [N, K/2] (low nibble = even k), 16-byte aligned
  const float* sw = nullptr;   // [N] per-output-channel scales
  const int8_t* x = nullptr;   // codes: copy c at x + c * rows * K ([rows, K], permuted), 16-byte aligned
  const float* sx = nullptr;   // copy c's per-token scales at sx + c * sx_stride
  int64_t sx_stride = 0;
  int nseg = 1;                // column segments (1..3): [0, end[0]) reads copy 0, [end[0], end[1]) copy 1..
  int64_t end[3] = {0, 0, 0};  // end[nseg - 1] = N; every end a multiple of 128
  int64_t rows = 0, N = 0, K = 0;  // K a multiple of 128, <= 65536
  void* y = nullptr;               // [rows, N] (row stride ldy), fp16 or fp32; 8-byte aligned, ldy even
  bool y_f16 = true;
  int64_t ldy = 0;
  // fp32 [rows, N] (row stride ldy), 8-byte aligned, may alias y; fp32 y only.
  const float* residual = nullptr;
  // gate|up + SwiGLU: nseg = 2, end = {F, 2 F}, F a multiple of 128; y = silu(g) * u [rows, F] (row stride
  // ldy) with g and u rounded to fp16 first, as a8_swiglu_epilogue.
  bool swiglu = false;
  // CTAs per thread-block cluster along the output channels, which share (multicast) each tile of codes, 1, 2
  // or 4 where the shape allows (the channel tiles of 128 divide by it; segment ends are multiples of 128 x
  // it), else 1; 0: automatic = 1 (on the H100, Llama-3-8B prefill, 2 and 4 were slower: the kernel is not
  // bound by L2 reads of the codes; bench/results/qgemm_notes.md).
  int cluster = 0;
};
// Whether this device runs it (compute capability 9.0 and the kernels built for sm_90a), and whether the
// operands meet its requirements.
bool w4a8_wgmma_available(int device);
bool w4a8_wgmma_fits(const W4A8Gemm& g);
// The cluster size a launch uses (W4A8Gemm::cluster resolved against the shape).
int w4a8_wgmma_cluster(const W4A8Gemm& g);
// cudaErrorInvalidValue (nothing launched) when !w4a8_wgmma_fits, cudaErrorNotSupported when unavailable.
cudaError_t w4a8_gemm_wgmma(const W4A8Gemm& g, cudaStream_t stream);

}  // namespace fq::cuda
