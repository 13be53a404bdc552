// FlatLayer: FP mode against the CPU reference ops, and the exactness of the transforms (train mode without
// quantization == FP; merged eval == train) in fp64.
#include "calib/flat_layer.h"
#include "calib_test_util.h"
#include "flatquant/error.h"
#include "ref/attention.h"
#include "ref/linear.h"
#include "ref/rmsnorm.h"
#include "ref/rope.h"
#include "ref/swiglu.h"
#include "ref/random_model.h"

namespace fq::calib {
namespace {

using test::rel_err;

// One decoder layer from the src/ref ops (what RefDecoder::layer does), fp32, positions 0..T-1.
std::vector<float> ref_layer(const ModelConfig& c, const LayerWeights& w, const std::vector<float>& x, int64_t T) {
  const int64_t E = c.n_embd, H = c.n_head, KV = c.n_head_kv, d = c.head_dim, F = c.n_ff;
  const float eps = static_cast<float>(c.rms_eps);
  std::vector<float> h(T * E), q(T * H * d), k(T * KV * d), v(T * KV * d), att(T * H * d), o(T * E), x1(T * E);
  ref::rmsnorm(x.data(), w.attn_norm.data(), T, E, eps, h.data());
  auto bias = [](const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); };
  ref::linear(h.data(), T, E, w.wq.data(), bias(w.bq), H * d, q.data());
  ref::linear(h.data(), T, E, w.wk.data(), bias(w.bk), KV * d, k.data());
  ref::linear(h.data(), T, E, w.wv.data(), bias(w.bv), KV * d, v.data());
  ref::RopeTable rt(ref::rope_inv_freq(d, c.rope_theta, c.rope_scaling), T);
  for (int64_t t = 0; t < T; ++t) {
    ref::rope_apply(q.data() + t * H * d, H, d, rt.cos_at(t), rt.sin_at(t));
    ref::rope_apply(k.data() + t * KV * d, KV, d, rt.cos_at(t), rt.sin_at(t));
  }
  ref::attention(q.data(), T, 0, k.data(), v.data(), ref::AttentionShape{H, KV, d}, att.data());
  ref::linear(att.data(), T, H * d, w.wo.data(), nullptr, E, o.data());
  for (int64_t i = 0; i < T * E; ++i) x1[i] = x[i] + o[i];
  std::vector<float> h2(T * E), g(T * F), u(T * F), m(T * F), dn(T * E), out(T * E);
  ref::rmsnorm(x1.data(), w.ffn_norm.data(), T, E, eps, h2.data());
  ref::linear(h2.data(), T, E, w.w_gate.data(), nullptr, F, g.data());
  ref::linear(h2.data(), T, E, w.w_up.data(), nullptr, F, u.data());
  ref::swiglu(g.data(), u.data(), T * F, m.data());
  ref::linear(m.data(), T, F, w.w_down.data(), nullptr, E, dn.data());
  for (int64_t i = 0; i < T * E; ++i) out[i] = x1[i] + dn[i];
  return out;
}

struct Case {
  bool bias;
  bool llama3;
  int64_t n_head, n_head_kv;
};

ModelConfig config_for(const Case& k) {
  ModelConfig c = test::tiny_config(k.n_head, k.n_head_kv, 8, k.bias);
  c.n_embd = 24;  // 24 = 4 x 6
  c.n_ff = 48;    // 48 = 6 x 8
  if (k.llama3) {
    c.rope_scaling.type = "llama3";
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 16;
    c.rope_theta = 500000.0;
  }
  return c;
}

torch::Tensor randn_input(int64_t B, int64_t T, int64_t E, uint64_t seed, torch::Dtype dt) {
  torch::manual_seed(seed);
  return torch::randn({B, T, E}, torch::kFloat64).to(dt);
}

class CalibFlatLayer : public ::testing::TestWithParam<Case> {};

TEST_P(CalibFlatLayer, FpModeMatchesCpuReference) {
  const ModelConfig c = config_for(GetParam());
  const ModelWeights mw = test::random_model(c, 11);
  LayerQuantConfig q;
  FlatLayer layer(c, mw.layers[0], q);
  layer->set_mode(LayerMode::Fp);
  const int64_t T = 20;
  auto x = randn_input(2, T, c.n_embd, 1, torch::kFloat32);
  torch::NoGradGuard ng;
  auto y = layer->forward(x);
  for (int64_t b = 0; b < 2; ++b) {
    auto xb = x[b].contiguous();
    std::vector<float> xv(xb.data_ptr<float>(), xb.data_ptr<float>() + T * c.n_embd);
    auto want = ref_layer(c, mw.layers[0], xv, T);
    auto wt = torch::from_blob(want.data(), {T, c.n_embd}, torch::kFloat32);
    EXPECT_LT(rel_err(y[b], wt), 1e-5);
    EXPECT_GT(rel_err(y[b], xb), 1e-2);  // the layer does something
  }
}

// Sets every transform parameter to a generic value (non-orthogonal, diag != 1).
void randomize_transforms(FlatLayerImpl& l, uint64_t seed) {
  torch::NoGradGuard ng;
  torch::manual_seed(seed);
  for (auto& p : l.named_parameters(true)) {
    const std::string& k = p.key();
    auto& v = p.value();
    if (k.find("clip_factor") != std::string::npos) continue;
    if (k.find("sigma") != std::string::npos || k.find("diag_scale") != std::string::npos)
      v.copy_(torch::rand(v.sizes(), v.options()) * 1.5 + 0.5);
    else
      v.add_(torch::randn(v.sizes(), v.options()) * 0.2);
  }
}

LayerQuantConfig no_quant(TransParam p) {
  LayerQuantConfig q;
  q.w_bits = q.a_bits = q.k_bits = q.v_bits = 16;
  q.transforms = q.kcache_transform = true;  // forced on: the original would skip them at 16 bits
  q.param = p;
  q.seed = 3;
  return q;
}

TEST_P(CalibFlatLayer, TransformsCancelWithoutQuantizationFp64) {
  const ModelConfig c = config_for(GetParam());
  const ModelWeights mw = test::random_model(c, 12);
  for (TransParam p : {TransParam::Svd, TransParam::Direct}) {
    FlatLayer layer(c, mw.layers[0], no_quant(p));
    layer->to(torch::kFloat64);
    randomize_transforms(*layer, 4);
    auto x = randn_input(2, 16, c.n_embd, 2, torch::kFloat64);
    torch::NoGradGuard ng;
    layer->set_mode(LayerMode::Fp);
    auto fp = layer->forward(x);
    layer->set_mode(LayerMode::Train);
    auto tr = layer->forward(x);
    EXPECT_LT(rel_err(tr, fp), 1e-5) << "param " << static_cast<int>(p);
    EXPECT_LT(rel_err(tr, fp), 1e-10);  // in fp64 the cancellation is far tighter than the spec's 1e-5
    // The merged form equals the train form.
    layer->merge();
    layer->set_mode(LayerMode::Eval);
    auto ev = layer->forward(x);
    EXPECT_LT(rel_err(ev, tr), 1e-10);
  }
}

TEST_P(CalibFlatLayer, TransformsActuallyChangeTheQuantizedPath) {
  // With quantization on, the transformed path differs from plain RTN (the transforms are really applied),
  // and the merged eval mode stays close to train mode (weights land on the same grid up to rare ties).
  const ModelConfig c = config_for(GetParam());
  const ModelWeights mw = test::random_model(c, 13);
  LayerQuantConfig q;  // W4A4KV4 with transforms
  q.seed = 5;
  LayerQuantConfig rtn = q;
  rtn.transforms = rtn.kcache_transform = false;
  FlatLayer a(c, mw.layers[0], q), b(c, mw.layers[0], rtn);
  a->to(torch::kFloat64);
  b->to(torch::kFloat64);
  a->set_mode(LayerMode::Train);
  b->set_mode(LayerMode::Train);
  auto x = randn_input(1, 12, c.n_embd, 3, torch::kFloat64);
  torch::NoGradGuard ng;
  auto ya = a->forward(x), yb = b->forward(x);
  EXPECT_GT(rel_err(ya, yb), 1e-3);
  a->merge();
  a->set_mode(LayerMode::Eval);
  EXPECT_LT(rel_err(a->forward(x), ya), 5e-2);
}

INSTANTIATE_TEST_SUITE_P(Configs, CalibFlatLayer,
                         ::testing::Values(Case{false, false, 4, 2}, Case{true, true, 4, 2}, Case{false, true, 4, 4},
                                           Case{true, false, 4, 1}),
                         // Stable names (the default prints the struct's bytes, padding included, which
                         // can differ between test discovery and the run).
                         [](const ::testing::TestParamInfo<Case>& i) {
                           const Case& k = i.param;
                           return std::string(k.bias ? "bias" : "nobias") + (k.llama3 ? "_llama3" : "_rope") +
                                  "_h" + std::to_string(k.n_head) + "_kv" + std::to_string(k.n_head_kv);
                         });

TEST(CalibFlatLayerChecks, ParameterGroupsAndBadWeights) {
  const ModelConfig c = config_for({false, false, 4, 2});
  ModelWeights mw = test::random_model(c, 14);
  LayerQuantConfig q;
  FlatLayer layer(c, mw.layers[0], q);
  // 3 Kron transforms x 2 factors x 3 tensors + 3 Single transforms x 3 tensors.
  EXPECT_EQ(layer->transform_params().size(), 27u);
  EXPECT_EQ(layer->diag_params().size(), 3u);
  EXPECT_EQ(layer->clip_params().size(), 2u * 9 + 2u * 7);  // 9 act/KV quantizers, 7 weight quantizers
  mw.layers[0].wq.pop_back();
  EXPECT_THROW(FlatLayer(c, mw.layers[0], q), Error);
  LayerQuantConfig off;
  off.w_bits = off.a_bits = off.k_bits = off.v_bits = 16;
  off.set_transforms_auto();
  FlatLayer plain(c, test::random_model(c, 1).layers[0], off);
  EXPECT_TRUE(plain->parameters().empty());
}

}  // namespace
}  // namespace fq::calib
