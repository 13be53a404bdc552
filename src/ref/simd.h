// Internal to src/ref: 8-lane fp32 vectors (GCC/Clang vector extensions) and the kernels built on them.
// Why not plain scalar loops: an fp32 reduction cannot be vectorized without -ffast-math, which would make
// the summation order unspecified. Here the order is written down, so results are deterministic and equal
// on every ISA: the compiler lowers v8f to one AVX or two SSE registers with the same per-lane operations,
// and FMA is never enabled (see the target_clones in the callers), so no product is ever fused.
// Everything is always_inline so that each target clone of a caller gets its own copy.
#pragma once
#include <cstdint>

// Vectors are passed by value between always_inline functions only; the ABI note GCC attaches to that
// (-Wpsabi) concerns real calls, of which there are none. GCC reports it at the point of use, so the
// suppression stays on for the rest of the including .cpp (only src/ref kernel sources include this).
#pragma GCC diagnostic ignored "-Wpsabi"

#define FQ_REF_INLINE inline __attribute__((always_inline))
// The hot loops are compiled for AVX2 (no FMA) and for the baseline; the loader picks one at startup.
// clang (only used for the fuzz build) rejects 256-bit vectors passed to always_inline helpers inside the
// "default" clone, so a clang build keeps the baseline only: same per-lane arithmetic, same results.
#if defined(__clang__)
#define FQ_REF_CLONES
#else
#define FQ_REF_CLONES __attribute__((target_clones("avx2", "default")))
#endif

namespace fq::ref::simd {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
// The same vector with 4-byte alignment and may_alias: dereferencing it is an unaligned vector load/store.
typedef float v8f_u __attribute__((vector_size(32), aligned(4), may_alias));
constexpr int64_t kLanes = 8;

FQ_REF_INLINE v8f load(const float* p) { return *reinterpret_cast<const v8f_u*>(p); }
FQ_REF_INLINE void store(float* p, v8f v) { *reinterpret_cast<v8f_u*>(p) = v; }
FQ_REF_INLINE v8f splat(float x) { return v8f{x, x, x, x, x, x, x, x}; }

// Pairwise sum of the lanes in a fixed order.
FQ_REF_INLINE float hsum(v8f a) { return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])); }

// The dot-product kernel of linear(): T rows of x (stride ldx) against R rows of w (stride ldw), length
// `len`. Element i goes to lane partial i mod 8 over the largest multiple of 8; then the lanes are summed
// pairwise (hsum), then the remaining products are added in order, then bias[r] when given.
template <int T, int R>
FQ_REF_INLINE void dot_block(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t len,
                             const float* bias, float* y, int64_t ldy) {
  v8f acc[T][R];
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) acc[t][r] = splat(0.0f);
  const int64_t nv = len / kLanes * kLanes;
  for (int64_t i = 0; i < nv; i += kLanes) {
    v8f wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load(w + r * ldw + i);
    for (int t = 0; t < T; ++t) {
      const v8f xv = load(x + t * ldx + i);
      for (int r = 0; r < R; ++r) acc[t][r] += xv * wv[r];
    }
  }
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) {
      float s = hsum(acc[t][r]);
      for (int64_t i = nv; i < len; ++i) s += x[t * ldx + i] * w[r * ldw + i];
      if (bias) s += bias[r];
      y[t * ldy + r] = s;
    }
}

// exp(x) for x <= 0 (softmax after max subtraction), lane by lane: Cody-Waite reduction x = k ln2 + r with
// |r| <= ln2/2, the degree-7 minimax polynomial of the Cephes expf, and 2^k built in the exponent bits.
// Relative error about 1e-7 (1-2 ulp); exp(x) for x < -87 (below the smallest normal fp32) is flushed to 0;
// NaN stays NaN. A scalar libm call per element would be both slower and unvectorizable.
FQ_REF_INLINE v8f exp_nonpos(v8f x) {
  const v8i tiny = x < -87.0f;  // all-ones lanes where the result is flushed to 0
  const v8f xc = tiny ? splat(-87.0f) : x;
  // Round x*log2(e) to the nearest integer with the 1.5*2^23 trick (|value| < 2^22 here).
  const v8f magic = splat(12582912.0f);
  const v8f kf = (xc * 1.44269504088896341f + magic) - magic;
  v8f r = xc - kf * 0.693359375f;
  r = r - kf * -2.12194440e-4f;
  const v8f z = r * r;
  v8f p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * z + r + 1.0f;
  const v8i bits = (__builtin_convertvector(kf, v8i) + 127) << 23;
  const v8f y = p * (v8f)bits;  // a same-size vector cast reinterprets the bits
  return tiny ? splat(0.0f) : y;
}

// Lane-wise maximum (exact, so any order of reduction gives the same result).
FQ_REF_INLINE v8f vmax(v8f a, v8f b) { return a > b ? a : b; }
FQ_REF_INLINE float hmax(v8f a) {
  float m = a[0];
  for (int l = 1; l < 8; ++l) m = a[l] > m ? a[l] : m;
  return m;
}

}  // namespace fq::ref::simd
