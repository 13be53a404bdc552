#include "io/utf8_stream.h"

#include <algorithm>

namespace fq {

bool utf8_incomplete_tail(const std::string& s) {
  if (s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0) return true;
  // Walk back over at most 3 continuation bytes to the lead byte and check it announces more than we have.
  size_t i = s.size(), cont = 0;
  while (i > 0 && cont < 4 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) {
    --i;
    ++cont;
  }
  if (i == 0) return false;
  const unsigned char lead = static_cast<unsigned char>(s[i - 1]);
  size_t need = 0;
  if ((lead & 0xE0) == 0xC0) need = 1;
  else if ((lead & 0xF0) == 0xE0) need = 2;
  else if ((lead & 0xF8) == 0xF0) need = 3;
  else return false;  // ASCII (or a stray byte, which waiting would not fix)
  return cont < need;
}

Utf8TokenStream::Utf8TokenStream(const Tokenizer& tok, const std::vector<int32_t>& context) : tok_(tok) {
  // A few tokens of context are enough for the spacing and merging rules of every decoder we support.
  constexpr size_t kContext = 4;
  size_t start = context.size() > kContext ? context.size() - kContext : 0;
  for (size_t i = start; i < context.size(); ++i)
    if (context[i] == tok.bos_id()) start = i + 1;
  ids_.assign(context.begin() + static_cast<std::ptrdiff_t>(start), context.end());
  prefix_ = 0;
  read_ = ids_.size();
}

std::string Utf8TokenStream::decode_range(size_t from, size_t to) const {
  if (from >= to) return {};
  return tok_.decode(std::vector<int32_t>(ids_.begin() + static_cast<std::ptrdiff_t>(from),
                                          ids_.begin() + static_cast<std::ptrdiff_t>(to)));
}

std::string Utf8TokenStream::push(int32_t id) {
  ids_.push_back(id);
  const std::string prev = decode_range(prefix_, read_);
  const std::string full = decode_range(prefix_, ids_.size());
  // Hold while the new text is an incomplete character, or while the decoder has not yet settled the
  // earlier text (it does not extend it as a prefix).
  if (full.size() <= prev.size() || full.compare(0, prev.size(), prev) != 0 || utf8_incomplete_tail(full)) return {};
  prefix_ = read_;
  read_ = ids_.size();
  return full.substr(prev.size());
}

std::string Utf8TokenStream::finish() {
  if (read_ >= ids_.size()) return {};
  const std::string prev = decode_range(prefix_, read_);
  const std::string full = decode_range(prefix_, ids_.size());
  prefix_ = read_ = ids_.size();
  if (full.compare(0, prev.size(), prev) == 0) return full.substr(prev.size());
  return full;  // cannot happen with a prefix-stable decoder; better too much text than lost text
}

}  // namespace fq
