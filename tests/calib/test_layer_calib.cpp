// Layer calibration on real data: stories260K's layer 0 with embeddings of tokenized WikiText-2 train text.
#include <fstream>
#include <sstream>

#include "calib/layer_calib.h"
#include "calib_test_util.h"
#include "io/tokenizer.h"

namespace fq::calib {
namespace {

struct Fixture {
  ModelWeights w;
  torch::Tensor inputs;  // [n_samples, n_tokens, n_embd] fp32
};

// n_samples consecutive windows of n_tokens from the start of the WikiText-2 train text (BOS at the stream
// start only, as the original tokenizes the joined text once), embedded with the model's table.
bool load_fixture(Fixture& f, int64_t n_samples, int64_t n_tokens) {
  const std::string dir = test::models_cache() + "/stories260K";
  const std::string text_path = test::data_path("wikitext2_raw/wiki.train.nonempty.first1MB.txt");
  if (!file_exists(dir + "/config.json") || !file_exists(text_path)) return false;
  f.w = load_hf_weights(dir);
  auto tok = load_tokenizer(dir);
  std::ifstream in(text_path, std::ios::binary);
  std::string text(64 * 1024, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  const std::vector<int32_t> ids = tok->encode_with_bos(text);
  EXPECT_GE(static_cast<int64_t>(ids.size()), n_samples * n_tokens);
  const int64_t E = f.w.cfg.n_embd;
  auto emb = torch::from_blob(f.w.tok_embd.data(), {f.w.cfg.n_vocab, E}, torch::kFloat32);
  auto idx = torch::from_blob(const_cast<int32_t*>(ids.data()), {n_samples * n_tokens}, torch::kInt32).to(torch::kLong);
  f.inputs = emb.index_select(0, idx).reshape({n_samples, n_tokens, E}).clone();
  return true;
}

LayerQuantConfig w4a4kv4() {
  LayerQuantConfig q;  // defaults: W4 sym per channel, A4 sym per token, KV4 asym, LWC, LAC, diag, SVD
  q.seed = 0;
  return q;
}

TEST(CalibLayerCalib, LowersTheLossBelowRtnAndIsDeterministic) {
  torch::set_num_threads(2);
  Fixture f;
  if (!load_fixture(f, 4, 128)) GTEST_SKIP() << "stories260K or WikiText-2 missing";
  LayerCalibOptions opt;
  opt.epochs = 6;
  opt.batch = 2;  // 12 steps

  // Plain RTN: no transforms, no learned clipping.
  LayerQuantConfig rq = w4a4kv4();
  rq.transforms = rq.kcache_transform = false;
  rq.lwc = rq.lac = false;
  FlatLayer rtn(f.w.cfg, f.w.layers[0], rq);
  torch::Tensor fp_out;
  {
    torch::NoGradGuard ng;
    rtn->set_mode(LayerMode::Fp);
    fp_out = rtn->forward(f.inputs);
  }
  rtn->set_mode(LayerMode::Train);
  const double rtn_loss = layer_loss(rtn, f.inputs, fp_out, 2);

  FlatLayer a(f.w.cfg, f.w.layers[0], w4a4kv4());
  torch::Tensor fp_a;
  const LayerCalibResult ra = calibrate_layer(a, f.inputs, fp_a, opt);
  EXPECT_LT(test::rel_err(fp_a, fp_out), 1e-5);  // per-sample FP pass == batched FP pass
  EXPECT_EQ(ra.steps, 12);
  EXPECT_EQ(ra.epoch_loss.size(), 6u);
  EXPECT_LT(ra.final_loss, ra.initial_loss);
  EXPECT_LT(ra.final_loss, rtn_loss);
  for (double e : ra.epoch_loss) std::printf("epoch %.6g\n", e);
  std::printf("[ loss ] RTN %.6g  FlatQuant initial %.6g  final %.6g\n", rtn_loss, ra.initial_loss, ra.final_loss);

  // The merged eval form of the trained layer stays near the trained train-mode loss (same quantizers).
  a->merge();
  a->set_mode(LayerMode::Eval);
  EXPECT_LT(layer_loss(a, f.inputs, fp_out, 2), 1.5 * ra.final_loss);

  // Determinism: a second run from scratch gives bit-identical parameters and losses.
  FlatLayer b(f.w.cfg, f.w.layers[0], w4a4kv4());
  torch::Tensor fp_b;
  const LayerCalibResult rb = calibrate_layer(b, f.inputs, fp_b, opt);
  EXPECT_EQ(ra.final_loss, rb.final_loss);
  auto pa = a->named_parameters(true), pb = b->named_parameters(true);
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i].key(), pb[i].key());
    EXPECT_TRUE(torch::equal(pa[i].value(), pb[i].value())) << pa[i].key();
  }
  // And training moved the parameters (a different seed gives different ones).
  LayerQuantConfig qc = w4a4kv4();
  qc.seed = 1;
  FlatLayer c(f.w.cfg, f.w.layers[0], qc);
  EXPECT_FALSE(torch::equal(c->named_parameters(true)[0].value(), pa[0].value()));
}

TEST(CalibLayerCalib, RejectsBadShapes) {
  const ModelConfig c = [] {
    ModelConfig m;
    m.architecture = "LlamaForCausalLM";
    m.n_embd = 8, m.n_head = 2, m.n_head_kv = 1, m.head_dim = 4, m.n_ff = 16, m.n_vocab = 4, m.n_layer = 1;
    return m;
  }();
  LayerWeights w;
  w.attn_norm.assign(8, 1.f), w.ffn_norm.assign(8, 1.f);
  w.wq.assign(64, 0.1f), w.wk.assign(32, 0.1f), w.wv.assign(32, 0.1f), w.wo.assign(64, 0.1f);
  w.w_gate.assign(128, 0.1f), w.w_up.assign(128, 0.1f), w.w_down.assign(128, 0.1f);
  FlatLayer l(c, w, w4a4kv4());
  torch::Tensor out;
  LayerCalibOptions opt;
  opt.batch = 4;
  EXPECT_THROW(calibrate_layer(l, torch::zeros({3, 5, 8}), out, opt), Error);  // 3 % 4 != 0
  EXPECT_THROW(calibrate_layer(l, torch::zeros({4, 8}), out, opt), Error);
}

}  // namespace
}  // namespace fq::calib
