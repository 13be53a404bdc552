// The bad-input list, through the real binary: each case exits 1 with exactly one stderr line that
// names the file and what was wrong, and leaves no output behind.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "io/tiny_model_dir.h"
#include "test_util.h"

namespace fq {
namespace {

// Progress lines may precede it on stderr; the error itself is the last line, one line, and names the cause.
void expect_one_line_error(const test::CliResult& r, const std::string& must_contain) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  ASSERT_FALSE(r.err.empty());
  ASSERT_EQ(r.err.back(), '\n') << r.err;
  const size_t start = r.err.rfind('\n', r.err.size() - 2);
  const std::string last = r.err.substr(start == std::string::npos ? 0 : start + 1);
  EXPECT_EQ(last.rfind("flatquant: error: ", 0), 0u) << r.err;
  EXPECT_NE(last.find(must_contain), std::string::npos) << "expected '" << must_contain << "' in: " << last;
  size_t errors = 0;
  for (size_t p = r.err.find("error"); p != std::string::npos; p = r.err.find("error", p + 1)) ++errors;
  EXPECT_EQ(errors, 1u) << "exactly one error line expected: " << r.err;
}

TEST(BadInputCli, PplWithoutTokenizer) {
  test::TempDir t;
  test::write_tiny_model(t.path(), test::tiny_config_json());
  const std::string data = t.file("text.txt");
  write_file_atomic(data, "some text to score");
  expect_one_line_error(test::run_cli("ppl --model '" + t.path() + "' --data '" + data + "'"), "no tokenizer found");
}

TEST(BadInputCli, PplUnsupportedArchitecture) {
  test::TempDir t;
  auto cfg = test::tiny_config_json();
  cfg["architectures"] = {"GPTNeoXForCausalLM"};
  test::write_tiny_model(t.path(), test::tiny_config_json());
  write_file_atomic(t.file("config.json"), cfg.dump());
  expect_one_line_error(test::run_cli("ppl --model '" + t.path() + "'"), "GPTNeoXForCausalLM");
}

TEST(BadInputCli, ConvertTruncatedLlama2cLeavesNothing) {
  const std::string bin = test::data_path("stories260K/stories260K.bin");
  FQ_REQUIRE_FILE(bin);
  test::TempDir t;
  const std::string cut = t.file("cut.bin");
  const std::string all = read_file(bin);
  write_file_atomic(cut, std::string_view(all).substr(0, all.size() / 2));
  const std::string out = t.file("out");
  expect_one_line_error(test::run_cli("convert --from llama2c --model '" + cut + "' --tokenizer '" +
                                      test::data_path("stories260K/tok512.bin") + "' --out '" + out + "'"),
                        "cut.bin");
  // Neither the output nor a temporary directory beside it may remain.
  for (const auto& e : std::filesystem::directory_iterator(t.path()))
    EXPECT_EQ(e.path().filename().string().find("out"), std::string::npos) << e.path();
}

TEST(BadInputCli, InspectHeaderBeyondFile) {
  test::TempDir t;
  const std::string f = t.file("bad.safetensors");
  std::string bytes(8, '\0');
  bytes[0] = '\xff';
  bytes[1] = '\xff';  // header length 65535, file is 8 bytes
  write_file_atomic(f, bytes);
  expect_one_line_error(test::run_cli("inspect '" + f + "'"), "bad.safetensors");
}

}  // namespace
}  // namespace fq
