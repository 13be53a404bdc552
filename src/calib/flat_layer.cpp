#include "calib/flat_layer.h"

#include <torch/version.h>

#include <cmath>
#include <string>

#include "flatquant/error.h"
#include "ref/rope.h"

namespace fq::calib {
namespace {

torch::Tensor from_vec(const std::vector<float>& v, std::vector<int64_t> shape, const char* name) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  if (static_cast<int64_t>(v.size()) != n)
    fail("FlatLayer: weight '{}' has {} values, expected {} from the model config", name, v.size(), n);
  return torch::from_blob(const_cast<float*>(v.data()), shape, torch::kFloat32).clone();
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  return b.defined() ? torch::linear(x, w, b) : torch::linear(x, w);
}

// Running per-channel max |x| over all leading dims.
void fold_max(torch::Tensor& acc, const torch::Tensor& x) {
  auto m = x.detach().abs().reshape({-1, x.size(-1)}).amax(0);
  acc = acc.defined() ? torch::maximum(acc, m) : m;
}

}  // namespace

FlatLayerImpl::FlatLayerImpl(const ModelConfig& cfg, const LayerWeights& w, const LayerQuantConfig& q)
    : E_(cfg.n_embd), H_(cfg.n_head), KV_(cfg.n_head_kv), d_(cfg.head_dim), F_(cfg.n_ff), eps_(cfg.rms_eps), q_(q) {
  FQ_CHECK(H_ > 0 && KV_ > 0 && H_ % KV_ == 0 && d_ % 2 == 0, "FlatLayer: bad head config ({} heads, {} kv heads, head_dim {})",
           H_, KV_, d_);
  inv_freq_ = ref::rope_inv_freq(d_, cfg.rope_theta, cfg.rope_scaling);
  const int64_t qd = H_ * d_, kvd = KV_ * d_;
  attn_norm_ = register_buffer("attn_norm", from_vec(w.attn_norm, {E_}, "attn_norm"));
  ffn_norm_ = register_buffer("ffn_norm", from_vec(w.ffn_norm, {E_}, "ffn_norm"));
  wq_ = register_buffer("wq", from_vec(w.wq, {qd, E_}, "q_proj"));
  wk_ = register_buffer("wk", from_vec(w.wk, {kvd, E_}, "k_proj"));
  wv_ = register_buffer("wv", from_vec(w.wv, {kvd, E_}, "v_proj"));
  wo_ = register_buffer("wo", from_vec(w.wo, {E_, qd}, "o_proj"));
  if (cfg.attn_bias) {
    bq_ = register_buffer("bq", from_vec(w.bq, {qd}, "q_proj.bias"));
    bk_ = register_buffer("bk", from_vec(w.bk, {kvd}, "k_proj.bias"));
    bv_ = register_buffer("bv", from_vec(w.bv, {kvd}, "v_proj.bias"));
  }
  w_gate_ = register_buffer("w_gate", from_vec(w.w_gate, {F_, E_}, "gate_proj"));
  w_up_ = register_buffer("w_up", from_vec(w.w_up, {F_, E_}, "up_proj"));
  w_down_ = register_buffer("w_down", from_vec(w.w_down, {E_, F_}, "down_proj"));

  const uint64_t s = q.seed;
  if (q.transforms) {
    ln_trans = register_module("ln_trans", KronTransform(E_, q.param, q.add_diag, mix_seed(s, 100)));
    up_gate_trans = register_module("up_gate_trans", KronTransform(E_, q.param, q.add_diag, mix_seed(s, 101)));
    down_trans = register_module("down_trans", KronTransform(F_, q.param, q.add_diag, mix_seed(s, 102)));
    vcache_trans = register_module("vcache_trans", SingleTransform(d_, q.param, mix_seed(s, 103)));
    o_trans = register_module("o_trans", SingleTransform(H_, q.param, mix_seed(s, 104)));
  }
  if (q.kcache_transform) kcache_trans = register_module("kcache_trans", SingleTransform(d_, q.param, mix_seed(s, 105)));

  auto aq = [&](const char* name, int bits, bool sym) {
    return register_module(name, ActQuantizer(bits, sym, q.lac));
  };
  aq_q = aq("aq_q", q.a_bits, q.a_sym);
  aq_k = aq("aq_k", q.a_bits, q.a_sym);
  aq_v = aq("aq_v", q.a_bits, q.a_sym);
  aq_o = aq("aq_o", q.a_bits, q.a_sym);
  aq_up = aq("aq_up", q.a_bits, q.a_sym);
  aq_gate = aq("aq_gate", q.a_bits, q.a_sym);
  aq_down = aq("aq_down", q.a_bits, q.a_sym);
  kq = aq("k_quant", q.k_bits, q.k_sym);
  vq = aq("v_quant", q.v_bits, q.v_sym);
  auto wqz = [&](const char* name, int64_t out) {
    return register_module(name, WeightQuantizer(out, q.w_bits, q.w_sym, q.w_group, q.lwc));
  };
  wq_q = wqz("wq_q", qd);
  wq_k = wqz("wq_k", kvd);
  wq_v = wqz("wq_v", kvd);
  wq_o = wqz("wq_o", E_);
  wq_up = wqz("wq_up", F_);
  wq_gate = wqz("wq_gate", F_);
  wq_down = wqz("wq_down", E_);
}

torch::Tensor FlatLayerImpl::rmsnorm(const torch::Tensor& x, const torch::Tensor& w) const {
  return x * torch::rsqrt(x.pow(2).mean(-1, true) + eps_) * w;
}

torch::Tensor FlatLayerImpl::rope(const torch::Tensor& x, int64_t n_tokens) const {
  // Tables as ref::RopeTable computes them (fp32 angle, fp32 cos/sin), then cast to x's dtype.
  const int64_t half = d_ / 2;
  std::vector<float> c(static_cast<size_t>(n_tokens * d_)), s(c.size());
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const float a = inv_freq_[i] * static_cast<float>(t);
      c[t * d_ + i] = c[t * d_ + i + half] = std::cos(a);
      s[t * d_ + i] = s[t * d_ + i + half] = std::sin(a);
    }
  auto opt = torch::TensorOptions().dtype(torch::kFloat32);
  // clone(): from_blob aliases the local vectors, and autograd keeps cos/sin for the backward pass.
  auto cos = torch::from_blob(c.data(), {n_tokens, d_}, opt).clone().to(x.device(), x.scalar_type());
  auto sin = torch::from_blob(s.data(), {n_tokens, d_}, opt).clone().to(x.device(), x.scalar_type());
  auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return x * cos + torch::cat({-x2, x1}, -1) * sin;
}

torch::Tensor FlatLayerImpl::attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) const {
  // q [B, H, T, d], k/v [B, KV, T, d]; query head h reads kv head h / (H/KV).
  const int64_t T = q.size(2);
  auto kk = KV_ == H_ ? k : k.repeat_interleave(H_ / KV_, 1);
  auto vv = KV_ == H_ ? v : v.repeat_interleave(H_ / KV_, 1);
#if TORCH_VERSION_MAJOR >= 2
  // On CUDA, PyTorch 2's fused attention (flash / memory-efficient, also in the backward pass) instead of the
  // materialized T x T scores: the same function, far less memory for 2048-token calibration windows. The CPU
  // keeps the explicit form, so CPU results do not depend on the LibTorch version.
  if (q.is_cuda()) return at::scaled_dot_product_attention(q, kk, vv, {}, 0.0, /*is_causal=*/true);
#endif
  auto scores = torch::matmul(q, kk.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(d_)));
  auto mask = torch::ones({T, T}, torch::TensorOptions().dtype(torch::kBool).device(q.device())).triu(1);
  scores = scores.masked_fill(mask, -std::numeric_limits<double>::infinity());
  return torch::matmul(torch::softmax(scores, -1), vv);
}

torch::Tensor FlatLayerImpl::forward(const torch::Tensor& x) {
  return mode_ == LayerMode::Fp ? fp_forward(x, nullptr) : quant_forward(x);
}

torch::Tensor FlatLayerImpl::forward_fp(const torch::Tensor& x, ActStats* stats) { return fp_forward(x, stats); }

torch::Tensor FlatLayerImpl::fp_forward(const torch::Tensor& x, ActStats* stats) {
  const int64_t B = x.size(0), T = x.size(1);
  auto h = rmsnorm(x, attn_norm_);
  if (stats) fold_max(stats->ln, h);
  auto q = rope(linear(h, wq_, bq_).view({B, T, H_, d_}).transpose(1, 2), T);
  auto k = rope(linear(h, wk_, bk_).view({B, T, KV_, d_}).transpose(1, 2), T);
  auto v = linear(h, wv_, bv_).view({B, T, KV_, d_}).transpose(1, 2);
  auto att = attention(q, k, v).transpose(1, 2).reshape({B, T, H_ * d_});
  auto x1 = x + torch::linear(att, wo_);
  auto h2 = rmsnorm(x1, ffn_norm_);
  if (stats) fold_max(stats->up_gate, h2);
  auto m = torch::silu(torch::linear(h2, w_gate_)) * torch::linear(h2, w_up_);
  if (stats) fold_max(stats->down, m);
  return x1 + torch::linear(m, w_down_);
}

torch::Tensor FlatLayerImpl::v_out_trans(const torch::Tensor& w_rows) const {
  // Rows h*d .. h*d+d-1 of W_v (and of b_v) belong to kv head h: W_v'^T = W_v^T (I kron Pv).
  auto wt = w_rows.dim() == 1 ? w_rows.unsqueeze(0) : w_rows.t();  // [*, KV*d]
  auto lead = wt.size(0);
  auto y = vcache_trans->forward(wt.reshape({lead, KV_, d_})).reshape({lead, KV_ * d_});
  return w_rows.dim() == 1 ? y.squeeze(0) : y.t();
}

torch::Tensor FlatLayerImpl::quant_forward(const torch::Tensor& x) {
  const bool train = mode_ == LayerMode::Train;
  const bool tr = q_.transforms;
  if (!train) FQ_CHECK(merged_.wq.defined(), "FlatLayer: eval mode needs merge() first");
  const int64_t B = x.size(0), T = x.size(1);
  // Train-mode weight: W P^{-T} -> LWC -> fake quant.
  auto tw = [&](const torch::Tensor& w, const KronTransform& t, const WeightQuantizer& wq) {
    return wq->quantize(wq->clip(tr ? t->weight_inv(w) : w));
  };

  auto h = rmsnorm(x, train ? attn_norm_ : merged_.attn_norm);
  auto hx = !tr ? h : train ? ln_trans->forward(h) : ln_trans->forward_no_diag(h);
  torch::Tensor Wq, Wk, Wv, bv = bv_, Wo, Wup, Wgate, Wdown;
  if (train) {
    Wq = tw(wq_, ln_trans, wq_q);
    Wk = tw(wk_, ln_trans, wq_k);
    auto v = wq_v->clip(tr ? ln_trans->weight_inv(wv_) : wv_);
    if (tr) {
      v = v_out_trans(v);
      if (bv.defined()) bv = v_out_trans(bv);
    }
    Wv = wq_v->quantize(v);
    auto o = tr ? kron_matmul(wo_, o_trans->f->inv_t(), vcache_trans->f->inv_t()) : wo_;
    Wo = wq_o->quantize(wq_o->clip(o));
    Wup = tw(w_up_, up_gate_trans, wq_up);
    Wgate = tw(w_gate_, up_gate_trans, wq_gate);
    Wdown = tw(w_down_, down_trans, wq_down);
  } else {
    Wq = merged_.wq, Wk = merged_.wk, Wv = merged_.wv, bv = merged_.bv, Wo = merged_.wo;
    Wup = merged_.w_up, Wgate = merged_.w_gate, Wdown = merged_.w_down;
  }

  // Each linear's input as it sees it; Eval mode reports them to `capture` (GPTQ's Hessians).
  auto in = [&](const char* name, ActQuantizer aq, const torch::Tensor& t) {
    auto xq = aq(t);
    if (!train && capture) capture(name, xq);
    return xq;
  };
  auto q = rope(linear(in("q", aq_q, hx), Wq, bq_).view({B, T, H_, d_}).transpose(1, 2), T);
  auto k = rope(linear(in("k", aq_k, hx), Wk, bk_).view({B, T, KV_, d_}).transpose(1, 2), T);
  auto v = linear(in("v", aq_v, hx), Wv, bv).view({B, T, KV_, d_}).transpose(1, 2);
  if (q_.kcache_transform) {
    q = kcache_trans->forward_inv_t(q);
    k = kcache_trans->forward(k);
  }
  k = kq(k);
  v = vq(v);
  auto att = attention(q, k, v).transpose(1, 2).reshape({B, T, H_ * d_});
  if (tr) att = kron_matmul(att, o_trans->f->matrix(), torch::Tensor());  // per token Po^T attn[H, d]
  auto x1 = x + torch::linear(in("o", aq_o, att), Wo);

  auto h2 = rmsnorm(x1, train ? ffn_norm_ : merged_.ffn_norm);
  auto hu = !tr ? h2 : train ? up_gate_trans->forward(h2) : up_gate_trans->forward_no_diag(h2);
  auto m = torch::silu(torch::linear(in("gate", aq_gate, hu), Wgate)) * torch::linear(in("up", aq_up, hu), Wup);
  auto md = !tr ? m : train ? down_trans->forward(m) : down_trans->forward_no_diag(m);
  return x1 + torch::linear(in("down", aq_down, md), Wdown);
}

void FlatLayerImpl::merge(bool quantize_weights) {
  torch::NoGradGuard ng;
  const auto dt = wq_.scalar_type();
  const auto D = torch::kFloat64;
  const bool tr = q_.transforms;
  auto d64 = [&](const torch::Tensor& t) { return t.to(D); };
  // W diag(1/s) (A kron B)^{-T} in fp64 with the factors' inverse transposes.
  auto inv = [&](const torch::Tensor& w, const KronTransform& t) {
    if (!tr) return d64(w);
    auto w64 = d64(w);
    if (t->has_diag()) w64 = w64 / d64(t->diag_scale);
    return kron_matmul(w64, d64(t->left->inv_t()), d64(t->right->inv_t()));
  };
  std::map<std::string, torch::Tensor> w64;
  Merged m;
  m.attn_norm = tr && ln_trans->has_diag() ? (d64(attn_norm_) * d64(ln_trans->diag_scale)).to(dt) : attn_norm_;
  m.ffn_norm = tr && up_gate_trans->has_diag() ? (d64(ffn_norm_) * d64(up_gate_trans->diag_scale)).to(dt) : ffn_norm_;
  w64["q"] = wq_q->clip(inv(wq_, ln_trans));
  w64["k"] = wq_k->clip(inv(wk_, ln_trans));
  auto v = wq_v->clip(inv(wv_, ln_trans));
  m.bv = bv_;
  if (tr) {
    // Pv in fp64 on the rows (and the bias), as out_trans does.
    auto pv = d64(vcache_trans->f->matrix());
    auto per_head = [&](const torch::Tensor& rows) {  // rows [KV*d, n] -> per head Pv^T rows
      auto r = rows.reshape({KV_, d_, -1});
      return torch::matmul(pv.t(), r).reshape({KV_ * d_, -1});
    };
    v = per_head(v);
    if (bv_.defined()) m.bv = per_head(d64(bv_).unsqueeze(1)).squeeze(1).to(dt);
  }
  w64["v"] = v;
  auto o = tr ? kron_matmul(d64(wo_), d64(o_trans->f->inv_t()), d64(vcache_trans->f->inv_t())) : d64(wo_);
  w64["o"] = wq_o->clip(o);
  auto up = wq_up->clip(inv(w_up_, up_gate_trans));
  // down's diag goes into up's rows: act(g) * (u s) = (act(g) * u) s; per-row clip and scale commute with it.
  if (tr && down_trans->has_diag()) up = up * d64(down_trans->diag_scale).unsqueeze(1);
  w64["up"] = up;
  w64["gate"] = wq_gate->clip(inv(w_gate_, up_gate_trans));
  w64["down"] = wq_down->clip(inv(w_down_, down_trans));
  auto fin = [&](const char* name, const WeightQuantizer& wq) {
    return (quantize_weights ? wq->quantize(w64.at(name)) : w64.at(name)).to(dt);
  };
  m.wq = fin("q", wq_q);
  m.wk = fin("k", wq_k);
  m.wv = fin("v", wq_v);
  m.wo = fin("o", wq_o);
  m.w_up = fin("up", wq_up);
  m.w_gate = fin("gate", wq_gate);
  m.w_down = fin("down", wq_down);
  merged_ = std::move(m);
  merged64_ = std::move(w64);
}

const torch::Tensor& FlatLayerImpl::merged_weight64(const std::string& name) const {
  const auto it = merged64_.find(name);
  FQ_CHECK(it != merged64_.end(), "FlatLayer: no merged weight '{}' (call merge() first)", name);
  return it->second;
}

torch::Tensor& FlatLayerImpl::eval_weight(const std::string& name) {
  if (name == "q") return merged_.wq;
  if (name == "k") return merged_.wk;
  if (name == "v") return merged_.wv;
  if (name == "o") return merged_.wo;
  if (name == "up") return merged_.w_up;
  if (name == "gate") return merged_.w_gate;
  if (name == "down") return merged_.w_down;
  fail("FlatLayer: unknown linear '{}'", name);
}

void FlatLayerImpl::set_eval_weight(const std::string& name, const torch::Tensor& w) {
  torch::Tensor& dst = eval_weight(name);
  FQ_CHECK(dst.defined() && dst.sizes() == w.sizes(), "FlatLayer: set_eval_weight('{}'): shape mismatch", name);
  dst = w.detach().to(dst.device(), dst.scalar_type());
}

void FlatLayerImpl::init_diag_scales(const ActStats& st, double alpha) {
  if (!q_.transforms) return;
  torch::NoGradGuard ng;
  auto init = [&](KronTransform& t, const torch::Tensor& xmax, std::vector<torch::Tensor> ws) {
    if (!t->has_diag()) return;
    FQ_CHECK(xmax.defined(), "FlatLayer: diag init needs activation statistics from forward_fp");
    auto wmax = torch::cat(ws, 0).abs().amax(0);
    // xmax clamped away from 0 so a dead channel gets a finite scale (the original would divide by 0).
    auto s = (wmax.pow(1.0 - alpha) / xmax.clamp_min(1e-5).pow(alpha)).clamp_min(1e-5);
    t->diag_scale.copy_(s.to(t->diag_scale.scalar_type()));
  };
  init(ln_trans, st.ln, {wq_, wk_, wv_});
  init(up_gate_trans, st.up_gate, {w_up_, w_gate_});
  init(down_trans, st.down, {w_down_});
}

std::vector<torch::Tensor> FlatLayerImpl::transform_params() {
  std::vector<torch::Tensor> out;
  for (auto& p : named_parameters(true))
    if (p.key().find("clip_factor") == std::string::npos && p.key().find("diag_scale") == std::string::npos)
      out.push_back(p.value());
  return out;
}

std::vector<torch::Tensor> FlatLayerImpl::diag_params() {
  std::vector<torch::Tensor> out;
  for (auto& p : named_parameters(true))
    if (p.key().find("diag_scale") != std::string::npos) out.push_back(p.value());
  return out;
}

std::vector<torch::Tensor> FlatLayerImpl::clip_params() {
  std::vector<torch::Tensor> out;
  for (auto& p : named_parameters(true))
    if (p.key().find("clip_factor") != std::string::npos) out.push_back(p.value());
  return out;
}

}  // namespace fq::calib
