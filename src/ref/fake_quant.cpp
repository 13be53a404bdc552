#include "ref/fake_quant.h"

#include <algorithm>
#include <cmath>

#include "flatquant/error.h"

namespace fq::ref {
namespace {

void check_bits(int bits, const char* what) {
  FQ_CHECK(bits >= 2 && bits <= 8, "{}: bit width {} is not supported (expected 2..8)", what, bits);
}

// Row max / min with the zero start that is the max(., 0) / min(., 0) of the definition.
void row_range(const float* x, int64_t n, float* mx, float* mn) {
  float hi = 0.0f, lo = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    hi = std::max(hi, x[i]);
    lo = std::min(lo, x[i]);
  }
  *mx = hi;
  *mn = lo;
}

// The symmetric per-row scale both entry points use (clip factors applied; 1 for an all-zero row) and the
// code range [lo, hi] of `bits`.
float sym_row_scale(const float* x, int64_t n, int bits, float clip_max, float clip_min, float* lo, float* hi) {
  const int qmax = (1 << (bits - 1)) - 1;
  float rowmax, rowmin;
  row_range(x, n, &rowmax, &rowmin);
  const float xmax = rowmax * clip_max, xmin = rowmin * clip_min;
  const float amax = std::max(std::fabs(xmin), xmax);
  float scale = amax / static_cast<float>(qmax);
  if (scale == 0.0f) scale = 1.0f;
  *lo = static_cast<float>(-qmax - 1);
  *hi = static_cast<float>(qmax);
  return scale;
}

}  // namespace

float quantize_sym_row(const float* x, int64_t n, int bits, float clip_max, float clip_min, int8_t* q) {
  check_bits(bits, "quantize_sym_row");
  float lo, hi;
  const float scale = sym_row_scale(x, n, bits, clip_max, clip_min, &lo, &hi);
  for (int64_t i = 0; i < n; ++i) {
    const float r = std::nearbyint(x[i] / scale);
    q[i] = static_cast<int8_t>(std::min(std::max(r, lo), hi));
  }
  return scale;
}

float fake_quant_sym_row(const float* x, int64_t n, int bits, float clip_max, float clip_min, float* y) {
  check_bits(bits, "fake_quant_sym_row");
  float lo, hi;
  const float scale = sym_row_scale(x, n, bits, clip_max, clip_min, &lo, &hi);
  for (int64_t i = 0; i < n; ++i) {
    const float r = std::min(std::max(std::nearbyint(x[i] / scale), lo), hi);
    y[i] = r * scale;
  }
  return scale;
}

void fake_quant_asym_row(const float* x, int64_t n, int bits, float clip_max, float clip_min, float* y) {
  check_bits(bits, "fake_quant_asym_row");
  const float levels = static_cast<float>((1 << bits) - 1);
  float rowmax, rowmin;
  row_range(x, n, &rowmax, &rowmin);
  float xmax = rowmax * clip_max, xmin = rowmin * clip_min;
  if (xmax == xmin) {  // an all-zero row: the original's guard against a zero scale
    xmin = -1.0f;
    xmax = 1.0f;
  }
  const float s = (xmax - xmin) / levels;
  const float z = std::nearbyint(-xmin / s);
  for (int64_t i = 0; i < n; ++i) {
    const float v = std::min(std::max(std::nearbyint(x[i] / s) + z, 0.0f), levels);
    y[i] = (v - z) * s;
  }
}

}  // namespace fq::ref
