// Helpers of the attention op tests: fp16 rounding of host data, and a tolerance check that names the worst
// element (row, column, values) so that a failure says where it went wrong.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace fq::test {

inline std::vector<uint16_t> to_f16(const std::vector<float>& x) {
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = f32_to_f16(x[i]);
  return h;
}

inline std::vector<float> from_f16(const std::vector<uint16_t>& h) {
  std::vector<float> x(h.size());
  for (size_t i = 0; i < h.size(); ++i) x[i] = f16_to_f32(h[i]);
  return x;
}

// Rounds x to fp16 precision in place (the values a kernel reading fp16 sees).
inline void round_f16(std::vector<float>& x) {
  for (auto& v : x) v = f16_to_f32(f32_to_f16(v));
}

// Compares gpu to ref row by row (rows of `cols`): the error of each element is measured relative to the
// largest |ref| of its row (attention outputs are weighted means, so a row's scale is the natural unit), plus
// `atol`. Returns "" when every element is within rtol, else the worst element, its row/column and the count.
inline std::string check_rows(const std::vector<float>& gpu, const std::vector<float>& ref, int64_t cols,
                              double rtol, double atol, const std::string& what) {
  if (gpu.size() != ref.size()) return what + ": size mismatch";
  double worst = 0.0;
  size_t worst_i = 0, bad = 0;
  const int64_t rows = static_cast<int64_t>(ref.size()) / cols;
  for (int64_t r = 0; r < rows; ++r) {
    double scale = 0.0;
    for (int64_t c = 0; c < cols; ++c) scale = std::max(scale, std::fabs(double(ref[r * cols + c])));
    for (int64_t c = 0; c < cols; ++c) {
      const size_t i = static_cast<size_t>(r * cols + c);
      const double e = std::fabs(double(gpu[i]) - double(ref[i])) / (scale + atol);
      const double e_nan = std::isfinite(gpu[i]) ? e : INFINITY;
      if (e_nan > rtol) ++bad;
      if (e_nan > worst || (std::isnan(e_nan) && worst == 0.0)) {
        worst = std::isnan(e_nan) ? INFINITY : e_nan;
        worst_i = i;
      }
    }
  }
  if (bad == 0) return "";
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "%s: %zu of %zu elements beyond rtol %.1e; worst at row %lld col %lld: gpu=%.7g ref=%.7g "
                "(rel err %.3g of the row's max |ref|)%s",
                what.c_str(), bad, ref.size(), rtol, static_cast<long long>(worst_i / cols),
                static_cast<long long>(worst_i % cols), gpu[worst_i], ref[worst_i], worst,
                std::isnan(gpu[worst_i]) ? " (NaN: not written, or a NaN inside the kernel)" : "");
  return buf;
}

}  // namespace fq::test
