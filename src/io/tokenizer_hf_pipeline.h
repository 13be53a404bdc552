// The text pipeline of HF tokenizers' tokenizer.json around the model: normalizers, pre-tokenizers and
// decoders, each parsed from its JSON object with the semantics of the Rust `tokenizers` crate (0.2x).
// Regular expressions come from the JSON and run under PCRE2 with UTF + UCP, which agrees with the
// crate's onig engine on the patterns these files use (\p{L}, \p{N}, (?i:...), \s+(?!\S)).
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fq::tok {

class ByteUnicode;

// A compiled PCRE2 pattern (RAII). Subjects must be valid UTF-8.
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Byte ranges [begin, end) of the successive non-overlapping matches in s (empty matches skipped).
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
  std::string what_;
};

// A pre-token moving through the pipeline; `at_start` marks the one that begins at offset 0 of the whole
// input (Metaspace prepend_scheme "first" prepends only there).
struct Piece {
  std::string text;
  bool at_start = false;
};
using Pieces = std::vector<Piece>;

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void apply(std::string& s) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by its refinement; empty pieces are dropped.
  virtual void apply(Pieces& pieces) const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Maps the token strings to new strings (HF decode_chain); the results are concatenated in the end.
  virtual void apply(std::vector<std::string>& tokens) const = 0;
};

// null JSON yields nullptr. `what` names the file and field (e.g. "tokenizer.json: normalizer").
std::unique_ptr<Normalizer> parse_normalizer(const nlohmann::json& j, const std::string& what);
std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const nlohmann::json& j, const std::string& what,
                                                  const ByteUnicode& bu);
std::unique_ptr<Decoder> parse_decoder(const nlohmann::json& j, const std::string& what, const ByteUnicode& bu);

}  // namespace fq::tok
