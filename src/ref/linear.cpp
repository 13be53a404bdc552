#include "ref/linear.h"

#include <algorithm>
#include <cstring>

#include "ref/parallel.h"

namespace fq::ref {
namespace {

// Eight fp32 lanes as a GCC/Clang vector: the compiler emits one AVX register or two SSE registers per
// value, with plain (unfused) multiplies and adds. This is the whole reason for not writing scalar loops:
// a scalar fp32 reduction cannot be vectorized without -ffast-math, which would make the order unspecified.
typedef float v8f __attribute__((vector_size(32)));
constexpr int64_t kLanes = 8;

// By reference, not by value: passing 32-byte vectors by value would depend on the target's ABI.
inline void load8(v8f& v, const float* p) { std::memcpy(&v, p, sizeof v); }

inline float finish(const v8f& a, const float* x, const float* w, int64_t i0, int64_t in) {
  float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  for (int64_t i = i0; i < in; ++i) s += x[i] * w[i];
  return s;
}

// A T x R register block: T tokens against R weight rows, each (t, r) pair with its own accumulator.
template <int T, int R>
inline void block(const float* x, int64_t in, const float* w, const float* bias, float* y, int64_t ldy) {
  v8f acc[T][R];
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) acc[t][r] = v8f{0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t nv = in / kLanes * kLanes;
  for (int64_t i = 0; i < nv; i += kLanes) {
    v8f wv[R];
    for (int r = 0; r < R; ++r) load8(wv[r], w + r * in + i);
    for (int t = 0; t < T; ++t) {
      v8f xv;
      load8(xv, x + t * in + i);
      for (int r = 0; r < R; ++r) acc[t][r] += xv * wv[r];
    }
  }
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) {
      float s = finish(acc[t][r], x + t * in, w + r * in, nv, in);
      if (bias) s += bias[r];
      y[t * ldy + r] = s;
    }
}

// Rows [o0, o1) x tokens [t0, t1). Tokens are tiled so a tile of x stays in cache while the weight rows
// stream past it; every (t, o) is computed by the same arithmetic whatever block it falls into.
// Compiled twice (AVX2 without FMA, and baseline); the loader picks one at startup.
__attribute__((target_clones("avx2", "default"))) void linear_range(const float* x, int64_t in, const float* w,
                                                                     const float* bias, int64_t out, float* y,
                                                                     int64_t t0, int64_t t1, int64_t o0,
                                                                     int64_t o1) {
  constexpr int64_t kTokTile = 64;
  for (int64_t tt = t0; tt < t1; tt += kTokTile) {
    const int64_t te = std::min(t1, tt + kTokTile);
    int64_t o = o0;
    for (; o + 4 <= o1; o += 4) {
      const float* wr = w + o * in;
      const float* br = bias ? bias + o : nullptr;
      int64_t t = tt;
      for (; t + 2 <= te; t += 2) block<2, 4>(x + t * in, in, wr, br, y + t * out + o, out);
      for (; t < te; ++t) block<1, 4>(x + t * in, in, wr, br, y + t * out + o, out);
    }
    for (; o < o1; ++o) {
      const float* br = bias ? bias + o : nullptr;
      for (int64_t t = tt; t < te; ++t) block<1, 1>(x + t * in, in, w + o * in, br, y + t * out + o, out);
    }
  }
}

}  // namespace

float dot_f32(const float* a, const float* b, int64_t len) {
  float y = 0;
  block<1, 1>(a, len, b, nullptr, &y, 1);
  return y;
}

void linear(const float* x, int64_t n, int64_t in, const float* w, const float* bias, int64_t out, float* y,
            ThreadPool* pool) {
  if (n <= 0 || out <= 0) return;
  if (!pool || pool->size() == 1) {
    linear_range(x, in, w, bias, out, y, 0, n, 0, out);
    return;
  }
  // Split the larger of the two operands' row counts so each thread streams its share of it once.
  if (out >= n) {
    pool->parallel_for(out, [&](int64_t b, int64_t e) { linear_range(x, in, w, bias, out, y, 0, n, b, e); }, 16);
  } else {
    pool->parallel_for(n, [&](int64_t b, int64_t e) { linear_range(x, in, w, bias, out, y, b, e, 0, out); }, 4);
  }
}

}  // namespace fq::ref
