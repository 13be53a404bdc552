// Device helpers shared by the row kernels (layer_ops.cu, sampling.cu): block-wide sums/maxima and an
// order-preserving integer key of a float.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace fq::cuda::detail {

// Monotone map float -> uint32 (a < b  <=>  key(a) < key(b)); -0 and +0 share a key; NaN maps to 0, below
// -inf (key 0x007FFFFF), so NaN ranks under every number, as runtime::argmax treats it.
__device__ __forceinline__ uint32_t order_key(float x) {
  if (x != x) return 0u;
  uint32_t b = __float_as_uint(x);
  if (b == 0x80000000u) b = 0u;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Block-wide reductions for blockDim.x a multiple of 32 (<= 1024). `red` holds 32 elements of shared memory;
// every thread gets the result. Safe to call back to back (leading barrier).
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, T* red, Op op) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  for (int off = 16; off > 0; off /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  T r = red[0];
  for (int w = 1; w < n_warps; ++w) r = op(r, red[w]);
  return r;
}

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};

}  // namespace fq::cuda::detail
