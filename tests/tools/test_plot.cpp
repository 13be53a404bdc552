// flatquant plot: PNG validity and size, CSVs against independently recomputed data, one-line errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "../ref/fold_model.h"
#include "../ref/random_model.h"
#include "../test_util.h"
#include "core/fs.h"
#include "eval/calib_plot.h"
#include "eval/flatness.h"
#include "eval/plot.h"
#include "flatquant/error.h"
#include "io/tokenizer.h"
#include "model/artifact.h"
#include "ref/hadamard.h"
#include "ref/kron.h"

namespace fq {
namespace {

#define REQUIRE_GNUPLOT() \
  if (!plot::gnuplot_available()) GTEST_SKIP() << "gnuplot not installed"

// Width and height from the PNG signature and the IHDR chunk (which must come first).
struct PngSize {
  bool ok = false;
  uint32_t width = 0, height = 0;
};
PngSize png_size(const std::string& path) {
  PngSize r;
  if (!file_exists(path)) return r;
  const std::string b = read_file(path);
  static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (b.size() < 33 || std::memcmp(b.data(), sig, 8) != 0 || b.compare(12, 4, "IHDR") != 0) return r;
  auto be32 = [&](size_t o) {
    return (uint32_t)(uint8_t)b[o] << 24 | (uint32_t)(uint8_t)b[o + 1] << 16 | (uint32_t)(uint8_t)b[o + 2] << 8 |
           (uint32_t)(uint8_t)b[o + 3];
  };
  if (be32(8) != 13) return r;
  r.ok = true;
  r.width = be32(16);
  r.height = be32(20);
  return r;
}

void expect_png(const std::string& path, uint32_t w, uint32_t h) {
  const PngSize s = png_size(path);
  ASSERT_TRUE(s.ok) << path << " is not a PNG";
  EXPECT_EQ(s.width, w) << path;
  EXPECT_EQ(s.height, h) << path;
}

plot::Table read_csv(const std::string& path) { return plot::parse_table_csv(read_file(path), path); }

bool one_line(const std::string& s) { return !s.empty() && s.find('\n') == s.size() - 1; }

std::string q(const std::string& s) { return "'" + s + "'"; }

// An artifact of a random tiny model with a calibration log and per-layer losses in the manifest.
struct LossRecord {
  int layer, step;
  double loss;
};
std::string write_calibrated(const test::TempDir& t, const std::string& name, const std::string& method,
                             double scale, bool with_log, std::vector<LossRecord>* log_out = nullptr) {
  const ModelWeights w = test::random_model(test::tiny_config(), 3);
  test::ArtifactOptions opt;
  opt.method = method;
  Artifact a = test::make_artifact(w, test::random_transforms(w.cfg, 4), test::test_recipe("w4a4kv4", 4, 4, 4), opt);
  std::mt19937_64 g(std::hash<std::string>{}(name));
  std::uniform_real_distribution<double> u(0.5, 1.5);
  std::string csv = "layer,step,loss\n";
  nlohmann::json layers = nlohmann::json::array();
  for (int l = 0; l < (int)w.cfg.n_layer; ++l) {
    double loss = scale * u(g) * (l + 1);
    const double initial = loss;
    for (int s = 0; s < 5; ++s) {
      csv += std::to_string(l) + "," + std::to_string(s) + "," + fmt::format("{:.17g}", loss) + "\n";
      if (log_out) log_out->push_back({l, s, loss});
      loss *= 0.7;
    }
    layers.push_back({{"layer", l}, {"initial_loss", initial}, {"final_loss", loss / 0.7}, {"seconds", 0.1}});
  }
  if (with_log) a.info["layers"] = layers;
  const std::string src = t.file(name + "_src"), log = t.file(name + "_log.csv");
  std::filesystem::create_directories(src);
  write_file_atomic(log, csv);
  const std::string dir = t.file(name);
  std::vector<std::pair<std::string, std::string>> extra;
  if (with_log) extra = {{"calib_log.csv", log}};
  write_artifact(a, dir, src, extra);
  return dir;
}

TEST(PlotCsv, RoundTripAndNaN) {
  plot::Table t;
  t.columns = {"x", "a", "b"};
  t.rows = {{0, 1.5, std::nan("")}, {1, 1e-30, 2.25}};
  const plot::Table r = plot::parse_table_csv(plot::table_csv(t), "t");
  ASSERT_EQ(r.columns, t.columns);
  ASSERT_EQ(r.rows.size(), 2u);
  EXPECT_TRUE(std::isnan(r.rows[0][2]));
  EXPECT_DOUBLE_EQ(r.rows[1][1], 1e-30);
  EXPECT_THROW(plot::parse_table_csv("x,a\n1,zz\n", "t"), Error);
}

TEST(PlotCalibration, CurvesAndBarsMatchTheLogsAndManifests) {
  REQUIRE_GNUPLOT();
  test::TempDir t;
  std::vector<LossRecord> log;
  const std::string fq_dir = write_calibrated(t, "fq", "flatquant", 1e-3, true, &log);
  const std::string rtn = write_calibrated(t, "rtn", "rtn", 1e-1, true);
  const std::string rtn2 = write_calibrated(t, "rtn2", "rtn", 2e-1, true);
  const std::string out = t.file("plots");
  const auto r = test::run_cli("plot calibration " + q(fq_dir) + " " + q(rtn) + " " + q(rtn2) + " --out " + q(out) +
                               " --width 640 --height 480");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_png(path_join(out, "calib_loss_curves.png"), 640, 480);
  expect_png(path_join(out, "calib_final_loss.png"), 640, 480);

  // Curves: step column, one column per layer, every logged value in its cell.
  const plot::Table c = read_csv(path_join(out, "calib_loss_curves.csv"));
  ASSERT_EQ(c.columns, (std::vector<std::string>{"step", "layer0", "layer1"}));
  ASSERT_EQ(c.rows.size(), 5u);
  for (const LossRecord& e : log) {
    EXPECT_EQ(c.rows[e.step][0], e.step);
    EXPECT_NEAR(c.rows[e.step][1 + e.layer], e.loss, 1e-8 * e.loss);
  }

  // Bars: one row per layer, one column per artifact, the manifest's final_loss; shared methods told apart.
  const plot::Table b = read_csv(path_join(out, "calib_final_loss.csv"));
  ASSERT_EQ(b.columns, (std::vector<std::string>{"layer", "flatquant", "rtn (rtn)", "rtn (rtn2)"}));
  ASSERT_EQ(b.rows.size(), 2u);
  const std::vector<std::string> dirs{fq_dir, rtn, rtn2};
  for (size_t m = 0; m < dirs.size(); ++m) {
    const auto man = nlohmann::json::parse(read_file(path_join(dirs[m], "manifest.json")));
    for (const auto& l : man["layers"]) {
      const int layer = l["layer"].get<int>();
      EXPECT_EQ(b.rows[layer][0], layer);
      EXPECT_NEAR(b.rows[layer][1 + m], l["final_loss"].get<double>(), 1e-8 * l["final_loss"].get<double>());
    }
  }
  // The losses of the first layer's last step are the manifest's final loss (the generator's contract).
  EXPECT_NEAR(b.rows[0][1], c.rows[4][1], 1e-8);
}

TEST(PlotCalibration, ArtifactWithoutLossesIsLeftOutOfTheBars) {
  REQUIRE_GNUPLOT();
  test::TempDir t;
  const std::string base = write_calibrated(t, "rtn", "rtn", 1e-1, false);
  const std::string fq_dir = write_calibrated(t, "fq", "flatquant", 1e-3, true);
  const std::string out = t.file("plots");
  const auto r = test::run_cli("plot calibration " + q(base) + " " + q(fq_dir) + " --out " + q(out));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("no per-layer losses"), std::string::npos) << r.err;
  expect_png(path_join(out, "calib_loss_curves.png"), 1000, 600);
  const plot::Table b = read_csv(path_join(out, "calib_final_loss.csv"));
  EXPECT_EQ(b.columns, (std::vector<std::string>{"layer", "flatquant"}));
}

TEST(PlotCalibration, ErrorsAreOneLine) {
  test::TempDir t;
  auto r = test::run_cli("plot calibration " + q(t.file("nope")) + " --out " + q(t.file("o")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find("nope"), std::string::npos) << r.err;

  const std::string noLog = write_calibrated(t, "rtn", "rtn", 1e-1, false);
  r = test::run_cli("plot calibration " + q(noLog) + " --out " + q(t.file("o")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find("calib_log.csv"), std::string::npos) << r.err;

  const std::string ok = write_calibrated(t, "fq", "flatquant", 1e-3, true);
  {
    // The child inherits the environment: point FLATQUANT_GNUPLOT at nothing for this one run.
    struct EnvGuard {
      explicit EnvGuard(const std::string& v) { setenv("FLATQUANT_GNUPLOT", v.c_str(), 1); }
      ~EnvGuard() { unsetenv("FLATQUANT_GNUPLOT"); }
    } env(t.file("no_gnuplot"));
    r = test::run_cli("plot calibration " + q(ok) + " --out " + q(t.file("o")));
  }
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find("gnuplot not found"), std::string::npos) << r.err;
}

// ---- flatness ----

// Sorted descending.
std::vector<double> desc(std::vector<double> v) {
  std::sort(v.begin(), v.end(), std::greater<double>());
  return v;
}

// x (M_L (x) M_R) in double with dense factors: out[i*R + j] = sum_{k,l} x[k*R + l] ML[k][i] MR[l][j].
std::vector<double> kron_apply(const std::vector<double>& x, const std::vector<double>& ML, int64_t L,
                               const std::vector<double>& MR, int64_t R) {
  std::vector<double> y((size_t)(L * R), 0.0);
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < R; ++j) {
      double a = 0;
      for (int64_t k = 0; k < L; ++k)
        for (int64_t l = 0; l < R; ++l) a += x[k * R + l] * ML[k * L + i] * MR[l * R + j];
      y[i * R + j] = a;
    }
  return y;
}

void expect_col(const plot::Table& t, size_t col, const std::vector<double>& want, double rel, const char* what) {
  ASSERT_EQ(t.rows.size(), want.size()) << what;
  for (size_t j = 0; j < want.size(); ++j)
    EXPECT_NEAR(t.rows[j][col], want[j], rel * std::max(1.0, std::fabs(want[j]))) << what << " channel " << j;
}

// Layer 0's q/k/v input is rmsnorm(embedding) * g, so every curve of that site can be recomputed in double
// from the weights and the test's own transforms, without the decoder.
TEST(PlotFlatness, Layer0QkvCurvesMatchAnIndependentComputation) {
  const ModelConfig c = test::tiny_config();
  const ModelWeights w = test::random_model(c, 11);
  const test::ModelTransformsD tr = test::random_transforms(c, 12);
  const Artifact a = test::make_artifact(w, tr, test::test_recipe("w4a4kv4", 4, 4, 4));
  const std::vector<int32_t> tokens{1, 5, 9, 17, 33, 2, 60, 7, 7, 40, 3, 22};
  plot::FlatnessOptions o;
  o.layer = 0;
  o.window = 5;  // several windows
  o.threads = 2;
  o.seed = 0;
  const auto sites = plot::compute_flatness(w, a, tokens, o);
  ASSERT_EQ(sites.size(), 4u);
  EXPECT_EQ(sites[0].name, "qkv");
  const plot::Table& t = sites[0].table;
  const int64_t E = c.n_embd;
  const test::KronTransformD& k = tr.layers[0].ln;
  const ref::KronDims d = test::kron_dims_or_flat(E);
  const auto HL = ref::randomized_hadamard(d.left, 0).matrix, HR = ref::randomized_hadamard(d.right, 1).matrix;

  std::vector<double> ax(E, 0), ah(E, 0), af(E, 0);
  for (int32_t tok : tokens) {
    std::vector<double> x(E);
    double ss = 0;
    for (int64_t j = 0; j < E; ++j) ss += (double)w.tok_embd[tok * E + j] * w.tok_embd[tok * E + j];
    const double inv = 1.0 / std::sqrt(ss / E + c.rms_eps);
    for (int64_t j = 0; j < E; ++j) x[j] = w.tok_embd[tok * E + j] * inv * w.layers[0].attn_norm[j];
    std::vector<double> xs(E);
    for (int64_t j = 0; j < E; ++j) xs[j] = x[j] * k.s[j];
    const auto h = kron_apply(x, HL, d.left, HR, d.right);
    const auto f = kron_apply(xs, k.A.m, k.L, k.B.m, k.R);
    for (int64_t j = 0; j < E; ++j) {
      ax[j] = std::max(ax[j], std::fabs(x[j]));
      ah[j] = std::max(ah[j], std::fabs(h[j]));
      af[j] = std::max(af[j], std::fabs(f[j]));
    }
  }
  // Consumer weights: q, k, v stacked.
  std::vector<double> wn(E, 0), wh(E, 0), wa(E, 0);
  const int64_t qd = c.n_head * c.head_dim, kvd = c.n_head_kv * c.head_dim;
  const std::vector<std::pair<const std::vector<float>*, int64_t>> fp = {
      {&w.layers[0].wq, qd}, {&w.layers[0].wk, kvd}, {&w.layers[0].wv, kvd}};
  for (const auto& [W, rows] : fp)
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<double> row(W->begin() + r * E, W->begin() + (r + 1) * E);
      const auto h = kron_apply(row, HL, d.left, HR, d.right);
      for (int64_t j = 0; j < E; ++j) {
        wn[j] = std::max(wn[j], std::fabs(row[j]));
        wh[j] = std::max(wh[j], std::fabs(h[j]));
      }
    }
  for (const QLinear* ql : {&a.layers[0].q, &a.layers[0].k, &a.layers[0].v}) {
    const std::vector<float> dq = ql->dequantize();
    for (int64_t r = 0; r < ql->out; ++r)
      for (int64_t j = 0; j < E; ++j) wa[j] = std::max(wa[j], (double)std::fabs(dq[r * E + j]));
  }
  std::vector<double> as(E), ws(E);
  for (int64_t j = 0; j < E; ++j) {
    const double s = std::sqrt(ax[j]) / std::sqrt(wn[j]);
    as[j] = ax[j] / s;
    ws[j] = wn[j] * s;
  }
  expect_col(t, plot::kActNone, desc(ax), 1e-5, "act none");
  expect_col(t, plot::kActSmooth, desc(as), 1e-5, "act smoothquant");
  expect_col(t, plot::kActHadamard, desc(ah), 1e-5, "act hadamard");
  expect_col(t, plot::kActArtifact, desc(af), 1e-4, "act artifact");
  expect_col(t, plot::kWNone, desc(wn), 1e-6, "w none");
  expect_col(t, plot::kWSmooth, desc(ws), 1e-5, "w smoothquant");
  expect_col(t, plot::kWHadamard, desc(wh), 1e-5, "w hadamard");
  expect_col(t, plot::kWArtifact, desc(wa), 1e-6, "w artifact");
  // SmoothQuant balances the two: max|x/s| = max|W s| channel by channel = sqrt(max|x| max|W|).
  for (int64_t j = 0; j < E; ++j) EXPECT_NEAR(as[j], ws[j], 1e-9 * std::max(1.0, as[j]));
  // Each site has its channel count and the transforms keep the norm-free curves finite and positive.
  EXPECT_EQ(sites[1].table.rows.size(), (size_t)qd);
  EXPECT_EQ(sites[2].table.rows.size(), (size_t)E);
  EXPECT_EQ(sites[3].table.rows.size(), (size_t)c.n_ff);
  for (const auto& s : sites)
    for (const auto& row : s.table.rows)
      for (size_t col = 1; col < row.size(); ++col) EXPECT_TRUE(std::isfinite(row[col]) && row[col] >= 0) << s.name;
}

TEST(PlotFlatness, BadLayerIsAnError) {
  const ModelConfig c = test::tiny_config();
  const ModelWeights w = test::random_model(c, 11);
  const Artifact a = test::make_artifact(w, test::random_transforms(c, 12), test::test_recipe("w4a4kv4", 4, 4, 4));
  plot::FlatnessOptions o;
  o.layer = (int)c.n_layer;
  EXPECT_THROW(plot::compute_flatness(w, a, {1, 2, 3}, o), Error);
  o.layer = -1;
  EXPECT_THROW(plot::compute_flatness(w, a, {1, 2, 3}, o), Error);
}

// The CLI on stories260K with a random-transform artifact: four PNGs of the requested size whose CSVs are
// what compute_flatness gives for the same tokens.
class PlotFlatnessCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string bin = test::data_path("stories260K/stories260K.bin");
    if (!file_exists(bin)) return;
    tmp_ = new test::TempDir();
    const auto r = test::run_cli("convert --from llama2c --model '" + bin + "' --out '" + tmp_->file("fp") + "'");
    if (r.exit_code != 0) return;
    fp_ = tmp_->file("fp");
    const ModelWeights w = load_hf_weights(fp_);
    const Artifact a =
        test::make_artifact(w, test::random_transforms(w.cfg, 5), test::test_recipe("w4a4kv4", 4, 4, 4));
    art_ = tmp_->file("art");
    write_artifact(a, art_, fp_);
  }
  static void TearDownTestSuite() {
    delete tmp_;
    tmp_ = nullptr;
  }
  void SetUp() override {
    if (art_.empty()) GTEST_SKIP() << "stories260K missing or not convertible";
  }
  static inline test::TempDir* tmp_ = nullptr;
  static inline std::string fp_, art_;
};

TEST_F(PlotFlatnessCli, FourPngsWithTheComputedData) {
  REQUIRE_GNUPLOT();
  test::TempDir t;
  const std::string text = "Once upon a time there was a little dog. He liked to run in the park with his friend.";
  write_file_atomic(t.file("data.txt"), text);
  const std::string out = t.file("plots");
  const auto r = test::run_cli("plot flatness --model " + q(fp_) + " --artifact " + q(art_) + " --layer 2 --data " +
                               q(t.file("data.txt")) + " --tokens 4096 --window 16 --threads 2 --out " + q(out) +
                               " --width 800 --height 400");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const ModelWeights w = load_hf_weights(fp_);
  const Artifact a = load_artifact(art_);
  const std::vector<int32_t> ids = load_tokenizer(fp_)->encode_with_bos(text);
  plot::FlatnessOptions o;
  o.layer = 2;
  o.window = 16;
  const auto sites = plot::compute_flatness(w, a, ids, o);
  const std::string prefix = "flatness_" + std::filesystem::path(fp_).filename().string() + "_layer2_";
  for (const auto& s : sites) {
    const std::string png = path_join(out, prefix + s.name + ".png");
    expect_png(png, 800, 400);
    const plot::Table got = read_csv(plot::csv_path_for(png));
    ASSERT_EQ(got.columns, s.table.columns);
    ASSERT_EQ(got.rows.size(), s.table.rows.size());
    for (size_t i = 0; i < got.rows.size(); ++i)
      for (size_t col = 0; col < got.columns.size(); ++col)
        EXPECT_NEAR(got.rows[i][col], s.table.rows[i][col], 1e-7 * std::max(1.0, std::fabs(s.table.rows[i][col])))
            << s.name << " row " << i << " " << got.columns[col];
  }
}

TEST_F(PlotFlatnessCli, ErrorsAreOneLine) {
  test::TempDir t;
  auto r = test::run_cli("plot flatness --model " + q(fp_) + " --artifact " + q(art_) + " --layer 99 --out " +
                         q(t.file("o")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find("--layer 99"), std::string::npos) << r.err;
  r = test::run_cli("plot flatness --model " + q(fp_) + " --artifact " + q(t.file("missing")) +
                    " --layer 0 --out " + q(t.file("o")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find("missing"), std::string::npos) << r.err;
  r = test::run_cli("plot flatness --model " + q(fp_) + " --artifact " + q(art_) + " --layer 0 --data " +
                    q(t.file("none.txt")) + " --out " + q(t.file("o")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find("none.txt"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace fq
