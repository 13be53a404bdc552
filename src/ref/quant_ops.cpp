#include "ref/quant_ops.h"

#include <algorithm>
#include <vector>

#include "flatquant/error.h"
#include "ref/parallel.h"
#include "ref/qgemm.h"
#include "ref/simd.h"

namespace fq::ref {
namespace {

// One token: T = A^T X by rows (T[i][:] += A[k][i] X[k][:], k increasing), then Y = T B likewise. Every
// output element sees the same sequence of fp32 additions as kron_transform's scalar loop (starting from
// 0), so the results are identical; only the loop order over independent outputs differs.
FQ_REF_CLONES void kron_one(const float* x, const float* A, int64_t L, const float* B, int64_t R, float* T,
                            float* y) {
  for (int64_t i = 0; i < L; ++i) {
    float* t = B ? T + i * R : y + i * R;
    std::fill(t, t + R, 0.0f);
    for (int64_t k = 0; k < L; ++k) {
      const float a = A[k * L + i];
      const float* xr = x + k * R;
      for (int64_t l = 0; l < R; ++l) t[l] += a * xr[l];
    }
  }
  if (!B) return;
  for (int64_t i = 0; i < L; ++i) {
    float* yr = y + i * R;
    std::fill(yr, yr + R, 0.0f);
    const float* t = T + i * R;
    for (int64_t l = 0; l < R; ++l) {
      const float tv = t[l];
      const float* br = B + l * R;
      for (int64_t j = 0; j < R; ++j) yr[j] += tv * br[j];
    }
  }
}

FQ_REF_CLONES void rowvec_one(float* x, const float* M, int64_t d, float* tmp) {
  std::fill(tmp, tmp + d, 0.0f);
  for (int64_t j = 0; j < d; ++j) {
    const float v = x[j];
    const float* m = M + j * d;
    for (int64_t e = 0; e < d; ++e) tmp[e] += v * m[e];
  }
  std::copy(tmp, tmp + d, x);
}

// Four tokens per weight row, so each row is read once per four tokens; integer sums, any order is exact.
FQ_REF_CLONES void int_rows(const int16_t* qx, const float* sx, const int16_t* qw, const float* sw,
                            const float* bias, int64_t n, int64_t in, int64_t out, int64_t o0, int64_t o1,
                            float* y) {
  for (int64_t o = o0; o < o1; ++o) {
    const int16_t* w = qw + o * in;
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
      const int16_t *x0 = qx + t * in, *x1 = x0 + in, *x2 = x1 + in, *x3 = x2 + in;
      int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      for (int64_t i = 0; i < in; ++i) {
        const int32_t wv = w[i];
        a0 += x0[i] * wv;
        a1 += x1[i] * wv;
        a2 += x2[i] * wv;
        a3 += x3[i] * wv;
      }
      const int32_t acc[4] = {a0, a1, a2, a3};
      for (int u = 0; u < 4; ++u) {
        float v = qgemm_epilogue(acc[u], sx[t + u], sw[o], nullptr);
        if (bias) v = v + bias[o];
        y[(t + u) * out + o] = v;
      }
    }
    for (; t < n; ++t) {
      const int16_t* x0 = qx + t * in;
      int32_t a0 = 0;
      for (int64_t i = 0; i < in; ++i) a0 += x0[i] * (int32_t)w[i];
      float v = qgemm_epilogue(a0, sx[t], sw[o], nullptr);
      if (bias) v = v + bias[o];
      y[t * out + o] = v;
    }
  }
}

}  // namespace

void kron_rows(const float* x, int64_t n, int64_t x_stride, const float* A, int64_t L, const float* B,
               int64_t R, float* y) {
  FQ_CHECK(L >= 1 && R >= 1, "kron_rows: factor sizes ({}, {}) must be positive", L, R);
  std::vector<float> T((size_t)(L * R));
  for (int64_t t = 0; t < n; ++t) kron_one(x + t * x_stride, A, L, B, R, T.data(), y + t * L * R);
}

void rowvec_matmul(float* x, int64_t rows, const float* M, int64_t d) {
  std::vector<float> tmp((size_t)d);
  for (int64_t r = 0; r < rows; ++r) rowvec_one(x + r * d, M, d, tmp.data());
}

void int_linear(const int16_t* qx, const float* sx, const int16_t* qw, const float* sw, const float* bias,
                int64_t n, int64_t in, int64_t out, float* y, ThreadPool* pool) {
  FQ_CHECK(in >= 0 && in <= kQgemmMaxK, "int_linear: in_features {} exceeds {} (int32 headroom)", in,
           kQgemmMaxK);
  auto rows = [&](int64_t b, int64_t e) { int_rows(qx, sx, qw, sw, bias, n, in, out, b, e, y); };
  if (pool)
    pool->parallel_for(out, rows, 16);
  else
    rows(0, out);
}

}  // namespace fq::ref
