#include "io/tokenizer_unicode.h"

#include <fmt/format.h>

namespace fq::tok {

const char* const kMetaspace = "\xE2\x96\x81";

namespace {
bool cont(std::string_view s, size_t i) { return i < s.size() && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80; }
}  // namespace

uint32_t utf8_decode(std::string_view s, size_t i, size_t* len) {
  const uint8_t c = static_cast<uint8_t>(s[i]);
  *len = 1;
  if (c < 0x80) return c;
  size_t n;
  uint32_t cp, min;
  if ((c & 0xE0) == 0xC0) {
    n = 2, cp = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3, cp = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4, cp = c & 0x07, min = 0x10000;
  } else {
    return 0xFFFD;
  }
  for (size_t k = 1; k < n; ++k) {
    if (!cont(s, i + k)) return 0xFFFD;
    cp = (cp << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
  }
  // Overlong forms, surrogates and values past U+10FFFF are invalid: one byte at a time.
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0xFFFD;
  *len = n;
  return cp;
}

size_t utf8_len(std::string_view s, size_t i) {
  size_t n;
  utf8_decode(s, i, &n);
  return n;
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

bool utf8_valid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    size_t n;
    if (utf8_decode(s, i, &n) == 0xFFFD && n == 1) return false;
    i += n;
  }
  return true;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t n;
    const uint32_t cp = utf8_decode(s, i, &n);
    if (cp != 0xFFFD || n != 1) {
      out.append(s.data() + i, n);
      i += n;
      continue;
    }
    // Maximal subpart of an ill-formed sequence: a valid lead byte followed by the continuation bytes that
    // may still follow it counts as one replacement (WHATWG / Rust rule).
    const uint8_t c = static_cast<uint8_t>(s[i]);
    size_t k = 1;
    if (c >= 0xC2 && c <= 0xF4) {
      const size_t need = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
      while (k < need && cont(s, i + k)) {
        const uint8_t b = static_cast<uint8_t>(s[i + k]);
        if (k == 1 && ((c == 0xE0 && b < 0xA0) || (c == 0xED && b > 0x9F) || (c == 0xF0 && b < 0x90) ||
                       (c == 0xF4 && b > 0x8F)))
          break;
        ++k;
      }
    }
    out += "\xEF\xBF\xBD";
    i += k;
  }
  return out;
}

ByteUnicode::ByteUnicode() {
  dec_.fill(-1);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(next++);
    utf8_append(enc_[b], cp);
    dec_[cp] = static_cast<int16_t>(b);
  }
}

std::string ByteUnicode::encode_all(std::string_view s) const {
  std::string out;
  out.reserve(s.size() * 2);
  for (char c : s) out += enc_[static_cast<uint8_t>(c)];
  return out;
}

int parse_byte_piece(std::string_view p) {
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(p[3]), lo = hex(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

std::string byte_piece(uint8_t b) { return fmt::format("<0x{:02X}>", b); }

}  // namespace fq::tok
