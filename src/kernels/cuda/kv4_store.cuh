// One (token, kv head) row of K or V into the KV4 cache, exactly as ref::quantize_kv_asym_int4: the row's
// min/max, the clipped asymmetric 4-bit parameters, the packed codes, the cell's scale and zero. Shared by
// kv4_append (kv_cache.cu) and the decode RoPE kernel that appends as it goes (w4a4_ops.cu).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/quant_common.cuh"

namespace fq::cuda::detail {

// One warp calls it (lanes stride the row); x(i) gives element i (i < head_dim) as a float. cell: (slot,
// position, head) index of the cache.
template <typename Row>
__device__ __forceinline__ void kv4_store_row(const Kv4Layer& c, bool is_v, int64_t cell, const Kv4Clip& clip,
                                              Row x) {
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  const int64_t d = c.head_dim;
  float vmax = 0.0f, vmin = 0.0f;
  for (int64_t i = lane; i < d; i += kWarp) {
    const float v = x(i);
    vmax = fmaxf(vmax, v);
    vmin = fminf(vmin, v);
  }
  warp_minmax(vmax, vmin);
  float s, z;
  asym_int4_params(vmax, vmin, is_v ? clip.v_max : clip.k_max, is_v ? clip.v_min : clip.k_min, s, z);
  uint8_t* out = (is_v ? c.v : c.k) + cell * (d / 2);
  for (int64_t j = lane; j < d / 2; j += kWarp)
    out[j] = static_cast<uint8_t>(asym_int4_code(x(2 * j), s, z) | (asym_int4_code(x(2 * j + 1), s, z) << 4));
  if (lane == 0) {
    (is_v ? c.v_scale : c.k_scale)[cell] = s;
    (is_v ? c.v_zero : c.k_zero)[cell] = z;
  }
}

}  // namespace fq::cuda::detail
