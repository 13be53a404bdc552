// `flatquant inspect` through the real binary: a valid tiny HF directory prints the config and a tensor
// table (exit 0); corrupt or unsupported inputs print one error line (exit 1).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "io/tiny_model_dir.h"
#include "test_util.h"

namespace fq {
namespace {

using test::run_cli;
using test::TempDir;

#define EXPECT_HAS(msg, sub) EXPECT_NE((msg).find(sub), std::string::npos) << "output: " << (msg)

// stderr holds exactly one line starting with "flatquant: error: ".
void expect_one_error_line(const test::CliResult& r) {
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err.rfind("flatquant: error: ", 0), 0u) << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
}

TEST(InspectCli, ValidDirectoryPrintsTable) {
  TempDir d;
  test::write_tiny_model(d.path(), test::tiny_config_json());
  const auto r = run_cli("inspect '" + d.path() + "'");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_HAS(r.out, "LlamaForCausalLM (llama): 2 layers");
  EXPECT_HAS(r.out, "format = pt");
  EXPECT_HAS(r.out, "model.layers.1.mlp.down_proj.weight");
  EXPECT_HAS(r.out, "[16,24]");
  // 2 x (2 x 16 norms + q 256 + k 128 + v 128 + o 256 + 3 x 384 mlp) + embed 512 + norm 16 + head 512 = 4944
  EXPECT_HAS(r.out, "total: 21 tensors, 4944 parameters, 19776 bytes");
}

TEST(InspectCli, JsonOutput) {
  TempDir d;
  auto j = test::tiny_config_json("qwen2");
  j["tie_word_embeddings"] = true;
  test::write_tiny_model(d.path(), j, DType::BF16);
  const auto r = run_cli("inspect --json '" + d.path() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto out = nlohmann::json::parse(r.out);
  EXPECT_EQ(out["config"]["architectures"][0], "Qwen2ForCausalLM");
  EXPECT_EQ(out["totals"]["tensors"], 26);
  EXPECT_EQ(out["tensors"][0]["name"], "model.embed_tokens.weight");
  EXPECT_EQ(out["tensors"][0]["dtype"], "BF16");
  EXPECT_EQ(out["tensors"][0]["shape"], nlohmann::json::array({32, 16}));
  EXPECT_EQ(out["tensors"][0]["bytes"], 32 * 16 * 2);
}

TEST(InspectCli, SingleFileWithMetadata) {
  TempDir d;
  SafeTensorsWriter w;
  const float x[6] = {1, 2, 3, 4, 5, 6};
  w.add_f32("a", {2, 3}, x);
  w.set_metadata("source", "unit-test");
  w.write(d.file("one.safetensors"));
  const auto r = run_cli("inspect '" + d.file("one.safetensors") + "'");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_HAS(r.out, "source = unit-test");
  EXPECT_HAS(r.out, "total: 1 tensors, 6 parameters, 24 bytes");
}

TEST(InspectCli, CorruptFileOneLineError) {
  TempDir d;
  std::string s(8, '\0');
  s[0] = 50;
  s += "{\"a\":";
  write_file_atomic(d.file("bad.safetensors"), s);
  const auto r = run_cli("inspect '" + d.file("bad.safetensors") + "'");
  expect_one_error_line(r);
  EXPECT_HAS(r.err, "bad.safetensors: header length 50 exceeds the file size");
}

TEST(InspectCli, CorruptShardInDirectory) {
  TempDir d;
  test::write_tiny_model(d.path(), test::tiny_config_json());
  write_file_atomic(d.file("model.safetensors"), "xyz");
  const auto r = run_cli("inspect '" + d.path() + "'");
  expect_one_error_line(r);
  EXPECT_HAS(r.err, "model.safetensors: file too short");
}

TEST(InspectCli, GgufSuggestsConvert) {
  const auto r = run_cli("inspect /nonexistent/model.gguf");
  expect_one_error_line(r);
  EXPECT_HAS(r.err, "flatquant convert");
}

TEST(InspectCli, MissingPath) {
  const auto r = run_cli("inspect /nonexistent/dir");
  expect_one_error_line(r);
  EXPECT_HAS(r.err, "/nonexistent/dir: no such file or directory");
}

}  // namespace
}  // namespace fq
