// ModelConfig <-> Hugging Face config.json for the Llama family. Parsing is strict where a wrong value would
// silently change the numerics (activation, rope scaling, biases) and follows transformers' defaults where a
// field is optional. Every error names the file and the field.
#include "model/config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "core/json_guard.h"
#include "flatquant/error.h"

namespace fq {

using nlohmann::json;

namespace {

struct Arch {
  const char* architecture;
  const char* model_type;
};
constexpr Arch kArchs[] = {
    {"LlamaForCausalLM", "llama"},
    {"MistralForCausalLM", "mistral"},
    {"Qwen2ForCausalLM", "qwen2"},
};

std::string supported_list() {
  std::string s;
  for (const auto& a : kArchs) s += (s.empty() ? "" : ", ") + std::string(a.architecture);
  return s;
}

// Field readers. `present` is false for an absent key or JSON null; transformers treats both as "use
// default".
bool present(const json& j, const char* key) {
  return j.contains(key) && !j.at(key).is_null();
}

int64_t get_int(const json& j, const char* key, const std::string& path) {
  if (!present(j, key)) fail("{}: missing field '{}'", path, key);
  const json& v = j.at(key);
  if (!v.is_number_integer()) fail("{}: field '{}': expected an integer (found {})", path, key, json_excerpt(v));
  return v.get<int64_t>();
}

int64_t get_int_or(const json& j, const char* key, const std::string& path, int64_t dflt) {
  return present(j, key) ? get_int(j, key, path) : dflt;
}

double get_num(const json& j, const char* key, const std::string& path, const char* where = "") {
  if (!present(j, key)) fail("{}: missing field '{}{}'", path, where, key);
  const json& v = j.at(key);
  if (!v.is_number()) fail("{}: field '{}{}': expected a number (found {})", path, where, key, json_excerpt(v));
  return v.get<double>();
}

double get_num_or(const json& j, const char* key, const std::string& path, double dflt) {
  return present(j, key) ? get_num(j, key, path) : dflt;
}

bool get_bool_or(const json& j, const char* key, const std::string& path, bool dflt) {
  if (!present(j, key)) return dflt;
  const json& v = j.at(key);
  if (!v.is_boolean()) fail("{}: field '{}': expected true or false (found {})", path, key, json_excerpt(v));
  return v.get<bool>();
}

std::string get_str_or(const json& j, const char* key, const std::string& path, const std::string& dflt) {
  if (!present(j, key)) return dflt;
  const json& v = j.at(key);
  if (!v.is_string()) fail("{}: field '{}': expected a string (found {})", path, key, json_excerpt(v));
  return v.get<std::string>();
}

// rope_scaling (transformers 4.x) or rope_parameters (5.x): an object with "rope_type" (or the older "type").
RopeScaling parse_rope(const json& r, const std::string& path, const char* field) {
  RopeScaling rs;
  if (!r.is_object()) fail("{}: field '{}': expected an object or null (found {})", path, field, json_excerpt(r));
  std::string type = "default";
  if (present(r, "rope_type"))
    type = get_str_or(r, "rope_type", path, type);
  else if (present(r, "type"))
    type = get_str_or(r, "type", path, type);
  const std::string where = std::string(field) + ".";
  if (type == "default") return rs;
  if (type != "linear" && type != "llama3")
    fail("{}: field '{}': unsupported rope_type '{}' (supported: default, linear, llama3)", path, field,
         type);
  rs.type = type;
  rs.factor = get_num(r, "factor", path, where.c_str());
  if (!(rs.factor > 0)) fail("{}: field '{}factor': must be positive (found {})", path, where, rs.factor);
  if (type == "llama3") {
    rs.low_freq_factor = get_num(r, "low_freq_factor", path, where.c_str());
    rs.high_freq_factor = get_num(r, "high_freq_factor", path, where.c_str());
    if (!present(r, "original_max_position_embeddings"))
      fail("{}: missing field '{}original_max_position_embeddings'", path, where);
    const json& o = r.at("original_max_position_embeddings");
    if (!o.is_number_integer() || o.get<int64_t>() <= 0)
      fail("{}: field '{}original_max_position_embeddings': expected a positive integer (found {})", path,
           where, json_excerpt(o));
    rs.original_max_position_embeddings = o.get<int64_t>();
    // The llama3 ramp divides by (high - low); equal factors would divide by zero.
    if (!(rs.high_freq_factor > rs.low_freq_factor) || !(rs.low_freq_factor > 0))
      fail("{}: field '{}': llama3 needs 0 < low_freq_factor < high_freq_factor (found {} and {})", path,
           field, rs.low_freq_factor, rs.high_freq_factor);
  }
  return rs;
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& path) {
  if (!j.is_object()) fail("{}: expected a JSON object (found {})", path, j.type_name());
  ModelConfig c;

  // Architecture: the first entry of "architectures" decides; model_type must agree with it.
  if (!present(j, "architectures")) fail("{}: missing field 'architectures'", path);
  const json& archs = j.at("architectures");
  if (!archs.is_array() || archs.empty() || !archs[0].is_string())
    fail("{}: field 'architectures': expected a list of names (found {})", path, json_excerpt(archs));
  c.architecture = archs[0].get<std::string>();
  const Arch* arch = nullptr;
  for (const auto& a : kArchs)
    if (c.architecture == a.architecture) arch = &a;
  if (!arch)
    fail("{}: architectures: unsupported '{}' (supported: {})", path, c.architecture, supported_list());
  c.model_type = get_str_or(j, "model_type", path, arch->model_type);
  if (c.model_type != arch->model_type)
    fail("{}: field 'model_type': '{}' does not match architecture {} (expected '{}')", path, c.model_type,
         c.architecture, arch->model_type);

  c.n_vocab = get_int(j, "vocab_size", path);
  c.n_embd = get_int(j, "hidden_size", path);
  c.n_layer = get_int(j, "num_hidden_layers", path);
  c.n_head = get_int(j, "num_attention_heads", path);
  c.n_ff = get_int(j, "intermediate_size", path);
  c.n_ctx = get_int(j, "max_position_embeddings", path);
  // Sizes beyond int32 are no real model and would overflow products like vocab x hidden downstream.
  auto positive = [&](int64_t v, const char* key) {
    if (v <= 0) fail("{}: field '{}': must be positive (found {})", path, key, v);
    if (v > INT32_MAX) fail("{}: field '{}': {} is too large (at most {})", path, key, v, INT32_MAX);
  };
  positive(c.n_vocab, "vocab_size");
  positive(c.n_embd, "hidden_size");
  positive(c.n_layer, "num_hidden_layers");
  positive(c.n_head, "num_attention_heads");
  positive(c.n_ff, "intermediate_size");
  positive(c.n_ctx, "max_position_embeddings");
  c.n_head_kv = get_int_or(j, "num_key_value_heads", path, c.n_head);
  positive(c.n_head_kv, "num_key_value_heads");
  if (c.n_head % c.n_head_kv != 0)
    fail("{}: field 'num_key_value_heads': {} does not divide num_attention_heads {}", path, c.n_head_kv,
         c.n_head);
  if (present(j, "head_dim")) {
    c.head_dim = get_int(j, "head_dim", path);
    positive(c.head_dim, "head_dim");
  } else {
    if (c.n_embd % c.n_head != 0)
      fail("{}: field 'num_attention_heads': {} does not divide hidden_size {} (and no head_dim is given)",
           path, c.n_head, c.n_embd);
    c.head_dim = c.n_embd / c.n_head;
  }
  // RoPE rotates pairs of channels.
  if (c.head_dim % 2 != 0) fail("{}: field 'head_dim': must be even for RoPE (found {})", path, c.head_dim);

  c.rms_eps = get_num_or(j, "rms_norm_eps", path, 1e-6);
  if (!(c.rms_eps > 0)) fail("{}: field 'rms_norm_eps': must be positive (found {})", path, c.rms_eps);

  // transformers 5 folds rope_theta and the scaling into "rope_parameters"; 4.x has them at top level.
  c.rope_theta = get_num_or(j, "rope_theta", path, 10000.0);
  if (present(j, "rope_parameters")) {
    const json& rp = j.at("rope_parameters");
    if (!rp.is_object())
      fail("{}: field 'rope_parameters': expected an object or null (found {})", path, json_excerpt(rp));
    if (present(rp, "rope_theta")) c.rope_theta = get_num(rp, "rope_theta", path, "rope_parameters.");
    c.rope_scaling = parse_rope(rp, path, "rope_parameters");
  }
  if (present(j, "rope_scaling")) c.rope_scaling = parse_rope(j.at("rope_scaling"), path, "rope_scaling");
  if (!(c.rope_theta > 0)) fail("{}: field 'rope_theta': must be positive (found {})", path, c.rope_theta);

  // Mistral's sliding-window attention equals full attention for sequences no longer than the window, and
  // the decoder only does full attention, so the usable context is capped at the window.
  if (c.model_type == "mistral" && present(j, "sliding_window")) {
    const int64_t sw = get_int(j, "sliding_window", path);
    positive(sw, "sliding_window");
    c.n_ctx = std::min(c.n_ctx, sw);
  }

  c.tie_embeddings = get_bool_or(j, "tie_word_embeddings", path, false);
  if (c.model_type == "qwen2") {
    c.attn_bias = true;  // Qwen2 always has q/k/v biases (and none on o_proj)
    if (get_bool_or(j, "use_sliding_window", path, false))
      fail("{}: field 'use_sliding_window': true is not supported", path);
  } else if (c.model_type == "llama") {
    // Llama's attention_bias also adds an o_proj bias and mlp_bias biases on the MLP, which the decoder
    // lacks.
    if (get_bool_or(j, "attention_bias", path, false))
      fail("{}: field 'attention_bias': true is not supported (o_proj bias)", path);
    if (get_bool_or(j, "mlp_bias", path, false)) fail("{}: field 'mlp_bias': true is not supported", path);
  }
  c.hidden_act = get_str_or(j, "hidden_act", path, "silu");
  if (c.hidden_act != "silu")
    fail("{}: field 'hidden_act': unsupported '{}' (supported: silu)", path, c.hidden_act);
  c.torch_dtype = get_str_or(j, "torch_dtype", path, get_str_or(j, "dtype", path, "float32"));
  if (c.torch_dtype != "float32" && c.torch_dtype != "float16" && c.torch_dtype != "bfloat16")
    fail("{}: field 'torch_dtype': unsupported '{}' (supported: float32, float16, bfloat16)", path,
         c.torch_dtype);

  c.bos_id = get_int_or(j, "bos_token_id", path, -1);
  if (present(j, "eos_token_id")) {
    const json& e = j.at("eos_token_id");
    if (e.is_number_integer()) {
      c.eos_ids.push_back(e.get<int64_t>());
    } else if (e.is_array()) {
      for (const auto& x : e) {
        if (!x.is_number_integer())
          fail("{}: field 'eos_token_id': expected an integer or a list of integers (found {})", path,
               json_excerpt(e));
        c.eos_ids.push_back(x.get<int64_t>());
      }
    } else {
      fail("{}: field 'eos_token_id': expected an integer or a list of integers (found {})", path, json_excerpt(e));
    }
  }
  auto check_id = [&](int64_t id, const char* key) {
    if (id < -1 || id >= c.n_vocab)
      fail("{}: field '{}': {} is outside the vocabulary [0, {})", path, key, id, c.n_vocab);
  };
  check_id(c.bos_id, "bos_token_id");
  for (int64_t id : c.eos_ids) check_id(id, "eos_token_id");
  return c;
}

ModelConfig ModelConfig::load(const std::string& config_json_path) {
  const std::string text = read_file(config_json_path);
  json j;
  try {
    check_json_depth(text, config_json_path);
    j = json::parse(text);
  } catch (const json::exception& e) {
    std::string m = e.what();
    const auto p = m.find("] ");
    if (!m.empty() && m[0] == '[' && p != std::string::npos) m = m.substr(p + 2);
    fail("{}: not valid JSON: {}", config_json_path, m);
  }
  return from_json(j, config_json_path);
}

json ModelConfig::to_json() const {
  json j = json::object();
  j["architectures"] = json::array({architecture});
  j["model_type"] = model_type;
  j["vocab_size"] = n_vocab;
  j["hidden_size"] = n_embd;
  j["num_hidden_layers"] = n_layer;
  j["num_attention_heads"] = n_head;
  j["num_key_value_heads"] = n_head_kv;
  j["head_dim"] = head_dim;
  j["intermediate_size"] = n_ff;
  j["max_position_embeddings"] = n_ctx;
  j["rms_norm_eps"] = rms_eps;
  j["rope_theta"] = rope_theta;
  if (rope_scaling.type == "default") {
    j["rope_scaling"] = nullptr;
  } else {
    json r = {{"rope_type", rope_scaling.type}, {"factor", rope_scaling.factor}};
    if (rope_scaling.type == "llama3") {
      r["low_freq_factor"] = rope_scaling.low_freq_factor;
      r["high_freq_factor"] = rope_scaling.high_freq_factor;
      r["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
    }
    j["rope_scaling"] = r;
  }
  j["tie_word_embeddings"] = tie_embeddings;
  if (model_type == "llama") {
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
  }
  if (model_type == "qwen2") j["use_sliding_window"] = false;
  if (model_type == "mistral") j["sliding_window"] = nullptr;  // transformers' default would be 4096
  j["hidden_act"] = hidden_act;
  // 4.x reads torch_dtype, 5.x reads dtype (and still accepts torch_dtype).
  j["torch_dtype"] = torch_dtype;
  j["dtype"] = torch_dtype;
  j["bos_token_id"] = bos_id >= 0 ? json(bos_id) : json(nullptr);
  if (eos_ids.empty())
    j["eos_token_id"] = nullptr;
  else if (eos_ids.size() == 1)
    j["eos_token_id"] = eos_ids[0];
  else
    j["eos_token_id"] = eos_ids;
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  return j;
}

std::string ModelConfig::summary() const {
  std::string s = fmt::format(
      "{} ({}): {} layers, n_embd {}, n_head {} (kv {}, head_dim {}), n_ff {}, n_vocab {}, n_ctx {}\n",
      architecture, model_type, n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx);
  s += fmt::format("rope_theta {}, rope_scaling {}", rope_theta, rope_scaling.type);
  if (rope_scaling.type == "linear") s += fmt::format(" (factor {})", rope_scaling.factor);
  if (rope_scaling.type == "llama3")
    s += fmt::format(" (factor {}, low {}, high {}, original ctx {})", rope_scaling.factor,
                     rope_scaling.low_freq_factor, rope_scaling.high_freq_factor,
                     rope_scaling.original_max_position_embeddings);
  s += fmt::format(", rms_eps {}, {}, {}, act {}, dtype {}", rms_eps,
                   tie_embeddings ? "tied embeddings" : "separate lm_head",
                   attn_bias ? "q/k/v bias" : "no bias", hidden_act, torch_dtype);
  std::string eos;
  for (int64_t e : eos_ids) eos += (eos.empty() ? "" : ",") + std::to_string(e);
  s += fmt::format(", bos {}, eos [{}]\n", bos_id, eos);
  return s;
}

}  // namespace fq
