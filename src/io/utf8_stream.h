// Incremental detokenization for streaming: tokens go in one at a time, text comes out as soon as it is
// final. Contract:
//  - the concatenation of everything push() and finish() return equals what the tokenizer's decode() of the
//    generated ids gives when they follow the context (so SentencePiece's "strip the leading space of the
//    first piece" applies once, where decode() would apply it, and nowhere in the middle);
//  - push() never returns an incomplete UTF-8 sequence: byte-fallback pieces (<0xE2><0x82><0xAC>) are held
//    until the character is complete (the tokenizer's lossy decode shows a partial one as U+FFFD at the end,
//    or as raw bytes; both are held).
// Method (as HF text-generation-inference): decode a short window of ids twice, without and with the new
// tokens, and return the difference; the window start moves forward so the cost per token is O(1).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/tokenizer.h"

namespace fq {

// True when `s` ends inside a UTF-8 sequence (a lead byte without all its continuation bytes) or ends with
// U+FFFD, the replacement a lossy decoder writes for such a sequence.
bool utf8_incomplete_tail(const std::string& s);

class Utf8TokenStream {
 public:
  // `context`: the ids that precede the generated ones (the prompt); only its last few tokens are used, and
  // a BOS among them is dropped (as decode(skip_special_tokens) would) so a reply that starts the text gets
  // its leading space stripped like decode() of the reply alone. `tok` must outlive the stream.
  Utf8TokenStream(const Tokenizer& tok, const std::vector<int32_t>& context);
  // Adds one generated id; returns the text that became final (possibly empty).
  std::string push(int32_t id);
  // Returns whatever is still held (an incomplete sequence at the very end is returned as decode() gives it).
  std::string finish();

 private:
  std::string decode_range(size_t from, size_t to) const;
  const Tokenizer& tok_;
  std::vector<int32_t> ids_;
  size_t prefix_ = 0, read_ = 0;  // window start; end of what has been returned
};

}  // namespace fq
