// load_tokenizer(): picks the format by file name and content, then applies the BOS/EOS ids and add_bos of
// tokenizer_config.json / config.json found beside the file (HF model directories).
#include "io/tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>

#include "core/fs.h"
#include "core/json_guard.h"
#include "flatquant/error.h"
#include "io/tokenizer_loaders.h"

namespace fq {

std::vector<int32_t> Tokenizer::encode_with_bos(std::string_view text) const {
  std::vector<int32_t> ids;
  if (add_bos_ && bos_id_ >= 0) ids.push_back(bos_id_);
  const std::vector<int32_t> t = encode(text);
  ids.insert(ids.end(), t.begin(), t.end());
  return ids;
}

namespace {

using json = nlohmann::json;

std::string dir_of(const std::string& path) {
  const size_t s = path.find_last_of('/');
  return s == std::string::npos ? "." : s == 0 ? "/" : path.substr(0, s);
}

std::string base_of(const std::string& path) {
  const size_t s = path.find_last_of('/');
  return s == std::string::npos ? path : path.substr(s + 1);
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

json read_json(const std::string& path) {
  try {
    const std::string text = read_file(path);
    check_json_depth(text, path);
    return json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", path, e.what());
  }
}

constexpr int32_t kAbsent = -3, kNull = -2, kUnknown = -1;

// "<s>" or {"content": "<s>", ...} -> its id; kAbsent / kNull for a missing / null key, kUnknown when the
// token is not in the vocabulary.
int32_t special_from_config(const json& cfg, const char* key, const Tokenizer& tok, const std::string& path) {
  if (!cfg.contains(key)) return kAbsent;
  const json& v = cfg[key];
  if (v.is_null()) return kNull;
  std::string s;
  if (v.is_string())
    s = v.get<std::string>();
  else if (v.is_object() && v.contains("content") && v["content"].is_string())
    s = v["content"].get<std::string>();
  else
    fail("{}: {}: expected a string or {{\"content\": ...}}, found {}", path, key, json_excerpt(v));
  const int32_t id = tok.token_to_id(s);
  return id >= 0 ? id : kUnknown;
}

int32_t id_from_config(const json& cfg, const char* key, const std::string& path) {
  if (!cfg.contains(key) || cfg[key].is_null()) return -1;
  const json& v = cfg[key];
  if (v.is_array() && !v.empty()) return id_from_config(json{{key, v[0]}}, key, path);  // several EOS: the first
  FQ_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < (1LL << 31),
           "{}: {}: expected a non-negative integer, found {}", path, key, json_excerpt(v));
  return v.get<int32_t>();
}

// BOS/EOS: tokenizer_config.json's tokens, else config.json's ids, else what the tokenizer file says.
// add_bos: tokenizer_config.json's add_bos_token, else false when it sets bos_token to null, else the file's.
void apply_configs(Tokenizer& tok, const std::string& dir) {
  const std::string tc = path_join(dir, "tokenizer_config.json"), mc = path_join(dir, "config.json");
  int32_t bos = kAbsent, eos = kAbsent;
  if (file_exists(tc)) {
    const json cfg = read_json(tc);
    FQ_CHECK(cfg.is_object(), "{}: expected a JSON object", tc);
    bos = special_from_config(cfg, "bos_token", tok, tc);
    eos = special_from_config(cfg, "eos_token", tok, tc);
    if (bos == kNull) tok.add_bos_ = false;
    if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) tok.add_bos_ = cfg["add_bos_token"].get<bool>();
  }
  if (file_exists(mc)) {
    const json cfg = read_json(mc);
    FQ_CHECK(cfg.is_object(), "{}: expected a JSON object", mc);
    if (bos < 0) bos = id_from_config(cfg, "bos_token_id", mc);
    if (eos < 0) eos = id_from_config(cfg, "eos_token_id", mc);
  }
  if (bos >= 0) {
    FQ_CHECK(bos < tok.n_vocab(), "{}: bos token id {} out of range [0, {})", dir, bos, tok.n_vocab());
    tok.bos_id_ = bos;
  }
  if (eos >= 0) {
    FQ_CHECK(eos < tok.n_vocab(), "{}: eos token id {} out of range [0, {})", dir, eos, tok.n_vocab());
    tok.eos_id_ = eos;
  }
}

// EOS when no config names it: the conventional end token of the vocabulary.
void default_eos(Tokenizer& tok) {
  if (tok.eos_id_ >= 0) return;
  for (const char* name : {"</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "<eos>"}) {
    const int32_t id = tok.token_to_id(name);
    if (id >= 0) {
      tok.eos_id_ = id;
      return;
    }
  }
}

std::unique_ptr<Tokenizer> load_file(const std::string& path) {
  const std::string base = base_of(path);
  if (ends_with(base, ".json")) return tok::load_hf_json(path);
  if (ends_with(base, ".model")) return tok::load_sentencepiece(path);
  // Otherwise sniff: JSON starts with '{'; a SentencePiece model with field 1 (pieces), length-delimited (0x0a);
  // a llama2.c .bin parses exactly to the end of the file.
  const std::string bytes = read_file(path);
  size_t i = 0;
  while (i < bytes.size() && (bytes[i] == ' ' || bytes[i] == '\n' || bytes[i] == '\t' || bytes[i] == '\r')) ++i;
  if (i < bytes.size() && bytes[i] == '{') return tok::load_hf_json_text(bytes, path);
  if (tok::looks_like_llama2c(bytes)) return tok::load_llama2c(path);
  if (!bytes.empty() && bytes[0] == 0x0a) return tok::load_sentencepiece(path);
  if (ends_with(base, ".bin")) return tok::load_llama2c(path);  // reports why it is not one
  fail("{}: unknown tokenizer format (expected tokenizer.json, a SentencePiece .model or a llama2.c tokenizer .bin)",
       path);
}

// A directory without the usual names may still hold a llama2.c tokenizer under another name (tok512.bin);
// the first *.bin (by name) that parses as one, skipping large files (model checkpoints).
std::string find_llama2c_bin(const std::string& dir) {
  std::vector<std::string> bins;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.is_regular_file(ec) && e.path().extension() == ".bin" && e.file_size(ec) < (64u << 20)) bins.push_back(e.path().string());
  }
  std::sort(bins.begin(), bins.end());
  for (const std::string& b : bins)
    if (tok::looks_like_llama2c(read_file(b))) return b;
  return "";
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  std::string file = path;
  if (is_directory(path)) {
    file.clear();
    for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer.bin"}) {
      if (file_exists(path_join(path, name))) {
        file = path_join(path, name);
        break;
      }
    }
    if (file.empty()) file = find_llama2c_bin(path);
    FQ_CHECK(!file.empty(), "{}: no tokenizer found (expected tokenizer.json, tokenizer.model or a llama2.c tokenizer .bin)",
             path);
  } else {
    FQ_CHECK(file_exists(path), "{}: no such file", path);
  }
  std::unique_ptr<Tokenizer> tok = load_file(file);
  apply_configs(*tok, dir_of(file));
  default_eos(*tok);
  return tok;
}

}  // namespace fq
