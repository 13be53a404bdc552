// `flatquant generate` and `flatquant chat` end to end through the binary, on the real test models.
#include <gtest/gtest.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace fq {
namespace {

std::string model_dir(const std::string& name) {
  const char* e = std::getenv("FLATQUANT_MODELS");
  return path_join(e && *e ? e : test::source_path(".cache/models"), name);
}

// karpathy's documented temperature-0 sample of stories260K (llama2.c doc/stories260K.md).
const char* kStoriesSample = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";

TEST(GenerateCli, Stories260KGreedyFromBos) {
  const std::string dir = model_dir("stories260K");
  FQ_REQUIRE_FILE(path_join(dir, "config.json"));
  const auto r = test::run_cli("generate --model '" + dir + "' --prompt '' --temperature 0 --max-tokens 40");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind(kStoriesSample, 0), 0u) << r.out;
  EXPECT_NE(r.err.find("tok/s"), std::string::npos) << r.err;
}

TEST(GenerateCli, JsonStopAndSeed) {
  const std::string dir = model_dir("stories260K");
  FQ_REQUIRE_FILE(path_join(dir, "config.json"));
  auto r = test::run_cli("generate --model '" + dir +
                         "' --prompt 'Once upon a time' --temperature 0 --max-tokens 60 --stop ' Lily' --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["text"], ", there was a little girl named");
  EXPECT_EQ(j["stop_reason"], "stop_string");
  EXPECT_GT(j["prefill_tok_s"].get<double>(), 0.0);
  EXPECT_GT(j["decode_tok_s"].get<double>(), 0.0);
  // Sampling: the same seed gives the same text, another seed (almost surely) another text.
  const std::string base = "generate --model '" + dir + "' --prompt 'Once' --temperature 1 --top-p 0.9 --max-tokens 30 --json";
  const auto a = test::run_cli(base + " --seed 5"), b = test::run_cli(base + " --seed 5"), c = test::run_cli(base + " --seed 6");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(nlohmann::json::parse(a.out)["text"], nlohmann::json::parse(b.out)["text"]);
  EXPECT_NE(nlohmann::json::parse(a.out)["text"], nlohmann::json::parse(c.out)["text"]);
  // Context overflow is reported, not silent.
  r = test::run_cli("generate --model '" + dir + "' --prompt '' --temperature 0 --max-tokens 100 --ctx 20");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("context full"), std::string::npos) << r.err;
}

TEST(GenerateCli, BadArguments) {
  const std::string dir = model_dir("stories260K");
  FQ_REQUIRE_FILE(path_join(dir, "config.json"));
  auto r = test::run_cli("generate --model '" + dir + "' --prompt x --top-p 0");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--top-p"), std::string::npos) << r.err;
  r = test::run_cli("generate --model '" + dir + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--prompt"), std::string::npos) << r.err;
  r = test::run_cli("generate --model '" + dir + "' --prompt '' --no-bos");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("empty prompt"), std::string::npos) << r.err;
  // stories260K has no chat template: the error names the file and the override.
  r = test::run_cli("chat --model '" + dir + "' </dev/null");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("tokenizer_config.json"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--template"), std::string::npos) << r.err;
}

TEST(ChatCli, StoriesWithPlainTemplateAndReset) {
  const std::string dir = model_dir("stories260K");
  FQ_REQUIRE_FILE(path_join(dir, "config.json"));
  test::TempDir t;
  write_file_atomic(t.file("in"), "Once upon a time\n/reset\nOnce upon a time\n");  // EOF ends the session
  const auto r = test::run_cli("chat --model '" + dir + "' --template none --temperature 0 --max-tokens 8 <'" +
                               t.file("in") + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The same greedy reply twice: /reset started over (and nothing was reused the second time).
  const size_t nl = r.out.find('\n');
  ASSERT_NE(nl, std::string::npos);
  const std::string first = r.out.substr(0, nl + 1);
  EXPECT_EQ(r.out, first + first);
  EXPECT_EQ(first.rfind(", there was", 0), 0u) << first;
  EXPECT_NE(r.err.find("[conversation reset]"), std::string::npos);
  size_t fresh = 0;
  for (size_t p = r.err.find("(0 reused from the cache)"); p != std::string::npos;
       p = r.err.find("(0 reused from the cache)", p + 1))
    ++fresh;
  EXPECT_EQ(fresh, 2u) << r.err;
}

TEST(ChatCli, SmolLM2KeepsConversationAndCache) {
  const std::string dir = model_dir("SmolLM2-135M-Instruct");
  FQ_REQUIRE_FILE(path_join(dir, "model.safetensors"));
  test::TempDir t;
  write_file_atomic(t.file("in"), "Hi\nWhat is 2+2?\n/exit\nnever read\n");
  const auto r = test::run_cli("chat --model '" + dir + "' --temperature 0 --max-tokens 12 --threads 2 <'" +
                               t.file("in") + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Two replies, one line each; the second turn prefilled only its new tokens.
  size_t lines = 0;
  for (char c : r.out) lines += c == '\n';
  EXPECT_GE(lines, 2u) << r.out;
  EXPECT_NE(r.out.find("Hello"), std::string::npos) << r.out;
  const size_t first = r.err.find("[prefill ");
  const size_t second = r.err.find("[prefill ", first + 1);
  ASSERT_NE(second, std::string::npos) << r.err;
  const std::string turn1 = r.err.substr(first, second - first), turn2 = r.err.substr(second);
  EXPECT_NE(turn1.find("(0 reused from the cache)"), std::string::npos) << r.err;
  EXPECT_EQ(turn2.find("(0 reused from the cache)"), std::string::npos) << r.err;
  EXPECT_NE(turn2.find("reused from the cache"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace fq
