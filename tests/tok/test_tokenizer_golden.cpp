// Golden ids from the reference libraries (scripts/gen_tokenizer_golden.py: HF tokenizers for tokenizer.json,
// sentencepiece for .model). One test per tests/data/tokenizer/golden_*.json; each names its tokenizer as
// repo:PATH, data:PATH ($FLATQUANT_DATA) or models:PATH ($FLATQUANT_MODELS, default <repo>/.cache/models) and
// is skipped when that file is absent.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "io/tokenizer.h"
#include "test_util.h"

namespace fq {
namespace {

std::string golden_dir() { return test::source_path("tests/data/tokenizer"); }

std::vector<std::string> golden_names() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(golden_dir(), ec)) {
    const std::string f = e.path().filename().string();
    if (f.rfind("golden_", 0) == 0 && e.path().extension() == ".json") names.push_back(f.substr(7, f.size() - 12));
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string resolve(const std::string& ref) {
  const size_t c = ref.find(':');
  const std::string prefix = ref.substr(0, c == std::string::npos ? 0 : c), rel = ref.substr(c + 1);
  if (prefix == "repo") return test::source_path(rel);
  if (prefix == "data") return test::data_path(rel);
  if (prefix == "models") {
    const char* env = std::getenv("FLATQUANT_MODELS");
    return path_join(env && *env ? env : test::source_path(".cache/models"), rel);
  }
  ADD_FAILURE() << "tokenizer reference '" << ref << "' has no repo:, data: or models: prefix";
  return "";
}

// The first differing position, with the pieces around it, for a readable failure.
std::string first_diff(const Tokenizer& tok, const std::vector<int32_t>& got, const std::vector<int32_t>& want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  auto show = [&](const std::vector<int32_t>& v) {
    std::string s;
    for (size_t k = i > 2 ? i - 2 : 0; k < std::min(v.size(), i + 4); ++k) {
      const bool ok = v[k] >= 0 && v[k] < tok.n_vocab();
      s += std::to_string(v[k]) + "'" + (ok ? tok.piece(v[k]) : "?") + "' ";
    }
    return s;
  };
  return "first difference at " + std::to_string(i) + " of " + std::to_string(want.size()) + ": got [" + show(got) +
         "] want [" + show(want) + "]";
}

class TokGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(TokGolden, MatchesReference) {
  const auto g = nlohmann::json::parse(read_file(path_join(golden_dir(), "golden_" + GetParam() + ".json")));
  const std::string path = resolve(g.at("tokenizer").get<std::string>());
  FQ_REQUIRE_FILE(path);
  const auto tok = load_tokenizer(path);
  const bool ref_lossless = g.value("lossless_on_sample", false);
  // Claiming losslessness where the reference library is not lossless on the sample would be wrong.
  if (tok->lossless()) {
    EXPECT_TRUE(ref_lossless) << "lossless() is true but the reference is not lossless";
  }
  size_t n = 0;
  for (const auto& c : g.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    const auto want = c.at("ids").get<std::vector<int32_t>>();
    SCOPED_TRACE("case " + std::to_string(n++) + ": \"" + text.substr(0, 60) + "\"");
    const std::vector<int32_t> got = tok->encode(text);
    EXPECT_TRUE(got == want) << first_diff(*tok, got, want);
    EXPECT_EQ(tok->decode(want), c.at("decoded").get<std::string>());
    if (tok->lossless()) {
      EXPECT_EQ(tok->decode(got), text);
    }
  }
  EXPECT_GT(n, 0u);
}

INSTANTIATE_TEST_SUITE_P(Files, TokGolden, ::testing::ValuesIn(golden_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(TokGolden);

}  // namespace
}  // namespace fq
