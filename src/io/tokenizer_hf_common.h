// Helpers shared by the tokenizer.json pipeline files (tokenizer_hf_pipeline.cpp, tokenizer_hf_decoders.cpp):
// patterns, literal search and replacement, JSON field access with file+field error messages.
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "io/tokenizer_hf_pipeline.h"

namespace fq::tok {

// A Split / Replace pattern: {"String": "..."} (literal) or {"Regex": "..."}.
class Pattern {
 public:
  Pattern(const nlohmann::json& j, const std::string& what);
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  std::unique_ptr<Regex> re_;
  std::string lit_;
};

void find_literal(std::string_view s, std::string_view lit, std::vector<std::pair<size_t, size_t>>& out);
std::string replace_all(std::string_view s, const Pattern& pat, std::string_view content);

const nlohmann::json& field(const nlohmann::json& j, const char* key, const std::string& what);
std::string str_field(const nlohmann::json& j, const char* key, const std::string& what);
bool bool_field(const nlohmann::json& j, const char* key, bool def, const std::string& what);
std::string type_of(const nlohmann::json& j, const std::string& what);

// Metaspace prepend_scheme (or the older add_prefix_space flag).
enum class Prepend { kAlways, kFirst, kNever };
Prepend parse_prepend(const nlohmann::json& j, const std::string& what);

}  // namespace fq::tok
