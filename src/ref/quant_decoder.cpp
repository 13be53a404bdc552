#include "ref/quant_decoder.h"

#include <algorithm>

#include "flatquant/error.h"
#include "ref/attention.h"
#include "ref/fake_quant.h"
#include "ref/kron.h"
#include "ref/linear.h"
#include "ref/qgemm.h"
#include "ref/quant.h"
#include "ref/quant_ops.h"
#include "ref/rmsnorm.h"
#include "ref/swiglu.h"

namespace fq::ref {

struct QuantDecoder::Linear {
  int64_t out = 0, in = 0;
  std::vector<float> w;        // [out, in] dequantized fp32 (float path)
  std::vector<int16_t> codes;  // [out, in] weight codes (integer path)
  std::vector<float> scales;   // [out] weight scales (integer path)
  std::vector<float> bias;     // [out] or empty
  float clip_max = 1.0f, clip_min = 1.0f;
};

struct QuantDecoder::Layer {
  std::vector<float> attn_norm, ffn_norm;
  Linear q, k, v, o, gate, up, down;
  KronPair ln_trans, up_gate_trans, down_trans;
  std::vector<float> o_trans, kcache_trans, kcache_inv_t;
  float k_clip_max = 1.0f, k_clip_min = 1.0f, v_clip_max = 1.0f, v_clip_min = 1.0f;
};

const char* quant_mode_name(QuantMode m) {
  return m == QuantMode::kFake ? "fake" : "real";
}

QuantMode parse_quant_mode(const std::string& s) {
  if (s == "fake") return QuantMode::kFake;
  if (s == "real") return QuantMode::kReal;
  fail("--quant: expected \"fake\" or \"real\", found \"{}\"", s);
}

namespace {

void check_config(const ModelConfig& c) {
  FQ_CHECK(
      c.n_vocab > 0 && c.n_embd > 0 && c.n_layer > 0 && c.n_head > 0 && c.n_head_kv > 0 && c.head_dim > 0 &&
          c.n_ff > 0,
      "model config: non-positive dimension (n_vocab {}, n_embd {}, n_layer {}, n_head {}, n_head_kv {}, "
      "head_dim {}, n_ff {})",
      c.n_vocab, c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.head_dim, c.n_ff);
  FQ_CHECK(c.n_head % c.n_head_kv == 0, "model config: n_head {} is not a multiple of n_head_kv {}", c.n_head,
           c.n_head_kv);
  FQ_CHECK(c.hidden_act == "silu", "model config: hidden_act '{}' is not supported (expected silu)",
           c.hidden_act);
}

// Unpacks / copies the weight codes (int4 nibbles sign-extended to int8: the integer products, and so the
// int32 sums, are the same as on the packed data).
std::vector<int16_t> weight_codes(const QLinear& q) {
  std::vector<int8_t> c((size_t)(q.out * q.in));
  if (q.bits == 4)
    unpack_int4(q.qweight.data(), q.out, q.in, c.data());
  else
    std::copy(q.qweight.begin(), q.qweight.end(), reinterpret_cast<uint8_t*>(c.data()));
  return std::vector<int16_t>(c.begin(), c.end());
}

// y = x (A ⊗ B) per token, tokens split over the pool (each token is independent, so the split does not
// change any result).
void kron_tokens(const float* x, int64_t n, const KronPair& k, float* y, ThreadPool* pool) {
  const int64_t dim = k.L * k.R;
  pool->parallel_for(n, [&](int64_t b, int64_t e) {
    kron_rows(x + b * dim, e - b, dim, k.left.data(), k.L, k.right.data(), k.R, y + b * dim);
  });
}

}  // namespace

QuantDecoder::QuantDecoder(const Artifact& a, QuantMode mode, int64_t max_ctx, int n_threads)
    : cfg_(a.cfg), recipe_(a.recipe), requested_(mode) {
  check_config(cfg_);
  const ModelConfig& c = cfg_;
  FQ_CHECK((int64_t)a.layers.size() == c.n_layer, "QuantDecoder: {} layers (expected n_layer {})",
           a.layers.size(), c.n_layer);
  const bool integer = mode == QuantMode::kReal && recipe_.w_bits < 16 && recipe_.a_bits < 16;
  mode_ = integer ? QuantMode::kReal : QuantMode::kFake;
  max_ctx_ = max_ctx > 0 ? max_ctx : c.n_ctx;
  FQ_CHECK(max_ctx_ > 0, "QuantDecoder: no context length (max_ctx {} and config n_ctx {})", max_ctx,
           c.n_ctx);
  pool_ = std::make_unique<ThreadPool>(n_threads);
  rope_ = RopeTable(rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling), max_ctx_);
  FQ_CHECK((int64_t)a.tok_embd.size() == c.n_vocab * c.n_embd && (int64_t)a.norm.size() == c.n_embd &&
               (int64_t)a.head().size() == c.n_vocab * c.n_embd,
           "QuantDecoder: embedding / norm / head sizes do not match the config");
  tok_embd_ = a.tok_embd;
  norm_ = a.norm;
  lm_head_ = a.lm_head;

  auto prep = [&](const QLinear& q, const char* name, int il) {
    Linear l;
    l.out = q.out;
    l.in = q.in;
    FQ_CHECK(q.bits == recipe_.w_bits,
             "QuantDecoder: layer {} {}: bits {} differ from the recipe's w_bits {}", il, name, q.bits,
             recipe_.w_bits);
    if (integer) {
      l.codes = weight_codes(q);
      l.scales = q.scales;
    } else {
      l.w = q.dequantize();
    }
    l.bias = q.bias;
    l.clip_max = q.act_clip_max;
    l.clip_min = q.act_clip_min;
    return l;
  };
  layers_.resize((size_t)c.n_layer);
  for (int il = 0; il < (int)c.n_layer; ++il) {
    const ArtifactLayer& s = a.layers[il];
    Layer& l = layers_[il];
    l.attn_norm = s.attn_norm;
    l.ffn_norm = s.ffn_norm;
    l.q = prep(s.q, "q_proj", il);
    l.k = prep(s.k, "k_proj", il);
    l.v = prep(s.v, "v_proj", il);
    l.o = prep(s.o, "o_proj", il);
    l.gate = prep(s.gate, "gate_proj", il);
    l.up = prep(s.up, "up_proj", il);
    l.down = prep(s.down, "down_proj", il);
    l.ln_trans = s.ln_trans;
    l.up_gate_trans = s.up_gate_trans;
    l.down_trans = s.down_trans;
    l.o_trans = s.o_trans;
    l.kcache_trans = s.kcache_trans;
    l.kcache_inv_t = s.kcache_inv_t;
    l.k_clip_max = s.k_clip_max;
    l.k_clip_min = s.k_clip_min;
    l.v_clip_max = s.v_clip_max;
    l.v_clip_min = s.v_clip_min;
  }
  const size_t cache = (size_t)c.n_layer * (size_t)max_ctx_ * (size_t)(c.n_head_kv * c.head_dim);
  k_cache_.assign(cache, 0.0f);
  v_cache_.assign(cache, 0.0f);
}

QuantDecoder::~QuantDecoder() = default;

void QuantDecoder::ensure_scratch(int64_t n) {
  if (n <= scratch_n_) return;
  const ModelConfig& c = cfg_;
  const int64_t widest = std::max({c.n_embd, c.n_ff, c.n_head * c.head_dim});
  x_.resize(n * c.n_embd);
  h_.resize(n * c.n_embd);
  t_.resize(n * widest);
  q_.resize(n * c.n_head * c.head_dim);
  att_.resize(n * c.n_head * c.head_dim);
  gate_.resize(n * c.n_ff);
  up_.resize(n * c.n_ff);
  aq_.resize(n * widest);
  codes8_.resize(n * widest);
  codes_.resize(n * widest);
  ascale_.resize(n);
  scratch_n_ = n;
}

void QuantDecoder::run_linear(const Linear& l, const float* x, int64_t n, float* y) {
  ThreadPool* pool = pool_.get();
  const int bits = recipe_.a_bits;
  const int64_t in = l.in, out = l.out;
  const float* bias = l.bias.empty() ? nullptr : l.bias.data();
  if (mode_ == QuantMode::kReal) {
    // Per-token codes, then an exact int32 dot product per output and the qgemm epilogue.
    int8_t* q8 = codes8_.data();
    int16_t* qx = codes_.data();
    float* sx = ascale_.data();
    pool->parallel_for(n, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        sx[t] = quantize_sym_row(x + t * in, in, bits, l.clip_max, l.clip_min, q8 + t * in);
        std::copy(q8 + t * in, q8 + (t + 1) * in, qx + t * in);
      }
    });
    int_linear(qx, sx, l.codes.data(), l.scales.data(), bias, n, in, out, y, pool);
    return;
  }
  if (bits < 16) {
    float* xq = aq_.data();
    pool->parallel_for(n, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t)
        fake_quant_sym_row(x + t * in, in, bits, l.clip_max, l.clip_min, xq + t * in);
    });
    x = xq;
  }
  linear(x, n, in, l.w.data(), bias, out, y, pool);
}

void QuantDecoder::layer(int il, int64_t n) {
  const ModelConfig& c = cfg_;
  const Layer& l = layers_[il];
  const int64_t E = c.n_embd, hd = c.head_dim, qd = c.n_head * hd, kvd = c.n_head_kv * hd, F = c.n_ff;
  ThreadPool* pool = pool_.get();
  float* kc = k_cache_.data() + (size_t)il * max_ctx_ * kvd;
  float* vc = v_cache_.data() + (size_t)il * max_ctx_ * kvd;
  float* kn = kc + pos_ * kvd;  // this batch's rows of the cache
  float* vn = vc + pos_ * kvd;

  // ---- attention
  rmsnorm(x_.data(), l.attn_norm.data(), n, E, (float)c.rms_eps, h_.data());
  const float* in = h_.data();
  if (l.ln_trans.present()) {
    kron_tokens(h_.data(), n, l.ln_trans, t_.data(), pool);
    in = t_.data();
  }
  run_linear(l.q, in, n, q_.data());
  run_linear(l.k, in, n, kn);
  run_linear(l.v, in, n, vn);
  const bool kt = !l.kcache_trans.empty();
  const int kb = recipe_.k_bits, vb = recipe_.v_bits;
  pool->parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t p = pos_ + t;
      float* qr = q_.data() + t * qd;
      float* kr = kn + t * kvd;
      float* vr = vn + t * kvd;
      rope_apply(qr, c.n_head, hd, rope_.cos_at(p), rope_.sin_at(p));
      rope_apply(kr, c.n_head_kv, hd, rope_.cos_at(p), rope_.sin_at(p));
      if (kt) {
        rowvec_matmul(qr, c.n_head, l.kcache_inv_t.data(), hd);
        rowvec_matmul(kr, c.n_head_kv, l.kcache_trans.data(), hd);
      }
      for (int64_t h = 0; h < c.n_head_kv; ++h) {
        if (kb < 16) fake_quant_asym_row(kr + h * hd, hd, kb, l.k_clip_max, l.k_clip_min, kr + h * hd);
        if (vb < 16) fake_quant_asym_row(vr + h * hd, hd, vb, l.v_clip_max, l.v_clip_min, vr + h * hd);
      }
    }
  });
  attention(q_.data(), n, pos_, kc, vc, AttentionShape{c.n_head, c.n_head_kv, hd}, att_.data(), pool);
  in = att_.data();
  if (!l.o_trans.empty()) {
    pool->parallel_for(n, [&](int64_t b, int64_t e) {
      // head_mix(attn, Po) = kron_transform with A = Po, B = identity.
      kron_rows(att_.data() + b * qd, e - b, qd, l.o_trans.data(), c.n_head, nullptr, hd, t_.data() + b * qd);
    });
    in = t_.data();
  }
  run_linear(l.o, in, n, h_.data());
  for (int64_t i = 0; i < n * E; ++i) x_[i] += h_[i];

  // ---- MLP
  rmsnorm(x_.data(), l.ffn_norm.data(), n, E, (float)c.rms_eps, h_.data());
  in = h_.data();
  if (l.up_gate_trans.present()) {
    kron_tokens(h_.data(), n, l.up_gate_trans, t_.data(), pool);
    in = t_.data();
  }
  run_linear(l.gate, in, n, gate_.data());
  run_linear(l.up, in, n, up_.data());
  swiglu(gate_.data(), up_.data(), n * F, gate_.data());
  in = gate_.data();
  if (l.down_trans.present()) {
    kron_tokens(gate_.data(), n, l.down_trans, t_.data(), pool);
    in = t_.data();
  }
  run_linear(l.down, in, n, h_.data());
  for (int64_t i = 0; i < n * E; ++i) x_[i] += h_[i];
}

void QuantDecoder::forward(const int32_t* tokens, int64_t n, float* logits_out) {
  const ModelConfig& c = cfg_;
  FQ_CHECK(n >= 0, "QuantDecoder::forward: negative token count {}", n);
  if (n == 0) return;
  FQ_CHECK(pos_ + n <= max_ctx_, "context overflow: {} tokens at position {} exceed the context of {} tokens",
           n, pos_, max_ctx_);
  for (int64_t t = 0; t < n; ++t)
    FQ_CHECK(tokens[t] >= 0 && tokens[t] < c.n_vocab, "token id {} at index {} is out of range [0, {})",
             tokens[t], t, c.n_vocab);
  ensure_scratch(n);
  const int64_t E = c.n_embd;
  for (int64_t t = 0; t < n; ++t) std::copy_n(tok_embd_.data() + (size_t)tokens[t] * E, E, x_.data() + t * E);
  for (int il = 0; il < (int)c.n_layer; ++il) layer(il, n);
  if (logits_out) {
    rmsnorm(x_.data(), norm_.data(), n, E, (float)c.rms_eps, h_.data());
    const std::vector<float>& head = lm_head_.empty() ? tok_embd_ : lm_head_;
    linear(h_.data(), n, E, head.data(), nullptr, c.n_vocab, logits_out, pool_.get());
  }
  pos_ += n;
}

}  // namespace fq::ref
