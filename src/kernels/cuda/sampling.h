// Next-token sampling on the device (src/kernels/cuda/sampling.cu): temperature -> top-k -> top-p -> one draw
// per row from a counter-based RNG (Philox4x32-10, src/ref/philox.h), so a step needs no RNG state and no
// host synchronization (CUDA-graph safe when the step counter lives in device memory).
//
// Definition (docs/kernels_attention.md, "Sampling"), for one row of logits x:
//   - temperature <= 0 or top_k == 1: argmax (as cuda::argmax).
//   - weights w_i = exp((x_i - max x) / T) in 32.32 fixed point (integer sums: deterministic on any schedule;
//     NaN and -inf weigh 0, as do tokens with w < 2^-33);
//   - top-k (0 < k < vocab): keep x_i >= the k-th largest logit (ties at the boundary are all kept);
//   - top-p (< 1): of those, keep x_i >= tau, tau the largest logit whose set {x >= tau} holds at least top_p
//   of
//     the kept weight (the smallest most-likely-first prefix reaching top_p; ties kept together);
//   - draw r uniform in [0, sum of kept weights) from philox(seed, row, step) and return the kept token where
//   the
//     running sum in token order passes r.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace fq::cuda {

struct SampleParams {
  float temperature = 1.0f;
  int32_t top_k = 0;   // <= 0 or >= vocab: off
  float top_p = 1.0f;  // in (0, 1]; 1: off
  uint64_t seed = 0;
};

// logits [rows, vocab] (row stride `stride`) fp32 or fp16 -> out [rows] int32. The RNG counter of row r is
// (r, step) with step = *d_step when d_step (device uint64) is given, else `step`.
cudaError_t sample(const void* logits, DType dtype, int64_t rows, int64_t vocab, int64_t stride,
                   const SampleParams& p, uint64_t step, const uint64_t* d_step, int32_t* out,
                   cudaStream_t stream);

}  // namespace fq::cuda
