// Rotary position embedding in the Hugging Face "rotate_half" convention: dimension d is paired with
// d + head_dim/2 (not the interleaved (2i, 2i+1) pairs of llama2.c / Meta checkpoints; converters permute
// q/k rows into this convention).
//
// Numerics emulate transformers exactly in fp32:
//   inv_freq[i] = 1.0f / powf(theta, float(2i) / float(head_dim))          (i < head_dim/2)
//   llama3 / linear scaling applied to inv_freq in fp32 (see rope_inv_freq)
//   angle = inv_freq[i] * float(pos);  cos, sin of the fp32 angle
//   y[d] = x[d] * cos[d] + rotate_half(x)[d] * sin[d]
// HF's attention_scaling is 1 for default, linear and llama3, so it is not applied.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace fq::ref {

// The per-pair inverse frequencies [head_dim/2] after rope scaling. Throws fq::Error for an odd head_dim
// or an unsupported scaling type.
std::vector<float> rope_inv_freq(int64_t head_dim, double theta, const RopeScaling& scaling);

// cos / sin of pos * inv_freq for positions [0, n_pos): [n_pos, head_dim/2] each.
struct RopeTable {
  int64_t head_dim = 0, n_pos = 0;
  std::vector<float> cos, sin;
  RopeTable() = default;
  RopeTable(const std::vector<float>& inv_freq, int64_t n_pos);
  const float* cos_at(int64_t pos) const { return cos.data() + pos * (head_dim / 2); }
  const float* sin_at(int64_t pos) const { return sin.data() + pos * (head_dim / 2); }
};

// Rotates n_heads consecutive heads of x ([n_heads, head_dim], in place) with the tables of one position.
void rope_apply(float* x, int64_t n_heads, int64_t head_dim, const float* cos, const float* sin);

}  // namespace fq::ref
