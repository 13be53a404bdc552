// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a counter-based RNG,
// so draw number (row, step) of a seed is one pure function call — the same on the CPU and in a CUDA kernel
// (this header compiles for both), and no RNG state has to live on the device between decode steps.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FQ_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FQ_HOST_DEVICE inline
#endif

namespace fq::ref {

struct Philox4 {
  uint32_t v[4];
};

// Ten rounds on counter c with key k (the key is bumped by the Weyl constants between rounds).
FQ_HOST_DEVICE Philox4 philox4x32_10(Philox4 c, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c.v[0];
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c.v[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c = Philox4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
  }
  return c;
}

// 64 random bits for draw (row, step) of `seed`.
FQ_HOST_DEVICE uint64_t philox_u64(uint64_t seed, uint64_t row, uint64_t step) {
  const Philox4 r =
      philox4x32_10(Philox4{{static_cast<uint32_t>(row), static_cast<uint32_t>(step),
                             static_cast<uint32_t>(step >> 32), static_cast<uint32_t>(row >> 32)}},
                    static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return (static_cast<uint64_t>(r.v[0]) << 32) | r.v[1];
}

// floor(a * b / 2^64): maps 64 uniform bits a onto [0, b) (bias < b / 2^64).
FQ_HOST_DEVICE uint64_t mulhi64(uint64_t a, uint64_t b) {
  const uint64_t a_lo = a & 0xFFFFFFFFu, a_hi = a >> 32, b_lo = b & 0xFFFFFFFFu, b_hi = b >> 32;
  const uint64_t ll = a_lo * b_lo, lh = a_lo * b_hi, hl = a_hi * b_lo, hh = a_hi * b_hi;
  const uint64_t mid = (ll >> 32) + (lh & 0xFFFFFFFFu) + (hl & 0xFFFFFFFFu);
  return hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
}

}  // namespace fq::ref
