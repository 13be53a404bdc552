#include "ref/kron.h"

#include <cmath>
#include <vector>

#include "flatquant/error.h"
#include "ref/quant.h"

namespace fq::ref {
namespace {

// Exact integer square root (floor), robust against double rounding for any int64 we meet.
int64_t isqrt(int64_t v) {
  auto r = static_cast<int64_t>(std::sqrt(static_cast<double>(v)));
  while (r * r > v) --r;
  while ((r + 1) * (r + 1) <= v) ++r;
  return r;
}

}  // namespace

KronDims decompose_dim(int64_t n) {
  FQ_CHECK(n >= 1, "decompose_dim: dimension {} must be positive", n);
  FQ_CHECK(n % 4 != 2, "decompose_dim: dimension {} is 2 mod 4, which has no Fermat factor pair (a^2 - b^2)",
           n);
  int64_t a = isqrt(n);
  if (a * a < n) ++a;  // ceil(sqrt(n))
  for (;; ++a) {
    int64_t b2 = a * a - n;
    int64_t b = isqrt(b2);
    if (b * b == b2) return {a - b, a + b};
  }
}

void kron_transform(const float* x, int64_t n_tokens, int64_t x_stride, const float* s, const float* A,
                    int64_t L, const float* B, int64_t R, float* y) {
  FQ_CHECK(L >= 1 && R >= 1, "kron_transform: factor sizes ({}, {}) must be positive", L, R);
  const int64_t n = L * R;
  std::vector<float> X(static_cast<size_t>(n)), T(static_cast<size_t>(n));
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* xt = x + t * x_stride;
    for (int64_t c = 0; c < n; ++c) X[static_cast<size_t>(c)] = s ? xt[c] * s[c] : xt[c];
    // T = A^T X: T[i][l] = sum_k A[k][i] X[k][l]
    for (int64_t i = 0; i < L; ++i) {
      for (int64_t l = 0; l < R; ++l) {
        float acc = 0.0f;
        for (int64_t k = 0; k < L; ++k) acc += A[k * L + i] * X[static_cast<size_t>(k * R + l)];
        T[static_cast<size_t>(i * R + l)] = acc;
      }
    }
    // Y = T B: Y[i][j] = sum_l T[i][l] B[l][j]
    float* yt = y + t * n;
    for (int64_t i = 0; i < L; ++i) {
      for (int64_t j = 0; j < R; ++j) {
        if (!B) {
          yt[i * R + j] = T[static_cast<size_t>(i * R + j)];
          continue;
        }
        float acc = 0.0f;
        for (int64_t l = 0; l < R; ++l) acc += T[static_cast<size_t>(i * R + l)] * B[l * R + j];
        yt[i * R + j] = acc;
      }
    }
  }
}

void kron_quant_int4(const float* x, int64_t n_tokens, int64_t x_stride, const float* s, const float* A,
                     int64_t L, const float* B, int64_t R, float clip_max, float clip_min, uint8_t* packed,
                     float* scales) {
  const int64_t n = L * R;
  FQ_CHECK(n % 2 == 0, "kron_quant_int4: L*R = {}*{} = {} must be even to pack int4 pairs", L, R, n);
  std::vector<float> y(static_cast<size_t>(n));
  for (int64_t t = 0; t < n_tokens; ++t) {
    kron_transform(x + t * x_stride, 1, n, s, A, L, B, R, y.data());
    quantize_sym_int4(y.data(), 1, n, n, clip_max, clip_min, packed + t * (n / 2), scales + t);
  }
}

void head_mix(const float* attn, int64_t n_tokens, int64_t n_head, int64_t head_dim, int64_t attn_stride,
              const float* Po, float* y) {
  kron_transform(attn, n_tokens, attn_stride, nullptr, Po, n_head, nullptr, head_dim, y);
}

void head_mix_quant_int4(const float* attn, int64_t n_tokens, int64_t n_head, int64_t head_dim,
                         int64_t attn_stride, const float* Po, float clip_max, float clip_min,
                         uint8_t* packed, float* scales) {
  kron_quant_int4(attn, n_tokens, attn_stride, nullptr, Po, n_head, nullptr, head_dim, clip_max, clip_min,
                  packed, scales);
}

}  // namespace fq::ref
