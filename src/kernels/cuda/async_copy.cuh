// Device helpers for latency- and bandwidth-bound kernels: a block-wide asynchronous global -> shared copy
// (cp.async, sm_80+) so that every load of a stage is in flight at once, a streaming load, and programmatic
// dependent launch (PDL, sm_90):
// pdl_wait() blocks until the grid this one depends on has finished and its writes are visible; without a
// PDL launch it returns at once. A kernel reads only constants (weights, transforms) before pdl_wait().
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace fq::cuda::detail {

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// The block copies `bytes` (a multiple of 4, both addresses 4-byte aligned) from global to shared memory,
// 16 bytes per cp.async when both addresses and the size allow it, else 4. Call async_wait_all() and
// __syncthreads() before reading.
__device__ __forceinline__ void stage_async(void* dst, const void* src, int64_t bytes) {
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  const int64_t step = blockDim.x;
  if (((reinterpret_cast<uintptr_t>(d) | reinterpret_cast<uintptr_t>(s) | static_cast<uintptr_t>(bytes)) & 15) == 0) {
    for (int64_t i = threadIdx.x * 16LL; i < bytes; i += step * 16)
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(d + i)), "l"(s + i));
  } else {
    for (int64_t i = threadIdx.x * 4LL; i < bytes; i += step * 4)
      asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_u32(d + i)), "l"(s + i));
  }
}

__device__ __forceinline__ void async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Lets the next PDL-launched grid start its constant prologue while this one runs.
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// A 16-byte load of data read exactly once (streamed weights): kept out of L1 so that reused data stays there.
__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// A kernel launch configuration with the PDL attribute when `pdl` (for cudaLaunchKernelEx(&l.cfg, ...)).
struct Launch {
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr = {};
  Launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl) {
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl ? 1 : 0;
  }
  Launch(const Launch&) = delete;
  Launch& operator=(const Launch&) = delete;
};

}  // namespace fq::cuda::detail
