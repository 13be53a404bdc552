// Unicode Normalization Form C (UAX #15): full canonical decomposition, canonical ordering of combining
// marks, then canonical composition. Hangul syllables are (de)composed arithmetically; everything else uses
// the tables that scripts/gen_unicode_tables.py writes from the Unicode Character Database.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "io/tokenizer_unicode.h"

namespace fq::tok {
namespace {

struct CccRange {
  uint32_t first, last;
  uint8_t ccc;
};
struct Decomp {
  uint32_t cp, a, b;
};
struct Compose {
  uint32_t a, b, cp;
};
#include "io/tokenizer_nfc_tables.inc"

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

uint8_t ccc(uint32_t cp) {
  const auto it = std::upper_bound(std::begin(kCcc), std::end(kCcc), cp,
                                   [](uint32_t v, const CccRange& r) { return v < r.first; });
  if (it == std::begin(kCcc)) return 0;
  const CccRange& r = *(it - 1);
  return cp <= r.last ? r.ccc : 0;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const auto it = std::lower_bound(std::begin(kDecomp), std::end(kDecomp), cp,
                                   [](const Decomp& d, uint32_t v) { return d.cp < v; });
  if (it == std::end(kDecomp) || it->cp != cp) {
    out.push_back(cp);
    return;
  }
  decompose(it->a, out);
  if (it->b) decompose(it->b, out);
}

// The primary composite of (a, b), or 0.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto it = std::lower_bound(std::begin(kCompose), std::end(kCompose), std::make_pair(a, b),
                                   [](const Compose& c, const std::pair<uint32_t, uint32_t>& v) {
                                     return c.a < v.first || (c.a == v.first && c.b < v.second);
                                   });
  return it != std::end(kCompose) && it->a == a && it->b == b ? it->cp : 0;
}

}  // namespace

std::string nfc(std::string_view s) {
  // Every code point below U+0300 is its own NFC and never combines with what precedes it; their UTF-8 lead
  // bytes are all below 0xCC, so such text is returned as is.
  if (std::none_of(s.begin(), s.end(), [](char c) { return static_cast<uint8_t>(c) >= 0xCC; })) return std::string(s);
  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t n;
    decompose(utf8_decode(s, i, &n), cps);
    i += n;
  }
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < cps.size();) {
    if (!ccc(cps[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && ccc(cps[j])) ++j;
    std::stable_sort(cps.begin() + static_cast<std::ptrdiff_t>(i), cps.begin() + static_cast<std::ptrdiff_t>(j),
                     [](uint32_t a, uint32_t b) { return ccc(a) < ccc(b); });
    i = j;
  }
  // Canonical composition: a character combines with the last starter unless blocked by an intervening
  // character of the same or higher class (or a starter).
  std::vector<uint32_t> out;
  out.reserve(cps.size());
  size_t starter = SIZE_MAX;
  int last_ccc = -1;
  for (uint32_t cp : cps) {
    const int c = ccc(cp);
    if (starter != SIZE_MAX && (last_ccc < c || (last_ccc == 0 && out.size() == starter + 1))) {
      if (const uint32_t comp = compose(out[starter], cp)) {
        out[starter] = comp;
        continue;
      }
    }
    if (c == 0) starter = out.size();
    last_ccc = c;
    out.push_back(cp);
  }
  std::string r;
  r.reserve(s.size());
  for (uint32_t cp : out) utf8_append(r, cp);
  return r;
}

}  // namespace fq::tok
