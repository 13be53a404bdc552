// The sm_90a W4A8 GEMM of the int8 prefill route (prefill_int8.h: w4a8_gemm_wgmma).
//
// Block: 384 threads = two consumer warpgroups (wgmma, 232 registers each) + one producer warpgroup (TMA,
// 40), 128 output channels, 256 tokens (128 with SwiGLU, where each channel has a gate and an up row), K in
// steps of 128 through a 4-stage ring of shared-memory buffers with full / empty mbarriers:
//   A (weights): the packed int4 rows as stored, 64 bytes per row and step, no swizzle. A thread owns two
//      weight rows (adjacent channels, so that its outputs are adjacent); per step it loads 16 bytes of each
//      (natural k 32 t .. 32 t + 31 of its quad lane t) and unpacks them to the s8 A fragments of four
//      m64 x k32 wgmmas (16 * value: the nibble in the high half of a byte, no sign extension; the sums are
//      16x and shifted back exactly).
//   B (codes): 128 tokens x 128 bytes per tile, TMA with the 128-byte swizzle, K-major wgmma descriptors.
//      Because thread t's step-s fragment holds natural k 32 t + 8 s + 4 h + j at mma position 16 h + 4 t +
//      j, the codes are stored permuted (wgmma_perm_col) so that B's column 32 s + 16 h + 4 t + j is that k.
// Each consumer warpgroup keeps two m64 x n128 s32 accumulators (128 registers): tokens 0..127 and 128..255
// of the tile, or (SwiGLU) the gate and the up rows of the same 64 channels and 128 tokens, whose epilogue
// combines them in registers. Without clusters the grid is persistent (one CTA per SM walks its tiles; the
// ring's stage counter runs on across tiles, so the producer fills the next tile's stages during the
// epilogue).
#include <cuda.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/a8_epilogue.cuh"
#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/prefill_int8.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FQ_WGMMA 1
#else
#define FQ_WGMMA 0
#endif

namespace fq::cuda {
namespace {

using detail::smem_u32;

constexpr int kStages = 4;
constexpr int kGroupM = 8;         // token tiles per rasterization group (see the kernel)
constexpr int kThreads = 384;      // 2 consumer warpgroups + 1 producer warpgroup (one thread issues the TMA)
constexpr int kBTile = 128 * 128;  // 128 tokens x 128 bytes of codes
constexpr int kATile = 128 * 64;   // 128 weight rows x 64 bytes (128 int4)
constexpr int kStageBytes = 2 * kBTile + 2 * kATile;  // B0 | B1 | A (up to 256 rows)
constexpr int kSmemBytes = kStages * kStageBytes + 1024 + 2 * kStages * 8;

// ---- PTX wrappers (sm_90a) ------------------------------------------------------------------------------
// TMA: the box at (c0 = inner coordinate, c1 = row) of `map` into shared memory at dst, counted on bar.
__device__ __forceinline__ void tma_2d(uint32_t dst, const CUtensorMap& map, int c0, int c1, uint32_t bar) {
#if FQ_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
      "[%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
#else
  (void)dst, (void)map, (void)c0, (void)c1, (void)bar;
#endif
}
// The same box multicast into the shared memory (same offset) of every CTA of the cluster in `mask`, counted
// on each one's barrier at bar's offset.
__device__ __forceinline__ void tma_2d_multicast(uint32_t dst, const CUtensorMap& map, int c0, int c1,
                                                 uint32_t bar, uint16_t mask) {
#if FQ_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], "
      "[%1, {%2, "
      "%3}], [%4], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(c0), "r"(c1), "r"(bar), "h"(mask)
      : "memory");
#else
  (void)dst, (void)map, (void)c0, (void)c1, (void)bar, (void)mask;
#endif
}
// Arrive on the barrier at `bar` (this CTA's offset) in the cluster's CTA `rank`. Default (CTA-scope release)
// semantics: the arrive only says that this warp's wgmma reads of a stage are done (wgmma.wait_group), no
// write of ours has to be ordered at cluster scope (measured: .release.cluster costs ~1K cycles per arrive,
// which made 2- and 4-CTA clusters 2x and 4x slower).
__device__ __forceinline__ void bar_arrive_cluster(uint32_t bar, unsigned rank) {
#if FQ_WGMMA
  asm volatile(
      "{\n.reg .b32 ra;\n"
      "mapa.shared::cluster.u32 ra, %0, %1;\n"
      "mbarrier.arrive.shared::cluster.b64 _, [ra];\n}\n" ::"r"(bar),
      "r"(rank)
      : "memory");
#else
  (void)bar, (void)rank;
#endif
}
__device__ __forceinline__ unsigned cluster_rank() {
  unsigned r = 0;
#if FQ_WGMMA
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
#endif
  return r;
}
__device__ __forceinline__ void cluster_barrier() {
#if FQ_WGMMA
  __syncwarp();
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::
                   : "memory");
#endif
}

__device__ __forceinline__ void wgmma_fence() {
#if FQ_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if FQ_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if FQ_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Keeps the compiler from moving accesses of the accumulators across the asynchronous wgmma window.
__device__ __forceinline__ void fence_acc(uint32_t (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+r"(d[i])::"memory");
}
// Shared-memory descriptor of a K-major tile with the 128-byte swizzle (rows of 128 bytes, 8-row groups 1024
// bytes apart); `addr` 1024-byte aligned plus the k offset of the step (32 bytes per k32).
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFFu) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}
// d[64] += A (4 registers: 64 x 32 s8, the fragment of mma m16n8k32 per warp) x B (descriptor: 128 tokens
// x 32 bytes, K-major, 128-byte swizzle), s32 accumulators.
__device__ __forceinline__ void wgmma_n128(uint32_t (&d)[64], const uint32_t* a, uint64_t desc) {
#if FQ_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
        "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
        "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]),
        "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]),
        "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]),
        "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]),
        "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]),
        "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]),
        "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(1));
#else
  (void)d, (void)a, (void)desc;
#endif
}

// The four k32 steps' descriptors of a B tile, computed before the wgmma.fence (volatile: not sunk between
// the wgmmas, where ptxas would serialize them for an input register defined inside the pipeline stage).
__device__ __forceinline__ void descs(uint32_t tile, uint64_t (&d)[4]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) asm volatile("mov.b64 %0, %1;\n" : "=l"(d[j]) : "l"(desc_sw128(tile + 32 * j)));
}

// Two weight rows' 16 bytes (natural k 32 t .. 32 t + 31) -> the A fragments of the four k32 steps: step s
// at a[4 s .. 4 s + 3] = {lo k 8s+0..3, hi k 8s+0..3, lo k 8s+4..7, hi k 8s+4..7} (relative to 32 t), each
// value 16x in its byte.
__device__ __forceinline__ void unpack_step(uint32_t wl, uint32_t wh, uint32_t* a) {
  const uint32_t l0 = (wl << 4) & 0xF0F0F0F0u, h0 = wl & 0xF0F0F0F0u;
  const uint32_t l1 = (wh << 4) & 0xF0F0F0F0u, h1 = wh & 0xF0F0F0F0u;
  a[0] = __byte_perm(l0, h0, 0x5140);
  a[1] = __byte_perm(l1, h1, 0x5140);
  a[2] = __byte_perm(l0, h0, 0x7362);
  a[3] = __byte_perm(l1, h1, 0x7362);
}
__device__ __forceinline__ void unpack_a(const uint4& lo, const uint4& hi, uint32_t (&a)[16]) {
  unpack_step(lo.x, hi.x, a);
  unpack_step(lo.y, hi.y, a + 4);
  unpack_step(lo.z, hi.z, a + 8);
  unpack_step(lo.w, hi.w, a + 12);
}

// The thread's two weight rows (r, r + 1) of an A tile at `tile`: the lane whose group is odd loads them in
// the other order, so that the eight lanes of a quarter warp read rows 4p and 4p + 3 (or 4p + 1 and 4p + 2):
// different bank halves, no conflict.
__device__ __forceinline__ void load_a(const uint8_t* tile, int r, int t, bool odd, uint32_t (&a)[16]) {
  const uint4 f = *reinterpret_cast<const uint4*>(tile + (r + (odd ? 1 : 0)) * 64 + 16 * t);
  const uint4 g = *reinterpret_cast<const uint4*>(tile + (r + (odd ? 0 : 1)) * 64 + 16 * t);
  unpack_a(odd ? g : f, odd ? f : g, a);
}

struct Params {
  const float* sw;
  const float* sx;
  int64_t sx_stride;
  int nseg;
  int64_t end[3];
  int rows, K;
  int64_t F;             // SwiGLU: the up rows start at F
  int tiles_m, tiles_n;  // token tiles, channel tiles
  int cluster;  // CTAs per cluster along the channel tiles (1, 2 or 4): each loads 128 / cluster token rows
                // of every B tile and multicasts them to all
  void* y;
  bool y_f16;
  int64_t ldy;
  const float* residual;
};

__device__ __forceinline__ void store2(void* y, bool f16, int64_t o, float v0, float v1) {
  if (f16)
    *reinterpret_cast<__half2*>(static_cast<__half*>(y) + o) =
        __halves2half2(__float2half_rn(v0), __float2half_rn(v1));
  else
    *reinterpret_cast<float2*>(static_cast<float*>(y) + o) = make_float2(v0, v1);
}

template <bool kSwiGLU>
__global__ void __launch_bounds__(kThreads, 1)
    w4a8_wgmma_kernel(const __grid_constant__ CUtensorMap tw, const __grid_constant__ CUtensorMap tx,
                      const Params p) {
#if FQ_WGMMA
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw), base = (raw + 1023u) & ~1023u;
  uint8_t* const sbase = smem_raw + (base - raw);
  const uint32_t full0 = base + kStages * kStageBytes, empty0 = full0 + kStages * 8;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int KT = p.K / 128;
  // The tiles, in groups of kGroupM token tiles: within a group the token tiles vary fastest, then the
  // channel tiles, so that a group's codes stay in L2 while the weights stream past (at 32K tokens the codes
  // of one input are 128 MB: a plain token-fastest order re-read them from DRAM for every channel tile). A
  // cluster's CTAs take adjacent channel tiles of the same token tile. Without clusters the grid is
  // persistent (one CTA per SM): CTA b takes tiles b, b + gridDim.x, ...; the producer loads the next tile's
  // first stages while the consumers run the epilogue. With clusters one tile per CTA.
  struct Tile {
    int m0, c0, seg;
  };
  const int n_tiles = p.tiles_m * p.tiles_n;
  const auto tile_of = [&](int tile) {
    const int C = p.cluster, cid = tile / C, tn = p.tiles_n / C;
    const int first = cid / (kGroupM * tn) * kGroupM, gs = min(kGroupM, p.tiles_m - first),
              local = cid % (kGroupM * tn);
    Tile u;
    u.m0 = (first + local % gs) * (kSwiGLU ? 128 : 256);
    u.c0 = (local / gs * C + tile % C) * 128;
    // The column segment (constant indices: a run-time index would copy p to local memory).
    u.seg = kSwiGLU ? 0 : (p.nseg > 1 && u.c0 >= p.end[0]) + (p.nseg > 2 && u.c0 >= p.end[1]);
    return u;
  };

  const int C = p.cluster;
  const unsigned rank = C > 1 ? cluster_rank() : 0u;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      detail::mbar_init(full0 + 8 * s, 1);
      // One arrive per consumer warp of every CTA that writes the stage. (mbar_init fences each init for
      // the cluster.)
      detail::mbar_init(empty0 + 8 * s, 8 * C);
    }
  }
  if (C > 1)
    cluster_barrier();  // the peers' barriers are initialized before any multicast or remote arrive
  else
    __syncthreads();

  if (warp >= 8) {  // producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (warp == 8 && lane == 0) {
      // This CTA's slice of each B tile: rows [rank * part, (rank + 1) * part), multicast to the cluster.
      const int part = 128 / C;
      const uint32_t boff = rank * part * 128;
      const uint16_t mask = static_cast<uint16_t>((1u << C) - 1u);
      auto load_b = [&](uint32_t dst, int c0x, int row, uint32_t fb) {
        if (C > 1)
          tma_2d_multicast(dst + boff, tx, c0x, row + static_cast<int>(rank) * part, fb, mask);
        else
          tma_2d(dst, tx, c0x, row, fb);
      };
      int it = 0;  // k-steps loaded so far (all tiles): stage it % kStages, its use (it / kStages)
      for (int tile = static_cast<int>(blockIdx.x); tile < n_tiles; tile += static_cast<int>(gridDim.x)) {
        const Tile u = tile_of(tile);
        const int xrow = kSwiGLU ? u.m0 : u.seg * p.rows + u.m0;
        for (int kt = 0; kt < KT; ++kt, ++it) {
          const int s = it % kStages;
          if (it >= kStages) detail::mbar_wait_at<false>(empty0 + 8 * s, ((it / kStages) - 1) & 1);
          const uint32_t st = base + s * kStageBytes, fb = full0 + 8 * s;
          detail::mbar_expect_tx(fb, kSwiGLU ? 2 * kBTile + 2 * kATile : 2 * kBTile + kATile);
          tma_2d(st + 2 * kBTile, tw, kt * 64, u.c0, fb);
          if (kSwiGLU) {
            tma_2d(st + 2 * kBTile + kATile, tw, kt * 64, static_cast<int>(p.F) + u.c0, fb);
            load_b(st, kt * 128, xrow, fb);
            load_b(st + kBTile, kt * 128, p.rows + xrow, fb);
          } else {
            load_b(st, kt * 128, xrow, fb);
            load_b(st + kBTile, kt * 128, xrow + 128, fb);
          }
        }
      }
    }
    if (C > 1) cluster_barrier();  // the peers may still arrive on this CTA's barriers
    return;
  }

  // Consumers.
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int wg = warp / 4, wv = warp % 4, gid = lane / 4, t = lane % 4;
  const bool odd = gid & 1;
  const int r = 64 * wg + 16 * wv + 2 * gid;  // the thread's A rows r, r + 1 (SwiGLU: up rows + 128)
  uint32_t acc0[64], acc1[64];
  uint32_t ax[16], ay[16];
  // A consumed stage is free once every CTA that writes into it (the whole cluster: multicast) has heard.
  auto release = [&](uint32_t bar) {
    if (C == 1) {
      detail::mbar_arrive(bar);
    } else {
      for (int q = 0; q < C; ++q) bar_arrive_cluster(bar, static_cast<unsigned>(q));
    }
  };

  int it0 = 0;  // k-steps consumed before this tile (all tiles): as the producer counts
  for (int tile = static_cast<int>(blockIdx.x); tile < n_tiles;
       tile += static_cast<int>(gridDim.x), it0 += KT) {
    const Tile u = tile_of(tile);
    const int m0 = u.m0, c0 = u.c0, seg = u.seg;
#pragma unroll
    for (int i = 0; i < 64; ++i) acc0[i] = acc1[i] = 0u;

    if (kSwiGLU) {
      for (int kt = 0; kt < KT; ++kt) {
        const int it = it0 + kt, s = it % kStages;
        detail::mbar_wait_at<false>(full0 + 8 * s, (it / kStages) & 1);
        const uint8_t* st = sbase + s * kStageBytes;
        uint64_t d0[4], d1[4];
        descs(base + s * kStageBytes, d0);
        descs(base + s * kStageBytes + kBTile, d1);
        wgmma_wait<1>();  // the previous step's gate group is done: ax is free
        load_a(st + 2 * kBTile, r, t, odd, ax);
        fence_acc(acc0);
        wgmma_fence();
#pragma unroll
        for (int j = 0; j < 4; ++j) wgmma_n128(acc0, ax + 4 * j, d0[j]);
        wgmma_commit();
        wgmma_wait<1>();  // the previous step's up group is done: ay is free, that step's stage too (released
                          // below)
        load_a(st + 2 * kBTile, r + 128, t, odd, ay);
        fence_acc(acc1);
        wgmma_fence();
#pragma unroll
        for (int j = 0; j < 4; ++j) wgmma_n128(acc1, ay + 4 * j, d1[j]);
        wgmma_commit();
        if (kt > 0 && lane == 0) release(empty0 + 8 * ((it - 1) % kStages));
      }
    } else {
      auto step = [&](int kt, uint32_t(&a)[16]) {
        const int it = it0 + kt, s = it % kStages;
        detail::mbar_wait_at<false>(full0 + 8 * s, (it / kStages) & 1);
        uint64_t d0[4], d1[4];  // B0 (tokens 0..127), B1 (128..255)
        descs(base + s * kStageBytes, d0);
        descs(base + s * kStageBytes + kBTile, d1);
        load_a(sbase + s * kStageBytes + 2 * kBTile, r, t, odd, a);
        fence_acc(acc0);
        fence_acc(acc1);
        wgmma_fence();
#pragma unroll
        for (int j = 0; j < 4; ++j) wgmma_n128(acc0, a + 4 * j, d0[j]);
#pragma unroll
        for (int j = 0; j < 4; ++j) wgmma_n128(acc1, a + 4 * j, d1[j]);
        wgmma_commit();
        wgmma_wait<1>();  // the previous step is done: its registers and its stage are free
        if (kt > 0 && lane == 0) release(empty0 + 8 * ((it - 1) % kStages));
      };
      for (int kt = 0; kt < KT; kt += 2) {
        step(kt, ax);
        if (kt + 1 < KT) step(kt + 1, ay);
      }
    }
    wgmma_wait<0>();
    fence_acc(acc0);
    fence_acc(acc1);
    if (lane == 0) release(empty0 + 8 * ((it0 + KT - 1) % kStages));  // the tile's last stage

    // Epilogue: d[4 i + e] = (row r, token 8 i + 2 t + e), d[4 i + 2 + e] = (row r + 1, same token). In
    // chunks of 4 i (8 tokens): first every load of the chunk (token scales, fp32 residual pairs), then the
    // math and the stores (chunks of 8 i spilled and were slower). Interleaved, each load waited for the
    // store before it (y may alias the residual, so the compiler keeps their order): with 8 warps per SM the
    // epilogue was latency-bound and took ~8 of the 29 ms of the four GEMMs in a 2048-token Llama-3-8B
    // prefill.
    constexpr int kChunk = 4;
    const int64_t ch = c0 + r;
    if (kSwiGLU) {
      const float wg0 = p.sw[ch], wg1 = p.sw[ch + 1], wu0 = p.sw[p.F + ch], wu1 = p.sw[p.F + ch + 1];
      const float* sxg = p.sx;
      const float* sxu = p.sx + p.sx_stride;
#pragma unroll
      for (int i0 = 0; i0 < 16; i0 += kChunk) {
        float sg[kChunk][2], su[kChunk][2];
#pragma unroll
        for (int ii = 0; ii < kChunk; ++ii)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int tok = m0 + 8 * (i0 + ii) + 2 * t + e;
            sg[ii][e] = tok < p.rows ? sxg[tok] : 0.0f;
            su[ii][e] = tok < p.rows ? sxu[tok] : 0.0f;
          }
#pragma unroll
        for (int ii = 0; ii < kChunk; ++ii)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int i = i0 + ii, tok = m0 + 8 * i + 2 * t + e;
            if (tok >= p.rows) continue;
            const float v0 =
                detail::a8_swiglu(static_cast<int32_t>(acc0[4 * i + e]) >> 4,
                                  static_cast<int32_t>(acc1[4 * i + e]) >> 4, sg[ii][e], su[ii][e], wg0, wu0);
            const float v1 = detail::a8_swiglu(static_cast<int32_t>(acc0[4 * i + 2 + e]) >> 4,
                                               static_cast<int32_t>(acc1[4 * i + 2 + e]) >> 4, sg[ii][e],
                                               su[ii][e], wg1, wu1);
            store2(p.y, p.y_f16, tok * p.ldy + ch, v0, v1);
          }
      }
    } else {
      const float w0 = p.sw[ch], w1 = p.sw[ch + 1];
      const float* sx = p.sx + seg * p.sx_stride;
      const bool has_res = p.residual != nullptr;
      auto out = [&](uint32_t(&d)[64], int half) {
#pragma unroll
        for (int i0 = 0; i0 < 16; i0 += kChunk) {
          float s[kChunk][2];
          float2 res[kChunk][2];
#pragma unroll
          for (int ii = 0; ii < kChunk; ++ii)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int tok = m0 + 128 * half + 8 * (i0 + ii) + 2 * t + e;
              const bool ok = tok < p.rows;
              s[ii][e] = ok ? sx[tok] : 0.0f;
              res[ii][e] = ok && has_res ? *reinterpret_cast<const float2*>(p.residual + tok * p.ldy + ch)
                                         : make_float2(0.0f, 0.0f);
            }
#pragma unroll
          for (int ii = 0; ii < kChunk; ++ii)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int i = i0 + ii, tok = m0 + 128 * half + 8 * i + 2 * t + e;
              if (tok >= p.rows) continue;
              const float v0 = detail::a8_epi_v(static_cast<int32_t>(d[4 * i + e]) >> 4, s[ii][e], w0,
                                                has_res, res[ii][e].x);
              const float v1 = detail::a8_epi_v(static_cast<int32_t>(d[4 * i + 2 + e]) >> 4, s[ii][e], w1,
                                                has_res, res[ii][e].y);
              store2(p.y, p.y_f16, tok * p.ldy + ch, v0, v1);
            }
        }
      };
      out(acc0, 0);
      out(acc1, 1);
    }
  }
  if (C > 1) cluster_barrier();
#else
  (void)tw, (void)tx, (void)p;
#endif
}

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*,
                                 CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion,
                                 CUtensorMapFloatOOBfill);

// A 2-D uint8 tensor map: `cols` bytes per row (the inner dimension), `rows` rows, box box_cols x box_rows.
cudaError_t make_map(EncodeTiled encode, CUtensorMap* map, const void* ptr, uint64_t cols, uint64_t rows,
                     uint32_t box_cols, uint32_t box_rows, CUtensorMapSwizzle swizzle) {
  const cuuint64_t dims[2] = {cols, rows}, strides[1] = {cols};
  const cuuint32_t box[2] = {box_cols, box_rows}, estr[2] = {1, 1};
  const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<void*>(ptr), dims, strides, box,
                            estr, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

bool aligned(const void* p, uintptr_t b) {
  return reinterpret_cast<uintptr_t>(p) % b == 0;
}

}  // namespace

bool w4a8_wgmma_available(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return false;
  if (prop.major != 9 || prop.minor != 0) return false;
  cudaFuncAttributes fa{};
  // The kernels carry code only when built for sm_90a (FQ_WGMMA); their binary version says what was built.
  return cudaFuncGetAttributes(&fa, w4a8_wgmma_kernel<false>) == cudaSuccess && fa.binaryVersion == 90;
}

bool w4a8_wgmma_fits(const W4A8Gemm& g) {
  if (g.rows < 1 || g.N < 128 || g.K < 128 || g.K % 128 != 0 || g.K > 65536 || g.N % 128 != 0 || g.nseg < 1 ||
      g.nseg > 3 || g.end[g.nseg - 1] != g.N || g.ldy < 2 || g.ldy % 2 != 0)
    return false;
  if (!g.w || !g.sw || !g.x || !g.sx || !g.y || !aligned(g.w, 16) || !aligned(g.x, 16) ||
      !aligned(g.y, g.y_f16 ? 4 : 8))
    return false;
  if (g.nseg > 1 && g.sx_stride < g.rows) return false;
  int64_t prev = 0;
  for (int s = 0; s < g.nseg; ++s) {
    if (g.end[s] <= prev || g.end[s] % 128 != 0) return false;
    prev = g.end[s];
  }
  // Tensor-map and coordinate ranges (int32 coordinates, 2^32 elements per dimension).
  if (g.nseg * g.rows + 256 > 0x7FFFFFFF || g.N > 0x7FFFFFFF) return false;
  if (g.swiglu) {
    const int64_t F = g.end[0];
    if (g.nseg != 2 || g.end[1] != 2 * F || g.residual || g.ldy < F) return false;
  } else {
    if (g.ldy < g.N || (g.residual && (g.y_f16 || !aligned(g.residual, 8)))) return false;
  }
  return true;
}

// Clusters of C CTAs along the channel tiles share each B tile (multicast): all C tiles of a cluster must
// read the same code copy (segment ends multiples of 128 C), and their count must divide by C.
int w4a8_wgmma_cluster(const W4A8Gemm& g) {
  const int64_t tiles_n = (g.swiglu ? g.end[0] : g.N) / 128;
  for (int c : {4, 2}) {
    if (c != g.cluster) continue;  // 0 (automatic): 1, measured fastest (bench/results/qgemm_notes.md)
    bool ok = tiles_n % c == 0;
    for (int s = 0; s < g.nseg && !g.swiglu; ++s) ok = ok && g.end[s] % (128 * c) == 0;
    if (ok) return c;
  }
  return 1;
}

cudaError_t w4a8_gemm_wgmma(const W4A8Gemm& g, cudaStream_t stream) {
  if (!w4a8_wgmma_fits(g)) return cudaErrorInvalidValue;
  int device = 0;
  FQ_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  if (!w4a8_wgmma_available(device)) return cudaErrorNotSupported;
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult q{};
  FQ_CUDA_RETURN_IF_ERROR(
      cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q));
  if (!fn || q != cudaDriverEntryPointSuccess) return cudaErrorNotSupported;
  const auto encode = reinterpret_cast<EncodeTiled>(fn);
  CUtensorMap tw{}, tx{};
  FQ_CUDA_RETURN_IF_ERROR(make_map(encode, &tw, g.w, static_cast<uint64_t>(g.K / 2),
                                   static_cast<uint64_t>(g.N), 64, 128, CU_TENSOR_MAP_SWIZZLE_NONE));
  const int64_t tiles_n = (g.swiglu ? g.end[0] : g.N) / 128;
  const int C = w4a8_wgmma_cluster(g);
  FQ_CUDA_RETURN_IF_ERROR(make_map(encode, &tx, g.x, static_cast<uint64_t>(g.K),
                                   static_cast<uint64_t>(g.nseg * g.rows), 128,
                                   static_cast<uint32_t>(128 / C), CU_TENSOR_MAP_SWIZZLE_128B));
  Params p{};
  p.sw = g.sw;
  p.sx = g.sx;
  p.sx_stride = g.sx_stride;
  p.nseg = g.nseg;
  for (int s = 0; s < 3; ++s) p.end[s] = g.end[s];
  p.rows = static_cast<int>(g.rows);
  p.K = static_cast<int>(g.K);
  p.F = g.end[0];
  p.cluster = C;
  p.y = g.y;
  p.y_f16 = g.y_f16;
  p.ldy = g.ldy;
  p.residual = g.residual;
  const auto kernel = g.swiglu ? w4a8_wgmma_kernel<true> : w4a8_wgmma_kernel<false>;
  FQ_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  const int64_t bm = g.swiglu ? 128 : 256;
  const int64_t tiles_m = (g.rows + bm - 1) / bm;
  if (tiles_m * tiles_n > 0x7FFFFFFF) return cudaErrorInvalidValue;
  p.tiles_m = static_cast<int>(tiles_m);
  p.tiles_n = static_cast<int>(tiles_n);
  // Persistent without clusters: one CTA per SM (the kernel's shared memory and registers allow no second).
  int sms = 0;
  FQ_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t grid = C == 1 ? std::min<int64_t>(tiles_m * tiles_n, sms) : tiles_m * tiles_n;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(grid));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = kSmemBytes;
  cfg.stream = stream;
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = static_cast<unsigned>(C);
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  FQ_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, kernel, tw, tx, p));
  return cudaSuccess;
}

}  // namespace fq::cuda
