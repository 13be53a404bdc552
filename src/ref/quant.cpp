#include "ref/quant.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "flatquant/error.h"

namespace fq::ref {
namespace {

void check_even(int64_t rows, int64_t cols, const char* what) {
  FQ_CHECK(rows >= 0 && cols >= 0, "{}: negative shape [{}, {}]", what, rows, cols);
  FQ_CHECK(cols % 2 == 0, "{}: row length {} must be even to pack two 4-bit codes per byte (shape [{}, {}])",
           what, cols, rows, cols);
}

// Half-to-even: std::nearbyint honours the current rounding mode, which is round-to-nearest-even by default
// and is never changed in this program.
float round_even(float v) {
  return std::nearbyint(v);
}

}  // namespace

void pack_int4(const int8_t* q, int64_t rows, int64_t cols, uint8_t* packed) {
  check_even(rows, cols, "pack_int4");
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols / 2; ++j) {
      int lo = q[r * cols + 2 * j], hi = q[r * cols + 2 * j + 1];
      FQ_ASSERT(lo >= -8 && lo <= 7 && hi >= -8 && hi <= 7);
      packed[r * (cols / 2) + j] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
    }
  }
}

void unpack_int4(const uint8_t* packed, int64_t rows, int64_t cols, int8_t* q) {
  check_even(rows, cols, "unpack_int4");
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols / 2; ++j) {
      int b = packed[r * (cols / 2) + j];
      int lo = b & 0xF, hi = b >> 4;
      // Sign-extend the two's complement nibble: 8..15 -> -8..-1.
      q[r * cols + 2 * j] = static_cast<int8_t>(lo >= 8 ? lo - 16 : lo);
      q[r * cols + 2 * j + 1] = static_cast<int8_t>(hi >= 8 ? hi - 16 : hi);
    }
  }
}

void pack_uint4(const uint8_t* q, int64_t rows, int64_t cols, uint8_t* packed) {
  check_even(rows, cols, "pack_uint4");
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols / 2; ++j) {
      int lo = q[r * cols + 2 * j], hi = q[r * cols + 2 * j + 1];
      FQ_ASSERT(lo <= 15 && hi <= 15);
      packed[r * (cols / 2) + j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

void unpack_uint4(const uint8_t* packed, int64_t rows, int64_t cols, uint8_t* q) {
  check_even(rows, cols, "unpack_uint4");
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols / 2; ++j) {
      int b = packed[r * (cols / 2) + j];
      q[r * cols + 2 * j] = static_cast<uint8_t>(b & 0xF);
      q[r * cols + 2 * j + 1] = static_cast<uint8_t>(b >> 4);
    }
  }
}

float sym_int4_scale(float rowmax, float rowmin, float clip_max, float clip_min) {
  float xmax = std::max(rowmax, 0.0f) * clip_max;
  float xmin = std::min(rowmin, 0.0f) * clip_min;
  float amax = std::max(std::fabs(xmin), xmax);
  float scale = amax / 7.0f;
  return scale == 0.0f ? 1.0f : scale;
}

int sym_int4_code(float x, float scale) {
  float r = round_even(x / scale);
  return static_cast<int>(std::min(std::max(r, -8.0f), 7.0f));
}

float quantize_sym_int4_row(const float* x, int64_t n, float clip_max, float clip_min, int8_t* q) {
  float rowmax = 0.0f, rowmin = 0.0f;  // the zero start is the max(.,0) / min(.,0) of the definition
  for (int64_t i = 0; i < n; ++i) {
    rowmax = std::max(rowmax, x[i]);
    rowmin = std::min(rowmin, x[i]);
  }
  float scale = sym_int4_scale(rowmax, rowmin, clip_max, clip_min);
  for (int64_t i = 0; i < n; ++i) q[i] = static_cast<int8_t>(sym_int4_code(x[i], scale));
  return scale;
}

void quantize_sym_int4(const float* x, int64_t rows, int64_t cols, int64_t x_stride, float clip_max,
                       float clip_min, uint8_t* packed, float* scales) {
  check_even(rows, cols, "quantize_sym_int4");
  std::vector<int8_t> q(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    scales[r] = quantize_sym_int4_row(x + r * x_stride, cols, clip_max, clip_min, q.data());
    pack_int4(q.data(), 1, cols, packed + r * (cols / 2));
  }
}

void dequantize_sym_int4(const uint8_t* packed, const float* scales, int64_t rows, int64_t cols, float* x) {
  check_even(rows, cols, "dequantize_sym_int4");
  std::vector<int8_t> q(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    unpack_int4(packed + r * (cols / 2), 1, cols, q.data());
    for (int64_t i = 0; i < cols; ++i) x[r * cols + i] = static_cast<float>(q[i]) * scales[r];
  }
}

void quantize_kv_asym_int4(const float* x, int64_t n_tokens, int64_t n_head, int64_t head_dim,
                           int64_t x_stride, float clip_max, float clip_min, uint8_t* packed, float* scale,
                           float* zero) {
  check_even(n_tokens * n_head, head_dim, "quantize_kv_asym_int4");
  std::vector<uint8_t> q(static_cast<size_t>(head_dim));
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t h = 0; h < n_head; ++h) {
      const float* row = x + t * x_stride + h * head_dim;
      float rowmax = 0.0f, rowmin = 0.0f;
      for (int64_t i = 0; i < head_dim; ++i) {
        rowmax = std::max(rowmax, row[i]);
        rowmin = std::min(rowmin, row[i]);
      }
      float xmax = rowmax * clip_max, xmin = rowmin * clip_min;
      if (xmax == xmin) {  // both 0: an all-zero row (the original's guard against a zero scale)
        xmin = -1.0f;
        xmax = 1.0f;
      }
      float s = (xmax - xmin) / 15.0f;
      float z = round_even(-xmin / s);
      for (int64_t i = 0; i < head_dim; ++i) {
        float v = round_even(row[i] / s) + z;
        q[static_cast<size_t>(i)] = static_cast<uint8_t>(std::min(std::max(v, 0.0f), 15.0f));
      }
      int64_t k = t * n_head + h;
      pack_uint4(q.data(), 1, head_dim, packed + k * (head_dim / 2));
      scale[k] = s;
      zero[k] = z;
    }
  }
}

void dequantize_kv_asym_int4(const uint8_t* packed, const float* scale, const float* zero, int64_t n_tokens,
                             int64_t n_head, int64_t head_dim, float* x) {
  check_even(n_tokens * n_head, head_dim, "dequantize_kv_asym_int4");
  std::vector<uint8_t> q(static_cast<size_t>(head_dim));
  for (int64_t k = 0; k < n_tokens * n_head; ++k) {
    unpack_uint4(packed + k * (head_dim / 2), 1, head_dim, q.data());
    for (int64_t i = 0; i < head_dim; ++i)
      x[k * head_dim + i] = (static_cast<float>(q[static_cast<size_t>(i)]) - zero[k]) * scale[k];
  }
}

}  // namespace fq::ref
