// y = x W^T + b: the dense matmul of every projection and of the LM head (fp32, row-major).
//
// Numerics (the contract that makes results independent of threads and blocking): each y[t][o] is the dot
// product of x[t] and W[o] accumulated in fp32 in 8 interleaved partial sums (element i goes to partial
// i mod 8, over the largest multiple of 8 of `in`), the partials reduced pairwise in a fixed order, then the
// remaining in % 8 products added in order, then the bias. No FMA contraction is allowed (the build targets
// never enable FMA for this file), so the SSE and AVX2 code paths give bit-identical results. fp32 is what
// transformers uses on CPU (MKL/OpenBLAS sgemm); against it the difference is a few ulp of the row sum.
#pragma once
#include <cstdint>

namespace fq::ref {

class ThreadPool;

// x: [n, in], w: [out, in], bias: [out] or nullptr, y: [n, out] (must not alias x).
void linear(const float* x, int64_t n, int64_t in, const float* w, const float* bias, int64_t out, float* y,
            ThreadPool* pool = nullptr);

// One output, same summation order as linear() (used by tests and for single dot products).
float dot_f32(const float* a, const float* b, int64_t len);

}  // namespace fq::ref
