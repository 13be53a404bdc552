// UTF-8 and byte-level helpers shared by the tokenizers.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace fq::tok {

// Length of the UTF-8 sequence starting at s[i] (1..4). Invalid or truncated sequences count as 1 byte, so
// that every byte of any input belongs to exactly one "character".
size_t utf8_len(std::string_view s, size_t i);
// Decodes the character at s[i] (length utf8_len); invalid bytes decode to 0xFFFD.
uint32_t utf8_decode(std::string_view s, size_t i, size_t* len);
void utf8_append(std::string& out, uint32_t cp);
bool utf8_valid(std::string_view s);
// Replaces each maximal invalid subsequence with U+FFFD, as Rust's String::from_utf8_lossy does.
std::string utf8_lossy(std::string_view s);

// GPT-2's reversible byte <-> unicode map: printable bytes map to themselves, the rest to U+0100.. in order.
class ByteUnicode {
 public:
  ByteUnicode();
  // The UTF-8 text of byte b's character.
  const std::string& encode(uint8_t b) const { return enc_[b]; }
  // Maps every byte of s through encode().
  std::string encode_all(std::string_view s) const;
  // The byte of code point cp, or -1 when cp is not in the map.
  int decode(uint32_t cp) const { return cp < dec_.size() ? dec_[cp] : -1; }

 private:
  std::array<std::string, 256> enc_;
  std::array<int16_t, 512> dec_{};
};

// Unicode Normalization Form C of valid UTF-8 text (canonical decomposition, canonical ordering, canonical
// composition; tables from the Unicode Character Database, see tokenizer_nfc.cpp).
std::string nfc(std::string_view s);

// "<0xAB>" -> 0xAB, else -1.
int parse_byte_piece(std::string_view piece);
std::string byte_piece(uint8_t b);

extern const char* const kMetaspace;  // U+2581 "▁" in UTF-8

}  // namespace fq::tok
