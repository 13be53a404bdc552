// Tokenizers of the Llama family behind one interface:
//  - tokenizer.json "BPE" models: byte-level (GPT-2 / Llama-3 / Qwen2 / SmolLM pre-tokenizer regexes via
//    PCRE2 with UTF+UCP) and Metaspace + byte fallback (Llama-2 style); added / special tokens.
//  - SentencePiece tokenizer.model (protobuf, BPE with scores, byte fallback, dummy prefix).
//  - llama2.c tokenizer .bin (scores-based BPE as run.c encodes).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace fq {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Token ids of `text` without BOS/EOS (special tokens written in the text are matched as such where the
  // format has them, as HF tokenizers do by default).
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // The text of `ids` (HF decode with skip_special_tokens=false semantics, byte fallback merged).
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  // The raw piece of one token as stored in the vocabulary (for inspect / debugging).
  virtual std::string piece(int32_t id) const = 0;
  virtual int32_t n_vocab() const = 0;
  // The id of a vocabulary piece or added token written exactly as stored (e.g. "<|im_end|>", "▁the"),
  // or -1 when there is none.
  virtual int32_t token_to_id(std::string_view piece) const { return -1; }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  // Whether the model expects BOS at the start of a stream (tokenizer_config add_bos_token / post-processor).
  bool add_bos() const { return add_bos_; }
  // encode() with BOS prepended when add_bos() (and bos_id() >= 0).
  std::vector<int32_t> encode_with_bos(std::string_view text) const;
  // True when decode(encode(x)) == x for every valid UTF-8 x.
  virtual bool lossless() const { return true; }

  int32_t bos_id_ = -1, eos_id_ = -1;
  bool add_bos_ = false;
};

// Loads a tokenizer from a file (tokenizer.json, tokenizer.model, llama2.c .bin) or from a model
// directory (tokenizer.json preferred, then tokenizer.model, then tokenizer.bin), applying BOS/EOS and
// add_bos from tokenizer_config.json / config.json when present. Throws fq::Error naming the file.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

}  // namespace fq
