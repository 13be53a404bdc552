// A tiny Llama-family HF directory (config.json + model.safetensors) written by the tests themselves, with
// hooks to rename, reshape or drop tensors so that each loader error can be provoked.
#pragma once
#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/fs.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace fq::test {

inline nlohmann::json tiny_config_json(const std::string& model_type = "llama") {
  nlohmann::json j = {
      {"architectures",
       {model_type == "qwen2"     ? "Qwen2ForCausalLM"
        : model_type == "mistral" ? "MistralForCausalLM"
                                  : "LlamaForCausalLM"}},
      {"model_type", model_type},
      {"vocab_size", 32},
      {"hidden_size", 16},
      {"num_hidden_layers", 2},
      {"num_attention_heads", 4},
      {"num_key_value_heads", 2},
      {"intermediate_size", 24},
      {"max_position_embeddings", 64},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", 10000.0},
      {"hidden_act", "silu"},
      {"tie_word_embeddings", false},
      {"torch_dtype", "float32"},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
  };
  return j;
}

// Called per tensor before writing; may change the name or shape (the data follows the shape) or return
// false to leave the tensor out.
using TensorHook = std::function<bool(std::string& name, std::vector<int64_t>& shape)>;
// Called per tensor with its fp32 values just before they are stored.
using DataHook = std::function<void(const std::string& name, std::vector<float>& values)>;

// Writes config.json and model.safetensors for `cfg_json` into `dir` (which must exist). Returns the number
// of tensors written.
inline size_t write_tiny_model(const std::string& dir, const nlohmann::json& cfg_json,
                               DType dtype = DType::F32, const TensorHook& hook = nullptr,
                               const DataHook& data_hook = nullptr) {
  const ModelConfig c = ModelConfig::from_json(cfg_json, "config.json");
  write_file_atomic(path_join(dir, "config.json"), cfg_json.dump(2));
  std::vector<std::pair<std::string, std::vector<int64_t>>> ts;
  const int64_t q = c.n_head * c.head_dim, kv = c.n_head_kv * c.head_dim;
  ts.push_back({"model.embed_tokens.weight", {c.n_vocab, c.n_embd}});
  for (int i = 0; i < (int)c.n_layer; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    ts.push_back({p + "input_layernorm.weight", {c.n_embd}});
    ts.push_back({p + "self_attn.q_proj.weight", {q, c.n_embd}});
    ts.push_back({p + "self_attn.k_proj.weight", {kv, c.n_embd}});
    ts.push_back({p + "self_attn.v_proj.weight", {kv, c.n_embd}});
    if (c.attn_bias) {
      ts.push_back({p + "self_attn.q_proj.bias", {q}});
      ts.push_back({p + "self_attn.k_proj.bias", {kv}});
      ts.push_back({p + "self_attn.v_proj.bias", {kv}});
    }
    ts.push_back({p + "self_attn.o_proj.weight", {c.n_embd, q}});
    ts.push_back({p + "post_attention_layernorm.weight", {c.n_embd}});
    ts.push_back({p + "mlp.gate_proj.weight", {c.n_ff, c.n_embd}});
    ts.push_back({p + "mlp.up_proj.weight", {c.n_ff, c.n_embd}});
    ts.push_back({p + "mlp.down_proj.weight", {c.n_embd, c.n_ff}});
  }
  ts.push_back({"model.norm.weight", {c.n_embd}});
  if (!c.tie_embeddings) ts.push_back({"lm_head.weight", {c.n_vocab, c.n_embd}});

  SafeTensorsWriter w;
  int seed = 0;
  for (auto& [name, shape] : ts) {
    ++seed;
    if (hook && !hook(name, shape)) continue;
    int64_t n = 1;
    for (auto s : shape) n *= s;
    std::vector<float> v((size_t)n);
    // Deterministic values in (-0.5, 0.5) that differ per tensor and per element.
    for (int64_t k = 0; k < n; ++k) v[(size_t)k] = 0.5f * std::sin(0.37f * (float)k + 1.3f * (float)seed);
    if (data_hook) data_hook(name, v);
    w.add_from_f32(name, dtype, shape, v.data());
  }
  w.write(path_join(dir, "model.safetensors"));
  return w.size();
}

}  // namespace fq::test
