// Device sampling (sampling.h). One block of 1024 threads per row. Thresholds are found by radix selection on
// the order-preserving 32-bit key of each logit, one byte per pass (256-bin histograms in shared memory):
// counts for top-k, fixed-point weights for top-p. All sums are 64-bit integers, so the result does not
// depend on the order in which threads add. The draw walks the kept weights in token order: per-thread
// contiguous chunks, a block-wide exclusive scan, then the one thread whose chunk holds r scans it.
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/sampling.h"
#include "ref/philox.h"

namespace fq::cuda {
namespace {

constexpr int kThreads = 1024;
using u64 = unsigned long long;

__device__ __forceinline__ float load_logit(const void* p, bool f16, int64_t i) {
  return f16 ? __half2float(static_cast<const __half*>(p)[i]) : static_cast<const float*>(p)[i];
}

// Weight of a logit in 32.32 fixed point; max_x is the row maximum (finite).
__device__ __forceinline__ u64 weight(float x, float max_x, float inv_t_log2) {
  if (!(x > -INFINITY)) return 0;                   // -inf and NaN
  const float e = exp2f((x - max_x) * inv_t_log2);  // in [0, 1]
  return static_cast<u64>(__float2ull_rn(e * 4294967296.0f));
}

struct Shared {
  u64 red[32];
  u64 mass[256];
  unsigned cnt[256];
  u64 scan[32];
  uint32_t sel;  // selected byte of a radix pass
  u64 carry;     // count / weight above the selected bin
};

__global__ void __launch_bounds__(kThreads)
    sample_kernel(const void* logits, bool f16, int64_t vocab, int64_t stride, SampleParams p, uint64_t step,
                  const uint64_t* d_step, int32_t* out) {
  __shared__ Shared sh;
  const int64_t r = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t base = r * stride;

  // Row maximum as (key, ~index): also the argmax.
  u64 best = 0;
  for (int64_t i = tid; i < vocab; i += kThreads) {
    const uint32_t key = detail::order_key(load_logit(logits, f16, base + i));
    const u64 v = (static_cast<u64>(key) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(i));
    best = v > best ? v : best;
  }
  best = detail::block_reduce(best, sh.red, detail::MaxOp());
  const int32_t arg = static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(best & 0xFFFFFFFFu));
  const float max_x = load_logit(logits, f16, base + arg);
  const bool greedy = p.temperature <= 0.0f || p.top_k == 1 || !(max_x > -INFINITY) || max_x == INFINITY;
  if (greedy) {
    if (tid == 0) out[r] = arg;
    return;
  }
  const float inv_t_log2 = 1.4426950408889634f / p.temperature;

  // ---- top-k: key of the k-th largest logit (count radix select, most significant byte first).
  uint32_t thr = 0;
  if (p.top_k > 0 && p.top_k < vocab) {
    uint32_t prefix = 0, mask = 0;
    u64 remaining = static_cast<u64>(p.top_k);
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = tid; b < 256; b += kThreads) sh.cnt[b] = 0;
      __syncthreads();
      for (int64_t i = tid; i < vocab; i += kThreads) {
        const uint32_t key = detail::order_key(load_logit(logits, f16, base + i));
        if ((key & mask) == prefix) atomicAdd(&sh.cnt[(key >> shift) & 0xFF], 1u);
      }
      __syncthreads();
      if (tid == 0) {
        u64 above = 0;
        int b = 255;
        for (; b > 0; --b) {
          if (above + sh.cnt[b] >= remaining) break;
          above += sh.cnt[b];
        }
        sh.sel = static_cast<uint32_t>(b);
        sh.carry = above;
      }
      __syncthreads();
      remaining -= sh.carry;
      prefix |= sh.sel << shift;
      mask |= 0xFFu << shift;
    }
    thr = prefix;
  }

  // ---- top-p: the largest key tau with weight(key >= tau, key >= thr) >= ceil(top_p * kept weight).
  if (p.top_p < 1.0f) {
    u64 z = 0;
    for (int64_t i = tid; i < vocab; i += kThreads) {
      const float x = load_logit(logits, f16, base + i);
      if (detail::order_key(x) >= thr) z += weight(x, max_x, inv_t_log2);
    }
    z = detail::block_reduce(z, sh.red, detail::SumOp());
    u64 target = static_cast<u64>(ceil(static_cast<double>(p.top_p) * static_cast<double>(z)));
    target = target < 1 ? 1 : (target > z ? z : target);
    uint32_t prefix = 0, mask = 0;
    u64 above = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = tid; b < 256; b += kThreads) sh.mass[b] = 0;
      __syncthreads();
      for (int64_t i = tid; i < vocab; i += kThreads) {
        const float x = load_logit(logits, f16, base + i);
        const uint32_t key = detail::order_key(x);
        if (key >= thr && (key & mask) == prefix) {
          const u64 w = weight(x, max_x, inv_t_log2);
          if (w) atomicAdd(&sh.mass[(key >> shift) & 0xFF], w);
        }
      }
      __syncthreads();
      if (tid == 0) {
        u64 acc = above;
        int b = 255;
        for (; b > 0; --b) {
          if (acc + sh.mass[b] >= target) break;
          acc += sh.mass[b];
        }
        sh.sel = static_cast<uint32_t>(b);
        sh.carry = acc;
      }
      __syncthreads();
      above = sh.carry;
      prefix |= sh.sel << shift;
      mask |= 0xFFu << shift;
    }
    thr = prefix > thr ? prefix : thr;
  }

  // ---- the draw: per-thread contiguous chunks of the vocabulary, in token order.
  const int64_t chunk = (vocab + kThreads - 1) / kThreads;
  const int64_t c0 = tid * chunk, c1 = c0 + chunk < vocab ? c0 + chunk : vocab;
  u64 csum = 0;
  for (int64_t i = c0; i < c1; ++i) {
    const float x = load_logit(logits, f16, base + i);
    if (detail::order_key(x) >= thr) csum += weight(x, max_x, inv_t_log2);
  }
  // Block-wide inclusive scan of csum.
  const int lane = tid % 32, warp = tid / 32;
  u64 inc = csum;
  for (int off = 1; off < 32; off *= 2) {
    const u64 o = __shfl_up_sync(0xffffffffu, inc, off);
    if (lane >= off) inc += o;
  }
  if (lane == 31) sh.scan[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    u64 s = sh.scan[lane];
    for (int off = 1; off < 32; off *= 2) {
      const u64 o = __shfl_up_sync(0xffffffffu, s, off);
      if (lane >= off) s += o;
    }
    sh.scan[lane] = s;  // inclusive over warps
  }
  __syncthreads();
  const u64 total = sh.scan[kThreads / 32 - 1];
  const u64 excl = inc - csum + (warp > 0 ? sh.scan[warp - 1] : 0);
  const uint64_t s = d_step ? *d_step : step;
  const u64 target = ref::mulhi64(ref::philox_u64(p.seed, static_cast<uint64_t>(r), s), total);
  if (total == 0) {  // cannot happen (the maximum weighs 2^32), kept as a guard
    if (tid == 0) out[r] = arg;
    return;
  }
  if (excl <= target && target < excl + csum) {
    u64 acc = excl;
    for (int64_t i = c0; i < c1; ++i) {
      const float x = load_logit(logits, f16, base + i);
      if (detail::order_key(x) < thr) continue;
      acc += weight(x, max_x, inv_t_log2);
      if (acc > target) {
        out[r] = static_cast<int32_t>(i);
        break;
      }
    }
  }
}

}  // namespace

cudaError_t sample(const void* logits, DType dtype, int64_t rows, int64_t vocab, int64_t stride,
                   const SampleParams& p, uint64_t step, const uint64_t* d_step, int32_t* out,
                   cudaStream_t stream) {
  if ((dtype != DType::F32 && dtype != DType::F16) || rows < 0 || rows > 0x7fffffff || vocab < 1 ||
      vocab > 0x7fffffff || stride < vocab)
    return cudaErrorInvalidValue;
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f) || p.temperature != p.temperature) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  sample_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, dtype == DType::F16, vocab,
                                                                      stride, p, step, d_step, out);
  FQ_CUDA_RETURN_LAUNCH_ERROR();
  return cudaSuccess;
}

}  // namespace fq::cuda
