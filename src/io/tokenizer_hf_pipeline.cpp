// Normalizers and pre-tokenizers of tokenizer.json, the PCRE2 Regex wrapper and the shared helpers (decoders are
// in tokenizer_hf_decoders.cpp).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "io/tokenizer_hf_pipeline.h"

#include <pcre2.h>

#include <algorithm>
#include <memory>

#include <nlohmann/json.hpp>

#include "core/json_guard.h"
#include "flatquant/error.h"
#include "io/tokenizer_hf_common.h"
#include "io/tokenizer_unicode.h"

namespace fq::tok {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------- Regex

Regex::Regex(const std::string& pattern, const std::string& what) : what_(what) {
  int err = 0;
  PCRE2_SIZE off = 0;
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                             &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail("{}: regex /{}/ does not compile at offset {}: {}", what, pattern, off, reinterpret_cast<char*>(msg));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // best effort: the interpreter is used when JIT is unavailable
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  auto* code = static_cast<pcre2_code*>(code_);
  std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> md(pcre2_match_data_create_from_pattern(code, nullptr),
                                                                    pcre2_match_data_free);
  FQ_CHECK(md, "{}: out of memory for regex match data", what_);
  const auto* subj = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  while (pos <= s.size()) {
    const int rc = pcre2_match(code, subj, s.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    FQ_CHECK(rc >= 0, "{}: regex match failed (PCRE2 error {})", what_, rc);
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    if (ov[1] > ov[0]) {
      out.emplace_back(ov[0], ov[1]);
      pos = ov[1];
    } else {
      if (ov[0] >= s.size()) break;
      pos = ov[0] + utf8_len(s, ov[0]);  // empty match: step one character
    }
  }
}

// --------------------------------------------------------------------------------- shared helpers

void find_literal(std::string_view s, std::string_view lit, std::vector<std::pair<size_t, size_t>>& out) {
  if (lit.empty()) return;
  for (size_t pos = s.find(lit); pos != std::string_view::npos; pos = s.find(lit, pos + lit.size()))
    out.emplace_back(pos, pos + lit.size());
}

std::string replace_all(std::string_view s, const Pattern& pat, std::string_view content) {
  std::vector<std::pair<size_t, size_t>> m;
  pat.find_all(s, m);
  if (m.empty()) return std::string(s);
  std::string out;
  size_t pos = 0;
  for (const auto& [b, e] : m) {
    out.append(s.substr(pos, b - pos));
    out.append(content);
    pos = e;
  }
  out.append(s.substr(pos));
  return out;
}

const json& field(const json& j, const char* key, const std::string& what) {
  FQ_CHECK(j.is_object() && j.contains(key), "{}: missing field '{}'", what, key);
  return j[key];
}
std::string str_field(const json& j, const char* key, const std::string& what) {
  const json& v = field(j, key, what);
  FQ_CHECK(v.is_string(), "{}.{}: expected a string, found {}", what, key, json_excerpt(v));
  return v.get<std::string>();
}
bool bool_field(const json& j, const char* key, bool def, const std::string& what) {
  if (!j.contains(key) || j[key].is_null()) return def;
  FQ_CHECK(j[key].is_boolean(), "{}.{}: expected a boolean, found {}", what, key, json_excerpt(j[key]));
  return j[key].get<bool>();
}
std::string type_of(const json& j, const std::string& what) {
  FQ_CHECK(j.is_object(), "{}: expected an object, found {}", what, json_excerpt(j));
  return str_field(j, "type", what);
}

Pattern::Pattern(const json& j, const std::string& what) {
  if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
    re_ = std::make_unique<Regex>(j["Regex"].get<std::string>(), what + ".Regex");
  } else if (j.is_object() && j.contains("String") && j["String"].is_string()) {
    lit_ = j["String"].get<std::string>();
  } else {
    fail("{}: expected {{\"String\": ...}} or {{\"Regex\": ...}}, found {}", what, json_excerpt(j));
  }
}

void Pattern::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  if (re_)
    re_->find_all(s, out);
  else
    find_literal(s, lit_, out);
}

Prepend parse_prepend(const json& j, const std::string& what) {
  if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
    const std::string s = j["prepend_scheme"].get<std::string>();
    if (s == "always") return Prepend::kAlways;
    if (s == "first") return Prepend::kFirst;
    if (s == "never") return Prepend::kNever;
    fail("{}.prepend_scheme: unsupported '{}' (expected always, first or never)", what, s);
  }
  // Files from tokenizers < 0.14 say add_prefix_space instead.
  return bool_field(j, "add_prefix_space", true, what) ? Prepend::kAlways : Prepend::kNever;
}

namespace {

// ------------------------------------------------------------------------------------------- splitting

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior parse_behavior(const json& j, const std::string& what) {
  const std::string b = j.is_string() ? j.get<std::string>() : "";
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  fail("{}.behavior: unsupported '{}' (expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous)",
       what, json_excerpt(j));
}

struct Seg {
  size_t begin, end;
  bool match;
};

// Splits one piece at the given matches as the crate's NormalizedString::split does.
void split_piece(const Piece& p, const std::vector<std::pair<size_t, size_t>>& matches, Behavior b, bool invert,
                 Pieces& out) {
  std::vector<Seg> segs;
  size_t pos = 0;
  for (const auto& [mb, me] : matches) {
    if (mb > pos) segs.push_back({pos, mb, false});
    segs.push_back({mb, me, true});
    pos = me;
  }
  if (pos < p.text.size()) segs.push_back({pos, p.text.size(), false});
  if (invert)
    for (Seg& s : segs) s.match = !s.match;

  std::vector<Seg> res;
  bool prev_match = false;
  switch (b) {
    case Behavior::kRemoved:
      for (const Seg& s : segs)
        if (!s.match) res.push_back(s);
      break;
    case Behavior::kIsolated: res = segs; break;
    case Behavior::kContiguous:
      for (const Seg& s : segs) {
        if (!res.empty() && s.match == prev_match)  // runs of either kind fuse (the crate's rule)
          res.back().end = s.end;
        else
          res.push_back(s);
        prev_match = s.match;
      }
      break;
    case Behavior::kMergedWithPrevious:
      for (const Seg& s : segs) {
        if (s.match && !prev_match && !res.empty())
          res.back().end = s.end;
        else
          res.push_back(s);
        prev_match = s.match;
      }
      break;
    case Behavior::kMergedWithNext:
      for (size_t k = segs.size(); k-- > 0;) {
        const Seg& s = segs[k];
        if (s.match && !prev_match && !res.empty())
          res.back().begin = s.begin;
        else
          res.push_back(s);
        prev_match = s.match;
      }
      std::reverse(res.begin(), res.end());
      break;
  }
  for (const Seg& s : res)
    if (s.end > s.begin) out.push_back({p.text.substr(s.begin, s.end - s.begin), p.at_start && s.begin == 0});
}

// -------------------------------------------------------------------------------------------- normalizers

class SequenceNormalizer : public Normalizer {
 public:
  std::vector<std::unique_ptr<Normalizer>> items;
  void apply(std::string& s) const override {
    for (const auto& n : items) n->apply(s);
  }
};

class PrependNormalizer : public Normalizer {
 public:
  std::string prepend;
  void apply(std::string& s) const override {
    if (!s.empty()) s.insert(0, prepend);
  }
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(const json& j, const std::string& what)
      : pat_(field(j, "pattern", what), what + ".pattern"), content_(str_field(j, "content", what)) {}
  void apply(std::string& s) const override { s = replace_all(s, pat_, content_); }

 private:
  Pattern pat_;
  std::string content_;
};

class StripNormalizer : public Normalizer {
 public:
  bool left = true, right = true;
  void apply(std::string& s) const override {
    auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
    size_t b = 0, e = s.size();
    if (left)
      while (b < e && ws(s[b])) ++b;
    if (right)
      while (e > b && ws(s[e - 1])) --e;
    s = s.substr(b, e - b);
  }
};

class NfcNormalizer : public Normalizer {
 public:
  void apply(std::string& s) const override { s = nfc(s); }
};

// ------------------------------------------------------------------------------------------ pre-tokenizers

class SequencePreTokenizer : public PreTokenizer {
 public:
  std::vector<std::unique_ptr<PreTokenizer>> items;
  void apply(Pieces& pieces) const override {
    for (const auto& p : items) p->apply(pieces);
  }
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(const json& j, const std::string& what)
      : pat_(field(j, "pattern", what), what + ".pattern"),
        behavior_(parse_behavior(field(j, "behavior", what), what)),
        invert_(bool_field(j, "invert", false, what)) {}
  // The built-in splitters (Digits, WhitespaceSplit, Whitespace) are Splits with a fixed regex.
  SplitPreTokenizer(const char* regex, Behavior b, bool invert, const std::string& what)
      : pat_(json{{"Regex", regex}}, what), behavior_(b), invert_(invert) {}
  void apply(Pieces& pieces) const override {
    Pieces out;
    std::vector<std::pair<size_t, size_t>> m;
    for (const Piece& p : pieces) {
      m.clear();
      pat_.find_all(p.text, m);
      split_piece(p, m, behavior_, invert_, out);
    }
    pieces = std::move(out);
  }

 private:
  Pattern pat_;
  Behavior behavior_;
  bool invert_;
};

// GPT-2's pre-tokenizer pattern, used by ByteLevel when use_regex is true.
const char* const kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(const json& j, const std::string& what, const ByteUnicode& bu)
      : bu_(bu),
        add_prefix_space_(bool_field(j, "add_prefix_space", true, what)),
        use_regex_(bool_field(j, "use_regex", true, what)) {
    if (use_regex_) re_ = std::make_unique<Regex>(kGpt2Pattern, what + " (GPT-2 pattern)");
  }
  void apply(Pieces& pieces) const override {
    Pieces out;
    std::vector<std::pair<size_t, size_t>> m;
    for (Piece p : pieces) {
      if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
      const size_t first = out.size();
      if (re_) {
        m.clear();
        re_->find_all(p.text, m);
        split_piece(p, m, Behavior::kIsolated, false, out);
      } else if (!p.text.empty()) {
        out.push_back(p);
      }
      for (size_t k = first; k < out.size(); ++k) out[k].text = bu_.encode_all(out[k].text);
    }
    pieces = std::move(out);
  }

 private:
  ByteUnicode bu_;
  bool add_prefix_space_, use_regex_;
  std::unique_ptr<Regex> re_;
};

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(const json& j, const std::string& what)
      : repl_(str_field(j, "replacement", what)), prepend_(parse_prepend(j, what)), split_(bool_field(j, "split", true, what)) {
    FQ_CHECK(!repl_.empty(), "{}.replacement: empty", what);
  }
  void apply(Pieces& pieces) const override {
    Pieces out;
    std::vector<std::pair<size_t, size_t>> m;
    for (Piece p : pieces) {
      std::string t;
      for (char c : p.text) {
        if (c == ' ')
          t += repl_;
        else
          t += c;
      }
      const bool starts = t.compare(0, repl_.size(), repl_) == 0;
      if (!starts && (prepend_ == Prepend::kAlways || (prepend_ == Prepend::kFirst && p.at_start))) t.insert(0, repl_);
      p.text = std::move(t);
      if (split_) {
        m.clear();
        find_literal(p.text, repl_, m);
        split_piece(p, m, Behavior::kMergedWithNext, false, out);
      } else if (!p.text.empty()) {
        out.push_back(std::move(p));
      }
    }
    pieces = std::move(out);
  }

 private:
  std::string repl_;
  Prepend prepend_;
  bool split_;
};

// Digits / Whitespace / WhitespaceSplit / Punctuation-free helpers built on a fixed regex.
}  // namespace

// --------------------------------------------------------------------------------------------- parsing

std::unique_ptr<Normalizer> parse_normalizer(const json& j, const std::string& what) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, what);
  if (type == "Sequence") {
    auto seq = std::make_unique<SequenceNormalizer>();
    const json& items = field(j, "normalizers", what);
    FQ_CHECK(items.is_array(), "{}.normalizers: expected an array", what);
    for (size_t i = 0; i < items.size(); ++i)
      if (auto n = parse_normalizer(items[i], fmt::format("{}.normalizers[{}]", what, i))) seq->items.push_back(std::move(n));
    return seq;
  }
  if (type == "Prepend") {
    auto n = std::make_unique<PrependNormalizer>();
    n->prepend = str_field(j, "prepend", what);
    return n;
  }
  if (type == "Replace") return std::make_unique<ReplaceNormalizer>(j, what);
  if (type == "Strip") {
    auto n = std::make_unique<StripNormalizer>();
    n->left = bool_field(j, "strip_left", true, what);
    n->right = bool_field(j, "strip_right", true, what);
    return n;
  }
  if (type == "NFC") return std::make_unique<NfcNormalizer>();
  fail("{}.type: unsupported normalizer '{}' (expected NFC, Prepend, Replace, Strip or Sequence)", what, type);
}

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const json& j, const std::string& what, const ByteUnicode& bu) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, what);
  if (type == "Sequence") {
    auto seq = std::make_unique<SequencePreTokenizer>();
    const json& items = field(j, "pretokenizers", what);
    FQ_CHECK(items.is_array(), "{}.pretokenizers: expected an array", what);
    for (size_t i = 0; i < items.size(); ++i)
      if (auto p = parse_pre_tokenizer(items[i], fmt::format("{}.pretokenizers[{}]", what, i), bu))
        seq->items.push_back(std::move(p));
    return seq;
  }
  if (type == "Split") return std::make_unique<SplitPreTokenizer>(j, what);
  if (type == "ByteLevel") return std::make_unique<ByteLevelPreTokenizer>(j, what, bu);
  if (type == "Metaspace") return std::make_unique<MetaspacePreTokenizer>(j, what);
  if (type == "Digits") {
    const bool individual = bool_field(j, "individual_digits", false, what);
    return std::make_unique<SplitPreTokenizer>(R"(\p{N})", individual ? Behavior::kIsolated : Behavior::kContiguous,
                                               false, what);
  }
  if (type == "WhitespaceSplit") return std::make_unique<SplitPreTokenizer>(R"(\s+)", Behavior::kRemoved, false, what);
  if (type == "Whitespace")
    return std::make_unique<SplitPreTokenizer>(R"(\w+|[^\w\s]+)", Behavior::kRemoved, true, what);
  fail("{}.type: unsupported pre-tokenizer '{}' (expected ByteLevel, Split, Metaspace, Digits, Whitespace, "
       "WhitespaceSplit or Sequence)",
       what, type);
}

}  // namespace fq::tok
