#include "io/tokenizer_score_bpe.h"

#include <algorithm>
#include <queue>

#include "flatquant/error.h"
#include "io/tokenizer_unicode.h"

namespace fq::tok {

ScoreBpeTokenizer::ScoreBpeTokenizer(ScoreBpeSpec spec, const std::string& what) : spec_(std::move(spec)) {
  const size_t n = spec_.pieces.size();
  FQ_CHECK(n > 0 && spec_.scores.size() == n && spec_.types.size() == n, "{}: empty or inconsistent vocabulary", what);
  FQ_CHECK(spec_.unk_id >= 0 && static_cast<size_t>(spec_.unk_id) < n, "{}: unk id {} out of range [0, {})", what,
           spec_.unk_id, n);
  space_ = spec_.escape_whitespaces ? kMetaspace : " ";
  std::fill(std::begin(byte_id_), std::end(byte_id_), -1);
  // SentencePiece merges only into NORMAL / USER_DEFINED / UNUSED pieces; CONTROL, UNKNOWN and BYTE pieces
  // are reserved (reachable by id only). The first of duplicate pieces wins.
  for (size_t i = 0; i < n; ++i) {
    const PieceType t = spec_.types[i];
    const std::string& p = spec_.pieces[i];
    all_.emplace(p, static_cast<int32_t>(i));
    if (t == PieceType::kByte) {
      const int b = parse_byte_piece(p);
      FQ_CHECK(b >= 0, "{}: piece {} '{}' has type BYTE but is not of the form <0xXX>", what, i, p);
      if (byte_id_[b] < 0) byte_id_[b] = static_cast<int32_t>(i);
    } else if (t == PieceType::kNormal || t == PieceType::kUserDefined || t == PieceType::kUnused) {
      if (p.empty()) continue;
      merge_.emplace(p, static_cast<int32_t>(i));
      if (t == PieceType::kUserDefined) user_defined_.push_back(p);
    }
  }
  std::sort(user_defined_.begin(), user_defined_.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  if (spec_.byte_fallback) {
    for (int b = 0; b < 256; ++b)
      FQ_CHECK(byte_id_[b] >= 0, "{}: byte_fallback is set but piece {} is missing", what,
               byte_piece(static_cast<uint8_t>(b)));
  }
}

std::string ScoreBpeTokenizer::normalize(std::string_view text) const {
  std::string t;
  if (spec_.remove_extra_whitespaces) {
    bool pending_space = false;
    for (char c : text) {
      if (c == ' ') {
        pending_space = !t.empty();
        continue;
      }
      if (pending_space) t += ' ';
      pending_space = false;
      t += c;
    }
  } else {
    t.assign(text);
  }
  if (t.empty()) return t;
  std::string out;
  out.reserve(t.size() + 16);
  if (spec_.add_dummy_prefix) out += space_;
  for (char c : t) {
    if (c == ' ')
      out += space_;
    else
      out += c;
  }
  return out;
}

void ScoreBpeTokenizer::encode_symbol(std::string_view sym, std::vector<int32_t>& out) const {
  const auto it = merge_.find(sym);
  if (it != merge_.end()) {
    out.push_back(it->second);
  } else if (spec_.byte_fallback) {
    for (char c : sym) out.push_back(byte_id_[static_cast<uint8_t>(c)]);
  } else {
    out.push_back(spec_.unk_id);
  }
}

std::vector<int32_t> ScoreBpeTokenizer::encode(std::string_view text) const {
  const std::string s = normalize(text);
  if (s.empty()) return {};

  // Symbols form a linked list over the normalized text; a merge grows the left symbol and kills the right.
  struct Sym {
    uint32_t start, len;
    int32_t prev, next;
    bool frozen;  // user-defined pieces never merge
  };
  std::vector<Sym> syms;
  syms.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t len = 0;
    bool frozen = false;
    for (const std::string& u : user_defined_) {
      if (s.compare(i, u.size(), u) == 0) {
        len = u.size(), frozen = true;
        break;
      }
    }
    if (!len) len = utf8_len(s, i);
    const auto k = static_cast<int32_t>(syms.size());
    syms.push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(len), k - 1, k + 1, frozen});
    i += len;
  }
  syms.back().next = -1;

  // Candidate merges, best first: highest score, then leftmost. A candidate is stale when either side has
  // changed since it was pushed (its combined length no longer matches).
  struct Cand {
    float score;
    uint32_t start;  // text offset of the left symbol: orders ties leftmost first
    int32_t left, right;
    uint32_t len;
  };
  auto worse = [](const Cand& a, const Cand& b) { return a.score < b.score || (a.score == b.score && a.start > b.start); };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> agenda(worse);
  auto consider = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0 || syms[l].frozen || syms[r].frozen) return;
    const uint32_t len = syms[l].len + syms[r].len;
    const auto it = merge_.find(std::string_view(s.data() + syms[l].start, len));
    if (it == merge_.end()) return;
    agenda.push({spec_.scores[it->second], syms[l].start, l, r, len});
  };
  for (size_t i = 0; i + 1 < syms.size(); ++i) consider(static_cast<int32_t>(i), static_cast<int32_t>(i + 1));
  while (!agenda.empty()) {
    const Cand c = agenda.top();
    agenda.pop();
    Sym& l = syms[c.left];
    if (l.len == 0 || l.next != c.right || l.len + syms[c.right].len != c.len) continue;
    Sym& r = syms[c.right];
    l.len = c.len;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = c.left;
    r.len = 0;  // dead
    consider(l.prev, c.left);
    consider(c.left, l.next);
  }

  std::vector<int32_t> out;
  for (int32_t i = 0; i >= 0; i = syms[i].next)
    encode_symbol(std::string_view(s.data() + syms[i].start, syms[i].len), out);
  return out;
}

std::string ScoreBpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  // SentencePiece semantics: control pieces vanish, consecutive byte pieces join into UTF-8 (each invalid
  // byte becomes U+FFFD), U+2581 becomes a space, and the first piece loses the dummy-prefix space.
  std::string out, bytes;
  bool first = true;
  auto flush = [&] {
    for (size_t i = 0; i < bytes.size();) {
      size_t n;
      const uint32_t cp = utf8_decode(bytes, i, &n);
      if (cp == 0xFFFD && n == 1)
        out += "\xEF\xBF\xBD";
      else
        out.append(bytes, i, n);
      i += n;
    }
    bytes.clear();
  };
  for (int32_t id : ids) {
    FQ_CHECK(id >= 0 && id < n_vocab(), "decode: token id {} out of range [0, {})", id, n_vocab());
    const PieceType t = spec_.types[id];
    if (t == PieceType::kControl) continue;
    if (t == PieceType::kByte) {
      bytes += static_cast<char>(parse_byte_piece(spec_.pieces[id]));
      first = false;
      continue;
    }
    flush();
    if (t == PieceType::kUnknown) {
      out += " \xE2\x81\x87 ";  // SentencePiece's default unk_surface " ⁇ "
      first = false;
      continue;
    }
    std::string_view p = spec_.pieces[id];
    if (first && spec_.add_dummy_prefix && p.substr(0, space_.size()) == space_) p.remove_prefix(space_.size());
    first = false;
    for (size_t i = 0; i < p.size();) {
      if (p.compare(i, space_.size(), space_) == 0) {
        out += ' ';
        i += space_.size();
      } else {
        out += p[i++];
      }
    }
  }
  flush();
  return out;
}

int32_t ScoreBpeTokenizer::token_to_id(std::string_view piece) const {
  const auto it = all_.find(piece);
  return it == all_.end() ? -1 : it->second;
}

std::string ScoreBpeTokenizer::piece(int32_t id) const {
  FQ_CHECK(id >= 0 && id < n_vocab(), "piece: token id {} out of range [0, {})", id, n_vocab());
  return spec_.pieces[id];
}

}  // namespace fq::tok
