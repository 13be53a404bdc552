// tokenizer.json (HF tokenizers) on tiny hand-built files whose expected ids are worked out by hand.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "flatquant/error.h"
#include "io/tokenizer.h"
#include "io/tokenizer_hf_pipeline.h"
#include "io/tokenizer_unicode.h"
#include "test_util.h"

namespace fq {
namespace {

using json = nlohmann::json;
using Ids = std::vector<int32_t>;

std::unique_ptr<Tokenizer> load_json(const test::TempDir& dir, const json& j, const std::string& name = "tokenizer.json") {
  write_file_atomic(dir.file(name), j.dump());
  return load_tokenizer(dir.file(name));
}

std::string error_of(const test::TempDir& dir, const json& j) {
  try {
    load_json(dir, j);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(TokByteLevel, GptByteMap) {
  const tok::ByteUnicode bu;
  EXPECT_EQ(bu.encode('a'), "a");
  EXPECT_EQ(bu.encode(' '), "\xC4\xA0");     // U+0120 'Ġ'
  EXPECT_EQ(bu.encode('\n'), "\xC4\x8A");    // U+010A 'Ċ'
  EXPECT_EQ(bu.encode(0x00), "\xC4\x80");    // U+0100
  EXPECT_EQ(bu.encode(0x7F), "\xC4\xA1");    // U+0121: after the 33 control bytes 0..32
  EXPECT_EQ(bu.encode(0xAD), "\xC5\x83");    // U+0143: the last unprintable byte
  EXPECT_EQ(bu.encode(0xFF), "\xC3\xBF");    // printable Latin-1 maps to itself
  for (int b = 0; b < 256; ++b) {
    size_t n;
    const std::string& s = bu.encode(static_cast<uint8_t>(b));
    EXPECT_EQ(bu.decode(tok::utf8_decode(s, 0, &n)), b);
  }
}

TEST(TokByteLevel, Gpt2RegexSplit) {
  const tok::ByteUnicode bu;
  auto pre = tok::parse_pre_tokenizer(json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}},
                                      "test", bu);
  tok::Pieces p{{"Hello world's 123 !!", true}};
  pre->apply(p);
  std::vector<std::string> got;
  for (const auto& x : p) got.push_back(x.text);
  EXPECT_EQ(got, (std::vector<std::string>{"Hello", "\xC4\xA0world", "'s", "\xC4\xA0" "123", "\xC4\xA0!!"}));
  // \s+(?!\S) leaves the last space of a run to the next word; a trailing run stays whole.
  p = {{"a   b  ", true}};
  pre->apply(p);
  got.clear();
  for (const auto& x : p) got.push_back(x.text);
  EXPECT_EQ(got, (std::vector<std::string>{"a", "\xC4\xA0\xC4\xA0", "\xC4\xA0" "b", "\xC4\xA0\xC4\xA0"}));
}

TEST(TokByteLevel, SplitBehaviors) {
  const tok::ByteUnicode bu;
  auto run = [&](const char* behavior, bool invert) {
    auto pre = tok::parse_pre_tokenizer(json{{"type", "Split"},
                                             {"pattern", {{"String", "-"}}},
                                             {"behavior", behavior},
                                             {"invert", invert}},
                                        "test", bu);
    tok::Pieces p{{"a-b--c", true}};
    pre->apply(p);
    std::string s;
    for (const auto& x : p) s += "[" + x.text + "]";
    return s;
  };
  EXPECT_EQ(run("Removed", false), "[a][b][c]");
  EXPECT_EQ(run("Isolated", false), "[a][-][b][-][-][c]");
  EXPECT_EQ(run("MergedWithPrevious", false), "[a-][b-][-][c]");
  EXPECT_EQ(run("MergedWithNext", false), "[a][-b][-][-c]");
  EXPECT_EQ(run("Contiguous", false), "[a][-][b][--][c]");
  // invert: the non-matches are the delimiters (values from tokenizers 0.23).
  EXPECT_EQ(run("Removed", true), "[-][-][-]");
  EXPECT_EQ(run("Isolated", true), "[a][-][b][-][-][c]");
  EXPECT_EQ(run("MergedWithPrevious", true), "[a][-b][-][-c]");
  EXPECT_EQ(run("MergedWithNext", true), "[a-][b-][-][c]");
  EXPECT_EQ(run("Contiguous", true), "[a][-][b][--][c]");
}

// 256 byte characters (id = byte) plus hand-chosen merges.
json tiny_byte_level(bool pair_merges) {
  const tok::ByteUnicode bu;
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[bu.encode(static_cast<uint8_t>(b))] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"\xC4\xA0", "w"}, {"o", "r"}, {"\xC4\xA0w", "or"},
      {"a", "a"}, {"b", "c"}, {"a", "b"}};
  json m = json::array();
  int id = 256;
  for (const auto& [a, b] : merges) {
    vocab[a + b] = id++;
    if (pair_merges)
      m.push_back(json::array({a, b}));
    else
      m.push_back(a + " " + b);
  }
  vocab["xyz"] = id++;  // 266: reachable only through ignore_merges
  return json{{"version", "1.0"},
              {"added_tokens", json::array({json{{"id", 300}, {"content", "<|im_end|>"}, {"special", true}},
                                            json{{"id", 301}, {"content", "<|l|>"}, {"special", true}, {"lstrip", true}},
                                            json{{"id", 302}, {"content", "<|r|>"}, {"special", true}, {"rstrip", true}},
                                            json{{"id", 303}, {"content", "zz"}, {"single_word", true}}})},
              {"normalizer", nullptr},
              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
              {"post_processor", {{"type", "ByteLevel"}}},
              {"decoder", {{"type", "ByteLevel"}}},
              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", m}, {"byte_fallback", false}}}};
}

TEST(TokByteLevel, TinyBpeByRank) {
  test::TempDir dir;
  for (bool pairs : {false, true}) {
    auto tok = load_json(dir, tiny_byte_level(pairs));
    EXPECT_EQ(tok->n_vocab(), 304);
    EXPECT_FALSE(tok->add_bos());
    // "hello" -> he, ll, hell, hello; " world" -> Ġw, or, Ġwor + l + d.
    EXPECT_EQ(tok->encode("hello world"), (Ids{259, 262, 'l', 'd'}));
    EXPECT_EQ(tok->encode("aaa"), (Ids{263, 'a'}));  // same rank: leftmost first
    EXPECT_EQ(tok->encode("abc"), (Ids{'a', 264}));  // "b c" outranks "a b" although it is further right
    EXPECT_EQ(tok->encode("xyz"), (Ids{'x', 'y', 'z'}));
    EXPECT_EQ(tok->encode("\n"), (Ids{'\n'}));
    EXPECT_EQ(tok->decode({259, 262, 'l', 'd'}), "hello world");
    EXPECT_TRUE(tok->lossless());
    const std::string u = "caf\xC3\xA9 \xF0\x9F\xA4\x97";
    EXPECT_EQ(tok->encode(u).size(), 10u);  // every byte its own token
    EXPECT_EQ(tok->decode(tok->encode(u)), u);
  }
}

TEST(TokByteLevel, AddedTokens) {
  test::TempDir dir;
  auto tok = load_json(dir, tiny_byte_level(false));
  EXPECT_EQ(tok->encode("hello<|im_end|>"), (Ids{259, 300}));
  EXPECT_EQ(tok->encode("hello <|im_end|>"), (Ids{259, ' ', 300}));
  EXPECT_EQ(tok->encode("hello <|l|>"), (Ids{259, 301}));          // lstrip eats the space before
  EXPECT_EQ(tok->encode("<|r|> hello"), (Ids{302, 259}));          // rstrip eats the space after
  EXPECT_EQ(tok->encode("zz hello"), (Ids{303, ' ', 259}));  // single word: matched
  EXPECT_EQ(tok->encode("zzz"), (Ids{'z', 'z', 'z'}));             // inside a word: not matched
  EXPECT_EQ(tok->decode({259, 300}), "hello<|im_end|>");
  EXPECT_EQ(tok->token_to_id("<|im_end|>"), 300);
  EXPECT_EQ(tok->token_to_id("hello"), 259);
  EXPECT_EQ(tok->token_to_id("nope"), -1);
  // No config: EOS is the conventional end token found in the vocabulary.
  EXPECT_EQ(tok->eos_id(), 300);
}

TEST(TokByteLevel, IgnoreMergesAndTemplate) {
  test::TempDir dir;
  json j = tiny_byte_level(false);
  j["model"]["ignore_merges"] = true;
  j["added_tokens"].push_back(json{{"id", 304}, {"content", "<|begin_of_text|>"}, {"special", true}});
  j["post_processor"] = {
      {"type", "Sequence"},
      {"processors",
       json::array({json{{"type", "ByteLevel"}},
                    json{{"type", "TemplateProcessing"},
                         {"single", json::array({json{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                                                 json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                         {"special_tokens",
                          {{"<|begin_of_text|>", {{"id", "<|begin_of_text|>"}, {"ids", {304}}, {"tokens", {"<|begin_of_text|>"}}}}}}}})}};
  auto tok = load_json(dir, j);
  EXPECT_EQ(tok->encode("xyz"), (Ids{266}));  // whole pre-token in the vocabulary
  EXPECT_TRUE(tok->add_bos());
  EXPECT_EQ(tok->bos_id(), 304);
  EXPECT_EQ(tok->encode_with_bos("hello"), (Ids{304, 259}));
  // tokenizer_config.json / config.json beside the file override.
  write_file_atomic(dir.file("tokenizer_config.json"),
                    R"({"add_bos_token": false, "eos_token": {"content": "<|im_end|>"}, "bos_token": "<|begin_of_text|>"})");
  write_file_atomic(dir.file("config.json"), R"({"bos_token_id": 7, "eos_token_id": [301, 302]})");
  tok = load_json(dir, j);
  EXPECT_FALSE(tok->add_bos());
  EXPECT_EQ(tok->bos_id(), 304);
  EXPECT_EQ(tok->eos_id(), 300);
  write_file_atomic(dir.file("tokenizer_config.json"), R"({"eos_token": "</s>"})");  // not in the vocabulary
  tok = load_json(dir, j);
  EXPECT_TRUE(tok->add_bos());
  EXPECT_EQ(tok->eos_id(), 301);  // from config.json (first of a list)
  EXPECT_EQ(tok->bos_id(), 7);    // config.json when tokenizer_config.json names none
  write_file_atomic(dir.file("tokenizer_config.json"), R"({"bos_token": null})");  // Qwen2: explicitly no BOS
  tok = load_json(dir, j);
  EXPECT_FALSE(tok->add_bos());
}

// Llama-2 style: Metaspace + byte fallback, decoder Replace/ByteFallback/Fuse/Strip.
json tiny_metaspace(const char* scheme) {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) vocab[tok::byte_piece(static_cast<uint8_t>(b))] = 3 + b;
  const std::string m = tok::kMetaspace;
  vocab[m] = 259, vocab["a"] = 260, vocab["b"] = 261, vocab[m + "a"] = 262, vocab[m + "b"] = 263, vocab["ab"] = 264;
  vocab[m + "ab"] = 265;
  return json{{"added_tokens", json::array({json{{"id", 0}, {"content", "<unk>"}, {"special", true}},
                                            json{{"id", 1}, {"content", "<s>"}, {"special", true}},
                                            json{{"id", 2}, {"content", "</s>"}, {"special", true}}})},
              {"normalizer", nullptr},
              {"pre_tokenizer", {{"type", "Metaspace"}, {"replacement", m}, {"prepend_scheme", scheme}, {"split", false}}},
              {"decoder",
               {{"type", "Sequence"},
                {"decoders", json::array({json{{"type", "Replace"}, {"pattern", {{"String", m}}}, {"content", " "}},
                                          json{{"type", "ByteFallback"}}, json{{"type", "Fuse"}},
                                          json{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
              {"model",
               {{"type", "BPE"},
                {"unk_token", "<unk>"},
                {"byte_fallback", true},
                {"vocab", vocab},
                {"merges", json::array({m + " a", "a b", m + "a b", m + " b"})}}}};
}

TEST(TokMetaspace, TinyVocab) {
  test::TempDir dir;
  auto tok = load_json(dir, tiny_metaspace("first"));
  // "▁ab▁b": ▁a (rank 0), then ▁ab (rank 2; the stale "a b" is skipped), then ▁b (rank 3).
  EXPECT_EQ(tok->encode("ab b"), (Ids{265, 263}));
  EXPECT_EQ(tok->decode({265, 263}), "ab b");
  EXPECT_EQ(tok->encode("\xC3\xA9"), (Ids{259, 3 + 0xC3, 3 + 0xA9}));  // byte fallback
  EXPECT_EQ(tok->decode({259, 3 + 0xC3, 3 + 0xA9}), "\xC3\xA9");
  EXPECT_EQ(tok->decode({3 + 0xC3}), "\xEF\xBF\xBD");  // a lone lead byte: U+FFFD
  EXPECT_EQ(tok->encode("<s>ab"), (Ids{1, 264}));      // "first": no prefix after an added token
  EXPECT_EQ(tok->encode(" ab"), (Ids{265}));           // the leading space is the prefix
  EXPECT_FALSE(tok->lossless());
  EXPECT_EQ(tok->eos_id(), 2);  // conventional "</s>"
  auto always = load_json(dir, tiny_metaspace("always"));
  EXPECT_EQ(always->encode("<s>ab"), (Ids{1, 265}));
  // Legacy layout: Prepend + Replace normalizer, no pre-tokenizer (prefix after every added token).
  json legacy = tiny_metaspace("first");
  legacy["pre_tokenizer"] = nullptr;
  legacy["normalizer"] = {{"type", "Sequence"},
                          {"normalizers", json::array({json{{"type", "Prepend"}, {"prepend", tok::kMetaspace}},
                                                       json{{"type", "Replace"},
                                                            {"pattern", {{"String", " "}}},
                                                            {"content", tok::kMetaspace}}})}};
  auto leg = load_json(dir, legacy);
  EXPECT_EQ(leg->encode("<s>ab b"), (Ids{1, 265, 263}));
  EXPECT_EQ(leg->encode(" ab"), (Ids{259, 265}));
  EXPECT_EQ(leg->decode({259, 265}), " ab");
}

TEST(TokNfc, ComposesLikeUnicode) {
  EXPECT_EQ(tok::nfc("plain ascii"), "plain ascii");
  EXPECT_EQ(tok::nfc("e\xCC\x81"), "\xC3\xA9");                             // e + U+0301 -> é
  EXPECT_EQ(tok::nfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");  // jamo -> U+AC01
  EXPECT_EQ(tok::nfc("a\xCC\x82\xCC\xA3"), "\xE1\xBA\xAD");                  // a + U+0302 + U+0323 -> U+1EAD
  EXPECT_EQ(tok::nfc("\xE2\x84\xAB"), "\xC3\x85");                           // U+212B ANGSTROM -> U+00C5
  EXPECT_EQ(tok::nfc("\xE2\x80\x8D\xF0\x9F\x91\xA9"), "\xE2\x80\x8D\xF0\x9F\x91\xA9");
}

TEST(TokHfErrors, NameFileAndField) {
  test::TempDir dir;
  json j = tiny_byte_level(false);
  j["model"]["type"] = "WordPiece";
  EXPECT_NE(error_of(dir, j).find("tokenizer.json: model.type: unsupported 'WordPiece' (expected BPE)"), std::string::npos)
      << error_of(dir, j);
  j = tiny_byte_level(false);
  j["model"]["merges"].push_back("q nothere");
  EXPECT_NE(error_of(dir, j).find("model.merges[10]: token 'nothere' is not in model.vocab"), std::string::npos)
      << error_of(dir, j);
  j = tiny_byte_level(false);
  j["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_NE(error_of(dir, j).find("normalizer.type: unsupported normalizer 'Lowercase'"), std::string::npos);
  j = tiny_byte_level(false);
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  EXPECT_NE(error_of(dir, j).find("pre_tokenizer.pattern.Regex: regex /(unclosed/ does not compile"), std::string::npos)
      << error_of(dir, j);
  j = tiny_byte_level(false);
  j["model"]["vocab"]["bad"] = "seven";
  EXPECT_NE(error_of(dir, j).find("model.vocab['bad']"), std::string::npos);
  // Truncated and garbage files throw fq::Error, never crash.
  const std::string text = tiny_byte_level(false).dump();
  for (size_t cut : {size_t{0}, size_t{1}, text.size() / 2, text.size() - 1}) {
    write_file_atomic(dir.file("tokenizer.json"), text.substr(0, cut));
    EXPECT_THROW(load_tokenizer(dir.file("tokenizer.json")), Error);
  }
  for (const char* bad : {"[]", "{\"model\": 3}", "{\"model\": {\"type\": \"BPE\"}}",
                          "{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": [3]}}"}) {
    write_file_atomic(dir.file("tokenizer.json"), bad);
    EXPECT_THROW(load_tokenizer(dir.file("tokenizer.json")), Error) << bad;
  }
}

TEST(TokHf, InvalidUtf8InputIsReplaced) {
  test::TempDir dir;
  auto tok = load_json(dir, tiny_byte_level(false));
  // Like Rust's from_utf8_lossy: the stray byte becomes U+FFFD (3 byte tokens).
  EXPECT_EQ(tok->encode("a\xFF"), (Ids{'a', 0xEF, 0xBF, 0xBD}));
}

}  // namespace
}  // namespace fq
