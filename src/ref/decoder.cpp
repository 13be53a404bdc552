#include "ref/decoder.h"

#include <algorithm>

#include "flatquant/error.h"
#include "ref/attention.h"
#include "ref/linear.h"
#include "ref/rmsnorm.h"
#include "ref/swiglu.h"

namespace fq::ref {

namespace {

// The shapes the forward pass relies on; load_hf_weights checks them against the files already, this
// guards weights built in memory.
void check_weights(const ModelWeights& w) {
  const ModelConfig& c = w.cfg;
  FQ_CHECK(c.n_vocab > 0 && c.n_embd > 0 && c.n_layer > 0 && c.n_head > 0 && c.n_head_kv > 0 && c.head_dim > 0 &&
               c.n_ff > 0,
           "model config: non-positive dimension (n_vocab {}, n_embd {}, n_layer {}, n_head {}, n_head_kv {}, "
           "head_dim {}, n_ff {})",
           c.n_vocab, c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.head_dim, c.n_ff);
  FQ_CHECK(c.n_head % c.n_head_kv == 0, "model config: n_head {} is not a multiple of n_head_kv {}", c.n_head,
           c.n_head_kv);
  FQ_CHECK(c.hidden_act == "silu", "model config: hidden_act '{}' is not supported (expected silu)", c.hidden_act);
  auto need = [](const std::vector<float>& v, int64_t n, const std::string& name) {
    FQ_CHECK((int64_t)v.size() == n, "model weights: tensor '{}' has {} elements (expected {})", name, v.size(), n);
  };
  const int64_t qd = c.n_head * c.head_dim, kvd = c.n_head_kv * c.head_dim;
  need(w.tok_embd, c.n_vocab * c.n_embd, "tok_embd");
  need(w.norm, c.n_embd, "norm");
  if (!w.lm_head.empty()) need(w.lm_head, c.n_vocab * c.n_embd, "lm_head");
  FQ_CHECK((int64_t)w.layers.size() == c.n_layer, "model weights: {} layers (expected n_layer {})", w.layers.size(),
           c.n_layer);
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const LayerWeights& l = w.layers[i];
    const std::string p = "layers." + std::to_string(i) + ".";
    need(l.attn_norm, c.n_embd, p + "attn_norm");
    need(l.ffn_norm, c.n_embd, p + "ffn_norm");
    need(l.wq, qd * c.n_embd, p + "wq");
    need(l.wk, kvd * c.n_embd, p + "wk");
    need(l.wv, kvd * c.n_embd, p + "wv");
    need(l.wo, c.n_embd * qd, p + "wo");
    need(l.w_gate, c.n_ff * c.n_embd, p + "w_gate");
    need(l.w_up, c.n_ff * c.n_embd, p + "w_up");
    need(l.w_down, c.n_embd * c.n_ff, p + "w_down");
    if (!l.bq.empty() || c.attn_bias) {
      need(l.bq, qd, p + "bq");
      need(l.bk, kvd, p + "bk");
      need(l.bv, kvd, p + "bv");
    }
  }
}

const float* bias_or_null(const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); }

}  // namespace

RefDecoder::RefDecoder(const ModelWeights& w, int64_t max_ctx, int n_threads) : w_(w) {
  check_weights(w);
  const ModelConfig& c = w.cfg;
  max_ctx_ = max_ctx > 0 ? max_ctx : c.n_ctx;
  FQ_CHECK(max_ctx_ > 0, "RefDecoder: no context length (max_ctx {} and config n_ctx {})", max_ctx, c.n_ctx);
  pool_ = std::make_unique<ThreadPool>(n_threads);
  rope_ = RopeTable(rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling), max_ctx_);
  const size_t cache = (size_t)c.n_layer * (size_t)max_ctx_ * (size_t)(c.n_head_kv * c.head_dim);
  k_cache_.assign(cache, 0.0f);
  v_cache_.assign(cache, 0.0f);
}

void RefDecoder::ensure_scratch(int64_t n) {
  if (n <= scratch_n_) return;
  const ModelConfig& c = w_.cfg;
  x_.resize(n * c.n_embd);
  h_.resize(n * c.n_embd);
  q_.resize(n * c.n_head * c.head_dim);
  att_.resize(n * c.n_head * c.head_dim);
  gate_.resize(n * c.n_ff);
  up_.resize(n * c.n_ff);
  scratch_n_ = n;
}

void RefDecoder::layer(int il, int64_t n) {
  const ModelConfig& c = w_.cfg;
  const LayerWeights& l = w_.layers[il];
  const int64_t E = c.n_embd, hd = c.head_dim, qd = c.n_head * hd, kvd = c.n_head_kv * hd;
  ThreadPool* pool = pool_.get();
  float* kc = k_cache_.data() + (size_t)il * max_ctx_ * kvd;
  float* vc = v_cache_.data() + (size_t)il * max_ctx_ * kvd;

  // Attention block. New keys/values go straight into the cache rows of their positions.
  rmsnorm(x_.data(), l.attn_norm.data(), n, E, (float)c.rms_eps, h_.data());
  if (capture_) capture_(il, LinearInput::kQkv, h_.data(), n, E);
  linear(h_.data(), n, E, l.wq.data(), bias_or_null(l.bq), qd, q_.data(), pool);
  linear(h_.data(), n, E, l.wk.data(), bias_or_null(l.bk), kvd, kc + pos_ * kvd, pool);
  linear(h_.data(), n, E, l.wv.data(), bias_or_null(l.bv), kvd, vc + pos_ * kvd, pool);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t p = pos_ + t;
    rope_apply(q_.data() + t * qd, c.n_head, hd, rope_.cos_at(p), rope_.sin_at(p));
    rope_apply(kc + p * kvd, c.n_head_kv, hd, rope_.cos_at(p), rope_.sin_at(p));
  }
  attention(q_.data(), n, pos_, kc, vc, AttentionShape{c.n_head, c.n_head_kv, hd}, att_.data(), pool);
  if (capture_) capture_(il, LinearInput::kO, att_.data(), n, qd);
  linear(att_.data(), n, qd, l.wo.data(), nullptr, E, h_.data(), pool);
  for (int64_t i = 0; i < n * E; ++i) x_[i] += h_[i];

  // MLP block.
  rmsnorm(x_.data(), l.ffn_norm.data(), n, E, (float)c.rms_eps, h_.data());
  if (capture_) capture_(il, LinearInput::kGateUp, h_.data(), n, E);
  linear(h_.data(), n, E, l.w_gate.data(), nullptr, c.n_ff, gate_.data(), pool);
  linear(h_.data(), n, E, l.w_up.data(), nullptr, c.n_ff, up_.data(), pool);
  swiglu(gate_.data(), up_.data(), n * c.n_ff, gate_.data());
  if (capture_) capture_(il, LinearInput::kDown, gate_.data(), n, c.n_ff);
  linear(gate_.data(), n, c.n_ff, l.w_down.data(), nullptr, E, h_.data(), pool);
  for (int64_t i = 0; i < n * E; ++i) x_[i] += h_[i];
}

void RefDecoder::forward(const int32_t* tokens, int64_t n, float* logits_out) {
  const ModelConfig& c = w_.cfg;
  FQ_CHECK(n >= 0, "RefDecoder::forward: negative token count {}", n);
  if (n == 0) return;
  FQ_CHECK(pos_ + n <= max_ctx_, "context overflow: {} tokens at position {} exceed the context of {} tokens", n,
           pos_, max_ctx_);
  for (int64_t t = 0; t < n; ++t)
    FQ_CHECK(tokens[t] >= 0 && tokens[t] < c.n_vocab, "token id {} at index {} is out of range [0, {})", tokens[t],
             t, c.n_vocab);
  ensure_scratch(n);
  const int64_t E = c.n_embd;
  for (int64_t t = 0; t < n; ++t)
    std::copy_n(w_.tok_embd.data() + (size_t)tokens[t] * E, E, x_.data() + t * E);
  for (int il = 0; il < (int)c.n_layer; ++il) layer(il, n);
  if (logits_out) {
    rmsnorm(x_.data(), w_.norm.data(), n, E, (float)c.rms_eps, h_.data());
    linear(h_.data(), n, E, w_.head().data(), nullptr, c.n_vocab, logits_out, pool_.get());
  }
  pos_ += n;
}

}  // namespace fq::ref
