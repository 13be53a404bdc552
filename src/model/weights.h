// fp32 weights of a Llama-family decoder, loaded from a Hugging Face directory through the per-arch name
// map with every shape checked against config.json. Matrices are row-major [out, in] (y = W x), as in HF.
#pragma once
#include <string>
#include <vector>

#include "model/config.h"

namespace fq {

struct LayerWeights {
  std::vector<float> attn_norm;       // [n_embd]
  std::vector<float> wq, wk, wv, wo;  // [n_head*head_dim, n_embd], [n_head_kv*head_dim, n_embd] x2, [n_embd, n_head*head_dim]
  std::vector<float> bq, bk, bv;      // biases (empty unless cfg.attn_bias)
  std::vector<float> ffn_norm;        // [n_embd]
  std::vector<float> w_gate, w_up;    // [n_ff, n_embd]
  std::vector<float> w_down;          // [n_embd, n_ff]
};

struct ModelWeights {
  ModelConfig cfg;
  std::vector<float> tok_embd;  // [n_vocab, n_embd]
  std::vector<float> norm;      // [n_embd]
  std::vector<float> lm_head;   // [n_vocab, n_embd]; empty when tied (use tok_embd)
  std::vector<LayerWeights> layers;
  const std::vector<float>& head() const { return lm_head.empty() ? tok_embd : lm_head; }
};

// HF tensor names of layer i's weights, for the architectures we support.
struct TensorNames {
  static std::string layer(int i, const char* suffix);  // "model.layers.{i}.{suffix}"
};

// Loads config.json + *.safetensors from an HF directory.
ModelWeights load_hf_weights(const std::string& dir);

}  // namespace fq
