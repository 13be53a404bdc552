// Causal grouped-query attention over a KV cache, as transformers' eager attention computes it in fp32:
//   s_j = (q . k_j) * (1/sqrt(head_dim)),  p = softmax(s) (max subtracted, fp32),  out = sum_j p_j v_j
// Query head h reads kv head h / (n_head / n_head_kv) (HF repeat_kv). Query i of the batch sits at position
// p0 + i and sees keys 0..p0+i.
//
// Numerics (all fp32): each score is accumulated over head_dim in order d = 0, 1, ... and then scaled (HF
// scales the q.k product, not q); exp(s - max) by a 1-2 ulp polynomial (simd.h); the softmax sum in 8
// interleaved partial sums (key j in partial j mod 8) reduced pairwise; probabilities normalised by the
// fp32 reciprocal of the sum (as torch's CPU softmax does); the output sum_j p_j v_j as a dot product over
// keys in linear()'s order. Every output element depends only on its own (head, query) and its key count,
// never on the batch split or thread count, so incremental decoding reproduces a full pass bit for bit.
#pragma once
#include <cstdint>

namespace fq::ref {

class ThreadPool;

struct AttentionShape {
  int64_t n_head = 0, n_head_kv = 0, head_dim = 0;
  int64_t q_stride() const { return n_head * head_dim; }
  int64_t kv_stride() const { return n_head_kv * head_dim; }
};

// q: [n, n_head*head_dim]; k, v: [p0 + n, n_head_kv*head_dim] (cache rows, the new ones already written);
// out: [n, n_head*head_dim].
void attention(const float* q, int64_t n, int64_t p0, const float* k, const float* v, const AttentionShape& s,
               float* out, ThreadPool* pool = nullptr);

}  // namespace fq::ref
