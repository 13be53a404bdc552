#include "ref/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "flatquant/error.h"
#include "ref/parallel.h"

namespace fq::ref {

namespace {

constexpr int64_t kQueryChunk = 32;

// Queries [i0, i1) of head h. K of the head is first transposed to [head_dim, n_keys] so the score loop
// runs over contiguous keys (vectorizable without reassociating any sum).
void attend_chunk(const float* q, int64_t i0, int64_t i1, int64_t p0, const float* k, const float* v,
                  const AttentionShape& s, int64_t h, float* out) {
  const int64_t hd = s.head_dim;
  const int64_t kvh = h / (s.n_head / s.n_head_kv);
  const int64_t n_keys = p0 + i1;
  const float scale = 1.0f / std::sqrt((float)hd);
  std::vector<float> kt(hd * n_keys), score(n_keys), acc(hd);
  for (int64_t j = 0; j < n_keys; ++j) {
    const float* kr = k + j * s.kv_stride() + kvh * hd;
    for (int64_t d = 0; d < hd; ++d) kt[d * n_keys + j] = kr[d];
  }
  for (int64_t i = i0; i < i1; ++i) {
    const float* qi = q + i * s.q_stride() + h * hd;
    const int64_t nk = p0 + i + 1;
    float* sc = score.data();
    for (int64_t j = 0; j < nk; ++j) sc[j] = 0.0f;
    for (int64_t d = 0; d < hd; ++d) {
      const float qd = qi[d];
      const float* kd = kt.data() + d * n_keys;
      for (int64_t j = 0; j < nk; ++j) sc[j] += qd * kd[j];
    }
    float mx = -INFINITY;
    for (int64_t j = 0; j < nk; ++j) {
      sc[j] *= scale;
      mx = std::max(mx, sc[j]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < nk; ++j) {
      sc[j] = std::exp(sc[j] - mx);
      sum += sc[j];
    }
    const float inv = 1.0f / sum;
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t j = 0; j < nk; ++j) {
      const float pj = sc[j] * inv;
      const float* vr = v + j * s.kv_stride() + kvh * hd;
      for (int64_t d = 0; d < hd; ++d) acc[d] += pj * vr[d];
    }
    std::copy(acc.begin(), acc.end(), out + i * s.q_stride() + h * hd);
  }
}

}  // namespace

void attention(const float* q, int64_t n, int64_t p0, const float* k, const float* v, const AttentionShape& s,
               float* out, ThreadPool* pool) {
  FQ_ASSERT(s.n_head > 0 && s.n_head_kv > 0 && s.n_head % s.n_head_kv == 0 && s.head_dim > 0);
  if (n <= 0) return;
  const int64_t n_chunks = (n + kQueryChunk - 1) / kQueryChunk;
  auto task = [&](int64_t t) {
    const int64_t h = t % s.n_head, c = t / s.n_head;
    attend_chunk(q, c * kQueryChunk, std::min(n, (c + 1) * kQueryChunk), p0, k, v, s, h, out);
  };
  if (pool) {
    pool->run(s.n_head * n_chunks, task);
  } else {
    for (int64_t t = 0; t < s.n_head * n_chunks; ++t) task(t);
  }
}

}  // namespace fq::ref
