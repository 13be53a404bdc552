#include "ref/qgemm.h"

#include <vector>

#include "flatquant/error.h"

namespace fq::ref {
namespace {

void check_shape(int64_t M, int64_t N, int64_t K) {
  if (M < 0 || N < 0 || K < 0 || K % 2 != 0 || K > kQgemmMaxK)
    fail("qgemm_w4a4: shape M={} N={} K={} invalid (expected M, N >= 0, K even and <= {})", M, N, K,
         kQgemmMaxK);
}

// Sign-extends the two nibbles of a packed byte (two's complement, low nibble = even element).
inline int lo_nibble(uint8_t b) {
  return static_cast<int>(static_cast<unsigned>(b & 0xF) ^ 8u) - 8;
}
inline int hi_nibble(uint8_t b) {
  return static_cast<int>(static_cast<unsigned>(b >> 4) ^ 8u) - 8;
}

}  // namespace

void qgemm_w4a4_acc(const uint8_t* qx, const uint8_t* qw, int64_t M, int64_t N, int64_t K, int32_t* acc) {
  check_shape(M, N, K);
  const int64_t kb = K / 2;
  for (int64_t m = 0; m < M; ++m) {
    const uint8_t* x = qx + m * kb;
    for (int64_t n = 0; n < N; ++n) {
      const uint8_t* w = qw + n * kb;
      // |products| <= 64, K <= 65536: the sum stays far inside int32.
      int32_t s = 0;
      for (int64_t j = 0; j < kb; ++j)
        s += lo_nibble(x[j]) * lo_nibble(w[j]) + hi_nibble(x[j]) * hi_nibble(w[j]);
      acc[m * N + n] = s;
    }
  }
}

float qgemm_epilogue(int32_t acc, float sx, float sw, const float* residual) {
  // Separate statements so that no compiler contracts them into an FMA.
  float t = static_cast<float>(acc);
  t = t * sx;
  t = t * sw;
  if (residual) t = t + *residual;
  return t;
}

void qgemm_w4a4(const uint8_t* qx, const float* sx, const uint8_t* qw, const float* sw, const float* residual,
                int64_t M, int64_t N, int64_t K, float* y) {
  check_shape(M, N, K);
  std::vector<int32_t> acc(static_cast<size_t>(M * N));
  qgemm_w4a4_acc(qx, qw, M, N, K, acc.data());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const int64_t i = m * N + n;
      y[i] = qgemm_epilogue(acc[static_cast<size_t>(i)], sx[m], sw[n], residual ? residual + i : nullptr);
    }
}

}  // namespace fq::ref
