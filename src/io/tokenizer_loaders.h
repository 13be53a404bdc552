// The per-format loaders behind load_tokenizer() (tokenizer.cpp picks one by file name and content).
// Each throws fq::Error naming `path` and the field at fault.
#pragma once
#include <memory>
#include <string>
#include <string_view>

#include "io/tokenizer.h"

namespace fq::tok {

// llama2.c tokenizer .bin: int32 max_token_length, then per token {float32 score, int32 len, len bytes} to EOF.
bool looks_like_llama2c(std::string_view bytes);
std::unique_ptr<Tokenizer> load_llama2c(const std::string& path);
// SentencePiece ModelProto (BPE models only).
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path);
// HF tokenizers tokenizer.json (model.type BPE only).
std::unique_ptr<Tokenizer> load_hf_json(const std::string& path);
std::unique_ptr<Tokenizer> load_hf_json_text(std::string_view json, const std::string& what);

}  // namespace fq::tok
