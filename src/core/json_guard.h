// Guards for JSON read from files (config.json, tokenizer.json, safetensors headers, recipes, task rows).
// nlohmann parses any nesting depth without recursion, but dump(), copies and comparisons of the parsed
// value recurse once per level: a crafted "[[[[...]]]]" of a few MB would overflow the stack later, far from
// the reader. So every reader refuses deep nesting before parsing, and error messages show only a short
// excerpt of an offending value (which may itself be megabytes long).
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

namespace fq {

// Far above any real file (tokenizer.json nests < 10 levels).
constexpr size_t kMaxJsonDepth = 64;

// Throws fq::Error "<what>: JSON nested deeper than 64 levels (at byte N)" when arrays/objects of `text`
// (outside strings) nest deeper than kMaxJsonDepth. Linear, no allocation.
void check_json_depth(std::string_view text, const std::string& what);

// A one-line rendering of `v` for an error message, cut to at most `max` characters ("..." marks a cut).
std::string json_excerpt(const nlohmann::json& v, size_t max = 80);

}  // namespace fq
