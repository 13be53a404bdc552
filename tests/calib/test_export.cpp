// The export pass: RTN codes, artifacts of every method on stories260K, --save/--load-transforms, the import
// of the original's flat_matrices.pth (fixture made by scripts/gen_flat_matrices.py), GPTQ end to end.
#include <nlohmann/json.hpp>

#include "calib/calibrate.h"
#include "calib/export.h"
#include "calib/quantizer.h"
#include "calib/transform_io.h"
#include "calib_test_util.h"
#include "core/fs.h"
#include "io/safetensors.h"
#include "model/artifact.h"
#include "ref/quant_decoder.h"

namespace fq::calib {
namespace {

using test::error_of;
using test::TmpDir;

TEST(CalibExport, RtnIsTheWeightQuantizersFakeQuant) {
  torch::manual_seed(3);
  auto w = torch::randn({37, 24}, torch::kFloat64);
  w[5].zero_();  // an all-zero row: scale from the 1e-5 floor, codes 0
  for (int bits : {4, 8}) {
    const QuantizedWeight q = rtn_quantize(w, bits);
    ASSERT_EQ(q.codes.scalar_type(), torch::kInt8);
    const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
    EXPECT_GE(q.codes.min().item<int>(), lo);
    EXPECT_LE(q.codes.max().item<int>(), hi);
    EXPECT_EQ(q.codes[5].abs().sum().item<int>(), 0);
    // Every row uses its extreme code (absmax scaling).
    auto amax = q.codes.to(torch::kInt32).abs().amax(1);
    for (int r = 0; r < 37; ++r) {
      if (r != 5) {
        EXPECT_TRUE(amax[r].item<int>() == hi || amax[r].item<int>() == hi + 1) << r;
      }
    }
    WeightQuantizer wq(37, bits, true, -1, false);
    const auto fake = wq->quantize(w);
    // Same codes; values differ only by the fp32 rounding of the stored scale.
    EXPECT_LT(test::rel_err(dequantize(q, torch::kFloat64), fake), 1e-7) << bits;
    EXPECT_TRUE(torch::equal(torch::round(fake / (w.abs().amax(1, true).clamp_min(1e-5) / hi)).to(torch::kInt8),
                             q.codes))
        << bits;
  }
  EXPECT_NE(error_of([&] { rtn_quantize(w, 3); }).find("bits 3"), std::string::npos);
}

struct Fixture {
  test::CalibPaths p;
  bool ok = test::calib_paths(p);
};

CalibrateOptions tiny(const test::CalibPaths& p, const std::string& out, const std::string& method = "flatquant") {
  CalibrateOptions o = test::tiny_calibration(p, out);
  o.method = method;
  return o;
}

TEST(CalibExport, EveryMethodWritesAValidArtifact) {
  torch::set_num_threads(1);
  Fixture f;
  if (!f.ok) GTEST_SKIP() << "stories260K or WikiText-2 missing";
  TmpDir tmp;
  const ModelConfig cfg = ModelConfig::load(f.p.model + "/config.json");
  for (const std::string m : {"rtn", "hadamard", "smoothquant", "flatquant"}) {
    const std::string out = tmp.file(m);
    ASSERT_EQ(run_calibrate(tiny(f.p, out, m)), 0) << m;
    const Artifact a = load_artifact(out);
    EXPECT_EQ(a.method, m);
    EXPECT_EQ(a.recipe.name, "w4a4kv4");
    ASSERT_EQ(a.layers.size(), 5u);
    const ArtifactLayer& l = a.layers[2];
    EXPECT_EQ(l.q.bits, 4);
    EXPECT_EQ(l.down.in, cfg.n_ff);
    EXPECT_EQ(l.down.qweight.size(), static_cast<size_t>(cfg.n_embd * cfg.n_ff / 2));
    const bool rotates = m == "hadamard" || m == "flatquant";
    EXPECT_EQ(l.ln_trans.present(), rotates) << m;
    EXPECT_EQ(l.down_trans.present(), rotates) << m;
    EXPECT_EQ(!l.o_trans.empty(), rotates) << m;
    EXPECT_EQ(!l.kcache_trans.empty(), rotates) << m;
    if (m == "hadamard") {
      // 64 = 8 x 8: randomized Hadamard factors, entries +-1/sqrt(8).
      ASSERT_EQ(l.ln_trans.L, 8);
      for (float v : l.ln_trans.left) EXPECT_NEAR(std::abs(v), 1.0 / std::sqrt(8.0), 1e-6);
    }
    // Learnable clipping only for FlatQuant; the baselines quantize with the full range.
    if (m == "flatquant") {
      EXPECT_LT(l.q.act_clip_max, 1.0f);
      EXPECT_LT(l.k_clip_max, 1.0f);
    } else {
      EXPECT_EQ(l.q.act_clip_max, 1.0f);
      EXPECT_EQ(l.k_clip_min, 1.0f);
    }
    // SmoothQuant folds its scales into the norms.
    const SafeTensors fp(f.p.model + "/model.safetensors");
    const auto fp_norm = fp.to_f32(fp.get("model.layers.2.input_layernorm.weight"));
    EXPECT_EQ(l.attn_norm == fp_norm, m == "rtn" || m == "hadamard") << m;
    // The manifest records the calibration.
    const auto man = nlohmann::json::parse(read_file(out + "/manifest.json"));
    EXPECT_EQ(man.at("method"), m);
    EXPECT_EQ(file_exists(out + "/transforms.safetensors"), true) << m;
  }
}

TEST(CalibExport, LoadTransformsReproducesTheArtifact) {
  torch::set_num_threads(1);
  Fixture f;
  if (!f.ok) GTEST_SKIP() << "stories260K or WikiText-2 missing";
  TmpDir tmp;
  CalibrateOptions o = tiny(f.p, tmp.file("a"));
  o.save_transforms = tmp.file("t.safetensors");
  ASSERT_EQ(run_calibrate(o), 0);
  EXPECT_EQ(read_file(tmp.file("t.safetensors")), read_file(tmp.file("a") + "/transforms.safetensors"));
  CalibrateOptions l = tiny(f.p, tmp.file("b"));
  l.calib_data.clear();  // RTN after loading needs no data
  l.load_transforms = tmp.file("t.safetensors");
  ASSERT_EQ(run_calibrate(l), 0);
  EXPECT_TRUE(read_file(tmp.file("a") + "/model.safetensors") == read_file(tmp.file("b") + "/model.safetensors"));
  // Transforms of another recipe are refused by tensor name.
  CalibrateOptions w16 = l;
  w16.out = tmp.file("c");
  w16.recipe = "w16a16kv4";
  EXPECT_NE(error_of([&] { run_calibrate(w16); }).find("does not belong to this model and recipe"), std::string::npos);
  CalibrateOptions missing = l;
  missing.load_transforms = tmp.file("nope.safetensors");
  EXPECT_NE(error_of([&] { run_calibrate(missing); }).find("nope.safetensors: transforms file not found"),
            std::string::npos);
  CalibrateOptions gptq_nodata = l;
  gptq_nodata.weight_quantizer = "gptq";
  EXPECT_NE(error_of([&] { run_calibrate(gptq_nodata); }).find("--calib-data: required"), std::string::npos);
}

TEST(CalibExport, GptqRunsAndKeepsTheTransforms) {
  torch::set_num_threads(1);
  Fixture f;
  if (!f.ok) GTEST_SKIP() << "stories260K or WikiText-2 missing";
  TmpDir tmp;
  CalibrateOptions r = tiny(f.p, tmp.file("rtn"));
  ASSERT_EQ(run_calibrate(r), 0);
  CalibrateOptions g = tiny(f.p, tmp.file("gptq"));
  g.weight_quantizer = "gptq";
  ASSERT_EQ(run_calibrate(g), 0);
  const Artifact ar = load_artifact(tmp.file("rtn")), ag = load_artifact(tmp.file("gptq"));
  EXPECT_EQ(ag.recipe.weight_quantizer, "gptq");
  // Same trained transforms, different weight codes.
  EXPECT_EQ(read_file(tmp.file("rtn") + "/transforms.safetensors"), read_file(tmp.file("gptq") + "/transforms.safetensors"));
  EXPECT_EQ(ar.layers[0].ln_trans.left, ag.layers[0].ln_trans.left);
  EXPECT_NE(ar.layers[0].up.qweight, ag.layers[0].up.qweight);
}

// The original's model-zoo file: its eval-mode matrices, diag scales and clipping logits are imported, and an
// artifact built from it equals the one built from the same values stored in our safetensors layout.
TEST(CalibExport, ImportsTheOriginalFlatMatrices) {
  torch::set_num_threads(1);
  Fixture f;
  const std::string pth = test::source_path("tests/data/flat_matrices/stories260K.pth");
  const std::string twin = test::source_path("tests/data/flat_matrices/stories260K_twin.safetensors");
  if (!f.ok || !file_exists(pth)) GTEST_SKIP() << "stories260K or the flat_matrices fixture missing";
  TransformSet a = read_transforms(pth), b = read_transforms(twin);
  EXPECT_TRUE(a.direct);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, t] : b.tensors) {
    ASSERT_TRUE(a.tensors.count(name)) << name;
    EXPECT_TRUE(torch::equal(a.tensors.at(name).reshape(t.sizes()), t)) << name;
  }
  TmpDir tmp;
  CalibrateOptions o = tiny(f.p, tmp.file("pth"));
  o.calib_data.clear();
  o.load_transforms = pth;
  ASSERT_EQ(run_calibrate(o), 0);
  o.out = tmp.file("twin");
  o.load_transforms = twin;
  ASSERT_EQ(run_calibrate(o), 0);
  EXPECT_TRUE(read_file(tmp.file("pth") + "/model.safetensors") == read_file(tmp.file("twin") + "/model.safetensors"));
  // The imported matrices are the online ones.
  const Artifact art = load_artifact(tmp.file("pth"));
  const auto L = a.tensors.at("model.layers.3.self_attn.ln_trans.left.matrix");
  EXPECT_TRUE(torch::equal(torch::from_blob(const_cast<float*>(art.layers[3].ln_trans.left.data()), L.sizes(),
                                            torch::kFloat32),
                           L));
  // A file without a needed tensor names it.
  SafeTensorsWriter w;
  const SafeTensors st(twin);
  for (const TensorInfo& t : st.tensors())
    if (t.name != "model.layers.1.mlp.down_trans.diag_scale") w.add(t.name, t.dtype, t.shape, st.data(t), t.nbytes());
  w.set_metadata("format", "flatquant-transforms");
  w.write(tmp.file("cut.safetensors"));
  o.out = tmp.file("cut");
  o.load_transforms = tmp.file("cut.safetensors");
  EXPECT_NE(error_of([&] { run_calibrate(o); }).find("missing tensor 'model.layers.1.mlp.down_trans.diag_scale'"),
            std::string::npos);
  // Not a torch file.
  write_file_atomic(tmp.file("junk.pth"), "not a zip");
  o.load_transforms = tmp.file("junk.pth");
  EXPECT_NE(error_of([&] { run_calibrate(o); }).find("junk.pth: not a zip archive"), std::string::npos);
}

// The CPU runtime's fake-quant forward over the artifact (src/ref/quant_decoder) equals the calibration's own
// LibTorch Eval-mode layers with the same weights: the export put every transform, scale and clip where the
// runtime expects it. Two fp32 implementations of a 4-bit model: tiny rounding differences can flip an
// activation code, so the bound is on the mean error, and the worst position is reported.
TEST(CalibExport, CpuRuntimeMatchesTheCalibrationForward) {
  torch::set_num_threads(1);
  Fixture f;
  if (!f.ok) GTEST_SKIP() << "stories260K or WikiText-2 missing";
  TmpDir tmp;
  std::vector<int32_t> toks;
  for (int t = 0; t < 48; ++t) toks.push_back(static_cast<int32_t>((t * 37 + 11) % 512));
  toks[0] = 1;
  for (const std::string m : {"flatquant", "hadamard", "smoothquant"}) {
    const std::string out = tmp.file(m);
    ASSERT_EQ(run_calibrate(tiny(f.p, out, m)), 0);
    const std::vector<float> ref = torch_fake_quant_logits(out, toks);
    ref::QuantDecoder dec(load_artifact(out), ref::QuantMode::kFake, 0, 1);
    std::vector<float> got(ref.size());
    dec.forward(toks.data(), static_cast<int64_t>(toks.size()), got.data());
    double num = 0, den = 0, worst = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      num += std::abs(got[i] - ref[i]);
      den += std::abs(ref[i]);
      worst = std::max(worst, static_cast<double>(std::abs(got[i] - ref[i])));
    }
    EXPECT_LT(num / den, 2e-3) << m << " (worst |diff| " << worst << ")";
    // The same greedy token at (nearly) every position.
    int agree = 0;
    const int64_t V = 512;
    for (size_t t = 0; t < toks.size(); ++t) {
      auto arg = [&](const std::vector<float>& v) {
        return std::max_element(v.begin() + t * V, v.begin() + (t + 1) * V) - (v.begin() + t * V);
      };
      agree += arg(got) == arg(ref);
    }
    EXPECT_GE(agree, 46) << m;
  }
}

}  // namespace
}  // namespace fq::calib
