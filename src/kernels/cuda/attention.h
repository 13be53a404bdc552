// Attention kernels of the runtime (src/kernels/cuda/kv_cache.cu, decode_attn.cu, prefill_attn.cu): the KV4
// cache append, decode attention over the 4-bit cache (flash-decoding) and causal prefill attention on FP16
// q/k/v (mma.sync tensor cores). Raw device pointers, sizes in elements; each launcher checks its arguments
// before any CUDA call (cudaErrorInvalidValue, nothing launched) and is asynchronous on `stream`. Host-side
// bound checks that throw fq::Error live in src/ops/kv_cache.h. Activations are fp32 or IEEE fp16 (DType::F32
// or DType::F16, passed as void pointers); references: src/ref/quant.h, src/ref/attention.h.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace fq::cuda {

// One layer's 4-bit K/V cache (docs/kernels_attention.md). For slot s (one sequence of a batch), position p,
// kv head h: packed codes at k + ((s * max_ctx + p) * n_head_kv + h) * head_dim / 2 (plain nibbles 0..15, low
// = even element, as ref::quantize_kv_asym_int4), scale/zero at k_scale/k_zero + (s * max_ctx + p) *
// n_head_kv + h. Same for V.
struct Kv4Layer {
  uint8_t* k = nullptr;
  float* k_scale = nullptr;
  float* k_zero = nullptr;
  uint8_t* v = nullptr;
  float* v_scale = nullptr;
  float* v_zero = nullptr;
  int64_t n_slots = 0, max_ctx = 0, n_head_kv = 0, head_dim = 0;
};

// Clipping factors of the K and V quantizers (sigmoid values of the learned clip parameters; 1 = none).
struct Kv4Clip {
  float k_max = 1.0f, k_min = 1.0f, v_max = 1.0f, v_min = 1.0f;
};

// ---- KV4 append ------------------------------------------------------------------------------------------
// k, v: [n_seq, n_tok, n_head_kv, head_dim] of `dtype` (token stride x_stride elements for both, sequence
// stride n_tok * x_stride). Token t of sequence b is quantized exactly as ref::quantize_kv_asym_int4 and
// written to slot slot0 + b at position pos + t, where pos = d_pos[b] when d_pos (device int32 [n_seq]) is
// given, else pos0. With d_pos the positions are only known on the device: a token whose position is outside
// [0, max_ctx) is not written and *d_overflow (device int32, required with d_pos) is set to 1, so an overflow
// is never silent. Without d_pos the launcher itself rejects pos0 + n_tok > max_ctx. head_dim even; n_seq <=
// 65535 and n_tok * n_head_kv < 2^31 (else cudaErrorInvalidValue).
cudaError_t kv4_append(const Kv4Layer& cache, const void* k, const void* v, DType dtype, int64_t n_seq,
                       int64_t n_tok, int64_t x_stride, int64_t slot0, int64_t pos0, const int32_t* d_pos,
                       int32_t* d_overflow, const Kv4Clip& clip, cudaStream_t stream);

// ---- decode attention over the 4-bit cache
// ----------------------------------------------------------------- q: [batch, n_head, head_dim] of q_dtype
// (row stride q_stride elements per sequence); sequence b attends to positions [0, d_len[b]) of cache slot b
// (d_len: device int32 [batch]; the new token's K/V already appended). out: [batch, n_head, head_dim] of
// out_dtype, contiguous. Query head h reads kv head h / (n_head / n_head_kv). Softmax in fp32, scale
// 1/sqrt(head_dim). Flash-decoding: the keys of a sequence are split into n_split ranges (chosen from
// max_len, batch and the device's SM count by decode_attention_splits; the ranges adapt to each d_len[b] on
// the device, so any length works and the launch is CUDA-graph safe); partial (max, sum, out) go to
// `workspace`, then a combine kernel merges them. workspace: decode_attention_workspace_bytes(...) bytes (may
// be nullptr when that is 0). head_dim a multiple of 8 in [8, 256]; n_head a multiple of n_head_kv; d_len[b]
// <= max_ctx (larger lengths are clamped to max_ctx and *d_overflow set when given).
struct DecodeAttnPlan {
  int n_split = 1;        // key ranges per sequence
  int heads_per_cta = 1;  // query heads of one kv group handled by one CTA (all of them when <= 8)
  // head_dim 64 / 128 run on the tensor cores (mma.sync) unless this forces the CUDA-core kernel (every other
  // head_dim uses it anyway); for tests and comparisons.
  bool cuda_cores = false;
};
DecodeAttnPlan decode_attention_plan(int64_t batch, int64_t n_head, int64_t n_head_kv, int64_t max_len,
                                     int n_sm, int64_t head_dim);
size_t decode_attention_workspace_bytes(int64_t batch, int64_t n_head, int64_t head_dim,
                                        const DecodeAttnPlan& plan);
cudaError_t decode_attention(const Kv4Layer& cache, const void* q, DType q_dtype, int64_t q_stride,
                             int64_t batch, int64_t n_head, const int32_t* d_len, void* out, DType out_dtype,
                             const DecodeAttnPlan& plan, void* workspace, int32_t* d_overflow,
                             cudaStream_t stream);

// ---- prefill attention on fp16 q/k/v
// ----------------------------------------------------------------------- q: [batch, n, n_head, head_dim]
// fp16 (token stride q_stride, sequence stride q_batch_stride); k, v: [batch, p0 + n, n_head_kv, head_dim]
// fp16 (token stride kv_stride, sequence stride kv_batch_stride). Query i sits at position p0 + i and sees
// keys 0..p0+i (causal). out: [batch, n, n_head, head_dim] of out_dtype, contiguous. head_dim 64 and 128 run
// on the tensor cores (mma.sync m16n8k16, fp32 accumulation, online softmax, 64 queries per CTA); other even
// head_dims <= 256 on a simple fp32 fallback kernel.
cudaError_t prefill_attention(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t batch,
                              int64_t n, int64_t p0, int64_t n_head, int64_t n_head_kv, int64_t head_dim,
                              int64_t q_stride, int64_t q_batch_stride, int64_t kv_stride,
                              int64_t kv_batch_stride, void* out, DType out_dtype, cudaStream_t stream);
// The fallback kernel for any head_dim (exposed so that tests can run it on 64 and 128 as well).
cudaError_t prefill_attention_simple(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t batch,
                                     int64_t n, int64_t p0, int64_t n_head, int64_t n_head_kv,
                                     int64_t head_dim, int64_t q_stride, int64_t q_batch_stride,
                                     int64_t kv_stride, int64_t kv_batch_stride, void* out, DType out_dtype,
                                     cudaStream_t stream);

}  // namespace fq::cuda
