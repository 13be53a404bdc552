// llama2.c tokenizer .bin (written by llama2.c tokenizer.py from a SentencePiece model): pieces with
// U+2581 replaced by ' ', BOS/EOS stored as "\n<s>\n" / "\n</s>\n". Encoding follows run.c encode(): a dummy
// space before non-empty text, one symbol per UTF-8 character (bytes as <0xXX> = id byte+3 when the character
// is no piece), then best-score merges, leftmost on ties. run.c hard-codes BOS = 1 and EOS = 2.
#include <cstring>

#include "core/fs.h"
#include "flatquant/error.h"
#include "io/tokenizer_loaders.h"
#include "io/tokenizer_score_bpe.h"
#include "io/tokenizer_unicode.h"

namespace fq::tok {
namespace {

constexpr int32_t kMaxPieceLen = 1 << 16;

template <typename T>
T read_le(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);  // the format is little-endian, as is every host we build for
  return v;
}

// Parses the file; returns false (with `why`) instead of throwing so that content sniffing can use it.
bool parse(std::string_view b, ScoreBpeSpec* spec, std::string* why) {
  if (b.size() < 4) {
    *why = fmt::format("{} bytes, too short for the int32 max_token_length header", b.size());
    return false;
  }
  const auto max_len = read_le<int32_t>(b.data());
  if (max_len <= 0 || max_len > kMaxPieceLen) {
    *why = fmt::format("max_token_length {} out of range [1, {}]", max_len, kMaxPieceLen);
    return false;
  }
  size_t off = 4;
  while (off < b.size()) {
    const size_t id = spec->pieces.size();
    if (b.size() - off < 8) {
      *why = fmt::format("token {}: truncated header at byte {}", id, off);
      return false;
    }
    const auto score = read_le<float>(b.data() + off);
    const auto len = read_le<int32_t>(b.data() + off + 4);
    off += 8;
    if (len < 0 || len > max_len || static_cast<size_t>(len) > b.size() - off) {
      *why = fmt::format("token {}: length {} invalid (max_token_length {}, {} bytes left)", id, len, max_len,
                         b.size() - off);
      return false;
    }
    if (score != score) {
      *why = fmt::format("token {}: score is NaN", id);
      return false;
    }
    std::string p(b.data() + off, static_cast<size_t>(len));
    off += static_cast<size_t>(len);
    PieceType t = PieceType::kNormal;
    if (id == 0)
      t = PieceType::kUnknown;
    else if (id == 1 || id == 2)
      t = PieceType::kControl;
    else if (parse_byte_piece(p) >= 0)
      t = PieceType::kByte;
    spec->pieces.push_back(std::move(p));
    spec->scores.push_back(score);
    spec->types.push_back(t);
  }
  if (spec->pieces.size() < 3) {
    *why = fmt::format("{} tokens (expected at least <unk>, BOS, EOS)", spec->pieces.size());
    return false;
  }
  return true;
}

}  // namespace

bool looks_like_llama2c(std::string_view bytes) {
  ScoreBpeSpec spec;
  std::string why;
  return parse(bytes, &spec, &why);
}

std::unique_ptr<Tokenizer> load_llama2c(const std::string& path) {
  const std::string bytes = read_file(path);
  ScoreBpeSpec spec;
  std::string why;
  FQ_CHECK(parse(bytes, &spec, &why), "{}: not a llama2.c tokenizer: {}", path, why);
  bool seen[256] = {};
  for (const std::string& p : spec.pieces) {
    const int b = parse_byte_piece(p);
    if (b >= 0) seen[b] = true;
  }
  bool have_bytes = true;
  for (bool s : seen) have_bytes = have_bytes && s;
  spec.unk_id = 0;
  spec.byte_fallback = have_bytes;
  spec.add_dummy_prefix = true;
  spec.remove_extra_whitespaces = false;
  spec.escape_whitespaces = false;  // pieces hold plain spaces
  auto tok = std::make_unique<ScoreBpeTokenizer>(std::move(spec), path);
  tok->bos_id_ = 1;
  tok->eos_id_ = 2;
  tok->add_bos_ = true;
  return tok;
}

}  // namespace fq::tok
