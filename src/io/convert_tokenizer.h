// Builds Hugging Face tokenizer.json / tokenizer_config.json from the vocabularies stored in llama2.c
// tokenizer .bin files and GGUF metadata, so that both transformers and our own loader read the same thing.
//
// Two families:
//  - SentencePiece BPE (llama2.c, GGUF tokenizer.ggml.model "llama"): pieces with U+2581 for spaces,
//    scores, byte tokens "<0xXX>". Written as HF's LlamaConverter does (transformers convert_slow_tokenizer):
//    model BPE {byte_fallback, fuse_unk, unk_token}, merges derived from the scores (generate_merges),
//    normalizer Sequence[Prepend("▁"), Replace(" ", "▁")], no pre-tokenizer, decoder
//    Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)], TemplateProcessing adding BOS.
//  - byte-level BPE (GGUF tokenizer.ggml.model "gpt2"): vocab + merges as stored, pre-tokenizer chosen by
//    tokenizer.ggml.pre to reproduce the original tokenizer.json (see byte_level_pre_tokenizer()).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace fq {

// GGUF token types (llama_token_type); llama2.c vocabularies are classified into the same.
enum TokenType : int32_t {
  kTokUndefined = 0,
  kTokNormal = 1,
  kTokUnknown = 2,
  kTokControl = 3,
  kTokUserDefined = 4,
  kTokUnused = 5,
  kTokByte = 6,
};

struct SpmVocab {
  std::vector<std::string> pieces;  // UTF-8, spaces already U+2581
  std::vector<float> scores;
  std::vector<int32_t> types;  // TokenType
  int64_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  bool add_bos = true, add_eos = false;
  bool add_space_prefix = true;  // SentencePiece add_dummy_prefix
};

struct ByteBpeVocab {
  std::vector<std::string> tokens;  // byte-level encoded (GPT-2 bytes_to_unicode), as in GGUF
  std::vector<int32_t> types;
  std::vector<std::string> merges;  // "left right"
  std::string pre;                  // tokenizer.ggml.pre
  int64_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  bool add_bos = false, add_eos = false;
};

struct TokenizerFiles {
  nlohmann::ordered_json tokenizer;  // tokenizer.json
  nlohmann::ordered_json config;     // tokenizer_config.json
};

// HF's generate_merges(vocab, vocab_scores): for every piece p (in id order) every split p = l + r at a
// code point boundary with l and r in the vocabulary is a merge, ordered within p by (id(l), id(r)); all
// merges are then stably sorted by (score(p), len(l), len(r)) descending (lengths in code points).
std::vector<std::pair<std::string, std::string>> spm_merges_from_scores(
    const std::vector<std::string>& pieces, const std::vector<float>& scores);

// `source` names the input file for error messages; `model_max_length` is the context length.
TokenizerFiles spm_tokenizer_files(const SpmVocab& v, int64_t model_max_length, const std::string& source);
TokenizerFiles byte_bpe_tokenizer_files(const ByteBpeVocab& v, int64_t model_max_length,
                                        const std::string& chat_template, const std::string& source);

// The pre_tokenizer (and normalizer, null when none) of the HF original for a llama.cpp pre-tokenizer
// name: "smollm" (and "starcoder", "refact", ...): Sequence[Digits(individual_digits), ByteLevel(use_regex)];
// "gpt2": ByteLevel(use_regex); "llama-bpe": Sequence[Split(llama-3 regex, Isolated),
// ByteLevel(use_regex=false)]; "qwen2": NFC + Sequence[Split(qwen2 regex), ByteLevel(use_regex=false)].
// Throws naming `source` for other names.
std::pair<nlohmann::ordered_json, nlohmann::ordered_json> byte_level_pre_tokenizer(const std::string& pre,
                                                                                   const std::string& source);

// Whether `s` is valid UTF-8 (JSON needs it).
bool valid_utf8(const std::string& s);

}  // namespace fq
