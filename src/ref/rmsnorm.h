// RMSNorm as Hugging Face LlamaRMSNorm / Qwen2RMSNorm compute it in fp32:
//   y = weight * (x * rsqrt(mean(x^2) + eps))
// The mean of squares is accumulated in double (cheap: one pass over n_embd) and rounded to fp32 before
// eps is added, then rsqrt is taken in fp32, and the two products are done in the same order as HF.
#pragma once
#include <cstdint>

namespace fq::ref {

// x, y: [n, dim] (may alias), weight: [dim].
void rmsnorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* y);

}  // namespace fq::ref
