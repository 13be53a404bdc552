// Score-based BPE: the SentencePiece BPE model (tokenizer.model) and llama2.c's run.c encode() (tokenizer .bin).
// Both repeatedly merge the adjacent pair of symbols whose concatenation is a vocabulary piece with the highest
// score (ties: leftmost pair) until no such pair remains; symbols start as single UTF-8 characters, and a final
// symbol that is no piece falls back to its bytes (<0xXX> pieces) or to <unk>.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io/tokenizer.h"

namespace fq::tok {

// SentencePiece piece types (ModelProto.SentencePiece.Type).
enum class PieceType : uint8_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

struct ScoreBpeSpec {
  std::vector<std::string> pieces;  // as stored (SentencePiece: U+2581 for space; llama2.c: plain space)
  std::vector<float> scores;
  std::vector<PieceType> types;
  int32_t unk_id = 0;
  bool byte_fallback = true;
  bool add_dummy_prefix = true;          // prepend one space to non-empty text
  bool remove_extra_whitespaces = false;  // strip and collapse runs of ' ' (SentencePiece normalizer)
  bool escape_whitespaces = true;         // ' ' -> U+2581 before the model (SentencePiece)
};

class ScoreBpeTokenizer : public Tokenizer {
 public:
  // `what` names the source file for error messages.
  ScoreBpeTokenizer(ScoreBpeSpec spec, const std::string& what);
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::string piece(int32_t id) const override;
  int32_t n_vocab() const override { return static_cast<int32_t>(spec_.pieces.size()); }
  int32_t token_to_id(std::string_view piece) const override;
  // Lossless except that remove_extra_whitespaces collapses spaces and that text with no byte fallback may
  // map to <unk>.
  bool lossless() const override { return spec_.byte_fallback && !spec_.remove_extra_whitespaces; }

 private:
  std::string normalize(std::string_view text) const;
  void encode_symbol(std::string_view sym, std::vector<int32_t>& out) const;

  ScoreBpeSpec spec_;
  std::string space_;                                    // " " or U+2581
  std::unordered_map<std::string_view, int32_t> merge_;  // pieces that merges may produce / final lookup
  std::unordered_map<std::string_view, int32_t> all_;    // every piece (token_to_id)
  std::vector<std::string> user_defined_;                // matched whole before merging, longest first
  int32_t byte_id_[256];
};

}  // namespace fq::tok
