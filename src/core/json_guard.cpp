#include "core/json_guard.h"

#include <nlohmann/json.hpp>

#include "flatquant/error.h"

namespace fq {

void check_json_depth(std::string_view text, const std::string& what) {
  size_t depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth)
        fail("{}: JSON nested deeper than {} levels (at byte {})", what, kMaxJsonDepth, i);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
}

std::string json_excerpt(const nlohmann::json& v, size_t max) {
  // Values reaching here come from parsed files, so their depth is bounded (check_json_depth) and dump()
  // is safe; only the length needs a cap. Invalid UTF-8 is replaced rather than thrown on.
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > max) s = s.substr(0, max > 3 ? max - 3 : 0) + "...";
  return s;
}

}  // namespace fq
