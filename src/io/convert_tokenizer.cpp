#include "io/convert_tokenizer.h"

#include <algorithm>
#include <unordered_map>

#include "flatquant/error.h"

namespace fq {

using ojson = nlohmann::ordered_json;

namespace {

const char* const kSpace = "\xe2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space

// Byte lengths of the UTF-8 code points of s (s is valid UTF-8).
std::vector<size_t> code_point_offsets(const std::string& s) {
  std::vector<size_t> off;
  for (size_t i = 0; i < s.size(); ++i)
    if (((unsigned char)s[i] & 0xc0) != 0x80) off.push_back(i);
  return off;
}

ojson added_token(int64_t id, const std::string& content, bool special) {
  return ojson{{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
               {"rstrip", false}, {"normalized", false}, {"special", special}};
}

// Tokens HF lists in added_tokens: control / unknown (special) and user-defined (not special).
void collect_added(const std::vector<std::string>& toks, const std::vector<int32_t>& types, ojson& added,
                   ojson& decoder_map) {
  for (size_t i = 0; i < toks.size(); ++i) {
    const int32_t t = types[i];
    if (t != kTokControl && t != kTokUnknown && t != kTokUserDefined) continue;
    ojson a = added_token((int64_t)i, toks[i], t != kTokUserDefined);
    added.push_back(a);
    a.erase("id");
    decoder_map[std::to_string(i)] = std::move(a);
  }
}

// Merges as "l r" strings (the format every loader reads) unless a side contains a space, then as
// [l, r] pairs (tokenizers >= 0.20 format).
ojson merges_json(const std::vector<std::pair<std::string, std::string>>& merges) {
  const bool pairs = std::any_of(merges.begin(), merges.end(), [](const auto& m) {
    return m.first.find(' ') != std::string::npos || m.second.find(' ') != std::string::npos;
  });
  ojson out = ojson::array();
  for (const auto& m : merges) {
    if (pairs)
      out.push_back(ojson::array({m.first, m.second}));
    else
      out.push_back(m.first + " " + m.second);
  }
  return out;
}

ojson vocab_json(const std::vector<std::string>& toks, const std::string& source) {
  ojson vocab = ojson::object();
  std::unordered_map<std::string, size_t> seen;
  for (size_t i = 0; i < toks.size(); ++i) {
    if (!valid_utf8(toks[i])) fail("{}: token {} is not valid UTF-8", source, i);
    auto [it, fresh] = seen.emplace(toks[i], i);
    if (!fresh)
      fail("{}: token {} '{}' duplicates token {} (a tokenizer.json vocabulary needs unique pieces)", source,
           i, toks[i], it->second);
    vocab[toks[i]] = (int64_t)i;
  }
  return vocab;
}

ojson template_processing(const std::vector<std::string>& toks, int64_t bos, int64_t eos, bool add_bos,
                          bool add_eos) {
  auto special = [](const std::string& s, int type_id) {
    return ojson{{"SpecialToken", {{"id", s}, {"type_id", type_id}}}};
  };
  auto seq = [](const char* id, int type_id) {
    return ojson{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
  };
  ojson single = ojson::array(), pair = ojson::array(), specials = ojson::object();
  for (int part = 0; part < 2; ++part) {
    if (add_bos) (part == 0 ? single : pair).push_back(special(toks[(size_t)bos], 0));
    (part == 0 ? single : pair).push_back(seq("A", 0));
    if (add_eos) (part == 0 ? single : pair).push_back(special(toks[(size_t)eos], 0));
  }
  if (add_bos) pair.push_back(special(toks[(size_t)bos], 1));
  pair.push_back(seq("B", 1));
  if (add_eos) pair.push_back(special(toks[(size_t)eos], 1));
  if (add_bos)
    specials[toks[(size_t)bos]] = {
        {"id", toks[(size_t)bos]}, {"ids", {bos}}, {"tokens", {toks[(size_t)bos]}}};
  if (add_eos)
    specials[toks[(size_t)eos]] = {
        {"id", toks[(size_t)eos]}, {"ids", {eos}}, {"tokens", {toks[(size_t)eos]}}};
  return ojson{
      {"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", specials}};
}

ojson token_or_null(const std::vector<std::string>& toks, int64_t id) {
  return id >= 0 && id < (int64_t)toks.size() ? ojson(toks[(size_t)id]) : ojson(nullptr);
}

void check_ids(const std::vector<std::string>& toks, int64_t bos, int64_t eos, int64_t unk, int64_t pad,
               const std::string& source) {
  const std::pair<const char*, int64_t> ids[] = {{"bos", bos}, {"eos", eos}, {"unk", unk}, {"pad", pad}};
  for (const auto& [name, id] : ids)
    if (id >= (int64_t)toks.size())
      fail("{}: {} token id {} is outside the vocabulary of {} tokens", source, name, id, toks.size());
}

ojson tokenizer_config(const std::vector<std::string>& toks, int64_t bos, int64_t eos, int64_t unk,
                       int64_t pad, bool add_bos, bool add_eos, int64_t model_max_length,
                       const ojson& added_decoder) {
  // PreTrainedTokenizerFast loads tokenizer.json verbatim (normalizer, pre-tokenizer and post-processor
  // included) in transformers 4.x and 5.x; model-specific classes may rebuild parts of the pipeline.
  ojson c{{"add_bos_token", add_bos},
          {"add_eos_token", add_eos},
          {"bos_token", token_or_null(toks, bos)},
          {"eos_token", token_or_null(toks, eos)},
          {"unk_token", token_or_null(toks, unk)},
          {"pad_token", token_or_null(toks, pad)},
          {"clean_up_tokenization_spaces", false},
          {"model_max_length", model_max_length},
          {"tokenizer_class", "PreTrainedTokenizerFast"},
          {"added_tokens_decoder", added_decoder}};
  return c;
}

}  // namespace

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const unsigned char c = (unsigned char)s[i];
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    }
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else
      return false;
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      const unsigned char cc = (unsigned char)s[i + k];
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

std::vector<std::pair<std::string, std::string>> spm_merges_from_scores(
    const std::vector<std::string>& pieces, const std::vector<float>& scores) {
  FQ_ASSERT(pieces.size() == scores.size());
  std::unordered_map<std::string, int64_t> id;
  id.reserve(pieces.size() * 2);
  // Python's dict keeps the last id of a duplicated piece; duplicates are rejected earlier anyway.
  for (size_t i = 0; i < pieces.size(); ++i) id[pieces[i]] = (int64_t)i;

  struct Merge {
    std::string l, r;
    float score;
    size_t len_l, len_r;  // code points
  };
  std::vector<Merge> merges;
  for (size_t p = 0; p < pieces.size(); ++p) {
    const std::string& s = pieces[p];
    const std::vector<size_t> cps = code_point_offsets(s);
    std::vector<Merge> local;
    for (size_t k = 1; k < cps.size(); ++k) {
      std::string l = s.substr(0, cps[k]), r = s.substr(cps[k]);
      if (id.count(l) && id.count(r))
        local.push_back({std::move(l), std::move(r), scores[p], k, cps.size() - k});
    }
    std::stable_sort(local.begin(), local.end(), [&](const Merge& a, const Merge& b) {
      const int64_t al = id[a.l], bl = id[b.l];
      return al != bl ? al < bl : id[a.r] < id[b.r];
    });
    for (auto& m : local) merges.push_back(std::move(m));
  }
  // sorted(..., reverse=True) keeps equal keys in their original order, as stable_sort with ">" does.
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.len_l != b.len_l) return a.len_l > b.len_l;
    return a.len_r > b.len_r;
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (auto& m : merges) out.emplace_back(std::move(m.l), std::move(m.r));
  return out;
}

TokenizerFiles spm_tokenizer_files(const SpmVocab& v, int64_t model_max_length, const std::string& source) {
  const size_t n = v.pieces.size();
  FQ_ASSERT(v.scores.size() == n && v.types.size() == n);
  if (n == 0) fail("{}: empty tokenizer vocabulary", source);
  check_ids(v.pieces, v.bos_id, v.eos_id, v.unk_id, v.pad_id, source);
  if (v.add_bos && v.bos_id < 0) fail("{}: the tokenizer adds BOS but has no bos token id", source);
  if (v.add_eos && v.eos_id < 0) fail("{}: the tokenizer adds EOS but has no eos token id", source);

  TokenizerFiles out;
  ojson added = ojson::array(), decoder_map = ojson::object();
  collect_added(v.pieces, v.types, added, decoder_map);

  ojson normalizer = nullptr;
  ojson decoders = ojson::array({{{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}},
                                 {{"type", "ByteFallback"}},
                                 {{"type", "Fuse"}}});
  const ojson replace_space = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}};
  if (v.add_space_prefix) {
    normalizer = {{"type", "Sequence"},
                  {"normalizers", ojson::array({{{"type", "Prepend"}, {"prepend", kSpace}}, replace_space})}};
    decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  } else {
    normalizer = replace_space;
  }
  ojson post = nullptr;
  if (v.add_bos || v.add_eos) post = template_processing(v.pieces, v.bos_id, v.eos_id, v.add_bos, v.add_eos);

  ojson model{{"type", "BPE"},
              {"dropout", nullptr},
              {"unk_token", token_or_null(v.pieces, v.unk_id)},
              {"continuing_subword_prefix", nullptr},
              {"end_of_word_suffix", nullptr},
              {"fuse_unk", true},
              {"byte_fallback", true},
              {"ignore_merges", false},
              {"vocab", vocab_json(v.pieces, source)},
              {"merges", merges_json(spm_merges_from_scores(v.pieces, v.scores))}};
  out.tokenizer =
      ojson{{"version", "1.0"},         {"truncation", nullptr},
            {"padding", nullptr},       {"added_tokens", added},
            {"normalizer", normalizer}, {"pre_tokenizer", nullptr},
            {"post_processor", post},   {"decoder", {{"type", "Sequence"}, {"decoders", decoders}}},
            {"model", std::move(model)}};
  out.config = tokenizer_config(v.pieces, v.bos_id, v.eos_id, v.unk_id, v.pad_id, v.add_bos, v.add_eos,
                                model_max_length, decoder_map);
  out.config["legacy"] = true;  // the Prepend-normalizer (legacy) SentencePiece behaviour
  return out;
}

std::pair<ojson, ojson> byte_level_pre_tokenizer(const std::string& pre, const std::string& source) {
  auto byte_level = [](bool use_regex) {
    return ojson{
        {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
  };
  auto split = [](const char* regex) {
    return ojson{
        {"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}};
  };
  if (pre == "smollm" || pre == "starcoder")
    return {nullptr,
            {{"type", "Sequence"},
             {"pretokenizers",
              ojson::array({{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true)})}}};
  if (pre == "gpt2") return {nullptr, byte_level(true)};
  if (pre == "llama-bpe" || pre == "llama3")
    return {nullptr,
            {{"type", "Sequence"},
             {"pretokenizers",
              ojson::array({split("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                                  "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
                            byte_level(false)})}}};
  if (pre == "qwen2") {
    ojson bl = byte_level(false);
    bl["trim_offsets"] = false;
    return {{{"type", "NFC"}},
            {{"type", "Sequence"},
             {"pretokenizers",
              ojson::array({split("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                                  "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
                            bl})}}};
  }
  fail(
      "{}: metadata 'tokenizer.ggml.pre': pre-tokenizer '{}' is not supported (supported: smollm, starcoder, "
      "gpt2, llama-bpe, qwen2)",
      source, pre);
}

TokenizerFiles byte_bpe_tokenizer_files(const ByteBpeVocab& v, int64_t model_max_length,
                                        const std::string& chat_template, const std::string& source) {
  const size_t n = v.tokens.size();
  FQ_ASSERT(v.types.size() == n);
  if (n == 0) fail("{}: empty tokenizer vocabulary", source);
  check_ids(v.tokens, v.bos_id, v.eos_id, v.unk_id, v.pad_id, source);
  if (v.add_bos && v.bos_id < 0) fail("{}: the tokenizer adds BOS but has no bos token id", source);
  if (v.add_eos && v.eos_id < 0) fail("{}: the tokenizer adds EOS but has no eos token id", source);
  auto [normalizer, pre_tok] = byte_level_pre_tokenizer(v.pre, source);

  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(v.merges.size());
  for (size_t i = 0; i < v.merges.size(); ++i) {
    const std::string& m = v.merges[i];
    const size_t sp = m.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 >= m.size() || m.find(' ', sp + 1) != std::string::npos)
      fail("{}: metadata 'tokenizer.ggml.merges': merge {} '{}' is not two tokens separated by one space",
           source, i, m);
    merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
  }

  TokenizerFiles out;
  ojson added = ojson::array(), decoder_map = ojson::object();
  collect_added(v.tokens, v.types, added, decoder_map);
  const bool qwen = v.pre == "qwen2";
  ojson bl_post{
      {"type", "ByteLevel"}, {"add_prefix_space", !qwen}, {"trim_offsets", false}, {"use_regex", !qwen}};
  ojson post = bl_post;
  if (v.add_bos || v.add_eos)
    post = {
        {"type", "Sequence"},
        {"processors",
         ojson::array({bl_post, template_processing(v.tokens, v.bos_id, v.eos_id, v.add_bos, v.add_eos)})}};
  ojson decoder{
      {"type", "ByteLevel"}, {"add_prefix_space", !qwen}, {"trim_offsets", !qwen}, {"use_regex", !qwen}};
  ojson model{{"type", "BPE"},
              {"dropout", nullptr},
              {"unk_token", nullptr},
              {"continuing_subword_prefix", nullptr},
              {"end_of_word_suffix", nullptr},
              {"fuse_unk", false},
              {"byte_fallback", false},
              // Llama 3 ships ignore_merges=true: a pre-token that is itself in the vocabulary is one token.
              {"ignore_merges", v.pre == "llama-bpe" || v.pre == "llama3"},
              {"vocab", vocab_json(v.tokens, source)},
              {"merges", merges_json(merges)}};
  out.tokenizer = ojson{{"version", "1.0"},       {"truncation", nullptr},    {"padding", nullptr},
                        {"added_tokens", added},  {"normalizer", normalizer}, {"pre_tokenizer", pre_tok},
                        {"post_processor", post}, {"decoder", decoder},       {"model", std::move(model)}};
  out.config = tokenizer_config(v.tokens, v.bos_id, v.eos_id, v.unk_id, v.pad_id, v.add_bos, v.add_eos,
                                model_max_length, decoder_map);
  if (!chat_template.empty()) out.config["chat_template"] = chat_template;
  return out;
}

}  // namespace fq
