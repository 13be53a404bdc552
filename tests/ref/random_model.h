// Test helpers: random Llama-family models built in memory, and an independent naive forward pass in
// double precision (complex-number RoPE, explicit softmax) to check RefDecoder against.
#pragma once
#include <cmath>
#include <complex>
#include <cstdint>
#include <random>
#include <vector>

#include "model/weights.h"
#include "ref/rope.h"

namespace fq::test {

inline ModelConfig tiny_config(int64_t n_head = 4, int64_t n_head_kv = 2, int64_t head_dim = 8, bool bias = false,
                               bool tied = false) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.n_vocab = 61;
  c.n_head = n_head;
  c.n_head_kv = n_head_kv;
  c.head_dim = head_dim;
  c.n_embd = 24;
  c.n_layer = 2;
  c.n_ff = 40;
  c.n_ctx = 64;
  c.rms_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.attn_bias = bias;
  c.tie_embeddings = tied;
  return c;
}

inline std::vector<float> randn(std::mt19937_64& g, size_t n, float stddev, float mean = 0.0f) {
  std::normal_distribution<float> d(mean, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

inline ModelWeights random_model(const ModelConfig& c, uint64_t seed) {
  std::mt19937_64 g(seed);
  ModelWeights w;
  w.cfg = c;
  const size_t E = c.n_embd, qd = c.n_head * c.head_dim, kvd = c.n_head_kv * c.head_dim, F = c.n_ff;
  w.tok_embd = randn(g, c.n_vocab * E, 1.0f);
  w.norm = randn(g, E, 0.1f, 1.0f);
  if (!c.tie_embeddings) w.lm_head = randn(g, c.n_vocab * E, 0.2f);
  for (int64_t i = 0; i < c.n_layer; ++i) {
    LayerWeights l;
    l.attn_norm = randn(g, E, 0.1f, 1.0f);
    l.ffn_norm = randn(g, E, 0.1f, 1.0f);
    l.wq = randn(g, qd * E, 0.3f);
    l.wk = randn(g, kvd * E, 0.3f);
    l.wv = randn(g, kvd * E, 0.3f);
    l.wo = randn(g, E * qd, 0.2f);
    if (c.attn_bias) {
      l.bq = randn(g, qd, 0.2f);
      l.bk = randn(g, kvd, 0.2f);
      l.bv = randn(g, kvd, 0.2f);
    }
    l.w_gate = randn(g, F * E, 0.2f);
    l.w_up = randn(g, F * E, 0.2f);
    l.w_down = randn(g, E * F, 0.2f);
    w.layers.push_back(std::move(l));
  }
  return w;
}

// Naive full-sequence forward in double: returns logits [n, n_vocab]. RoPE angles come from the fp32
// inv_freq of ref::rope_inv_freq (tested separately) so the two only differ in arithmetic precision.
inline std::vector<double> naive_forward(const ModelWeights& w, const std::vector<int32_t>& tok) {
  const ModelConfig& c = w.cfg;
  const int64_t n = (int64_t)tok.size(), E = c.n_embd, hd = c.head_dim, H = c.n_head, KV = c.n_head_kv;
  const std::vector<float> inv = ref::rope_inv_freq(hd, c.rope_theta, c.rope_scaling);
  auto mm = [](const std::vector<double>& x, int64_t rows, int64_t in, const std::vector<float>& W,
               const std::vector<float>& b, int64_t out) {
    std::vector<double> y(rows * out);
    for (int64_t t = 0; t < rows; ++t)
      for (int64_t o = 0; o < out; ++o) {
        double s = b.empty() ? 0.0 : b[o];
        for (int64_t i = 0; i < in; ++i) s += x[t * in + i] * (double)W[o * in + i];
        y[t * out + o] = s;
      }
    return y;
  };
  auto norm = [&](const std::vector<double>& x, const std::vector<float>& g) {
    std::vector<double> y(x.size());
    for (int64_t t = 0; t < n; ++t) {
      double ss = 0;
      for (int64_t i = 0; i < E; ++i) ss += x[t * E + i] * x[t * E + i];
      const double r = 1.0 / std::sqrt(ss / E + c.rms_eps);
      for (int64_t i = 0; i < E; ++i) y[t * E + i] = x[t * E + i] * r * g[i];
    }
    return y;
  };
  auto rope = [&](std::vector<double>& x, int64_t heads) {
    for (int64_t t = 0; t < n; ++t)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < hd / 2; ++i) {
          double* v = &x[(t * heads + h) * hd];
          const std::complex<double> z(v[i], v[i + hd / 2]);
          const std::complex<double> r = z * std::polar(1.0, (double)t * (double)inv[i]);
          v[i] = r.real();
          v[i + hd / 2] = r.imag();
        }
  };
  std::vector<double> x(n * E);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < E; ++i) x[t * E + i] = w.tok_embd[tok[t] * E + i];
  const std::vector<float> none;
  for (const LayerWeights& l : w.layers) {
    std::vector<double> h = norm(x, l.attn_norm);
    std::vector<double> q = mm(h, n, E, l.wq, l.bq, H * hd), k = mm(h, n, E, l.wk, l.bk, KV * hd),
                        v = mm(h, n, E, l.wv, l.bv, KV * hd);
    rope(q, H);
    rope(k, KV);
    std::vector<double> a(n * H * hd, 0.0);
    for (int64_t hh = 0; hh < H; ++hh) {
      const int64_t g = hh / (H / KV);
      for (int64_t i = 0; i < n; ++i) {
        std::vector<double> p(i + 1);
        double mx = -1e300;
        for (int64_t j = 0; j <= i; ++j) {
          double s = 0;
          for (int64_t d = 0; d < hd; ++d) s += q[(i * H + hh) * hd + d] * k[(j * KV + g) * hd + d];
          p[j] = s / std::sqrt((double)hd);
          mx = std::max(mx, p[j]);
        }
        double sum = 0;
        for (auto& e : p) sum += (e = std::exp(e - mx));
        for (int64_t j = 0; j <= i; ++j)
          for (int64_t d = 0; d < hd; ++d) a[(i * H + hh) * hd + d] += p[j] / sum * v[(j * KV + g) * hd + d];
      }
    }
    std::vector<double> o = mm(a, n, H * hd, l.wo, none, E);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    h = norm(x, l.ffn_norm);
    std::vector<double> gt = mm(h, n, E, l.w_gate, none, c.n_ff), up = mm(h, n, E, l.w_up, none, c.n_ff);
    for (size_t i = 0; i < gt.size(); ++i) gt[i] = gt[i] / (1.0 + std::exp(-gt[i])) * up[i];
    o = mm(gt, n, c.n_ff, l.w_down, none, E);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
  }
  return mm(norm(x, w.norm), n, E, w.head(), none, c.n_vocab);
}

}  // namespace fq::test
