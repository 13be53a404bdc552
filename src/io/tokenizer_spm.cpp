// SentencePiece tokenizer.model: a ModelProto protobuf (field numbers from sentencepiece_model.proto).
// Only BPE models are supported (the Llama-1/2, Mistral, TinyLlama family); Unigram models are refused.
#include <cmath>

#include "core/fs.h"
#include "flatquant/error.h"
#include "io/protobuf.h"
#include "io/tokenizer_loaders.h"
#include "io/tokenizer_score_bpe.h"

namespace fq::tok {
namespace {

struct TrainerSpec {
  int model_type = 1;  // UNIGRAM = 1, BPE = 2, WORD = 3, CHAR = 4
  bool byte_fallback = false;
  int32_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
};

struct NormalizerSpec {
  std::string name;
  size_t charsmap_bytes = 0;
  bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
};

void read_piece(pb::Reader r, ScoreBpeSpec& spec, const std::string& what) {
  std::string piece;
  float score = 0.f;
  uint64_t type = 1;
  while (r.next()) {
    switch (r.field()) {
      case 1: piece.assign(r.bytes()); break;
      case 2: score = r.fixed_float(); break;
      case 3: type = r.varint(); break;
      default: break;  // skipped by next()
    }
  }
  FQ_CHECK(type >= 1 && type <= 6, "{}: type {} (expected 1..6)", what, type);
  FQ_CHECK(std::isfinite(score), "{}: score is not finite", what);
  spec.pieces.push_back(std::move(piece));
  spec.scores.push_back(score);
  spec.types.push_back(static_cast<PieceType>(type));
}

TrainerSpec read_trainer(pb::Reader r) {
  TrainerSpec t;
  while (r.next()) {
    switch (r.field()) {
      case 3: t.model_type = static_cast<int>(r.varint()); break;
      case 35: t.byte_fallback = r.boolean(); break;
      case 40: t.unk_id = r.int32(); break;
      case 41: t.bos_id = r.int32(); break;
      case 42: t.eos_id = r.int32(); break;
      case 43: t.pad_id = r.int32(); break;
      default: break;
    }
  }
  return t;
}

NormalizerSpec read_normalizer(pb::Reader r) {
  NormalizerSpec n;
  while (r.next()) {
    switch (r.field()) {
      case 1: n.name.assign(r.bytes()); break;
      case 2: n.charsmap_bytes = r.bytes().size(); break;
      case 3: n.add_dummy_prefix = r.boolean(); break;
      case 4: n.remove_extra_whitespaces = r.boolean(); break;
      case 5: n.escape_whitespaces = r.boolean(); break;
      default: break;
    }
  }
  return n;
}

const char* model_type_name(int t) {
  switch (t) {
    case 1: return "unigram";
    case 2: return "bpe";
    case 3: return "word";
    case 4: return "char";
    default: return "unknown";
  }
}

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path) {
  const std::string bytes = read_file(path);
  const std::string name = path;
  pb::Reader r(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name);
  ScoreBpeSpec spec;
  TrainerSpec trainer;
  NormalizerSpec norm;
  while (r.next()) {
    switch (r.field()) {
      case 1: {
        const std::string what = fmt::format("{}: pieces[{}]", name, spec.pieces.size());
        read_piece(r.message(what), spec, what);
        break;
      }
      case 2: trainer = read_trainer(r.message(name + ": trainer_spec")); break;
      case 3: norm = read_normalizer(r.message(name + ": normalizer_spec")); break;
      default: break;
    }
  }
  FQ_CHECK(!spec.pieces.empty(), "{}: pieces: none found (not a SentencePiece model?)", name);
  FQ_CHECK(trainer.model_type == 2, "{}: trainer_spec.model_type: {} is not supported (expected BPE)", name,
           model_type_name(trainer.model_type));
  // A precompiled charsmap (e.g. nmt_nfkc) is a normalization we do not implement; "identity" has none.
  FQ_CHECK(norm.charsmap_bytes == 0, "{}: normalizer_spec.name: '{}' normalization is not supported (expected identity)",
           name, norm.name);
  const auto n = static_cast<int32_t>(spec.pieces.size());
  auto id_ok = [n](int32_t id) { return id >= -1 && id < n; };
  FQ_CHECK(trainer.unk_id >= 0 && trainer.unk_id < n, "{}: trainer_spec.unk_id: {} out of range [0, {})", name,
           trainer.unk_id, n);
  FQ_CHECK(id_ok(trainer.bos_id) && id_ok(trainer.eos_id), "{}: trainer_spec.bos_id/eos_id: {}/{} out of range [-1, {})",
           name, trainer.bos_id, trainer.eos_id, n);
  spec.unk_id = trainer.unk_id;
  spec.byte_fallback = trainer.byte_fallback;
  spec.add_dummy_prefix = norm.add_dummy_prefix;
  spec.remove_extra_whitespaces = norm.remove_extra_whitespaces;
  spec.escape_whitespaces = norm.escape_whitespaces;
  auto tok = std::make_unique<ScoreBpeTokenizer>(std::move(spec), name);
  tok->bos_id_ = trainer.bos_id;
  tok->eos_id_ = trainer.eos_id;
  tok->add_bos_ = trainer.bos_id >= 0;
  return tok;
}

}  // namespace fq::tok
