// Kernels of the W4A4KV4 engine backend (src/runtime/cuda_engine.cpp, docs/runtime.md) that the FP16 path
// does not have: the fused decode input pipeline (prologue + transform + quantize), the per-token int4
// quantizer that emits one packed copy per consumer clip (q/k/v and gate/up share one transformed input but
// each has its own LAC pair), q/k/v bias + RoPE + FlatQuant's K transform, KV4 cache read-back to fp16 for
// prefill attention, and random packed weights for benchmarks. Raw device pointers, sizes in elements, fp16
// as uint16_t (IEEE half bits). Launchers check their arguments before any CUDA call (cudaErrorInvalidValue,
// nothing launched), are asynchronous on `stream` and CUDA-graph safe. CPU references: named at each
// function.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/attention.h"

namespace fq::cuda {

// ---- per-token symmetric int4 quantization, one copy per clip pair
// ----------------------------------------- For c < n_clips: ref::quantize_sym_int4 of x [rows, cols] (row
// stride x_stride, fp32) with clip pair c -> packed + c * rows * cols / 2 ([rows, cols/2]) and scales + c *
// rows ([rows]). The row's min/max is read once for all copies. cols even, 1 <= n_clips <= 3.
struct SymClips {
  int n = 1;
  float max[3] = {1.0f, 1.0f, 1.0f};
  float min[3] = {1.0f, 1.0f, 1.0f};
};
cudaError_t quantize_sym_int4_multi(const float* x, int64_t rows, int64_t cols, int64_t x_stride,
                                    const SymClips& clips, uint8_t* packed, float* scales,
                                    cudaStream_t stream);

// ---- fused input pipeline of a W4A4 linear, few tokens (decode)
// ----------------------------------------------- One kernel does, per token: the prologue (RMSNorm of an
// fp32 row: ref::rmsnorm with the weight; or SwiGLU of fp16 gate/up rows: silu(g) * u; or a plain fp32 row),
// the Kronecker transform vec(A^T X B) on fp16 tensor cores (mma.sync m16n8k16, fp32 sums), then
// quantize_sym_int4_multi's copies. Rounding points are those of the engine's prefill route (cuBLAS on fp16
// operands): X and B are fp16, T = X B is rounded to fp16, Y = A^T T is fp32. L = 0: no transform (quantized
// in fp32). No B: the o_proj head mix Y = A^T X. Each token runs on a thread-block cluster of C CTAs (sm_90;
// C = 1, one CTA, elsewhere): rank r computes the prologue and T = X B for its rows of X, pushes the T values
// to the rank that owns their column (distributed shared memory, st.async counted on the owner's mbarrier),
// then Y = A^T T, the min/max and the packed bytes for its columns; the ranks push their min/max pairs to each
// other the same way. `split` picks C (1, 2, 4 or 8;
// 0: automatic, up to 8 CTAs per token while the grid stays within half of the SMs, raised where one
// CTA's share would not fit); every C gives the same bits. The transform matrices come pre-packed by
// fused_pack_operand: zero-padded to multiples of 16 and stored in mma fragment order, so that a warp loads
// each fragment with one coalesced load (A as the left operand of A^T T, B as the right operand of X B).
// Every global read is a cp.async stage: the constants (RMSNorm weight, the packed operands while shared
// memory allows), then, after the previous grid (pdl: launched as a programmatic dependent of it, so that the
// constants load while it runs), the token's input. K even, K = L * R when L > 0; the shape must pass
// fused_quant_fits.
enum class FusedIn { kRmsNorm, kSwiGLU, kPlain };
struct FusedQuantArgs {
  FusedIn in = FusedIn::kPlain;
  const float* x = nullptr;  // kRmsNorm / kPlain: fp32 [rows, K], row stride x_stride
  int64_t x_stride = 0;
  const float* norm_w = nullptr;  // kRmsNorm: [K]
  float eps = 0.0f;
  const uint16_t* gate = nullptr;  // kSwiGLU: fp16 rows, stride gu_stride
  const uint16_t* up = nullptr;
  int64_t gu_stride = 0;
  const uint16_t* a_pk = nullptr;  // fused_pack_operand(A [L, L], left): 16-byte aligned, or nullptr (L = 0)
  int64_t L = 0;
  const uint16_t* b_pk =
      nullptr;  // fused_pack_operand(B [R, R], right): 16-byte aligned, or nullptr (identity)
  int64_t R = 0;
  SymClips clips;
};
// Elements of a packed n x n operand: round16(n)^2.
int64_t fused_operand_elems(int64_t n);
// M fp32 [n, n] row-major -> dst (fused_operand_elems(n) fp16). left: the operand A^T of Y = A^T T (M = A);
// else the operand B of T = X B (M = B).
cudaError_t fused_pack_operand(const float* M, int64_t n, bool left, uint16_t* dst, cudaStream_t stream);
// Dynamic shared memory of one CTA on `device` with `split` CTAs per token (1, one CTA per token, needs the
// most), and whether the device can give it at that split (0: at the largest split the device offers, which
// an automatic launch reaches: it raises C until the share fits; e.g. Qwen2.5-7B's 148 x 128 SwiGLU input
// needs C >= 2 on an H100).
size_t fused_quant_smem(int64_t L, int64_t R, int64_t K, FusedIn in, bool with_b, int device, int split = 1);
bool fused_quant_fits(int64_t L, int64_t R, int64_t K, FusedIn in, bool with_b, int device, int split = 0);
// split: 0 (automatic) or 1, 2, 4, 8 CTAs per token (others: cudaErrorInvalidValue); a device without
// clusters always runs 1.
cudaError_t fused_quant_int4(const FusedQuantArgs& a, int64_t rows, int64_t K, uint8_t* packed, float* scales,
                             cudaStream_t stream, bool pdl = false, int split = 0);

// ---- q/k/v bias + RoPE + K transform (in place)
// -------------------------------------------------------------- qkv: [rows, (n_head + 2 n_head_kv) *
// head_dim] fp16, row stride qkv_stride (q heads, k heads, v heads, as the fused QKV GEMM writes them). Row r
// is token r % n_tok of sequence r / n_tok at position (d_pos ? d_pos[r / n_tok] : pos0) + r % n_tok. Per
// row, in fp32, one fp16 rounding at the end (reference: QuantDecoder::layer): + bias (fp32 [(n_head + 2
// n_head_kv) * head_dim] or nullptr) on q, k and v; RoPE (ref::rope_apply, angle inv_freq[i] * float(p)) on q
// and k; then, when q_mat / k_mat (fp32 [head_dim, head_dim] row-major) are given, every q head <- q_head ·
// q_mat and every k head <- k_head · k_mat (ref::rowvec_matmul; fp32, eight interleaved partial sums with
// fused multiply-adds). head_dim even, <= 256. With qk_out, the q and k heads go there instead ([rows,
// (n_head + n_head_kv) * head_dim], row stride qk_stride; v stays in qkv): the engine's prefill then applies
// the K transform as a batched tensor-core GEMM back into qkv.
cudaError_t qkv_rope_transform_f16(uint16_t* qkv, int64_t qkv_stride, int64_t rows, int64_t n_tok,
                                   int64_t pos0, const int32_t* d_pos, const float* bias, int64_t n_head,
                                   int64_t n_head_kv, int64_t head_dim, const float* inv_freq,
                                   const float* q_mat, const float* k_mat, cudaStream_t stream,
                                   uint16_t* qk_out = nullptr, int64_t qk_stride = 0);

// ---- q/k/v bias + RoPE + K transform + KV4 cache append (decode: one launch for both)
// qkv_rope_transform_f16 with the per-head kernel (q_mat / k_mat may be null: RoPE only), and every new k head
// (after RoPE and the K transform) and v head (after the bias), as fp16 values, written into the KV4 cache as
// kv4_append(cache, k, v, F16, rows / n_tok, n_tok, qkv_stride, slot0, pos0, d_pos, d_overflow, clip) would:
// the same codes, scales and zeros (tested). cache.n_head_kv / head_dim must equal n_head_kv / head_dim.
cudaError_t qkv_rope_transform_kv4_f16(uint16_t* qkv, int64_t qkv_stride, int64_t rows, int64_t n_tok,
                                       int64_t slot0, int64_t pos0, const int32_t* d_pos, const float* bias,
                                       int64_t n_head, int64_t n_head_kv, int64_t head_dim,
                                       const float* inv_freq, const float* q_mat, const float* k_mat,
                                       const Kv4Layer& cache, int32_t* d_overflow, const Kv4Clip& clip,
                                       cudaStream_t stream);

// ---- KV4 cache read-back
// ------------------------------------------------------------------------------------ k_out, v_out [n_seq,
// n_pos, n_head_kv, head_dim] fp16 = ref::dequantize_kv_asym_int4 of slots slot0 .. slot0 + n_seq - 1,
// positions [0, n_pos) (rounded to fp16). Prefill attention then runs on exactly the values that decode
// attention reads (and that the CPU runtime's fake-quantized cache holds).
cudaError_t kv4_dequant_f16(const Kv4Layer& c, int64_t slot0, int64_t n_seq, int64_t n_pos, uint16_t* k_out,
                            uint16_t* v_out, cudaStream_t stream);

// ---- random data without host memory (benchmarks)
// ---------------------------------------------------------- dst[i] = a uniform byte from a hash of (seed,
// i): packed int4 codes uniform in [-8, 7].
cudaError_t fill_random_u8(uint8_t* dst, int64_t n, uint64_t seed, cudaStream_t stream);
// dst[i] = mean + stddev * z_i, z_i ~ N(0, 1) from a hash of (seed, i), fp32.
cudaError_t fill_normal_f32(float* dst, int64_t n, uint64_t seed, float mean, float stddev,
                            cudaStream_t stream);
// dst[i] = f16(src[i]) (fp32 -> IEEE half bits), or with transpose: src [n, n] row-major -> dst = src^T.
cudaError_t f32_to_f16_matrix(const float* src, int64_t rows, int64_t cols, bool transpose, uint16_t* dst,
                              cudaStream_t stream);

}  // namespace fq::cuda
