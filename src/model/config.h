// ModelConfig: everything the decoder needs from a Hugging Face config.json, for the whole Llama family
// (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM). Per-architecture differences are data here.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace fq {

struct RopeScaling {
  std::string type = "default";  // "default" | "llama3" | "linear"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // e.g. "LlamaForCausalLM"
  std::string model_type;    // "llama" | "mistral" | "qwen2"
  int64_t n_vocab = 0;
  int64_t n_embd = 0;   // hidden_size
  int64_t n_layer = 0;  // num_hidden_layers
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  int64_t n_ff = 0;  // intermediate_size
  int64_t n_ctx = 0;  // max_position_embeddings
  double rms_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_embeddings = false;
  bool attn_bias = false;  // q/k/v bias (Qwen2)
  std::string hidden_act = "silu";
  std::string torch_dtype = "float32";
  int64_t bos_id = -1;
  std::vector<int64_t> eos_ids;

  // Parses config.json; `path` is used in error messages. Throws for unsupported architectures and
  // missing or inconsistent fields.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& path);
  static ModelConfig load(const std::string& config_json_path);
  // A config.json that transformers 5.x loads.
  nlohmann::json to_json() const;
  std::string summary() const;
};

}  // namespace fq
