// HF tokenizers tokenizer.json with a BPE model: byte-level (GPT-2, Llama-3, Qwen2, SmolLM) and Metaspace +
// byte fallback (Llama-2 converted). Encoding follows the crate: added tokens are cut out of the raw text
// first (leftmost, longest), each remaining segment is normalized and pre-tokenized, and every pre-token is
// merged by BPE rank (lowest rank first, leftmost on ties). Decoding maps ids to tokens (added tokens
// included, as skip_special_tokens=false) and runs the decoder chain.
#include <array>
#include <queue>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "core/json_guard.h"
#include "flatquant/error.h"
#include "io/tokenizer_hf_pipeline.h"
#include "io/tokenizer_loaders.h"
#include "io/tokenizer_unicode.h"

namespace fq::tok {
namespace {

using json = nlohmann::json;

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, single_word = false;
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_word_byte(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u >= 0x80 || std::isalnum(u) || c == '_';
}

class HfBpeTokenizer : public Tokenizer {
 public:
  HfBpeTokenizer(const json& root, const std::string& what);
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::string piece(int32_t id) const override;
  int32_t n_vocab() const override { return static_cast<int32_t>(id_to_token_.size()); }
  int32_t token_to_id(std::string_view piece) const override;
  bool lossless() const override { return lossless_; }

 private:
  struct Segment {
    size_t begin, end;
    int32_t id;  // an added token, or -1 for text
  };
  void load_model(const json& model, const std::string& what);
  void load_added(const json& added, const std::string& what);
  void load_post_processor(const json& pp, const std::string& what);
  std::vector<Segment> split_added(std::string_view text) const;
  void bpe(std::string_view word, std::vector<int32_t>& out) const;

  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string_view, int32_t> vocab_;  // model vocabulary, views into id_to_token_
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left id, right id) -> (rank, merged id)
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::vector<AddedToken> added_;
  std::array<std::vector<uint32_t>, 256> added_by_byte_;  // by first byte, longest content first
  std::unordered_map<std::string, int32_t> added_ids_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Decoder> decoder_;
  bool lossless_ = false;
};

uint64_t pair_key(int32_t a, int32_t b) { return static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32 | static_cast<uint32_t>(b); }

HfBpeTokenizer::HfBpeTokenizer(const json& root, const std::string& what) {
  FQ_CHECK(root.is_object(), "{}: expected a JSON object at the top level", what);
  FQ_CHECK(root.contains("model") && root["model"].is_object(), "{}: model: missing", what);
  load_model(root["model"], what);
  if (root.contains("added_tokens") && !root["added_tokens"].is_null()) load_added(root["added_tokens"], what);
  // id_to_token_ is final now (load_added may grow it), so views into it stay valid.
  const json& vocab = root["model"]["vocab"];
  vocab_.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const auto id = it.value().get<size_t>();
    vocab_.emplace(std::string_view(id_to_token_[id]), static_cast<int32_t>(id));
  }
  const ByteUnicode bu;
  const json null_json;
  auto get = [&](const char* k) -> const json& { return root.contains(k) ? root[k] : null_json; };
  normalizer_ = parse_normalizer(get("normalizer"), what + ": normalizer");
  pre_tokenizer_ = parse_pre_tokenizer(get("pre_tokenizer"), what + ": pre_tokenizer", bu);
  decoder_ = parse_decoder(get("decoder"), what + ": decoder", bu);
  load_post_processor(get("post_processor"), what + ": post_processor");

  // Lossless when every byte survives: byte-level or byte-fallback coverage, no normalizer that changes text
  // beyond the reversible space marking, and no prefix space that the decoder would keep or add.
  const std::string n = get("normalizer").dump(), p = get("pre_tokenizer").dump();
  const bool byte_level = p.find("\"ByteLevel\"") != std::string::npos;
  bool ok = byte_level || byte_fallback_;
  // (A Prepend normalizer re-adds U+2581 after every added token found in the text.)
  ok = ok && n == "null";
  ok = ok && !(byte_level && p.find("\"add_prefix_space\":true") != std::string::npos);
  ok = ok && !(p.find("\"Metaspace\"") != std::string::npos && p.find("\"prepend_scheme\":\"never\"") == std::string::npos);
  ok = ok && p.find("\"Removed\"") == std::string::npos && p.find("Whitespace") == std::string::npos;
  lossless_ = ok && !get("decoder").is_null();
}

void HfBpeTokenizer::load_model(const json& m, const std::string& what) {
  const std::string type = m.contains("type") && m["type"].is_string() ? m["type"].get<std::string>() : "";
  FQ_CHECK(type == "BPE", "{}: model.type: unsupported '{}' (expected BPE)", what, type);
  FQ_CHECK(m.contains("vocab") && m["vocab"].is_object(), "{}: model.vocab: missing or not an object", what);
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    FQ_CHECK(!m.contains(k) || m[k].is_null() || (m[k].is_string() && m[k].get<std::string>().empty()),
             "{}: model.{}: {} is not supported (expected null)", what, k, m.contains(k) ? json_excerpt(m[k]) : "");
  }
  const json& vocab = m["vocab"];
  int64_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    FQ_CHECK(it.value().is_number_integer() && it.value().get<int64_t>() >= 0 && it.value().get<int64_t>() < (1 << 30),
             "{}: model.vocab['{}']: id {} is not a valid non-negative integer", what, it.key(), json_excerpt(it.value()));
    max_id = std::max(max_id, it.value().get<int64_t>());
  }
  id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  std::vector<bool> seen(id_to_token_.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const auto id = it.value().get<size_t>();
    FQ_CHECK(!seen[id], "{}: model.vocab['{}']: id {} is used twice", what, it.key(), id);
    seen[id] = true;
    id_to_token_[id] = it.key();
  }
  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    const auto it = vocab.find(m["unk_token"].get<std::string>());
    FQ_CHECK(it != vocab.end(), "{}: model.unk_token: '{}' is not in model.vocab", what, m["unk_token"].get<std::string>());
    unk_id_ = it.value().get<int32_t>();
  }
  auto flag = [&](const char* k) { return m.contains(k) && m[k].is_boolean() && m[k].get<bool>(); };
  fuse_unk_ = flag("fuse_unk");
  byte_fallback_ = flag("byte_fallback");
  ignore_merges_ = flag("ignore_merges");

  FQ_CHECK(m.contains("merges") && m["merges"].is_array(), "{}: model.merges: missing or not an array", what);
  const json& merges = m["merges"];
  merges_.reserve(merges.size());
  auto id_of = [&](const std::string& s, size_t i) {
    const auto it = vocab.find(s);
    FQ_CHECK(it != vocab.end(), "{}: model.merges[{}]: token '{}' is not in model.vocab", what, i, s);
    return it.value().get<int32_t>();
  };
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& e = merges[i];
    std::string a, b;
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ');
      FQ_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
               "{}: model.merges[{}]: '{}' is not two tokens separated by one space", what, i, s);
      a = s.substr(0, sp), b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>(), b = e[1].get<std::string>();
    } else {
      fail("{}: model.merges[{}]: expected \"a b\" or [\"a\", \"b\"], found {}", what, i, json_excerpt(e));
    }
    const int32_t ia = id_of(a, i), ib = id_of(b, i), im = id_of(a + b, i);
    merges_.emplace(pair_key(ia, ib), std::make_pair(static_cast<int32_t>(i), im));  // first rank wins
  }
}

void HfBpeTokenizer::load_added(const json& added, const std::string& what) {
  FQ_CHECK(added.is_array(), "{}: added_tokens: expected an array", what);
  for (size_t i = 0; i < added.size(); ++i) {
    const json& a = added[i];
    const std::string w = fmt::format("{}: added_tokens[{}]", what, i);
    FQ_CHECK(a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                 a["content"].is_string(),
             "{}: expected an object with integer id and string content", w);
    AddedToken t;
    const auto id = a["id"].get<int64_t>();
    FQ_CHECK(id >= 0 && id < (1 << 30), "{}.id: {} out of range", w, id);
    t.id = static_cast<int32_t>(id);
    t.content = a["content"].get<std::string>();
    FQ_CHECK(!t.content.empty(), "{}.content: empty", w);
    auto flag = [&](const char* k) { return a.contains(k) && a[k].is_boolean() && a[k].get<bool>(); };
    t.special = flag("special"), t.lstrip = flag("lstrip"), t.rstrip = flag("rstrip");
    t.single_word = flag("single_word");
    if (static_cast<size_t>(t.id) >= id_to_token_.size()) id_to_token_.resize(static_cast<size_t>(t.id) + 1);
    if (id_to_token_[t.id].empty()) id_to_token_[t.id] = t.content;
    added_ids_[t.content] = t.id;
    added_.push_back(std::move(t));
  }
  for (uint32_t k = 0; k < added_.size(); ++k)
    added_by_byte_[static_cast<uint8_t>(added_[k].content[0])].push_back(k);
  for (auto& v : added_by_byte_)
    std::stable_sort(v.begin(), v.end(), [&](uint32_t x, uint32_t y) { return added_[x].content.size() > added_[y].content.size(); });
}

void HfBpeTokenizer::load_post_processor(const json& pp, const std::string& what) {
  // BOS: the special token that the single-sequence template puts first (TemplateProcessing, possibly in a
  // Sequence), or the CLS of Roberta/Bert processing.
  if (pp.is_null() || !pp.is_object()) return;
  const std::string type = pp.contains("type") && pp["type"].is_string() ? pp["type"].get<std::string>() : "";
  if (type == "Sequence" && pp.contains("processors") && pp["processors"].is_array()) {
    for (const json& p : pp["processors"]) load_post_processor(p, what);
    return;
  }
  if (type == "TemplateProcessing" && pp.contains("single") && pp["single"].is_array() && !pp["single"].empty()) {
    const json& first = pp["single"][0];
    if (!first.is_object() || !first.contains("SpecialToken")) return;
    const json& st = first["SpecialToken"];
    FQ_CHECK(st.is_object() && st.contains("id") && st["id"].is_string(), "{}.single[0].SpecialToken.id: missing", what);
    const std::string name = st["id"].get<std::string>();
    int32_t id = token_to_id(name);
    if (pp.contains("special_tokens") && pp["special_tokens"].contains(name)) {
      const json& ids = pp["special_tokens"][name]["ids"];
      if (ids.is_array() && ids.size() == 1 && ids[0].is_number_integer()) id = ids[0].get<int32_t>();
    }
    FQ_CHECK(id >= 0, "{}.single[0]: special token '{}' has no id", what, name);
    bos_id_ = id;
    add_bos_ = true;
  } else if ((type == "RobertaProcessing" || type == "BertProcessing") && pp.contains("cls") && pp["cls"].is_array() &&
             pp["cls"].size() == 2 && pp["cls"][1].is_number_integer()) {
    bos_id_ = pp["cls"][1].get<int32_t>();
    add_bos_ = true;
  }
}

int32_t HfBpeTokenizer::token_to_id(std::string_view piece) const {
  const auto a = added_ids_.find(std::string(piece));
  if (a != added_ids_.end()) return a->second;
  const auto v = vocab_.find(piece);
  return v == vocab_.end() ? -1 : v->second;
}

std::string HfBpeTokenizer::piece(int32_t id) const {
  FQ_CHECK(id >= 0 && id < n_vocab(), "piece: token id {} out of range [0, {})", id, n_vocab());
  return id_to_token_[id];
}

std::vector<HfBpeTokenizer::Segment> HfBpeTokenizer::split_added(std::string_view text) const {
  std::vector<Segment> segs;
  size_t done = 0;  // text before this offset is already in segs
  for (size_t i = 0; i < text.size();) {
    const AddedToken* hit = nullptr;
    for (uint32_t k : added_by_byte_[static_cast<uint8_t>(text[i])]) {
      const AddedToken& t = added_[k];
      if (text.compare(i, t.content.size(), t.content) != 0) continue;
      const size_t e = i + t.content.size();
      if (t.single_word && ((i > 0 && is_word_byte(text[i - 1])) || (e < text.size() && is_word_byte(text[e]))))
        continue;
      hit = &t;
      break;
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t b = i, e = i + hit->content.size();
    if (hit->lstrip)
      while (b > done && is_space(text[b - 1])) --b;
    if (hit->rstrip)
      while (e < text.size() && is_space(text[e])) ++e;
    if (b > done) segs.push_back({done, b, -1});
    segs.push_back({b, e, hit->id});
    done = i = e;
  }
  if (done < text.size()) segs.push_back({done, text.size(), -1});
  return segs;
}

void HfBpeTokenizer::bpe(std::string_view w, std::vector<int32_t>& out) const {
  if (ignore_merges_) {
    const auto it = vocab_.find(w);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  struct Sym {
    int32_t id, prev, next;
    bool alive;
  };
  std::vector<Sym> syms;
  auto add = [&](int32_t id) {
    const auto k = static_cast<int32_t>(syms.size());
    syms.push_back({id, k - 1, k + 1, true});
  };
  int32_t pending_unk = -1;  // fuse_unk: consecutive unknown characters become one <unk>
  for (size_t i = 0; i < w.size();) {
    const size_t n = utf8_len(w, i);
    const std::string_view c = w.substr(i, n);
    i += n;
    const auto it = vocab_.find(c);
    if (it != vocab_.end()) {
      if (pending_unk >= 0) add(pending_unk), pending_unk = -1;
      add(it->second);
      continue;
    }
    if (byte_fallback_) {
      int32_t ids[4];
      bool all = true;
      for (size_t k = 0; k < n && all; ++k) {
        const auto b = vocab_.find(byte_piece(static_cast<uint8_t>(c[k])));
        all = b != vocab_.end();
        if (all) ids[k] = b->second;
      }
      if (all) {
        if (pending_unk >= 0) add(pending_unk), pending_unk = -1;
        for (size_t k = 0; k < n; ++k) add(ids[k]);
        continue;
      }
    }
    if (unk_id_ >= 0) {  // without unk_token the crate drops the character
      if (pending_unk >= 0 && !fuse_unk_) add(pending_unk);
      pending_unk = unk_id_;
    }
  }
  if (pending_unk >= 0) add(pending_unk);
  if (syms.empty()) return;
  syms.back().next = -1;

  struct Cand {
    int32_t rank, pos, new_id;
  };
  auto worse = [](const Cand& a, const Cand& b) { return a.rank > b.rank || (a.rank == b.rank && a.pos > b.pos); };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
  auto consider = [&](int32_t l) {
    if (l < 0 || syms[l].next < 0) return;
    const auto it = merges_.find(pair_key(syms[l].id, syms[syms[l].next].id));
    if (it != merges_.end()) heap.push({it->second.first, l, it->second.second});
  };
  for (int32_t k = 0; k + 1 < static_cast<int32_t>(syms.size()); ++k) consider(k);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Sym& l = syms[c.pos];
    if (!l.alive || l.next < 0) continue;
    const auto it = merges_.find(pair_key(l.id, syms[l.next].id));
    if (it == merges_.end() || it->second.second != c.new_id) continue;  // stale
    Sym& r = syms[l.next];
    l.id = c.new_id;
    r.alive = false;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = c.pos;
    consider(l.prev);
    consider(c.pos);
  }
  for (int32_t k = 0; k >= 0; k = syms[k].next) out.push_back(syms[k].id);
}

std::vector<int32_t> HfBpeTokenizer::encode(std::string_view raw) const {
  // The crate takes Rust strings, always valid UTF-8: invalid bytes are replaced as from_utf8_lossy does.
  std::string fixed;
  if (!utf8_valid(raw)) fixed = utf8_lossy(raw), raw = fixed;
  std::vector<int32_t> out;
  std::unordered_map<std::string, std::vector<int32_t>> cache;  // per call: pre-tokens repeat a lot
  Pieces pieces;
  for (const Segment& s : split_added(raw)) {
    if (s.id >= 0) {
      out.push_back(s.id);
      continue;
    }
    std::string text(raw.substr(s.begin, s.end - s.begin));
    if (normalizer_) normalizer_->apply(text);
    pieces.assign(1, Piece{std::move(text), s.begin == 0});
    if (pre_tokenizer_) pre_tokenizer_->apply(pieces);
    for (const Piece& p : pieces) {
      if (p.text.empty()) continue;
      auto it = cache.find(p.text);
      if (it == cache.end()) {
        std::vector<int32_t> ids;
        bpe(p.text, ids);
        if (cache.size() > (1u << 18)) cache.clear();
        it = cache.emplace(p.text, std::move(ids)).first;
      }
      out.insert(out.end(), it->second.begin(), it->second.end());
    }
  }
  return out;
}

std::string HfBpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    // Like the crate, ids without a token (e.g. a padded embedding row) are skipped.
    if (id >= 0 && id < n_vocab() && !id_to_token_[id].empty()) tokens.push_back(id_to_token_[id]);
  }
  if (!decoder_) {
    std::string s;
    for (size_t i = 0; i < tokens.size(); ++i) s += (i ? " " : "") + tokens[i];
    return s;
  }
  decoder_->apply(tokens);
  std::string s;
  for (const std::string& t : tokens) s += t;
  return s;
}

}  // namespace

std::unique_ptr<Tokenizer> load_hf_json_text(std::string_view text, const std::string& what) {
  check_json_depth(text, what);
  json root;
  try {
    root = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", what, e.what());
  }
  try {
    return std::make_unique<HfBpeTokenizer>(root, what);
  } catch (const json::exception& e) {
    fail("{}: unexpected JSON structure: {}", what, e.what());
  }
}

std::unique_ptr<Tokenizer> load_hf_json(const std::string& path) { return load_hf_json_text(read_file(path), path); }

}  // namespace fq::tok
