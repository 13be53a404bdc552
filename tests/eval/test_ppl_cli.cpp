// `flatquant ppl` end to end on stories260K (converted from llama2.c into a temporary HF directory).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace fq {
namespace {

class PplCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string bin = test::data_path("stories260K/stories260K.bin");
    if (!file_exists(bin)) return;
    tmp_ = new test::TempDir();
    const auto r = test::run_cli("convert --from llama2c --model '" + bin + "' --out '" + tmp_->file("m") + "'");
    if (r.exit_code == 0) model_ = tmp_->file("m");
  }
  static void TearDownTestSuite() {
    delete tmp_;
    tmp_ = nullptr;
  }
  void SetUp() override {
    if (model_.empty()) GTEST_SKIP() << "stories260K missing or not convertible";
  }
  static std::string data() { return test::data_path("wikitext2_raw/wiki.test.hf_joined.txt"); }
  static inline test::TempDir* tmp_ = nullptr;
  static inline std::string model_;
};

TEST_F(PplCli, JsonLineAndKldAgainstItself) {
  const std::string base = tmp_->file("base.safetensors");
  auto r = test::run_cli("ppl --model '" + model_ + "' --data '" + data() +
                         "' --seq-len 64 --limit-windows 3 --threads 2 --json --save-logits '" + base + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);  // exactly one JSON document on stdout
  EXPECT_EQ(j["windows"], 3);
  EXPECT_EQ(j["tokens"], 3 * 63);
  EXPECT_EQ(j["seq_len"], 64);
  const double ppl = j["ppl"];
  EXPECT_GT(ppl, 1.0);
  EXPECT_LT(ppl, 512.0);  // better than uniform over the 512-token vocabulary
  EXPECT_TRUE(file_exists(base));

  // Same model, same tokens, other thread count: identical log-probs, so KLD 0 and full agreement.
  r = test::run_cli("ppl --model '" + model_ + "' --data '" + data() +
                    "' --seq-len 64 --limit-windows 3 --threads 1 --json --kld-base '" + base + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto k = nlohmann::json::parse(r.out);
  EXPECT_EQ(k["ppl"], j["ppl"]);
  EXPECT_EQ(k["kld_mean"], 0.0);
  EXPECT_EQ(k["kld_max"], 0.0);
  EXPECT_EQ(k["top1_agree_pct"], 100.0);
  EXPECT_EQ(k["kld_tokens"], 3 * 63);

  // Different windows: the token check refuses the comparison.
  r = test::run_cli("ppl --model '" + model_ + "' --data '" + data() +
                    "' --seq-len 64 --limit-windows 2 --json --kld-base '" + base + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("baseline has 3 windows of 64 tokens but this run has 2 windows"), std::string::npos) << r.err;
}

TEST_F(PplCli, HumanSummaryAndDataErrors) {
  auto r = test::run_cli("ppl --model '" + model_ + "' --data '" + data() + "' --seq-len 32 --limit-windows 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("ppl "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1 of "), std::string::npos) << r.out;

  const std::string empty = tmp_->file("empty.txt");
  write_file_atomic(empty, "");
  r = test::run_cli("ppl --model '" + model_ + "' --data '" + empty + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("empty.txt"), std::string::npos) << r.err;

  const std::string tiny = tmp_->file("short.txt");
  write_file_atomic(tiny, "Once upon a time");
  r = test::run_cli("ppl --model '" + model_ + "' --data '" + tiny + "' --seq-len 64");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("fewer than one window of seq_len 64"), std::string::npos) << r.err;

  r = test::run_cli("ppl --model '" + tmp_->path() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no config.json"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace fq
