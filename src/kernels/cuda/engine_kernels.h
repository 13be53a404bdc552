// Kernels that only the CUDA engine (src/runtime/cuda_engine.h) needs: device-side random weights, the fused
// q/k/v bias + RoPE + FP16 KV-cache write of one layer, the FP16-KV flash-decoding attention, and the tiny
// step-advance kernel of the captured decode graph. The generic row ops (RMSNorm, SwiGLU, embedding, argmax)
// are in layer_ops.h. Raw device pointers, sizes in elements, fp16 passed as uint16_t (IEEE half bits).
// Launchers check their arguments before any CUDA call (cudaErrorInvalidValue, nothing launched) and are
// asynchronous on `stream`; all are CUDA-graph safe (no allocation, no host synchronization).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace fq::cuda {

// ---- random weights without host memory -----------------------------------------------------------------
// dst[i] = fp16(stddev * z_i), z_i ~ N(0, 1) from a counter-based hash of (seed, i) (Box-Muller on two 24-bit
// uniforms): deterministic for a seed on any launch shape, so an 8B-parameter model needs no host buffer.
cudaError_t fill_normal_f16(uint16_t* dst, int64_t n, uint64_t seed, float stddev, cudaStream_t stream);
cudaError_t fill_f32(float* dst, int64_t n, float value, cudaStream_t stream);

// ---- q/k/v bias + RoPE + FP16 cache write ----------------------------------------------------------------
// qkv: [rows, (n_head + 2 n_head_kv) * head_dim] fp16 (row stride qkv_stride), as the fused QKV GEMM writes
// it (q heads, then k heads, then v heads). Row r belongs to sequence r / n_tok of the call, which lives in
// cache slot slot0 + r / n_tok, at position p = base + r % n_tok with base = d_pos[r / n_tok] (device int32)
// when d_pos is given, else pos0. For every row: bias (fp32 [(n_head + 2 n_head_kv) * head_dim], may be
// nullptr) is added to q, k and v in fp32 (before RoPE, one rounding to fp16 at the end); q is rotated in
// place; rotated k and v are written to the caches [slot][p][n_head_kv][head_dim] (fp16, max_ctx positions
// per slot). RoPE as ref::rope_apply with angle = inv_freq[i] * float(p) (inv_freq: device fp32 [head_dim/2],
// the scaled table of ref::rope_inv_freq). A position outside [0, max_ctx) writes nothing to the cache and
// sets *d_overflow = 1 (when given): the host checks positions before launching, this is the second line.
struct F16KvCache {
  uint16_t* k = nullptr;  // [n_slots][max_ctx][n_head_kv][head_dim]
  uint16_t* v = nullptr;
  int64_t n_slots = 0, max_ctx = 0, n_head_kv = 0, head_dim = 0;
};
cudaError_t qkv_rope_append_f16(uint16_t* qkv, int64_t qkv_stride, int64_t rows, int64_t n_tok, int64_t slot0,
                                int64_t pos0, const int32_t* d_pos, const float* bias, int64_t n_head,
                                const float* inv_freq, const F16KvCache& cache, int32_t* d_overflow,
                                cudaStream_t stream);

// ---- decode attention over the FP16 cache (flash-decoding, GQA-aware) -------------------------------------
// q: [batch, n_head, head_dim] fp16 (row stride q_stride per sequence). Sequence b reads cache slot slot0 +
// b, positions [0, d_len[b]) (device int32; lengths above max_ctx are clamped and set *d_overflow). out:
// [batch, n_head * head_dim] fp16 contiguous. Query head h uses kv head h / (n_head / n_head_kv). Scores and
// softmax in fp32 (base-2 exponent, scale 1/sqrt(head_dim) folded into q). A CTA owns one kv head, up to 8
// query heads of its group and one key range, so each K/V byte is read once per step; ranges adapt to d_len
// on the device (graph safe), partial (max, sum, acc) go to `workspace` and a combine kernel merges them.
// head_dim a multiple of 8 in [8, 256]; n_head a multiple of n_head_kv.
struct DecodeF16Plan {
  int n_split = 1;
  int heads_per_cta = 1;  // 1, 2, 4 or 8
};
DecodeF16Plan decode_attention_f16_plan(int64_t batch, int64_t n_head, int64_t n_head_kv, int64_t max_len,
                                        int n_sm);
size_t decode_attention_f16_workspace_bytes(int64_t batch, int64_t n_head, int64_t head_dim,
                                            const DecodeF16Plan& plan);
cudaError_t decode_attention_f16(const F16KvCache& cache, const uint16_t* q, int64_t q_stride, int64_t batch,
                                 int64_t n_head, int64_t slot0, const int32_t* d_len, uint16_t* out,
                                 const DecodeF16Plan& plan, void* workspace, int32_t* d_overflow,
                                 cudaStream_t stream);

// ---- FP16 GEMV for decode (M <= 4) ----------------------------------------------------------------------
// y[M, N] = x[M, K] . W[N, K]^T (accumulate: y += ..., fp32 y only), fp16 x and W, fp32 accumulation; y fp16
// (y_f32 false) or fp32, row stride N. For the memory-bound decode GEMMs, where cuBLAS reaches ~1.7-1.9 TB/s
// on the narrow ones: each warp streams two weight rows with 16-byte loads, 4 per row in flight per lane.
// Needs K % 8 == 0 and 16-byte aligned x and W (gemv_f16_supported); M in [1, 4].
bool gemv_f16_supported(int64_t M, int64_t K, const void* x, const void* w);
cudaError_t gemv_f16(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, int64_t N, void* y,
                     bool y_f32, bool accumulate, cudaStream_t stream);

// ---- the end of a captured decode step -------------------------------------------------------------------
// For b < batch: tokens[b] = next[b]; pos[b] += 1; len[b] += 1; and when hist is given and *step < hist_rows,
// hist[*step * batch + b] = next[b]; then *step += 1. Feeds the greedy token back so that consecutive graph
// replays decode without the host.
cudaError_t decode_advance(const int32_t* next, int32_t* tokens, int32_t* pos, int32_t* len, int64_t batch,
                           int32_t* hist, int64_t hist_rows, int32_t* step, cudaStream_t stream);

}  // namespace fq::cuda
