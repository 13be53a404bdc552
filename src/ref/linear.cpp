#include "ref/linear.h"

#include <algorithm>

#include "ref/parallel.h"
#include "ref/simd.h"

namespace fq::ref {
namespace {

using simd::dot_block;

// Rows [o0, o1) x tokens [t0, t1). Tokens are tiled so a tile of x stays in cache while the weight rows
// stream past it; every (t, o) is computed by the same arithmetic whatever block it falls into.
FQ_REF_CLONES void linear_range(const float* x, int64_t in, const float* w, const float* bias, int64_t out,
                                float* y, int64_t t0, int64_t t1, int64_t o0, int64_t o1) {
  constexpr int64_t kTokTile = 64;
  for (int64_t tt = t0; tt < t1; tt += kTokTile) {
    const int64_t te = std::min(t1, tt + kTokTile);
    int64_t o = o0;
    for (; o + 4 <= o1; o += 4) {
      const float* wr = w + o * in;
      const float* br = bias ? bias + o : nullptr;
      int64_t t = tt;
      for (; t + 2 <= te; t += 2) dot_block<2, 4>(x + t * in, in, wr, in, in, br, y + t * out + o, out);
      for (; t < te; ++t) dot_block<1, 4>(x + t * in, in, wr, in, in, br, y + t * out + o, out);
    }
    for (; o < o1; ++o) {
      const float* br = bias ? bias + o : nullptr;
      for (int64_t t = tt; t < te; ++t) dot_block<1, 1>(x + t * in, in, w + o * in, in, in, br, y + t * out + o, out);
    }
  }
}

}  // namespace

float dot_f32(const float* a, const float* b, int64_t len) {
  float y = 0;
  dot_block<1, 1>(a, len, b, len, len, nullptr, &y, 1);
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
