#include "calib/export.h"

#include "flatquant/error.h"
#include "ref/quant.h"

namespace fq::calib {
namespace {

std::vector<float> to_vec(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

bool is_identity(const torch::Tensor& m) {
  auto c = m.detach().to(torch::kCPU, torch::kFloat64);
  return torch::equal(c, torch::eye(c.size(0), c.options()));
}

float sigmoid_or_one(const torch::Tensor& logit) {
  return logit.defined() ? torch::sigmoid(logit.detach().to(torch::kCPU, torch::kFloat64)).item<float>() : 1.0f;
}

}  // namespace

const std::vector<std::string>& linear_names() {
  static const std::vector<std::string> names = {"q", "k", "v", "o", "up", "gate", "down"};
  return names;
}

QuantizedWeight rtn_quantize(const torch::Tensor& w, int bits) {
  FQ_CHECK(bits == 4 || bits == 8, "rtn_quantize: bits {} (expected 4 or 8)", bits);
  torch::NoGradGuard ng;
  const double qmax = static_cast<double>((1 << (bits - 1)) - 1);
  auto w64 = w.detach().to(torch::kCPU, torch::kFloat64);
  auto scale = w64.abs().amax(1, true).clamp_min(1e-5) / qmax;
  auto codes = torch::clamp(torch::round(w64 / scale), -(qmax + 1), qmax).to(torch::kInt8);
  return {codes, scale.squeeze(1).to(torch::kFloat32)};
}

torch::Tensor dequantize(const QuantizedWeight& q, torch::ScalarType dtype) {
  return (q.codes.to(torch::kFloat32) * q.scales.unsqueeze(1)).to(dtype);
}

ArtifactLayer export_layer(const FlatLayerImpl& layer, const std::map<std::string, QuantizedWeight>& qw,
                           const Recipe& recipe) {
  torch::NoGradGuard ng;
  ArtifactLayer a;
  const auto& m = layer.merged();
  a.attn_norm = to_vec(m.attn_norm);
  a.ffn_norm = to_vec(m.ffn_norm);
  const std::map<std::string, QLinear*> dst = {{"q", &a.q},   {"k", &a.k},       {"v", &a.v},      {"o", &a.o},
                                               {"up", &a.up}, {"gate", &a.gate}, {"down", &a.down}};
  const std::map<std::string, ActQuantizer> aq = {{"q", layer.aq_q},   {"k", layer.aq_k},       {"v", layer.aq_v},
                                                  {"o", layer.aq_o},   {"up", layer.aq_up},     {"gate", layer.aq_gate},
                                                  {"down", layer.aq_down}};
  for (const std::string& name : linear_names()) {
    QLinear& l = *dst.at(name);
    const torch::Tensor& w = layer.merged_weight64(name);
    l.out = w.size(0);
    l.in = w.size(1);
    l.bits = recipe.w_bits;
    if (recipe.w_bits < 16) {
      const auto it = qw.find(name);
      FQ_CHECK(it != qw.end(), "export: no quantized weight for linear '{}'", name);
      const QuantizedWeight& q = it->second;
      FQ_CHECK(q.codes.sizes() == w.sizes(), "export: quantized '{}' has the wrong shape", name);
      auto codes = q.codes.to(torch::kCPU, torch::kInt8).contiguous();
      const int8_t* c = codes.data_ptr<int8_t>();
      if (recipe.w_bits == 4) {
        l.qweight.resize(static_cast<size_t>(l.out * l.in / 2));
        ref::pack_int4(c, l.out, l.in, l.qweight.data());
      } else {
        l.qweight.assign(reinterpret_cast<const uint8_t*>(c), reinterpret_cast<const uint8_t*>(c) + l.out * l.in);
      }
      l.scales = to_vec(q.scales);
    } else {
      l.weight = to_vec(w);
    }
    const ActQuantizer& a_q = aq.at(name);
    l.act_clip_max = sigmoid_or_one(a_q->clip_max);
    l.act_clip_min = sigmoid_or_one(a_q->clip_min);
  }
  if (layer.bias_q().defined()) {
    a.q.bias = to_vec(layer.bias_q());
    a.k.bias = to_vec(layer.bias_k());
    a.v.bias = to_vec(m.bv);
  }
  auto kron = [&](const KronTransform& t, KronPair& p) {
    if (!t) return;
    auto L = t->left->matrix(), R = t->right->matrix();
    if (is_identity(L) && is_identity(R)) return;
    p.L = L.size(0);
    p.R = R.size(0);
    p.left = to_vec(L);
    p.right = to_vec(R);
  };
  kron(layer.ln_trans, a.ln_trans);
  kron(layer.up_gate_trans, a.up_gate_trans);
  kron(layer.down_trans, a.down_trans);
  if (layer.o_trans && !is_identity(layer.o_trans->f->matrix())) a.o_trans = to_vec(layer.o_trans->f->matrix());
  if (layer.kcache_trans && !is_identity(layer.kcache_trans->f->matrix())) {
    a.kcache_trans = to_vec(layer.kcache_trans->f->matrix());
    a.kcache_inv_t = to_vec(layer.kcache_trans->f->inv_t());
  }
  a.k_clip_max = sigmoid_or_one(layer.kq->clip_max);
  a.k_clip_min = sigmoid_or_one(layer.kq->clip_min);
  a.v_clip_max = sigmoid_or_one(layer.vq->clip_max);
  a.v_clip_min = sigmoid_or_one(layer.vq->clip_min);
  return a;
}

}  // namespace fq::calib
