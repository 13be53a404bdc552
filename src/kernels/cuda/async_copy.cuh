// Device helpers for latency- and bandwidth-bound kernels: a block-wide asynchronous global -> shared copy
// (cp.async, sm_80+) so that every load of a stage is in flight at once, a streaming load, programmatic
// dependent launch (PDL, sm_90) and thread-block clusters (sm_90):
// pdl_wait() blocks until the grid this one depends on has finished and its writes are visible; without a
// PDL launch it returns at once. A kernel reads only constants (weights, transforms) before pdl_wait().
#pragma once
#include <cooperative_groups.h>
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
  if (((reinterpret_cast<uintptr_t>(d) | reinterpret_cast<uintptr_t>(s) | static_cast<uintptr_t>(bytes)) &
       15) == 0) {
    for (int64_t i = threadIdx.x * 16LL; i < bytes; i += step * 16)
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(d + i)), "l"(s + i));
  } else {
    for (int64_t i = threadIdx.x * 4LL; i < bytes; i += step * 4)
      asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_u32(d + i)), "l"(s + i));
  }
}

// A box of `rows` rows of `row_bytes` each, src rows `src_stride` bytes apart, to dst packed densely (rows
// row_bytes apart); the same granularity rules as stage_async. Nothing for an empty box.
__device__ __forceinline__ void stage_box_async(void* dst, const void* src, int64_t src_stride, int rows,
                                                int64_t row_bytes) {
  if (rows <= 0 || row_bytes <= 0) return;
  if (rows == 1 || src_stride == row_bytes) {  // contiguous
    stage_async(dst, src, rows * row_bytes);
    return;
  }
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  const bool wide = ((reinterpret_cast<uintptr_t>(d) | reinterpret_cast<uintptr_t>(s) |
                      static_cast<uintptr_t>(src_stride) | static_cast<uintptr_t>(row_bytes)) &
                     15) == 0;
  // 32-bit index arithmetic (a 64-bit division is a long subroutine): boxes stay below 2^31 units.
  const int gran = wide ? 16 : 4, per_row = static_cast<int>(row_bytes / gran), total = rows * per_row;
  for (int i = static_cast<int>(threadIdx.x); i < total; i += static_cast<int>(blockDim.x)) {
    const int64_t r = i / per_row, o = static_cast<int64_t>(i % per_row) * gran;
    const unsigned sd = smem_u32(d + r * row_bytes + o);
    const char* sg = s + r * src_stride + o;
    if (wide)
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sd), "l"(sg));
    else
      asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(sd), "l"(sg));
  }
}

__device__ __forceinline__ void async_wait_all() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

// One thread's copies, for per-warp pipelines: 16 bytes through L2 only (cp.async.cg; both addresses 16-byte
// aligned) or 4 bytes (cp.async.ca; 4-byte aligned). When !valid nothing is read and the destination is
// zero-filled (src-size 0); src must still be a mapped address (the sanitizer checks it).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(valid ? 4 : 0)
               : "memory");
}
// Closes the thread's current group of copies (an empty group is fine and completes at once).
__device__ __forceinline__ void async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most N of the thread's committed groups are pending. The copies are then visible to this
// thread only: other threads read them after a barrier (__syncwarp / __syncthreads).
template <int N>
__device__ __forceinline__ void async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Bulk copies from shared to global memory (sm_90: the TMA engine, one instruction for `bytes` bytes; both
// addresses 16-byte aligned, bytes a multiple of 16). The threads that wrote the shared memory make their
// writes visible to the copy engine with bulk_store_fence() before the barrier after which one thread issues
// the copies (bulk_store) and commits them (bulk_commit); bulk_wait_read<N>() waits until at most N of that
// thread's committed groups still read shared memory (their buffers may then be written again),
// bulk_wait<N>() until their writes are done. No-ops below sm_90, where callers must not take this path.
__device__ __forceinline__ void bulk_store_fence() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void bulk_store(void* gdst, const void* ssrc, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(gdst),
               "r"(smem_u32(ssrc)), "r"(bytes)
               : "memory");
#endif
}
__device__ __forceinline__ void bulk_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
#endif
}
template <int N>
__device__ __forceinline__ void bulk_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

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

// Thread-block clusters. A kernel that uses them is launched with a cluster dimension > 1 only on sm_90+;
// below sm_90 these compile to a block barrier / nothing / the pointer itself (a cluster of one CTA). Every
// thread of every CTA of the cluster calls the barriers, in the same order: arrive, then wait, alternately.
__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().sync();
#else
  __syncthreads();
#endif
}
// Arrive without ordering memory: "this CTA has started" (a CTA may access a peer's shared memory only once
// the peer runs).
__device__ __forceinline__ void cluster_arrive_relaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __cluster_barrier_arrive_relaxed();
#endif
}
// Arrive with release semantics: this CTA's accesses so far (its reads of peers' shared memory included) are
// done before any CTA passes the matching wait.
__device__ __forceinline__ void cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().barrier_arrive();
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().barrier_wait();
#endif
}
// The address of `p` (this CTA's shared memory) in the shared memory of the cluster's CTA `rank`
// (distributed shared memory; ordinary loads and stores).
template <typename T>
__device__ __forceinline__ T* cluster_map(T* p, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().map_shared_rank(p, rank);
#else
  return p;
#endif
}

// Cluster exchange through mbarriers (sm_90): a CTA initializes a barrier in its shared memory that expects
// `bytes` of transactions, publishes the init (fence + the cluster arrive/wait that every CTA does before its
// first remote access), then peers push values into it with st.async, each counted on that barrier, and the
// owner waits for the barrier's phase: no cluster-wide barrier (and no release fence) per exchange.
__device__ __forceinline__ void mbar_init_expect(uint64_t* bar, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "mbarrier.init.shared::cta.b64 [%0], 1;\n"
      "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n"
      "fence.mbarrier_init.release.cluster;\n" ::"r"(smem_u32(bar)),
      "r"(bytes)
      : "memory");
#else
  (void)bar;
  (void)bytes;
#endif
}
// Waits for phase `parity` of the mbarrier at shared-memory address `bar`. kCluster: acquire at cluster
// scope, so that the values other CTAs of the cluster pushed into this CTA are visible; else the default CTA
// scope (bulk copies into this CTA, arrivals of its own threads).
template <bool kCluster>
__device__ __forceinline__ void mbar_wait_at(uint32_t bar, unsigned parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  unsigned done = 0;
  do {
    if constexpr (kCluster)
      asm volatile(
          "{\n.reg .pred p;\n"
          "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
          "selp.u32 %0, 1, 0, p;\n}\n"
          : "=r"(done)
          : "r"(bar), "r"(parity)
          : "memory");
    else
      asm volatile(
          "{\n.reg .pred p;\n"
          "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
          "selp.u32 %0, 1, 0, p;\n}\n"
          : "=r"(done)
          : "r"(bar), "r"(parity)
          : "memory");
  } while (!done);
#else
  (void)bar, (void)parity;
#endif
}
// Waits for phase `parity` of the barrier; the values pushed into this CTA are then visible.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
  mbar_wait_at<true>(smem_u32(bar), parity);
}
// The address of `p` (this CTA's shared memory) in the cluster's CTA `rank`, as a shared::cluster address.
__device__ __forceinline__ unsigned cluster_addr(const void* p, int rank) {
  unsigned r = smem_u32(p);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mapa.shared::cluster.u32 %0, %0, %1;\n" : "+r"(r) : "r"(rank));
#else
  (void)rank;
#endif
  return r;
}
// Stores v into `dst` (this CTA's address of a shared variable) in the cluster's CTA `rank`, counted (8 / 4
// bytes) on that CTA's barrier `bar` (this CTA's address of it). sm_90 only (clusters).
__device__ __forceinline__ void st_async_f2(float2* dst, float2 v, uint64_t* bar, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];\n" ::"r"(
                   cluster_addr(dst, rank)),
               "f"(v.x), "f"(v.y), "r"(cluster_addr(bar, rank))
               : "memory");
#else
  (void)dst, (void)v, (void)bar, (void)rank;
#endif
}
__device__ __forceinline__ void st_async_u32(void* dst, uint32_t v, uint64_t* bar, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];\n" ::"r"(
                   cluster_addr(dst, rank)),
               "r"(v), "r"(cluster_addr(bar, rank))
               : "memory");
#else
  (void)dst, (void)v, (void)bar, (void)rank;
#endif
}

// Bulk loads from global into this CTA's shared memory (sm_90: the TMA engine), counted on an mbarrier of
// this CTA: one thread initializes the barrier (mbar_init, `count` arrivals per phase) before any copy names
// it; per phase, one thread announces the bytes (mbar_expect_tx, which is also its arrival; mbar_arrive is a
// plain arrival, for barriers that count threads) and any threads issue the copies (bulk_load: both addresses
// 16-byte aligned, bytes a multiple of 16, at most 2^20 - 1 per phase); mbar_wait_cta(bar, parity) returns
// once that phase completed, the bytes then visible to the waiting thread. No-ops below sm_90, where callers
// must not take this path.
// The barrier arguments are shared-memory addresses (smem_u32), or pointers to the barrier.
__device__ __forceinline__ void mbar_init(uint32_t bar, unsigned count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "mbarrier.init.shared::cta.b64 [%0], %1;\n"
      "fence.mbarrier_init.release.cluster;\n" ::"r"(bar),
      "r"(count)
      : "memory");
#else
  (void)bar, (void)count;
#endif
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#else
  (void)bar, (void)bytes;
#endif
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#else
  (void)bar;
#endif
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
  mbar_init(smem_u32(bar), count);
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, unsigned bytes) {
  mbar_expect_tx(smem_u32(bar), bytes);
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  mbar_arrive(smem_u32(bar));
}
__device__ __forceinline__ void bulk_load(void* sdst, const void* gsrc, unsigned bytes, uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
          smem_u32(sdst)),
      "l"(gsrc), "r"(bytes), "r"(smem_u32(bar))
      : "memory");
#else
  (void)sdst, (void)gsrc, (void)bytes, (void)bar;
#endif
}
__device__ __forceinline__ void mbar_wait_cta(uint64_t* bar, unsigned parity) {
  mbar_wait_at<false>(smem_u32(bar), parity);
}

// A 16-byte load of data read exactly once (streamed weights): kept out of L1 so that reused data stays
// there.
__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// A kernel launch configuration (for cudaLaunchKernelEx(&l.cfg, ...)) with the PDL attribute when `pdl` and,
// when cluster > 1, thread-block clusters of `cluster` x 1 x 1 CTAs (grid.x a multiple of it; sm_90+).
struct Launch {
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[2] = {};
  Launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl, unsigned cluster = 1) {
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    unsigned n = 0;
    if (pdl) {
      attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr[n].val.programmaticStreamSerializationAllowed = 1;
      ++n;
    }
    if (cluster > 1) {
      attr[n].id = cudaLaunchAttributeClusterDimension;
      attr[n].val.clusterDim.x = cluster;
      attr[n].val.clusterDim.y = 1;
      attr[n].val.clusterDim.z = 1;
      ++n;
    }
    cfg.attrs = attr;
    cfg.numAttrs = n;
  }
  Launch(const Launch&) = delete;
  Launch& operator=(const Launch&) = delete;
};

}  // namespace fq::cuda::detail
