// Model-level calibration: --set validation, the window sampler, and on stories260K a full run vs a run
// stopped after 2 layers and resumed (bit-identical transforms), plus the refusal of a changed option.
#include <filesystem>
#include <functional>
#include <random>
#include <stdexcept>

#include <stdlib.h>

#include "calib/calibrate.h"
#include "calib_test_util.h"
#include "core/fs.h"
#include "io/safetensors.h"
#include <nlohmann/json.hpp>

namespace fq::calib {
namespace {

using test::error_of;
using test::TmpDir;

TEST(CalibCalibrate, SettingsDefaultsAndErrors) {
  CalibSettings s;
  EXPECT_EQ(s.epochs, 15);
  EXPECT_EQ(s.nsamples, 128);
  EXPECT_EQ(s.seqlen, 2048);
  EXPECT_EQ(s.bsz, 4);
  EXPECT_EQ(s.lr, 5e-3);
  s.apply({"calib.epochs=2", "calib.nsamples=6", "calib.bsz=3", "calib.lr=1e-3", "seed=7", "calib.seqlen=64"});
  EXPECT_EQ(s.epochs, 2);
  EXPECT_EQ(s.nsamples, 6);
  EXPECT_EQ(s.bsz, 3);
  EXPECT_EQ(s.lr, 1e-3);
  EXPECT_EQ(s.seed, 7u);
  EXPECT_EQ(s.seqlen, 64);
  auto err = [](std::vector<std::string> sets) { return error_of([&] { CalibSettings t; t.apply(sets); }); };
  EXPECT_NE(err({"calib.epoch=3"}).find("calib.epoch: unknown key"), std::string::npos);
  EXPECT_NE(err({"calib.epochs=x"}).find("calib.epochs=x: not an integer"), std::string::npos);
  EXPECT_NE(err({"calib.epochs=-1"}).find("calib.epochs=-1: out of range"), std::string::npos);
  EXPECT_NE(err({"calib.lr=0"}).find("calib.lr=0"), std::string::npos);
  EXPECT_NE(err({"calib.lr=nan"}).find("calib.lr=nan"), std::string::npos);
  EXPECT_NE(err({"seed=-3"}).find("seed=-3"), std::string::npos);
  EXPECT_NE(err({"calib.nsamples=5"}).find("calib.nsamples=5 is not a multiple of calib.bsz=4"), std::string::npos);
  EXPECT_NE(err({"nokey"}).find("expected key=value"), std::string::npos);
  EXPECT_NE(err({"calib.seqlen=1"}).find("calib.seqlen=1: out of range"), std::string::npos);
}

TEST(CalibCalibrate, WindowsAreSeededContiguousSlices) {
  std::vector<int32_t> stream(100);
  for (int i = 0; i < 100; ++i) stream[i] = 1000 + i;
  const auto a = sample_windows(stream, 5, 10, 0, "t");
  ASSERT_EQ(a.size(), 50u);
  std::mt19937_64 rng(0);  // the documented rule: start_j = rng() % (n - seqlen + 1)
  for (int j = 0; j < 5; ++j) {
    const int start = static_cast<int>(rng() % 91);
    for (int t = 0; t < 10; ++t) EXPECT_EQ(a[j * 10 + t], 1000 + start + t);
  }
  EXPECT_EQ(sample_windows(stream, 5, 10, 0, "t"), a);
  EXPECT_NE(sample_windows(stream, 5, 10, 1, "t"), a);
  EXPECT_EQ(sample_windows(stream, 2, 100, 3, "t"), [&] { auto v = stream; v.insert(v.end(), stream.begin(), stream.end()); return v; }());
  EXPECT_NE(error_of([&] { sample_windows(stream, 1, 101, 0, "f.txt"); }).find("f.txt: 100 tokens"), std::string::npos);
}

using Paths = test::CalibPaths;
bool paths(Paths& p) { return test::calib_paths(p); }
CalibrateOptions tiny(const Paths& p, const std::string& out) { return test::tiny_calibration(p, out); }

TEST(CalibCalibrate, ResumeIsBitIdenticalAndOptionsMustMatch) {
  torch::set_num_threads(1);  // tiny matmuls: 2 threads only spin (7 s vs 2 s per run on a busy 2-core box)
  Paths p;
  if (!paths(p)) GTEST_SKIP() << "stories260K or WikiText-2 missing";
  TmpDir tmp;
  const std::string full = tmp.file("full"), res = tmp.file("res");

  ASSERT_EQ(run_calibrate(tiny(p, full)), 0);
  EXPECT_FALSE(is_directory(full + ".partial"));  // removed after the artifact is committed

  CalibrateOptions o = tiny(p, res);
  o.stop_after_layers = 2;
  ASSERT_EQ(run_calibrate(o), 0);
  EXPECT_FALSE(is_directory(res));
  EXPECT_TRUE(file_exists(res + ".partial/layer_001.safetensors"));
  EXPECT_FALSE(file_exists(res + ".partial/layer_002.safetensors"));

  // A changed option is refused, naming it; the partial state stays usable.
  CalibrateOptions bad = tiny(p, res);
  bad.sets.push_back("calib.epochs=2");
  const std::string e = error_of([&] { run_calibrate(bad); });
  EXPECT_NE(e.find("option 'calib.epochs' was 1"), std::string::npos) << e;

  ASSERT_EQ(run_calibrate(tiny(p, res)), 0);
  const std::string ta = read_file(full + "/transforms.safetensors"), tb = read_file(res + "/transforms.safetensors");
  EXPECT_FALSE(ta.empty());
  EXPECT_TRUE(ta == tb) << "resumed transforms differ from the uninterrupted run";
  EXPECT_TRUE(read_file(full + "/model.safetensors") == read_file(res + "/model.safetensors"))
      << "resumed artifact differs from the uninterrupted run";
  EXPECT_EQ(read_file(full + "/calib_log.csv"), read_file(res + "/calib_log.csv"));

  // Contents: every layer's parameters under HF-style names, the log, the manifest.
  SafeTensors st(full + "/transforms.safetensors");
  for (int i = 0; i < 5; ++i) {
    const std::string L = "model.layers." + std::to_string(i);
    EXPECT_NE(st.find(L + ".self_attn.ln_trans.left.u_raw"), nullptr) << i;
    EXPECT_NE(st.find(L + ".self_attn.ln_trans.diag_scale"), nullptr) << i;
    EXPECT_NE(st.find(L + ".self_attn.kcache_trans.f.sigma"), nullptr) << i;
    EXPECT_NE(st.find(L + ".mlp.down_trans.right.v_raw"), nullptr) << i;
    EXPECT_NE(st.find(L + ".mlp.wq_down.clip_factor_w_max"), nullptr) << i;
    EXPECT_NE(st.find(L + ".self_attn.aq_q.clip_factor_a_min"), nullptr) << i;
  }
  EXPECT_EQ(st.get("model.layers.0.mlp.down_trans.diag_scale").shape, (std::vector<int64_t>{172}));
  const std::string csv = read_file(full + "/calib_log.csv");
  EXPECT_EQ(csv.rfind("layer,step,loss\n0,0,", 0), 0u);
  EXPECT_NE(csv.find("\n4,1,"), std::string::npos);  // 5 layers x 2 steps
  const auto man = nlohmann::json::parse(read_file(full + "/manifest.json"));
  EXPECT_EQ(man.at("format"), "flatquant-artifact");
  EXPECT_EQ(man.at("format_version"), 1);
  EXPECT_EQ(man.at("calibration").at("calib.nsamples"), 4);
  EXPECT_EQ(man.at("recipe").at("name"), "w4a4kv4");
  EXPECT_EQ(man.at("model_config").at("num_hidden_layers"), 5);
  ASSERT_EQ(man.at("layers").size(), 5u);
  for (const auto& l : man.at("layers")) EXPECT_GT(l.at("initial_loss").get<double>(), 0.0);

  // Rerunning a finished calibration redoes it and replaces the artifact with identical transforms.
  ASSERT_EQ(run_calibrate(tiny(p, full)), 0);
  EXPECT_TRUE(read_file(full + "/transforms.safetensors") == ta);
  // A non-artifact directory is never replaced.
  const std::string other = tmp.file("other");
  std::filesystem::create_directories(other);
  EXPECT_NE(error_of([&] { run_calibrate(tiny(p, other)); }).find("not a flatquant artifact"), std::string::npos);
}

TEST(CalibCalibrate, BadInputsAreOneLineErrors) {
  TmpDir tmp;
  CalibrateOptions o;
  o.model = tmp.file("nope");
  o.calib_data = tmp.file("nope.txt");
  o.out = tmp.file("out");
  o.progress = false;
  EXPECT_NE(error_of([&] { run_calibrate(o); }).find("not an HF model directory"), std::string::npos);
  o.sets = {"calib.bogus=1"};
  EXPECT_NE(error_of([&] { run_calibrate(o); }).find("calib.bogus: unknown key"), std::string::npos);
}

}  // namespace
}  // namespace fq::calib
