// Test helpers: FlatQuant's merge (flatquant.md 1.4, 1.7) done independently in double, from a model and a
// set of random invertible transforms to an Artifact, so that the artifact runtime (and the calibration's own
// fold/export) can be checked against it:
//   norm *= s;  W <- W diag(1/s) (A ⊗ B)^{-T}           ln_trans (q, k, v), up_gate_trans (gate, up),
//                                                       down_trans (down; s_down folded into the up rows)
//   v rows of every head <- Pv^T (v_h' = v_h Pv), bias likewise;  W_o <- W_o (Po^{-T} ⊗ Pv^{-T})
//   Pk stays online (kcache_trans.matrix = Pk, inv_t = Pk^{-T}).
// Each factor is M = U diag(σ) V^T with random orthogonal U, V (the SVD parametrization of flatquant.md 1.3),
// so M^{-T} = U diag(1/σ) V^T is exact up to rounding without a numerical inverse. Weights are then
// quantized by RTN (symmetric per output channel, flatquant.md 1.5).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "model/artifact.h"
#include "model/weights.h"
#include "ref/kron.h"
#include "ref/quant.h"

namespace fq::test {

using MatD = std::vector<double>;  // square, row-major

// A random orthogonal n x n matrix: modified Gram-Schmidt on the rows of a Gaussian matrix.
inline MatD random_orthogonal(int64_t n, std::mt19937_64& g) {
  std::normal_distribution<double> d(0.0, 1.0);
  MatD m((size_t)(n * n));
  for (auto& x : m) x = d(g);
  for (int64_t i = 0; i < n; ++i) {
    double* r = &m[(size_t)(i * n)];
    for (int64_t j = 0; j < i; ++j) {
      const double* p = &m[(size_t)(j * n)];
      double dot = 0;
      for (int64_t k = 0; k < n; ++k) dot += r[k] * p[k];
      for (int64_t k = 0; k < n; ++k) r[k] -= dot * p[k];
    }
    double nn = 0;
    for (int64_t k = 0; k < n; ++k) nn += r[k] * r[k];
    nn = std::sqrt(nn);
    for (int64_t k = 0; k < n; ++k) r[k] /= nn;
  }
  return m;
}

// M = U diag(σ) V^T and M^{-T} = U diag(1/σ) V^T.
struct InvertibleMatrix {
  int64_t n = 0;
  MatD m, inv_t;
};

inline InvertibleMatrix random_invertible(int64_t n, std::mt19937_64& g, double sigma_lo = 0.6,
                                          double sigma_hi = 1.6) {
  const MatD U = random_orthogonal(n, g), V = random_orthogonal(n, g);
  std::uniform_real_distribution<double> ud(sigma_lo, sigma_hi);
  std::vector<double> s((size_t)n);
  for (auto& x : s) x = ud(g);
  InvertibleMatrix r;
  r.n = n;
  r.m.assign((size_t)(n * n), 0.0);
  r.inv_t.assign((size_t)(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double a = 0, b = 0;
      for (int64_t k = 0; k < n; ++k) {
        a += U[i * n + k] * s[k] * V[j * n + k];
        b += U[i * n + k] / s[k] * V[j * n + k];
      }
      r.m[i * n + j] = a;
      r.inv_t[i * n + j] = b;
    }
  return r;
}

inline InvertibleMatrix identity_matrix(int64_t n) {
  InvertibleMatrix r;
  r.n = n;
  r.m.assign((size_t)(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) r.m[i * n + i] = 1.0;
  r.inv_t = r.m;
  return r;
}

// x -> (x ⊙ s)(A ⊗ B), A [L, L], B [R, R].
struct KronTransformD {
  int64_t L = 0, R = 0;
  InvertibleMatrix A, B;
  std::vector<double> s;  // [L*R]
};

struct LayerTransformsD {
  KronTransformD ln, up_gate, down;
  InvertibleMatrix Po, Pv, Pk;
};

struct ModelTransformsD {
  std::vector<LayerTransformsD> layers;
};

inline ref::KronDims kron_dims_or_flat(int64_t n) {
  try {
    return ref::decompose_dim(n);
  } catch (const std::exception&) {
    return {1, n};  // n = 2 mod 4: one factor
  }
}

// Random transforms for every layer; `diag` adds per-channel scales s in [0.5, 2]; singular values of every
// matrix in [sigma_lo, sigma_hi] (close to 1: nearly orthogonal, so the 4-bit model stays close to the FP one).
inline ModelTransformsD random_transforms(const ModelConfig& c, uint64_t seed, bool diag = true, double sigma_lo = 0.6,
                                          double sigma_hi = 1.6) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> us(0.5, 2.0);
  auto kron = [&](int64_t n) {
    KronTransformD k;
    const ref::KronDims d = kron_dims_or_flat(n);
    k.L = d.left;
    k.R = d.right;
    k.A = random_invertible(k.L, g, sigma_lo, sigma_hi);
    k.B = random_invertible(k.R, g, sigma_lo, sigma_hi);
    k.s.assign((size_t)n, 1.0);
    if (diag)
      for (auto& x : k.s) x = us(g);
    return k;
  };
  ModelTransformsD t;
  for (int64_t i = 0; i < c.n_layer; ++i) {
    LayerTransformsD l;
    l.ln = kron(c.n_embd);
    l.up_gate = kron(c.n_embd);
    l.down = kron(c.n_ff);
    l.Po = random_invertible(c.n_head, g, sigma_lo, sigma_hi);
    l.Pv = random_invertible(c.head_dim, g, sigma_lo, sigma_hi);
    l.Pk = random_invertible(c.head_dim, g, sigma_lo, sigma_hi);
    t.layers.push_back(std::move(l));
  }
  return t;
}

// r <- r (M ⊗ N) for a row vector r of length L*R (M [L, L], N [R, R]):
//   out[i*R + j] = sum_{k,l} r[k*R + l] M[k][i] N[l][j]
inline void kron_row_d(double* r, const MatD& M, int64_t L, const MatD& N, int64_t R) {
  std::vector<double> T((size_t)(L * R), 0.0), out((size_t)(L * R), 0.0);
  for (int64_t i = 0; i < L; ++i)
    for (int64_t l = 0; l < R; ++l) {
      double a = 0;
      for (int64_t k = 0; k < L; ++k) a += M[k * L + i] * r[k * R + l];
      T[i * R + l] = a;
    }
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < R; ++j) {
      double a = 0;
      for (int64_t l = 0; l < R; ++l) a += T[i * R + l] * N[l * R + j];
      out[i * R + j] = a;
    }
  std::copy(out.begin(), out.end(), r);
}

inline std::vector<float> to_f32(const std::vector<double>& v) {
  return std::vector<float>(v.begin(), v.end());
}
inline std::vector<double> to_f64(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// The merged model before weight quantization, in double.
struct FoldedLayerD {
  std::vector<double> attn_norm, ffn_norm;
  std::vector<double> wq, wk, wv, wo, w_gate, w_up, w_down;  // [out, in]
  std::vector<double> bq, bk, bv;
};
struct FoldedModelD {
  ModelConfig cfg;
  std::vector<FoldedLayerD> layers;
};

// W [out, in] <- W diag(1/s) (A ⊗ B)^{-T}, row by row.
inline void fold_input(std::vector<double>& W, int64_t out, const KronTransformD& k) {
  const int64_t in = k.L * k.R;
  for (int64_t o = 0; o < out; ++o) {
    double* r = &W[(size_t)(o * in)];
    for (int64_t i = 0; i < in; ++i) r[i] /= k.s[i];
    kron_row_d(r, k.A.inv_t, k.L, k.B.inv_t, k.R);
  }
}

inline FoldedModelD fold_model(const ModelWeights& w, const ModelTransformsD& t) {
  const ModelConfig& c = w.cfg;
  const int64_t E = c.n_embd, F = c.n_ff, H = c.n_head, KV = c.n_head_kv, d = c.head_dim;
  FoldedModelD f;
  f.cfg = c;
  for (int64_t il = 0; il < c.n_layer; ++il) {
    const LayerWeights& s = w.layers[il];
    const LayerTransformsD& tr = t.layers[il];
    FoldedLayerD l;
    l.attn_norm = to_f64(s.attn_norm);
    l.ffn_norm = to_f64(s.ffn_norm);
    for (int64_t i = 0; i < E; ++i) {
      l.attn_norm[i] *= tr.ln.s[i];
      l.ffn_norm[i] *= tr.up_gate.s[i];
    }
    l.wq = to_f64(s.wq);
    l.wk = to_f64(s.wk);
    l.wv = to_f64(s.wv);
    l.wo = to_f64(s.wo);
    l.w_gate = to_f64(s.w_gate);
    l.w_up = to_f64(s.w_up);
    l.w_down = to_f64(s.w_down);
    l.bq = to_f64(s.bq);
    l.bk = to_f64(s.bk);
    l.bv = to_f64(s.bv);
    fold_input(l.wq, H * d, tr.ln);
    fold_input(l.wk, KV * d, tr.ln);
    fold_input(l.wv, KV * d, tr.ln);
    // v_h' = v_h Pv: rows h*d + e of W_v' = sum_j Pv[j][e] * rows h*d + j of W_v (and the bias alike).
    {
      const std::vector<double> W = l.wv, b = l.bv;
      for (int64_t h = 0; h < KV; ++h)
        for (int64_t e = 0; e < d; ++e) {
          double* r = &l.wv[(size_t)((h * d + e) * E)];
          std::fill(r, r + E, 0.0);
          for (int64_t j = 0; j < d; ++j) {
            const double p = tr.Pv.m[j * d + e];
            const double* src = &W[(size_t)((h * d + j) * E)];
            for (int64_t i = 0; i < E; ++i) r[i] += p * src[i];
          }
          if (!b.empty()) {
            double a = 0;
            for (int64_t j = 0; j < d; ++j) a += b[h * d + j] * tr.Pv.m[j * d + e];
            l.bv[h * d + e] = a;
          }
        }
    }
    // W_o' = W_o (Po^{-T} ⊗ Pv^{-T}).
    for (int64_t o = 0; o < E; ++o) kron_row_d(&l.wo[(size_t)(o * H * d)], tr.Po.inv_t, H, tr.Pv.inv_t, d);
    fold_input(l.w_gate, F, tr.up_gate);
    fold_input(l.w_up, F, tr.up_gate);
    // down_trans' diag scale goes into the up rows (the original's reparameterize of the MLP).
    for (int64_t j = 0; j < F; ++j)
      for (int64_t i = 0; i < E; ++i) l.w_up[(size_t)(j * E + i)] *= tr.down.s[j];
    fold_input(l.w_down, E, tr.down);
    f.layers.push_back(std::move(l));
  }
  return f;
}

// RTN, symmetric per output channel (flatquant.md 1.5 WeightQuantizer): scale = max(|min(row, 0)|,
// max(row, 0)).clamp(1e-5) / qmax, code = clamp(round(w / scale), -qmax-1, qmax), computed in double.
inline QLinear quantize_rtn(const std::vector<double>& W, int64_t out, int64_t in, int bits,
                            const std::vector<double>& bias) {
  QLinear q;
  q.bits = bits;
  q.out = out;
  q.in = in;
  q.bias = to_f32(bias);
  if (bits == 16) {
    q.weight = to_f32(W);
    return q;
  }
  const int qmax = (1 << (bits - 1)) - 1;
  std::vector<int8_t> codes((size_t)(out * in));
  q.scales.resize((size_t)out);
  for (int64_t o = 0; o < out; ++o) {
    double mx = 0, mn = 0;
    for (int64_t i = 0; i < in; ++i) {
      mx = std::max(mx, W[o * in + i]);
      mn = std::min(mn, W[o * in + i]);
    }
    const double scale = std::max(std::max(-mn, mx), 1e-5) / qmax;
    const auto sf = (float)scale;
    q.scales[o] = sf;
    for (int64_t i = 0; i < in; ++i) {
      const double r = std::nearbyint(W[o * in + i] / (double)sf);
      codes[o * in + i] = (int8_t)std::min<double>(std::max<double>(r, -qmax - 1), qmax);
    }
  }
  if (bits == 4) {
    q.qweight.resize((size_t)(out * in / 2));
    ref::pack_int4(codes.data(), out, in, q.qweight.data());
  } else {
    q.qweight.assign(reinterpret_cast<const uint8_t*>(codes.data()),
                     reinterpret_cast<const uint8_t*>(codes.data()) + codes.size());
  }
  return q;
}

struct ArtifactOptions {
  bool transforms = true;  // write the online transforms (false: a plain RTN artifact, weights unfolded)
  float act_clip = 1.0f;   // every linear's (clip_max, clip_min)
  float kv_clip = 1.0f;    // K and V quantizers' clips
  std::string method = "flatquant";
};

// The artifact of `w` under transforms `t` (folded in double) and recipe `r` (RTN weights).
inline Artifact make_artifact(const ModelWeights& w, const ModelTransformsD& t, const Recipe& r,
                              const ArtifactOptions& opt = {}) {
  const ModelConfig& c = w.cfg;
  const int64_t E = c.n_embd, F = c.n_ff, qd = c.n_head * c.head_dim, kvd = c.n_head_kv * c.head_dim;
  ModelTransformsD ident;
  if (!opt.transforms) {
    for (int64_t i = 0; i < c.n_layer; ++i) {
      LayerTransformsD l;
      auto id = [](int64_t n) {
        KronTransformD k;
        k.L = 1;
        k.R = n;
        k.A = identity_matrix(1);
        k.B = identity_matrix(n);
        k.s.assign((size_t)n, 1.0);
        return k;
      };
      l.ln = id(E);
      l.up_gate = id(E);
      l.down = id(F);
      l.Po = identity_matrix(c.n_head);
      l.Pv = identity_matrix(c.head_dim);
      l.Pk = identity_matrix(c.head_dim);
      ident.layers.push_back(std::move(l));
    }
  }
  const ModelTransformsD& tt = opt.transforms ? t : ident;
  const FoldedModelD f = fold_model(w, tt);
  Artifact a;
  a.cfg = c;
  a.recipe = r;
  a.method = opt.method;
  a.tok_embd = w.tok_embd;
  a.norm = w.norm;
  a.lm_head = w.lm_head;
  for (int64_t il = 0; il < c.n_layer; ++il) {
    const FoldedLayerD& s = f.layers[il];
    const LayerTransformsD& tr = tt.layers[il];
    ArtifactLayer l;
    l.attn_norm = to_f32(s.attn_norm);
    l.ffn_norm = to_f32(s.ffn_norm);
    const std::vector<double> none;
    l.q = quantize_rtn(s.wq, qd, E, r.w_bits, s.bq);
    l.k = quantize_rtn(s.wk, kvd, E, r.w_bits, s.bk);
    l.v = quantize_rtn(s.wv, kvd, E, r.w_bits, s.bv);
    l.o = quantize_rtn(s.wo, E, qd, r.w_bits, none);
    l.gate = quantize_rtn(s.w_gate, F, E, r.w_bits, none);
    l.up = quantize_rtn(s.w_up, F, E, r.w_bits, none);
    l.down = quantize_rtn(s.w_down, E, F, r.w_bits, none);
    for (QLinear* q : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) {
      q->act_clip_max = opt.act_clip;
      q->act_clip_min = opt.act_clip;
    }
    if (opt.transforms) {
      auto kp = [](const KronTransformD& k) {
        KronPair p;
        p.L = k.L;
        p.R = k.R;
        p.left = to_f32(k.A.m);
        p.right = to_f32(k.B.m);
        return p;
      };
      l.ln_trans = kp(tr.ln);
      l.up_gate_trans = kp(tr.up_gate);
      l.down_trans = kp(tr.down);
      l.o_trans = to_f32(tr.Po.m);
      l.kcache_trans = to_f32(tr.Pk.m);
      l.kcache_inv_t = to_f32(tr.Pk.inv_t);
    }
    l.k_clip_max = l.k_clip_min = l.v_clip_max = l.v_clip_min = opt.kv_clip;
    a.layers.push_back(std::move(l));
  }
  return a;
}

// test::tiny_config with q/k/v biases as a config.json can state them: Qwen2 (a Llama config cannot).
inline ModelConfig tiny_config_for_artifact(int64_t n_head, int64_t n_head_kv, int64_t head_dim, bool bias,
                                            bool tied) {
  ModelConfig c;
  c.architecture = bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
  c.model_type = bias ? "qwen2" : "llama";
  c.n_vocab = 61;
  c.n_head = n_head;
  c.n_head_kv = n_head_kv;
  c.head_dim = head_dim;
  c.n_embd = 24;
  c.n_layer = 2;
  c.n_ff = 40;
  c.n_ctx = 64;
  c.attn_bias = bias;
  c.tie_embeddings = tied;
  return c;
}

// A recipe with the given bits (KV included) that passes Recipe::validate.
inline Recipe test_recipe(const std::string& name, int w_bits, int a_bits, int kv_bits) {
  Recipe r;
  r.name = name;
  r.w_bits = w_bits;
  r.a_bits = a_bits;
  r.k_bits = r.v_bits = kv_bits;
  r.lwc = w_bits < 16;
  return r;
}

}  // namespace fq::test
