#include "ref/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "flatquant/error.h"
#include "ref/parallel.h"
#include "ref/simd.h"

namespace fq::ref {

namespace {

using simd::kLanes;
using simd::v8f;

constexpr int64_t kQueryChunk = 32;

// Queries [i0, i1) of head h. K and V of the head's kv group are transposed to [head_dim, n_keys_padded]
// (zero-padded to a multiple of 8 keys) so that every inner loop runs over contiguous keys.
FQ_REF_CLONES void attend_chunk(const float* q, int64_t i0, int64_t i1, int64_t p0, const float* k,
                                const float* v, const AttentionShape& s, int64_t h, float* out) {
  const int64_t hd = s.head_dim;
  const int64_t kvh = h / (s.n_head / s.n_head_kv);
  const int64_t n_keys = p0 + i1;
  const int64_t ld = (n_keys + kLanes - 1) / kLanes * kLanes;
  const float scale = 1.0f / std::sqrt((float)hd);
  std::vector<float> kt(hd * ld, 0.0f), vt(hd * ld, 0.0f), prob(ld);
  for (int64_t j = 0; j < n_keys; ++j) {
    const float* kr = k + j * s.kv_stride() + kvh * hd;
    const float* vr = v + j * s.kv_stride() + kvh * hd;
    for (int64_t d = 0; d < hd; ++d) {
      kt[d * ld + j] = kr[d];
      vt[d * ld + j] = vr[d];
    }
  }
  for (int64_t i = i0; i < i1; ++i) {
    const float* qi = q + i * s.q_stride() + h * hd;
    float* oi = out + i * s.q_stride() + h * hd;
    const int64_t nk = p0 + i + 1;
    const int64_t nb = (nk + kLanes - 1) / kLanes;  // key blocks of 8; the last one may be partial
    float* pr = prob.data();
    // Scores, 8 keys per vector, each accumulated over d in order and then scaled. Four key blocks run
    // side by side only to hide the add latency; each score's arithmetic is the same either way.
    int64_t kb = 0;
    for (; kb + 4 <= nb; kb += 4) {
      v8f acc[4] = {simd::splat(0.0f), simd::splat(0.0f), simd::splat(0.0f), simd::splat(0.0f)};
      for (int64_t d = 0; d < hd; ++d) {
        const v8f qd = simd::splat(qi[d]);
        const float* kd = kt.data() + d * ld + kb * kLanes;
        for (int u = 0; u < 4; ++u) acc[u] += qd * simd::load(kd + u * kLanes);
      }
      for (int u = 0; u < 4; ++u) simd::store(pr + (kb + u) * kLanes, acc[u] * scale);
    }
    for (; kb < nb; ++kb) {
      v8f acc = simd::splat(0.0f);
      for (int64_t d = 0; d < hd; ++d) acc += simd::splat(qi[d]) * simd::load(kt.data() + d * ld + kb * kLanes);
      simd::store(pr + kb * kLanes, acc * scale);
    }
    // Keys after the query's own position (the tail of the last block) are masked out.
    for (int64_t j = nk; j < nb * kLanes; ++j) pr[j] = -INFINITY;
    v8f mx8 = simd::splat(-INFINITY);
    for (kb = 0; kb < nb; ++kb) mx8 = simd::vmax(mx8, simd::load(pr + kb * kLanes));
    const v8f mx = simd::splat(simd::hmax(mx8));
    // exp(s - max); the masked keys give exactly 0.
    v8f sum8 = simd::splat(0.0f);
    for (kb = 0; kb < nb; ++kb) {
      const v8f e = simd::exp_nonpos(simd::load(pr + kb * kLanes) - mx);
      sum8 += e;
      simd::store(pr + kb * kLanes, e);
    }
    const v8f inv = simd::splat(1.0f / simd::hsum(sum8));
    for (kb = 0; kb < nb; ++kb) simd::store(pr + kb * kLanes, simd::load(pr + kb * kLanes) * inv);
    // out[d] = sum_j p_j v_j[d]: head_dim dot products over the nk keys.
    int64_t d = 0;
    for (; d + 4 <= hd; d += 4) simd::dot_block<1, 4>(pr, nk, vt.data() + d * ld, ld, nk, nullptr, oi + d, 1);
    for (; d < hd; ++d) simd::dot_block<1, 1>(pr, nk, vt.data() + d * ld, ld, nk, nullptr, oi + d, 1);
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
