// The generator's stopping rules, streaming contract and KV-cache reuse, on a scripted model.
#include <gtest/gtest.h>

#include "flatquant/error.h"
#include "mock_lm.h"
#include "runtime/generator.h"

namespace fq::runtime {
namespace {

using test::PieceTokenizer;
using test::ScriptedModel;

// id 0 "<s>", 1 "</s>", 2.. letters; the script emits the cache length mod a cycle of pieces.
const std::vector<std::string> kPieces = {"<s>", "</s>", "a", "b", "c", "\n", "END", "x"};

SamplerOptions greedy() {
  SamplerOptions o;
  o.temperature = 0;
  return o;
}

// Emits `seq` in order after the prompt (then EOS).
ScriptedModel::Next script(std::vector<int32_t> seq, size_t prompt_len) {
  return [seq, prompt_len](const std::vector<int32_t>& c) {
    const size_t k = c.size() - prompt_len;
    return k < seq.size() ? seq[k] : 1;
  };
}

struct Outcome {
  GenerateResult r;
  std::vector<std::string> chunks;
  std::string streamed;
};

Outcome run_gen(Generator& g, const std::vector<int32_t>& prompt, const GenerateOptions& go) {
  Sampler s(greedy());
  Outcome out;
  out.r = g.generate(prompt, go, s, [&](std::string_view t) {
    out.chunks.emplace_back(t);
    out.streamed += t;
  });
  EXPECT_EQ(out.streamed, out.r.text);
  return out;
}

TEST(Generator, StopsAtEosAndMaxTokens) {
  PieceTokenizer tok(kPieces);
  ScriptedModel m(8, 64, script({2, 3, 4}, 1));
  Generator g(m, tok);
  GenerateOptions go;
  go.eos_ids = {1};
  Outcome a = run_gen(g, {0}, go);
  EXPECT_EQ(a.r.text, "abc");
  EXPECT_EQ(a.r.reason, StopReason::kEos);
  EXPECT_EQ(a.r.tokens, (std::vector<int32_t>{2, 3, 4, 1}));
  go.max_tokens = 2;
  g.reset();
  Outcome b = run_gen(g, {0}, go);
  EXPECT_EQ(b.r.text, "ab");
  EXPECT_EQ(b.r.reason, StopReason::kMaxTokens);
}

TEST(Generator, StopStringIsCutAndNeverPartlyStreamed) {
  PieceTokenizer tok(kPieces);
  // "a b \n E N D"-like: the stop "\nEND" spans two tokens; "\nx" is a false start that must be released.
  ScriptedModel m(8, 64, script({2, 5, 7, 3, 5, 6, 4}, 1));
  Generator g(m, tok);
  GenerateOptions go;
  go.eos_ids = {1};
  go.stop = {"\nEND"};
  Outcome a = run_gen(g, {0}, go);
  EXPECT_EQ(a.r.text, "a\nxb");
  EXPECT_EQ(a.r.reason, StopReason::kStopString);
  // The "\n" before "x" was held back until "x" ruled the match out; no chunk ever ended in "\n".
  for (const auto& c : a.chunks) EXPECT_TRUE(c.empty() || c.back() != '\n') << c;
  EXPECT_EQ(a.chunks.front(), "a");
}

TEST(Generator, StopMatcherHoldsLongestPossiblePrefix) {
  StopMatcher s({"abc", "xy"});
  EXPECT_EQ(s.push("12ab"), "12");
  EXPECT_EQ(s.push("x"), "ab");  // "x" may still start "xy"
  EXPECT_EQ(s.push("z"), "xz");
  EXPECT_EQ(s.push("a"), "");
  EXPECT_EQ(s.push("bc tail"), "");
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(s.flush(), "");
  StopMatcher t({"abc"});
  EXPECT_EQ(t.push("zab"), "z");
  EXPECT_EQ(t.flush(), "ab");  // end of generation: a partial stop is ordinary text
}

TEST(Generator, IncompleteUtf8IsHeldUntilComplete) {
  // The euro sign as three byte pieces, then "a".
  PieceTokenizer tok({"<s>", "</s>", "\xE2", "\x82", "\xAC", "a"});
  ScriptedModel m(6, 64, script({5, 2, 3, 4, 5}, 1));
  Generator g(m, tok);
  GenerateOptions go;
  go.eos_ids = {1};
  Outcome a = run_gen(g, {0}, go);
  EXPECT_EQ(a.r.text, "a\xE2\x82\xAC" "a");
  ASSERT_EQ(a.chunks.size(), 3u);
  EXPECT_EQ(a.chunks[1], "\xE2\x82\xAC");
}

TEST(Generator, ContextFullStopsWithReason) {
  PieceTokenizer tok(kPieces);
  ScriptedModel m(8, 6, [](const std::vector<int32_t>&) { return 2; });
  Generator g(m, tok);
  GenerateOptions go;
  go.max_tokens = 100;
  Outcome a = run_gen(g, {0, 3}, go);
  EXPECT_EQ(a.r.reason, StopReason::kContextFull);
  EXPECT_EQ(a.r.tokens.size(), 5u);  // 4 fit in the cache after the prompt; the 5th is sampled, not run
  EXPECT_EQ(m.cache.size(), 6u);
  // A prompt that leaves no room is an error.
  EXPECT_THROW(run_gen(g, {0, 2, 2, 2, 2, 2}, go), Error);
  EXPECT_THROW(run_gen(g, {}, go), Error);
}

TEST(Generator, ReusesCacheWhenPrefixElseReprefills) {
  PieceTokenizer tok(kPieces);
  ScriptedModel m(8, 64, [](const std::vector<int32_t>& c) { return c.size() % 2 ? 2 : 1; });
  Generator g(m, tok);
  GenerateOptions go;
  go.eos_ids = {1};
  Outcome a = run_gen(g, {0, 3, 4}, go);  // 3 tokens -> "a", then EOS
  EXPECT_EQ(a.r.prefilled, 3);
  EXPECT_EQ(g.cached(), (std::vector<int32_t>{0, 3, 4, 2}));
  const int64_t resets = m.resets;
  Outcome b = run_gen(g, {0, 3, 4, 2, 6, 5}, go);  // the old tokens are a prefix: only 2 new ones run
  EXPECT_EQ(b.r.prefilled, 2);
  EXPECT_EQ(b.r.prompt_tokens, 6);
  EXPECT_EQ(m.resets, resets);
  EXPECT_EQ(m.cache, g.cached());
  Outcome c = run_gen(g, {0, 3, 7, 2}, go);  // diverges: the cache is rebuilt
  EXPECT_EQ(c.r.prefilled, 4);
  EXPECT_EQ(m.resets, resets + 1);
  EXPECT_EQ(m.cache, g.cached());
}

}  // namespace
}  // namespace fq::runtime
