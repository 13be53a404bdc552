// karpathy/llama2.c files: the legacy "version 0" checkpoint and the tokenizer .bin.
//
// Checkpoint: 7 x int32 LE header {dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len}
// (vocab_size < 0 means an unshared classifier follows at the end), then fp32 LE arrays, matrices
// row-major [out, in] (y = W x), layers stacked:
//   token_embedding [vocab, dim], rms_att [L, dim], wq [L, dim, dim], wk [L, kv_dim, dim],
//   wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim], w1 [L, hidden, dim], w2 [L, dim, hidden],
//   w3 [L, hidden, dim], rms_final [dim], freq_cis_real [seq_len, head_dim/2], freq_cis_imag (same),
//   [wcls [vocab, dim]]
// with kv_dim = dim * n_kv_heads / n_heads. The file size must match exactly.
//
// Tokenizer .bin: int32 max_token_length, then per token {f32 score, int32 len, len bytes}; the token
// count is the model's vocab_size (the file does not store it).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fq {

struct Llama2cConfig {
  int64_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0, seq_len = 0;
  bool shared_classifier = true;  // header vocab_size > 0
  int64_t head_dim() const { return dim / n_heads; }
  int64_t kv_dim() const { return n_kv_heads * head_dim(); }
};

// Weights as stored (llama2.c RoPE layout: q/k rows rotate adjacent pairs within each head).
struct Llama2cModel {
  Llama2cConfig cfg;
  std::vector<float> token_embedding;  // [vocab, dim]
  struct Layer {
    std::vector<float> rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3;
  };
  std::vector<Layer> layers;
  std::vector<float> rms_final;  // [dim]
  std::vector<float> wcls;       // [vocab, dim]; empty when shared
};

// Reads and validates a checkpoint (header sanity, exact file size). Errors name the file and field.
Llama2cModel read_llama2c_checkpoint(const std::string& path);

struct Llama2cTokenizer {
  int32_t max_token_length = 0;
  std::vector<std::string> pieces;  // raw bytes as stored (spaces, not U+2581)
  std::vector<float> scores;
};

// Reads `vocab_size` entries; fails when the file is shorter, longer, or a length is negative / absurd.
Llama2cTokenizer read_llama2c_tokenizer(const std::string& path, int64_t vocab_size);

// Reorders the rows of a q or k projection [n_head * head_dim, n_in] from the interleaved RoPE layout
// (pairs (2i, 2i+1) rotate together: llama2.c, GGUF "llama") to the Hugging Face half-split layout (pairs
// (i, i + head_dim/2)): HF row h*hd + i <- row h*hd + 2i, HF row h*hd + hd/2 + i <- row h*hd + 2i + 1.
// This undoes llama.cpp's convert_hf_to_gguf permute and equals llama2.c's export permute for HF.
// Works for biases with n_in = 1.
std::vector<float> rope_interleaved_to_halves(const std::vector<float>& w, int64_t n_head, int64_t head_dim,
                                              int64_t n_in);

}  // namespace fq
