// Artifacts through the CLI: ppl (fake / real, KLD against the FP model), eval, generate, chat and inspect on
// a W4A4KV4 artifact built from stories260K with random transforms (tests/ref/fold_model.h), plus the --quant
// and load errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "../ref/fold_model.h"
#include "model/artifact.h"
#include "model/weights.h"
#include "test_util.h"

namespace fq {
namespace {

using nlohmann::json;

class ArtifactCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string bin = test::data_path("stories260K/stories260K.bin");
    if (!file_exists(bin)) return;
    tmp_ = new test::TempDir();
    const auto r =
        test::run_cli("convert --from llama2c --model '" + bin + "' --out '" + tmp_->file("fp") + "'");
    if (r.exit_code != 0) return;
    fp_ = tmp_->file("fp");
    const ModelWeights w = load_hf_weights(fp_);
    test::ArtifactOptions opt;
    opt.act_clip = 0.95f;
    const Artifact a =
        test::make_artifact(w, test::random_transforms(w.cfg, 5), test::test_recipe("w4a4kv4", 4, 4, 4), opt);
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
  static std::string data() { return test::data_path("wikitext2_raw/wiki.test.hf_joined.txt"); }
  static std::string ppl_args(const std::string& model) {
    return "ppl --model '" + model + "' --data '" + data() +
           "' --seq-len 64 --limit-windows 3 --threads 2 --json";
  }
  static inline test::TempDir* tmp_ = nullptr;
  static inline std::string fp_, art_;
};

TEST_F(ArtifactCli, PplFakeRealAndKldAgainstFp) {
  const std::string base = tmp_->file("fp_logits.safetensors");
  auto r = test::run_cli(ppl_args(fp_) + " --save-logits '" + base + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json jfp = json::parse(r.out);
  EXPECT_FALSE(jfp.contains("artifact"));  // plain HF output unchanged

  r = test::run_cli(ppl_args(art_) + " --kld-base '" + base + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json jf = json::parse(r.out);
  EXPECT_EQ(jf["artifact"], true);
  EXPECT_EQ(jf["method"], "flatquant");
  EXPECT_EQ(jf["recipe"], "w4a4kv4");
  EXPECT_EQ(jf["quant"], "fake");
  EXPECT_EQ(jf["tokens"], jfp["tokens"]);
  const double pfp = jfp["ppl"], pf = jf["ppl"];
  EXPECT_TRUE(std::isfinite(pf));
  EXPECT_NE(pf, pfp);  // the quantization shows
  EXPECT_GT(jf["kld_mean"].get<double>(), 0.0);
  EXPECT_LT(jf["top1_agree_pct"].get<double>(), 100.0);
  EXPECT_EQ(jf["kld_tokens"], 3 * 63);

  r = test::run_cli(ppl_args(art_) + " --quant real");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json jr = json::parse(r.out);
  EXPECT_EQ(jr["quant"], "real");
  const double pr = jr["ppl"];
  EXPECT_LE(std::fabs(pr - pf) / pf, 0.005) << pf << " vs " << pr;

  // Text output names the artifact.
  r = test::run_cli("ppl --model '" + art_ + "' --data '" + data() + "' --seq-len 64 --limit-windows 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("artifact: flatquant w4a4kv4, quant fake"), std::string::npos) << r.out;
}

TEST_F(ArtifactCli, QuantFlagErrors) {
  auto r = test::run_cli(ppl_args(fp_) + " --quant real");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--quant: " + fp_ + " is not a flatquant artifact"), std::string::npos) << r.err;
  r = test::run_cli(ppl_args(art_) + " --quant int4");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--quant: expected \"fake\" or \"real\", found \"int4\""), std::string::npos) << r.err;
  r = test::run_cli("generate --model '" + fp_ + "' --prompt x --quant fake");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--quant"), std::string::npos) << r.err;
}

TEST_F(ArtifactCli, GenerateChatEval) {
  auto r = test::run_cli("generate --model '" + art_ +
                         "' --prompt 'Once upon a time' --max-tokens 8 --temperature 0 --threads 2 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json j = json::parse(r.out);
  EXPECT_GE(j["tokens"].get<int>(), 1);
  EXPECT_EQ(j["artifact"], true);
  EXPECT_EQ(j["quant"], "fake");
  // Greedy decoding is deterministic: the same text again, and with --quant real a run that completes.
  auto r2 = test::run_cli("generate --model '" + art_ +
                          "' --prompt 'Once upon a time' --max-tokens 8 --temperature 0 --threads 1 --json");
  ASSERT_EQ(r2.exit_code, 0) << r2.err;
  EXPECT_EQ(json::parse(r2.out)["text"], j["text"]);
  r = test::run_cli("generate --model '" + art_ +
                    "' --prompt 'Once' --max-tokens 4 --temperature 0 --quant real --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["quant"], "real");

  write_file_atomic(tmp_->file("chat_in.txt"), "Hello\n/exit\n");
  r = test::run_cli("chat --model '" + art_ + "' --template none --max-tokens 4 --temperature 0 < '" +
                    tmp_->file("chat_in.txt") + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("decode"), std::string::npos) << r.err;

  r = test::run_cli("eval --model '" + art_ + "' --data-dir '" + test::source_path("tests/data/qa") +
                    "' --tasks piqa,winogrande --threads 2 --json --quant real");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  j = json::parse(r.out);
  EXPECT_EQ(j["artifact"], true);
  EXPECT_EQ(j["recipe"], "w4a4kv4");
  EXPECT_EQ(j["tasks"]["piqa"]["n"], 3);
}

TEST_F(ArtifactCli, Inspect) {
  auto r = test::run_cli("inspect '" + art_ + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("artifact: flatquant-artifact v1, method flatquant, recipe w4a4kv4 (w4 a4 k4 v4"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("model.layers.0.self_attn.q_proj.qweight"), std::string::npos);
  r = test::run_cli("inspect --json '" + art_ + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["artifact"]["recipe"]["name"], "w4a4kv4");
  EXPECT_EQ(j["artifact"]["online_transforms"]["ln_trans"], j["config"]["num_hidden_layers"]);
  EXPECT_TRUE(j["artifact"]["files"].contains("tokenizer.bin"));
}

TEST_F(ArtifactCli, CorruptArtifactFailsWithOneLine) {
  const std::string bad = tmp_->file("bad");
  std::filesystem::create_directories(bad);
  for (const auto& e : std::filesystem::directory_iterator(art_))
    std::filesystem::copy_file(e.path(), path_join(bad, e.path().filename().string()));
  std::string bytes = read_file(path_join(bad, "model.safetensors"));
  bytes[bytes.size() / 2] = (char)(bytes[bytes.size() / 2] ^ 1);
  write_file_atomic(path_join(bad, "model.safetensors"), bytes);
  for (const std::string& cmd : {ppl_args(bad), "generate --model '" + bad + "' --prompt x"}) {
    const auto r = test::run_cli(cmd);
    EXPECT_EQ(r.exit_code, 1) << cmd;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(bad + "/model.safetensors: sha256 mismatch"), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace fq
