// Incremental detokenization with the real tokenizers: streamed pieces concatenate to decode() of the
// generated ids, never end inside a character, and keep SentencePiece's leading-space rule.
#include <gtest/gtest.h>

#include <cstdlib>

#include "io/utf8_stream.h"
#include "test_util.h"

namespace fq {
namespace {

std::string model_dir(const std::string& name) {
  const char* e = std::getenv("FLATQUANT_MODELS");
  return path_join(e && *e ? e : test::source_path(".cache/models"), name);
}

TEST(Utf8Stream, IncompleteTail) {
  EXPECT_FALSE(utf8_incomplete_tail(""));
  EXPECT_FALSE(utf8_incomplete_tail("abc"));
  EXPECT_FALSE(utf8_incomplete_tail("a\xE2\x82\xAC"));
  EXPECT_TRUE(utf8_incomplete_tail("a\xE2\x82"));
  EXPECT_TRUE(utf8_incomplete_tail("a\xE2"));
  EXPECT_TRUE(utf8_incomplete_tail("\xF0\x9F\x98"));
  EXPECT_FALSE(utf8_incomplete_tail("\xF0\x9F\x98\x80"));
  EXPECT_TRUE(utf8_incomplete_tail("ab\xEF\xBF\xBD"));  // U+FFFD: a lossy decoder's partial character
}

// Streams `gen` after `context` and checks the contract; returns the chunks.
std::vector<std::string> stream_all(const Tokenizer& tok, const std::vector<int32_t>& context,
                                    const std::vector<int32_t>& gen, const std::string& expected) {
  Utf8TokenStream s(tok, context);
  std::vector<std::string> chunks;
  std::string all;
  for (int32_t id : gen) {
    const std::string c = s.push(id);
    EXPECT_FALSE(utf8_incomplete_tail(c)) << "chunk ends inside a character";
    if (!c.empty()) chunks.push_back(c);
    all += c;
  }
  all += s.finish();
  EXPECT_EQ(all, expected);
  return chunks;
}

TEST(Utf8Stream, SentencePieceByteFallbackAndLeadingSpace) {
  const std::string dir = model_dir("stories260K");
  FQ_REQUIRE_FILE(path_join(dir, "tokenizer.json"));
  const auto tok = load_tokenizer(dir);
  // tok512 has no merges for non-ASCII text: these characters become <0x..> byte pieces.
  const std::string text = "Once upon a time, caf\xC3\xA9 \xE2\x82\xAC and \xF0\x9F\x98\x80 smile";
  const std::vector<int32_t> ids = tok->encode(text);
  ASSERT_GT(ids.size(), 10u);
  // After BOS (dropped from the context) the first piece's dummy-prefix space is stripped, as decode() does.
  stream_all(*tok, {tok->bos_id()}, ids, tok->decode(ids));
  EXPECT_EQ(tok->decode(ids), text);
  // Continuing a prompt: the space between the prompt and the first new word is kept.
  const std::vector<int32_t> prompt = tok->encode("Once upon a");
  const std::vector<int32_t> more = tok->encode(" time, caf\xC3\xA9");
  std::vector<int32_t> rest(more.begin(), more.end());
  std::vector<int32_t> both = prompt;
  both.insert(both.end(), rest.begin(), rest.end());
  const std::string full = tok->decode(both), head = tok->decode(prompt);
  ASSERT_EQ(full.compare(0, head.size(), head), 0);
  const auto chunks = stream_all(*tok, prompt, rest, full.substr(head.size()));
  ASSERT_FALSE(chunks.empty());
  EXPECT_EQ(chunks.front()[0], ' ');
}

TEST(Utf8Stream, ByteLevelSplitCharacters) {
  const std::string dir = model_dir("SmolLM2-135M-Instruct");
  FQ_REQUIRE_FILE(path_join(dir, "tokenizer.json"));
  const auto tok = load_tokenizer(dir);
  const std::string text = "Emoji \xF0\x9F\xA6\x99\xF0\x9F\xA7\xAA and \xE4\xB8\xAD\xE6\x96\x87 text";
  const std::vector<int32_t> ids = tok->encode(text);
  ASSERT_EQ(tok->decode(ids), text);
  // At least one token must end inside a character for this test to mean anything.
  bool split = false;
  for (size_t i = 1; i <= ids.size(); ++i)
    split |= utf8_incomplete_tail(tok->decode(std::vector<int32_t>(ids.begin(), ids.begin() + (long)i)));
  ASSERT_TRUE(split);
  stream_all(*tok, {}, ids, text);
}

}  // namespace
}  // namespace fq
