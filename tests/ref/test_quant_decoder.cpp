// The artifact CPU runtime (ref::QuantDecoder) against: the FP reference decoder on the unfolded model (no
// quantization, transforms present), an independent naive double implementation of the fake-quant forward,
// its own Real (integer) mode, and itself across thread counts and batch splits.
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <random>

#include "eval/perplexity.h"
#include "eval/quant_lm.h"
#include "flatquant/error.h"
#include "fold_model.h"
#include "random_model.h"
#include "ref/decoder.h"
#include "ref/fake_quant.h"
#include "ref/kron.h"
#include "ref/qgemm.h"
#include "ref/quant.h"
#include "ref/quant_decoder.h"
#include "ref/quant_ops.h"
#include "ref/rope.h"

namespace fq {
namespace {

using ref::QuantDecoder;
using ref::QuantMode;

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int32_t> d(0, (int32_t)vocab - 1);
  std::vector<int32_t> t((size_t)n);
  for (auto& x : t) x = d(g);
  return t;
}

std::vector<float> run(QuantDecoder& dec, const std::vector<int32_t>& tok) {
  std::vector<float> out(tok.size() * (size_t)dec.config().n_vocab);
  dec.reset();
  dec.forward(tok.data(), (int64_t)tok.size(), out.data());
  return out;
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, (double)std::fabs(x));
  return m;
}

template <class A, class B>
double max_diff(const std::vector<A>& a, const std::vector<B>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs((double)a[i] - (double)b[i]));
  return m;
}

// ---- the n-bit quantizers equal the 4-bit references of quant.h

TEST(FakeQuant, FourBitsEqualsQuantH) {
  std::mt19937_64 g(11);
  for (int trial = 0; trial < 50; ++trial) {
    const int64_t n = 2 * (1 + trial % 40);
    std::vector<float> x =
        test::randn(g, (size_t)n, trial % 3 == 0 ? 0.01f : 2.0f, trial % 5 == 0 ? 1.0f : 0.0f);
    if (trial == 7) std::fill(x.begin(), x.end(), 0.0f);
    const float cmax = trial % 2 ? 1.0f : 0.83f, cmin = trial % 4 ? 1.0f : 0.91f;
    std::vector<int8_t> a((size_t)n), b((size_t)n);
    const float sa = ref::quantize_sym_row(x.data(), n, 4, cmax, cmin, a.data());
    const float sb = ref::quantize_sym_int4_row(x.data(), n, cmax, cmin, b.data());
    ASSERT_EQ(sa, sb);
    ASSERT_EQ(a, b);
    std::vector<float> y((size_t)n);
    ASSERT_EQ(ref::fake_quant_sym_row(x.data(), n, 4, cmax, cmin, y.data()), sb);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i], (float)b[i] * sb);

    // Asymmetric: one "token" of one head through quant.h's KV quantizer, packed and dequantized.
    std::vector<uint8_t> packed((size_t)n / 2);
    float s = 0, z = 0;
    ref::quantize_kv_asym_int4(x.data(), 1, 1, n, n, cmax, cmin, packed.data(), &s, &z);
    std::vector<float> want((size_t)n), got((size_t)n);
    ref::dequantize_kv_asym_int4(packed.data(), &s, &z, 1, 1, n, want.data());
    ref::fake_quant_asym_row(x.data(), n, 4, cmax, cmin, got.data());
    ASSERT_EQ(got, want) << trial;
  }
}

TEST(FakeQuant, EightBits) {
  std::mt19937_64 g(12);
  const std::vector<float> x = test::randn(g, 200, 3.0f);
  std::vector<int8_t> q(200);
  const float s = ref::quantize_sym_row(x.data(), 200, 8, 1.0f, 1.0f, q.data());
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  EXPECT_EQ(s, amax / 127.0f);
  std::vector<float> y(200), ya(200);
  ref::fake_quant_sym_row(x.data(), 200, 8, 1.0f, 1.0f, y.data());
  ref::fake_quant_asym_row(x.data(), 200, 8, 1.0f, 1.0f, ya.data());
  float amin = 0, amx = 0;
  for (float v : x) amin = std::min(amin, v), amx = std::max(amx, v);
  const float sa = (amx - amin) / 255.0f;
  for (int i = 0; i < 200; ++i) {
    EXPECT_LE(std::fabs(y[i] - x[i]), 0.5f * s * 1.0001f);
    EXPECT_LE(std::fabs(ya[i] - x[i]), 0.5f * sa * 1.0001f + 1e-6f);
    EXPECT_EQ(y[i], (float)q[i] * s);
  }
  // Clipping saturates at the ends of the code range.
  std::vector<int8_t> qc(200);
  ref::quantize_sym_row(x.data(), 200, 8, 0.5f, 0.5f, qc.data());
  EXPECT_EQ(*std::max_element(qc.begin(), qc.end()) == 127 || *std::min_element(qc.begin(), qc.end()) == -128,
            true);
}

// ---- the integer linear is qgemm_w4a4 on the packed data

TEST(IntLinear, EqualsQgemmW4A4) {
  std::mt19937_64 g(13);
  const int64_t M = 5, N = 37, K = 96;
  std::uniform_int_distribution<int> c(-8, 7);
  std::vector<int8_t> qx((size_t)(M * K)), qw((size_t)(N * K));
  for (auto& v : qx) v = (int8_t)c(g);
  for (auto& v : qw) v = (int8_t)c(g);
  std::vector<float> sx = test::randn(g, M, 0.1f, 0.5f), sw = test::randn(g, N, 0.01f, 0.05f);
  std::vector<uint8_t> px((size_t)(M * K / 2)), pw((size_t)(N * K / 2));
  ref::pack_int4(qx.data(), M, K, px.data());
  ref::pack_int4(qw.data(), N, K, pw.data());
  std::vector<float> want((size_t)(M * N)), got((size_t)(M * N));
  ref::qgemm_w4a4(px.data(), sx.data(), pw.data(), sw.data(), nullptr, M, N, K, want.data());
  ref::ThreadPool pool(3);
  const std::vector<int16_t> x16(qx.begin(), qx.end()), w16(qw.begin(), qw.end());
  ref::int_linear(x16.data(), sx.data(), w16.data(), sw.data(), nullptr, M, K, N, got.data(), &pool);
  EXPECT_EQ(got, want);
  // With a bias: the epilogue, then one fp32 addition.
  const std::vector<float> bias = test::randn(g, N, 1.0f);
  ref::int_linear(x16.data(), sx.data(), w16.data(), sw.data(), bias.data(), M, K, N, got.data(), nullptr);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) ASSERT_EQ(got[m * N + n], want[m * N + n] + bias[n]);
}

// ---- the vectorized transforms equal kron.h's reference loops bit for bit

TEST(QuantOps, KronRowsEqualsKronTransform) {
  std::mt19937_64 g(14);
  for (auto [L, R] : {std::pair<int64_t, int64_t>{4, 6}, {1, 40}, {9, 64}, {24, 24}, {32, 48}}) {
    const int64_t n = 5, stride = L * R + 3;
    const std::vector<float> x = test::randn(g, (size_t)(n * stride), 1.0f), A = test::randn(g, L * L, 0.5f),
                             B = test::randn(g, R * R, 0.5f);
    std::vector<float> want((size_t)(n * L * R)), got(want.size());
    ref::kron_transform(x.data(), n, stride, nullptr, A.data(), L, B.data(), R, want.data());
    ref::kron_rows(x.data(), n, stride, A.data(), L, B.data(), R, got.data());
    ASSERT_EQ(got, want) << L << "x" << R;
    ref::head_mix(x.data(), n, L, R, stride, A.data(), want.data());
    ref::kron_rows(x.data(), n, stride, A.data(), L, nullptr, R, got.data());
    ASSERT_EQ(got, want) << L << "x" << R << " (head_mix)";
  }
}

TEST(QuantOps, RowvecMatmul) {
  std::mt19937_64 g(15);
  const int64_t d = 16, rows = 3;
  std::vector<float> x = test::randn(g, rows * d, 1.0f);
  const std::vector<float> M = test::randn(g, d * d, 0.5f), x0 = x;
  ref::rowvec_matmul(x.data(), rows, M.data(), d);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t e = 0; e < d; ++e) {
      float acc = 0.0f;
      for (int64_t j = 0; j < d; ++j) acc += x0[r * d + j] * M[j * d + e];
      ASSERT_EQ(x[r * d + e], acc);
    }
}

// ---- (a) no quantization, transforms present: the folded model computes the original one

TEST(QuantDecoder, UnquantizedWithTransformsEqualsRefDecoder) {
  struct Case {
    int64_t H, KV, d;
    bool bias, tied;
  };
  for (const Case& k : {Case{4, 2, 8, false, false}, Case{4, 4, 8, true, true}, Case{6, 2, 4, true, false}}) {
    SCOPED_TRACE(::testing::Message() << "H" << k.H << " KV" << k.KV << " d" << k.d);
    const ModelConfig c = test::tiny_config_for_artifact(k.H, k.KV, k.d, k.bias, k.tied);
    const ModelWeights w = test::random_model(c, 21);
    const Artifact a =
        test::make_artifact(w, test::random_transforms(c, 22), test::test_recipe("w16a16", 16, 16, 16));
    ASSERT_TRUE(a.layers[0].ln_trans.present());
    const std::vector<int32_t> tok = random_tokens(20, c.n_vocab, 23);
    ref::RefDecoder rd(w, 32, 2);
    std::vector<float> want(tok.size() * c.n_vocab);
    rd.forward(tok.data(), (int64_t)tok.size(), want.data());
    for (QuantMode m : {QuantMode::kFake, QuantMode::kReal}) {
      QuantDecoder qd(a, m, 32, 2);
      EXPECT_EQ(qd.mode(), QuantMode::kFake);  // nothing integer to run
      const std::vector<float> got = run(qd, tok);
      EXPECT_LE(max_diff(got, want), 1e-4 * max_abs(want));
    }
  }
}

// ---- (c) Fake mode against a naive double implementation

// Independent of src/: its own unpacking, quantizers (double), transforms, RoPE (complex), attention.
struct NaiveQuant {
  const Artifact& a;
  const ModelConfig& c = a.cfg;

  static std::vector<double> dequant(const QLinear& q) {
    std::vector<double> w((size_t)(q.out * q.in));
    for (int64_t o = 0; o < q.out; ++o)
      for (int64_t i = 0; i < q.in; ++i) {
        const size_t k = (size_t)(o * q.in + i);
        if (q.bits == 16) {
          w[k] = q.weight[k];
        } else if (q.bits == 8) {
          w[k] = (double)(int8_t)q.qweight[k] * q.scales[o];
        } else {
          const uint8_t b = q.qweight[k / 2];
          const int nib = (k % 2 == 0) ? (b & 15) : (b >> 4);
          w[k] = (double)(nib >= 8 ? nib - 16 : nib) * q.scales[o];
        }
      }
    return w;
  }
  // Per-token symmetric quantize-dequantize in double.
  void act_quant(std::vector<double>& x, int64_t dim, float cmax, float cmin) const {
    const int bits = a.recipe.a_bits;
    if (bits >= 16) return;
    const double qmax = (1 << (bits - 1)) - 1;
    for (size_t t = 0; t < x.size() / dim; ++t) {
      double* r = &x[t * dim];
      double mx = 0, mn = 0;
      for (int64_t i = 0; i < dim; ++i) mx = std::max(mx, r[i]), mn = std::min(mn, r[i]);
      double s = std::max(std::fabs(mn * cmin), mx * cmax) / qmax;
      if (s == 0) s = 1;
      for (int64_t i = 0; i < dim; ++i)
        r[i] = std::min(std::max(std::nearbyint(r[i] / s), -qmax - 1), qmax) * s;
    }
  }
  static void asym_quant(double* r, int64_t n, int bits, float cmax, float cmin) {
    if (bits >= 16) return;
    const double levels = (1 << bits) - 1;
    double mx = 0, mn = 0;
    for (int64_t i = 0; i < n; ++i) mx = std::max(mx, r[i]), mn = std::min(mn, r[i]);
    mx *= cmax;
    mn *= cmin;
    if (mx == mn) mn = -1, mx = 1;
    const double s = (mx - mn) / levels, z = std::nearbyint(-mn / s);
    for (int64_t i = 0; i < n; ++i)
      r[i] = (std::min(std::max(std::nearbyint(r[i] / s) + z, 0.0), levels) - z) * s;
  }
  std::vector<double> lin(std::vector<double> x, int64_t in, const QLinear& q) const {
    act_quant(x, in, q.act_clip_max, q.act_clip_min);
    const std::vector<double> w = dequant(q);
    const int64_t n = (int64_t)x.size() / in;
    std::vector<double> y((size_t)(n * q.out));
    for (int64_t t = 0; t < n; ++t)
      for (int64_t o = 0; o < q.out; ++o) {
        double s = q.bias.empty() ? 0.0 : q.bias[o];
        for (int64_t i = 0; i < in; ++i) s += x[t * in + i] * w[o * in + i];
        y[t * q.out + o] = s;
      }
    return y;
  }
  // x (M ⊗ N) per token, M [L, L], N [R, R] (fp32 matrices).
  static std::vector<double> kron(const std::vector<double>& x, const std::vector<float>& M, int64_t L,
                                  const std::vector<float>& N, int64_t R) {
    std::vector<double> y(x.size(), 0.0);
    const int64_t dim = L * R;
    for (size_t t = 0; t < x.size() / dim; ++t)
      for (int64_t i = 0; i < L; ++i)
        for (int64_t j = 0; j < R; ++j) {
          double s = 0;
          for (int64_t k = 0; k < L; ++k)
            for (int64_t l = 0; l < R; ++l) s += x[t * dim + k * R + l] * M[k * L + i] * N[l * R + j];
          y[t * dim + i * R + j] = s;
        }
    return y;
  }
  std::vector<double> norm(const std::vector<double>& x, const std::vector<float>& g) const {
    const int64_t E = c.n_embd;
    std::vector<double> y(x.size());
    for (size_t t = 0; t < x.size() / E; ++t) {
      double ss = 0;
      for (int64_t i = 0; i < E; ++i) ss += x[t * E + i] * x[t * E + i];
      const double r = 1.0 / std::sqrt(ss / E + c.rms_eps);
      for (int64_t i = 0; i < E; ++i) y[t * E + i] = x[t * E + i] * r * g[i];
    }
    return y;
  }
  std::vector<double> forward(const std::vector<int32_t>& tok) const {
    const int64_t n = (int64_t)tok.size(), E = c.n_embd, H = c.n_head, KV = c.n_head_kv, d = c.head_dim;
    const std::vector<float> inv = ref::rope_inv_freq(d, c.rope_theta, c.rope_scaling);
    std::vector<double> x((size_t)(n * E));
    for (int64_t t = 0; t < n; ++t)
      for (int64_t i = 0; i < E; ++i) x[t * E + i] = a.tok_embd[tok[t] * E + i];
    for (const ArtifactLayer& l : a.layers) {
      std::vector<double> h = norm(x, l.attn_norm);
      if (l.ln_trans.present()) h = kron(h, l.ln_trans.left, l.ln_trans.L, l.ln_trans.right, l.ln_trans.R);
      std::vector<double> q = lin(h, E, l.q), k = lin(h, E, l.k), v = lin(h, E, l.v);
      auto rope_and_mix = [&](std::vector<double>& z, int64_t heads, const std::vector<float>& M) {
        for (int64_t t = 0; t < n; ++t)
          for (int64_t hh = 0; hh < heads; ++hh) {
            double* r = &z[(t * heads + hh) * d];
            for (int64_t i = 0; i < d / 2; ++i) {
              const std::complex<double> p =
                  std::complex<double>(r[i], r[i + d / 2]) * std::polar(1.0, (double)t * (double)inv[i]);
              r[i] = p.real();
              r[i + d / 2] = p.imag();
            }
            if (!M.empty()) {
              std::vector<double> o((size_t)d, 0.0);
              for (int64_t e = 0; e < d; ++e)
                for (int64_t j = 0; j < d; ++j) o[e] += r[j] * M[j * d + e];
              std::copy(o.begin(), o.end(), r);
            }
          }
      };
      rope_and_mix(q, H, l.kcache_inv_t);
      rope_and_mix(k, KV, l.kcache_trans);
      for (int64_t t = 0; t < n * KV; ++t) {
        asym_quant(&k[t * d], d, a.recipe.k_bits, l.k_clip_max, l.k_clip_min);
        asym_quant(&v[t * d], d, a.recipe.v_bits, l.v_clip_max, l.v_clip_min);
      }
      std::vector<double> att((size_t)(n * H * d), 0.0);
      for (int64_t hh = 0; hh < H; ++hh) {
        const int64_t g = hh / (H / KV);
        for (int64_t i = 0; i < n; ++i) {
          std::vector<double> p((size_t)(i + 1));
          double mx = -1e300, sum = 0;
          for (int64_t j = 0; j <= i; ++j) {
            double s = 0;
            for (int64_t e = 0; e < d; ++e) s += q[(i * H + hh) * d + e] * k[(j * KV + g) * d + e];
            p[j] = s / std::sqrt((double)d);
            mx = std::max(mx, p[j]);
          }
          for (auto& e : p) sum += (e = std::exp(e - mx));
          for (int64_t j = 0; j <= i; ++j)
            for (int64_t e = 0; e < d; ++e) att[(i * H + hh) * d + e] += p[j] / sum * v[(j * KV + g) * d + e];
        }
      }
      if (!l.o_trans.empty()) {
        std::vector<float> eye((size_t)(d * d), 0.0f);
        for (int64_t e = 0; e < d; ++e) eye[e * d + e] = 1.0f;
        att = kron(att, l.o_trans, H, eye, d);
      }
      std::vector<double> o = lin(att, H * d, l.o);
      for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
      h = norm(x, l.ffn_norm);
      if (l.up_gate_trans.present())
        h = kron(h, l.up_gate_trans.left, l.up_gate_trans.L, l.up_gate_trans.right, l.up_gate_trans.R);
      std::vector<double> gt = lin(h, E, l.gate), up = lin(h, E, l.up);
      for (size_t i = 0; i < gt.size(); ++i) gt[i] = gt[i] / (1.0 + std::exp(-gt[i])) * up[i];
      if (l.down_trans.present())
        gt = kron(gt, l.down_trans.left, l.down_trans.L, l.down_trans.right, l.down_trans.R);
      o = lin(gt, c.n_ff, l.down);
      for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    }
    const std::vector<double> h = norm(x, a.norm);
    const std::vector<float>& head = a.head();
    std::vector<double> logits((size_t)(n * c.n_vocab));
    for (int64_t t = 0; t < n; ++t)
      for (int64_t vv = 0; vv < c.n_vocab; ++vv) {
        double s = 0;
        for (int64_t i = 0; i < E; ++i) s += h[t * E + i] * head[vv * E + i];
        logits[t * c.n_vocab + vv] = s;
      }
    return logits;
  }
};

TEST(QuantDecoder, FakeEqualsNaiveDouble) {
  struct Case {
    int w, a, kv;
    float clip;
    bool bias;
  };
  for (const Case& k : {Case{4, 4, 4, 0.9f, false}, Case{8, 8, 8, 1.0f, true}, Case{4, 16, 16, 1.0f, false},
                        Case{16, 16, 4, 0.95f, true}}) {
    SCOPED_TRACE(::testing::Message() << "w" << k.w << "a" << k.a << "kv" << k.kv);
    const ModelConfig c = test::tiny_config_for_artifact(4, 2, 8, k.bias, false);
    const ModelWeights w = test::random_model(c, 31);
    test::ArtifactOptions opt;
    opt.act_clip = k.clip;
    opt.kv_clip = k.clip;
    const Artifact a =
        test::make_artifact(w, test::random_transforms(c, 32), test::test_recipe("t", k.w, k.a, k.kv), opt);
    const std::vector<int32_t> tok = random_tokens(12, c.n_vocab, 33);
    QuantDecoder qd(a, QuantMode::kFake, 16, 2);
    const std::vector<float> got = run(qd, tok);
    const std::vector<double> want = NaiveQuant{a}.forward(tok);
    double scale = 0;
    for (double v : want) scale = std::max(scale, std::fabs(v));
    EXPECT_LE(max_diff(got, want), 1e-4 * scale);
  }
}

// ---- (b) W4A4KV4: Real (integer) against Fake

double mean_nll(const std::vector<float>& logits, const std::vector<int32_t>& tok, int64_t V) {
  double s = 0;
  std::vector<double> lp((size_t)V);
  for (size_t t = 0; t + 1 < tok.size(); ++t) {
    eval::log_softmax(&logits[t * V], V, lp.data());
    s -= lp[tok[t + 1]];
  }
  return s / (double)(tok.size() - 1);
}

TEST(QuantDecoder, RealCloseToFakeW4A4KV4) {
  const ModelConfig c = test::tiny_config_for_artifact(4, 2, 8, true, false);
  const ModelWeights w = test::random_model(c, 41);
  test::ArtifactOptions opt;
  opt.act_clip = 0.95f;
  const Artifact a =
      test::make_artifact(w, test::random_transforms(c, 42), test::test_recipe("w4a4kv4", 4, 4, 4), opt);
  const std::vector<int32_t> tok = random_tokens(48, c.n_vocab, 43);
  QuantDecoder fake(a, QuantMode::kFake, 64, 2), real(a, QuantMode::kReal, 64, 2);
  EXPECT_EQ(real.mode(), QuantMode::kReal);
  const std::vector<float> lf = run(fake, tok), lr = run(real, tok);
  EXPECT_NE(lf, lr);  // the two paths really differ in arithmetic
  EXPECT_LE(max_diff(lf, lr), 1e-3 * max_abs(lf));
  const double pf = std::exp(mean_nll(lf, tok, c.n_vocab)), pr = std::exp(mean_nll(lr, tok, c.n_vocab));
  EXPECT_LE(std::fabs(pf - pr) / pf, 0.005) << pf << " vs " << pr;

  // Quantization is visible: the FP model's logits are further away than Real is from Fake.
  ref::RefDecoder rd(w, 64, 2);
  std::vector<float> lfp(lf.size());
  rd.forward(tok.data(), (int64_t)tok.size(), lfp.data());
  EXPECT_GT(max_diff(lf, lfp), 2 * max_diff(lf, lr));

  // The same through the evaluator's perplexity (QuantCausalLM).
  eval::QuantCausalLM lm(a, QuantMode::kReal, 48, 1);
  eval::PplOptions po;
  po.seq_len = 48;
  const eval::PplResult r = eval::perplexity(lm, tok, po, "tokens");
  EXPECT_NEAR(r.ppl, pr, 1e-9 * pr);
}

TEST(QuantDecoder, W8A8RealCloseToFake) {
  const ModelConfig c = test::tiny_config_for_artifact(4, 2, 8, false, true);
  const ModelWeights w = test::random_model(c, 51);
  const Artifact a =
      test::make_artifact(w, test::random_transforms(c, 52), test::test_recipe("w8a8", 8, 8, 16));
  const std::vector<int32_t> tok = random_tokens(30, c.n_vocab, 53);
  QuantDecoder fake(a, QuantMode::kFake, 32, 2), real(a, QuantMode::kReal, 32, 2);
  const std::vector<float> lf = run(fake, tok), lr = run(real, tok);
  EXPECT_NE(lf, lr);
  EXPECT_LE(max_diff(lf, lr), 1e-3 * max_abs(lf));
}

// ---- determinism: threads, batch split, rewind

TEST(QuantDecoder, BitIdenticalAcrossThreadsAndSplits) {
  const ModelConfig c = test::tiny_config_for_artifact(4, 2, 8, true, false);
  const ModelWeights w = test::random_model(c, 61);
  const Artifact a =
      test::make_artifact(w, test::random_transforms(c, 62), test::test_recipe("w4a4kv4", 4, 4, 4));
  const std::vector<int32_t> tok = random_tokens(40, c.n_vocab, 63);
  const int64_t V = c.n_vocab;
  for (QuantMode m : {QuantMode::kFake, QuantMode::kReal}) {
    QuantDecoder d1(a, m, 64, 1), d3(a, m, 64, 3);
    const std::vector<float> full = run(d1, tok);
    EXPECT_EQ(run(d3, tok), full);
    // Token pieces of 1, 7 and the rest, from one cache.
    d3.reset();
    std::vector<float> pieces(full.size());
    int64_t p = 0;
    for (int64_t len : {1, 7, 32}) {
      d3.forward(tok.data() + p, len, pieces.data() + p * V);
      p += len;
    }
    EXPECT_EQ(pieces, full);
    // Rewind to 10 and rerun the rest.
    d3.rewind(10);
    EXPECT_EQ(d3.pos(), 10);
    std::vector<float> tail((tok.size() - 10) * V);
    d3.forward(tok.data() + 10, (int64_t)tok.size() - 10, tail.data());
    EXPECT_TRUE(std::equal(tail.begin(), tail.end(), full.begin() + 10 * V));
  }
}

TEST(QuantDecoder, Errors) {
  const ModelConfig c = test::tiny_config_for_artifact(4, 2, 8, false, false);
  const ModelWeights w = test::random_model(c, 71);
  const Artifact a =
      test::make_artifact(w, test::random_transforms(c, 72), test::test_recipe("w4a4kv4", 4, 4, 4));
  QuantDecoder d(a, QuantMode::kFake, 8, 1);
  std::vector<int32_t> tok = random_tokens(9, c.n_vocab, 1);
  std::vector<float> out(9 * c.n_vocab);
  EXPECT_THROW(d.forward(tok.data(), 9, out.data()), Error);
  tok[0] = (int32_t)c.n_vocab;
  EXPECT_THROW(d.forward(tok.data(), 1, out.data()), Error);
  EXPECT_EQ(d.pos(), 0);
  EXPECT_EQ(ref::parse_quant_mode("real"), QuantMode::kReal);
  EXPECT_THROW(ref::parse_quant_mode("int4"), Error);
}

}  // namespace
}  // namespace fq
