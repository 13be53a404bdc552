// Decoders of tokenizer.json (the crate's decode_chain semantics): each maps the list of token strings to a
// new list, and the final list is concatenated.
#include <nlohmann/json.hpp>

#include "flatquant/error.h"
#include "io/tokenizer_hf_common.h"
#include "io/tokenizer_hf_pipeline.h"
#include "io/tokenizer_unicode.h"

namespace fq::tok {

using json = nlohmann::json;

namespace {

// ------------------------------------------------------------------------------------------------ decoders

class SequenceDecoder : public Decoder {
 public:
  std::vector<std::unique_ptr<Decoder>> items;
  void apply(std::vector<std::string>& t) const override {
    for (const auto& d : items) d->apply(t);
  }
};

class ByteLevelDecoder : public Decoder {
 public:
  explicit ByteLevelDecoder(const ByteUnicode& bu) : bu_(bu) {}
  void apply(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      // A token any of whose characters is outside the byte map (e.g. an added token) passes as its UTF-8.
      std::string b;
      bool ok = true;
      for (size_t i = 0; i < t.size() && ok;) {
        size_t n;
        const int v = bu_.decode(utf8_decode(t, i, &n));
        ok = v >= 0;
        b += static_cast<char>(v);
        i += n;
      }
      bytes += ok ? b : t;
    }
    tokens.assign(1, utf8_lossy(bytes));
  }

 private:
  ByteUnicode bu_;
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(const json& j, const std::string& what)
      : repl_(str_field(j, "replacement", what)), prepend_(parse_prepend(j, what)) {}
  void apply(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string t;
      std::string_view s = tokens[i];
      if (i == 0 && prepend_ != Prepend::kNever && s.substr(0, repl_.size()) == repl_) s.remove_prefix(repl_.size());
      for (size_t k = 0; k < s.size();) {
        if (s.compare(k, repl_.size(), repl_) == 0) {
          t += ' ';
          k += repl_.size();
        } else {
          t += s[k++];
        }
      }
      tokens[i] = std::move(t);
    }
  }

 private:
  std::string repl_;
  Prepend prepend_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(const json& j, const std::string& what)
      : pat_(field(j, "pattern", what), what + ".pattern"), content_(str_field(j, "content", what)) {}
  void apply(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) t = replace_all(t, pat_, content_);
  }

 private:
  Pattern pat_;
  std::string content_;
};

class ByteFallbackDecoder : public Decoder {
 public:
  // Runs of <0xXX> tokens become their bytes when those form valid UTF-8, else one U+FFFD per token.
  void apply(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string bytes;
    size_t n_bytes = 0;
    auto flush = [&] {
      if (!n_bytes) return;
      if (utf8_valid(bytes)) {
        out.push_back(bytes);
      } else {
        for (size_t k = 0; k < n_bytes; ++k) out.emplace_back("\xEF\xBF\xBD");
      }
      bytes.clear();
      n_bytes = 0;
    };
    for (std::string& t : tokens) {
      const int b = parse_byte_piece(t);
      if (b >= 0) {
        bytes += static_cast<char>(b);
        ++n_bytes;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }
};

class FuseDecoder : public Decoder {
 public:
  void apply(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDecoder : public Decoder {
 public:
  StripDecoder(const json& j, const std::string& what) : content_(str_field(j, "content", what)) {
    const json& s = field(j, "start", what);
    const json& e = field(j, "stop", what);
    FQ_CHECK(s.is_number_unsigned() && e.is_number_unsigned(), "{}: start/stop must be non-negative integers", what);
    start_ = s.get<size_t>(), stop_ = e.get<size_t>();
    FQ_CHECK(!content_.empty(), "{}.content: empty", what);
  }
  void apply(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      size_t b = 0, e = t.size();
      for (size_t k = 0; k < start_ && t.compare(b, content_.size(), content_) == 0 && b < e; ++k) b += content_.size();
      for (size_t k = 0; k < stop_ && e >= b + content_.size() && t.compare(e - content_.size(), content_.size(), content_) == 0; ++k)
        e -= content_.size();
      t = t.substr(b, e - b);
    }
  }

 private:
  std::string content_;
  size_t start_ = 0, stop_ = 0;
};

}  // namespace

std::unique_ptr<Decoder> parse_decoder(const json& j, const std::string& what, const ByteUnicode& bu) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, what);
  if (type == "Sequence") {
    auto seq = std::make_unique<SequenceDecoder>();
    const json& items = field(j, "decoders", what);
    FQ_CHECK(items.is_array(), "{}.decoders: expected an array", what);
    for (size_t i = 0; i < items.size(); ++i)
      if (auto d = parse_decoder(items[i], fmt::format("{}.decoders[{}]", what, i), bu)) seq->items.push_back(std::move(d));
    return seq;
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>(bu);
  if (type == "Metaspace") return std::make_unique<MetaspaceDecoder>(j, what);
  if (type == "Replace") return std::make_unique<ReplaceDecoder>(j, what);
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") return std::make_unique<StripDecoder>(j, what);
  fail("{}.type: unsupported decoder '{}' (expected ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip or "
       "Sequence)",
       what, type);
}

}  // namespace fq::tok
