// Llama-family GGUF -> HfModel.
//
// Tensor names follow llama.cpp (token_embd, blk.N.attn_q, ...). llama.cpp's convert_hf_to_gguf
// permutes the rows of q and k for arch "llama" (LlamaModel.permute: reshape(n_head, 2, hd/2, ...)
// .swapaxes(1, 2), with n_head_kv for k) so that ggml's adjacent-pair RoPE applies; we undo it with
// rope_interleaved_to_halves. Qwen2 uses NEOX (half-split) RoPE in ggml and is stored unpermuted.
#include <cmath>
#include <set>

#include "core/progress.h"
#include "flatquant/error.h"
#include "io/convert.h"
#include "io/gguf.h"
#include "io/llama2c.h"
#include "io/safetensors.h"

namespace fq {

namespace {

double gguf_float_decimal(const GgufFile& g, const std::string& key, double def) {
  const GgufValue* v = g.find(key);
  if (!v) return def;
  if (v->type == GgufType::F32) return shortest_float_decimal((float)v->f);
  return g.get_float(key);
}

std::vector<int32_t> token_types(const GgufFile& g, size_t n) {
  const GgufValue* v = g.find("tokenizer.ggml.token_type");
  std::vector<int32_t> types(n, kTokNormal);
  if (!v) return types;
  if (v->type != GgufType::ARRAY || v->arr_i.size() != n || v->arr_type == GgufType::BOOL)
    fail("{}: metadata 'tokenizer.ggml.token_type': expected {} integers (one per token), found {} {}",
         g.path(), n, v->type == GgufType::ARRAY ? v->arr_len : 1,
         gguf_type_name(v->type == GgufType::ARRAY ? v->arr_type : v->type));
  for (size_t i = 0; i < n; ++i) types[i] = (int32_t)v->arr_i[i];
  return types;
}

TokenizerFiles gguf_tokenizer(const GgufFile& g, int64_t n_ctx, int64_t n_vocab, ModelConfig& cfg,
                              nlohmann::ordered_json& gen) {
  const std::string model = g.get_string("tokenizer.ggml.model");
  const std::vector<std::string>& tokens = g.get_string_array("tokenizer.ggml.tokens");
  if ((int64_t)tokens.size() > n_vocab)
    fail("{}: metadata 'tokenizer.ggml.tokens' has {} tokens but token_embd.weight only {} rows", g.path(),
         tokens.size(), n_vocab);
  const int64_t bos = g.get_int("tokenizer.ggml.bos_token_id", -1);
  const int64_t eos = g.get_int("tokenizer.ggml.eos_token_id", -1);
  const int64_t unk = g.get_int("tokenizer.ggml.unknown_token_id", -1);
  const int64_t pad = g.get_int("tokenizer.ggml.padding_token_id", -1);
  const std::string chat_template = g.get_string("tokenizer.chat_template", "");
  cfg.bos_id = bos;
  cfg.eos_ids.clear();
  if (eos >= 0) cfg.eos_ids.push_back(eos);
  gen = nlohmann::ordered_json::object();
  if (bos >= 0) gen["bos_token_id"] = bos;
  if (eos >= 0) gen["eos_token_id"] = eos;
  if (pad >= 0) gen["pad_token_id"] = pad;

  TokenizerFiles files;
  if (model == "gpt2") {
    ByteBpeVocab v;
    v.tokens = tokens;
    v.types = token_types(g, tokens.size());
    v.merges = g.get_string_array("tokenizer.ggml.merges");
    v.pre = g.get_string("tokenizer.ggml.pre", "default");
    v.bos_id = bos, v.eos_id = eos, v.unk_id = unk, v.pad_id = pad;
    v.add_bos = g.get_bool("tokenizer.ggml.add_bos_token", false);
    v.add_eos = g.get_bool("tokenizer.ggml.add_eos_token", false);
    files = byte_bpe_tokenizer_files(v, n_ctx, chat_template, g.path());
  } else if (model == "llama") {
    SpmVocab v;
    v.pieces = tokens;
    v.types = token_types(g, tokens.size());
    const GgufValue* sc = g.find("tokenizer.ggml.scores");
    if (!sc || sc->type != GgufType::ARRAY || sc->arr_f.size() != tokens.size())
      fail("{}: metadata 'tokenizer.ggml.scores': expected {} floats (one per token)", g.path(),
           tokens.size());
    v.scores.assign(sc->arr_f.begin(), sc->arr_f.end());
    v.bos_id = bos, v.eos_id = eos, v.unk_id = unk, v.pad_id = pad;
    v.add_bos = g.get_bool("tokenizer.ggml.add_bos_token", true);
    v.add_eos = g.get_bool("tokenizer.ggml.add_eos_token", false);
    v.add_space_prefix = g.get_bool("tokenizer.ggml.add_space_prefix", true);
    files = spm_tokenizer_files(v, n_ctx, g.path());
    if (!chat_template.empty()) files.config["chat_template"] = chat_template;
  } else {
    fail("{}: metadata 'tokenizer.ggml.model': tokenizer type '{}' is not supported (gpt2 or llama)",
         g.path(), model);
  }
  return files;
}

}  // namespace

HfModel import_gguf(const std::string& path) {
  GgufFile g(path);
  const std::string arch = g.get_string("general.architecture");
  HfModel m;
  m.source = path;
  ModelConfig& cfg = m.cfg;
  bool permute_qk = false;
  if (arch == "llama") {
    cfg.architecture = "LlamaForCausalLM";
    cfg.model_type = "llama";
    permute_qk = true;
  } else if (arch == "qwen2") {
    cfg.architecture = "Qwen2ForCausalLM";
    cfg.model_type = "qwen2";
    cfg.attn_bias = true;
  } else {
    fail("{}: metadata 'general.architecture': '{}' is not supported (llama or qwen2)", path, arch);
  }
  const std::string a = arch + ".";
  cfg.n_embd = g.get_int(a + "embedding_length");
  cfg.n_layer = g.get_int(a + "block_count");
  cfg.n_ff = g.get_int(a + "feed_forward_length");
  cfg.n_head = g.get_int(a + "attention.head_count");
  cfg.n_head_kv = g.get_int(a + "attention.head_count_kv", cfg.n_head);
  cfg.n_ctx = g.get_int(a + "context_length");
  const std::pair<const char*, int64_t> dims[] = {
      {"embedding_length", cfg.n_embd},           {"block_count", cfg.n_layer},
      {"feed_forward_length", cfg.n_ff},          {"attention.head_count", cfg.n_head},
      {"attention.head_count_kv", cfg.n_head_kv}, {"context_length", cfg.n_ctx}};
  for (const auto& [k, v] : dims)
    if (v <= 0 || v > INT32_MAX) fail("{}: metadata '{}{}': {} is out of range", path, a, k, v);
  if (cfg.n_head % cfg.n_head_kv != 0)
    fail("{}: metadata '{}attention.head_count' {} is not a multiple of head_count_kv {}", path, a,
         cfg.n_head, cfg.n_head_kv);
  if (cfg.n_embd % cfg.n_head != 0 && !g.find(a + "attention.key_length"))
    fail("{}: metadata '{}embedding_length' {} is not a multiple of head_count {}", path, a, cfg.n_embd,
         cfg.n_head);
  cfg.head_dim = g.get_int(a + "attention.key_length", cfg.n_embd / cfg.n_head);
  const int64_t v_len = g.get_int(a + "attention.value_length", cfg.head_dim);
  if (v_len != cfg.head_dim || cfg.head_dim <= 0 || cfg.head_dim % 2 != 0)
    fail("{}: metadata '{}attention.key_length' {} / value_length {}: expected equal, even head sizes", path,
         a, cfg.head_dim, v_len);
  const int64_t rot = g.get_int(a + "rope.dimension_count", cfg.head_dim);
  if (rot != cfg.head_dim)
    fail(
        "{}: metadata '{}rope.dimension_count' is {} but the head size is {} (partial RoPE is not supported)",
        path, a, rot, cfg.head_dim);
  cfg.rms_eps = gguf_float_decimal(g, a + "attention.layer_norm_rms_epsilon", 1e-5);
  cfg.rope_theta = gguf_float_decimal(g, a + "rope.freq_base", 10000.0);
  const std::string scaling = g.get_string(a + "rope.scaling.type", "none");
  if (scaling == "linear") {
    cfg.rope_scaling.type = "linear";
    cfg.rope_scaling.factor = gguf_float_decimal(g, a + "rope.scaling.factor", 1.0);
  } else if (scaling != "none") {
    fail("{}: metadata '{}rope.scaling.type': '{}' is not supported (none or linear)", path, a, scaling);
  }
  if (g.find_tensor("rope_freqs.weight"))
    fail("{}: tensor 'rope_freqs.weight': Llama-3.1-style RoPE frequency factors are not supported", path);
  cfg.hidden_act = "silu";

  const GgufTensor& emb = g.get_tensor("token_embd.weight");
  if (emb.ne.size() != 2 || emb.ne[0] != cfg.n_embd)
    fail("{}: tensor 'token_embd.weight': ne {} does not match embedding_length {}", path, shape_str(emb.ne),
         cfg.n_embd);
  cfg.n_vocab = emb.ne[1];
  cfg.tie_embeddings = g.find_tensor("output.weight") == nullptr;

  // (gguf name, hf name, hf shape, rope-permute heads or 0)
  struct Item {
    std::string gguf, hf;
    std::vector<int64_t> shape;
    int64_t permute_heads;
  };
  // Every layer has at least 9 tensors: refuse a block_count the tensor table cannot hold before the
  // per-layer list is built (a corrupt count of 2^32 would otherwise allocate gigabytes).
  if ((uint64_t)cfg.n_layer > g.tensors().size() / 9)
    fail("{}: metadata '{}block_count' is {} but the file has only {} tensors", path, a, cfg.n_layer,
         g.tensors().size());
  const int64_t E = cfg.n_embd, F = cfg.n_ff, Q = cfg.n_head * cfg.head_dim,
                KV = cfg.n_head_kv * cfg.head_dim;
  std::vector<Item> items;
  items.push_back({"token_embd.weight", "model.embed_tokens.weight", {cfg.n_vocab, E}, 0});
  for (int64_t i = 0; i < cfg.n_layer; ++i) {
    const std::string b = fmt::format("blk.{}.", i);
    items.push_back({b + "attn_norm.weight", hf_layer_name(i, "input_layernorm.weight"), {E}, 0});
    items.push_back({b + "attn_q.weight",
                     hf_layer_name(i, "self_attn.q_proj.weight"),
                     {Q, E},
                     permute_qk ? cfg.n_head : 0});
    items.push_back({b + "attn_k.weight",
                     hf_layer_name(i, "self_attn.k_proj.weight"),
                     {KV, E},
                     permute_qk ? cfg.n_head_kv : 0});
    items.push_back({b + "attn_v.weight", hf_layer_name(i, "self_attn.v_proj.weight"), {KV, E}, 0});
    if (cfg.attn_bias) {
      items.push_back({b + "attn_q.bias", hf_layer_name(i, "self_attn.q_proj.bias"), {Q}, 0});
      items.push_back({b + "attn_k.bias", hf_layer_name(i, "self_attn.k_proj.bias"), {KV}, 0});
      items.push_back({b + "attn_v.bias", hf_layer_name(i, "self_attn.v_proj.bias"), {KV}, 0});
    }
    items.push_back({b + "attn_output.weight", hf_layer_name(i, "self_attn.o_proj.weight"), {E, Q}, 0});
    items.push_back({b + "ffn_norm.weight", hf_layer_name(i, "post_attention_layernorm.weight"), {E}, 0});
    items.push_back({b + "ffn_gate.weight", hf_layer_name(i, "mlp.gate_proj.weight"), {F, E}, 0});
    items.push_back({b + "ffn_up.weight", hf_layer_name(i, "mlp.up_proj.weight"), {F, E}, 0});
    items.push_back({b + "ffn_down.weight", hf_layer_name(i, "mlp.down_proj.weight"), {E, F}, 0});
  }
  items.push_back({"output_norm.weight", "model.norm.weight", {E}, 0});
  if (!cfg.tie_embeddings) items.push_back({"output.weight", "lm_head.weight", {cfg.n_vocab, E}, 0});

  // Every tensor in the file must be used: an unknown one means an architecture variant we would
  // silently get wrong (e.g. a bias on a llama-arch model).
  std::set<std::string> used;
  for (const Item& it : items) used.insert(it.gguf);
  for (const GgufTensor& t : g.tensors())
    if (!used.count(t.name))
      fail("{}: tensor '{}' ({}) is not part of the {} layout this converter knows", path, t.name,
           t.type_name(), arch);

  // Check every shape and type before the (slow) dequantization starts.
  for (const Item& it : items) {
    const GgufTensor& t = g.get_tensor(it.gguf);
    if (t.hf_shape() != it.shape)
      fail("{}: tensor '{}': shape {} (ne {}) does not match the metadata (expected {})", path, it.gguf,
           shape_str(t.hf_shape()), shape_str(t.ne), shape_str(it.shape));
    if (!ggml_type_dequantizable(t.type))
      fail("{}: tensor '{}': ggml type {} cannot be converted (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
           path, it.gguf, t.type_name());
  }

  m.tokenizer = gguf_tokenizer(g, cfg.n_ctx, cfg.n_vocab, cfg, m.generation_config);

  Progress bar("convert: dequantizing", (int64_t)items.size(), true);
  int64_t done = 0;
  for (const Item& it : items) {
    std::vector<float> data = g.read_f32(g.get_tensor(it.gguf));
    // NaN/Inf weights (or quantization scales) would make every output NaN; the runtime refuses them too.
    for (size_t k = 0; k < data.size(); ++k)
      if (!std::isfinite(data[k]))
        fail("{}: tensor '{}': element {} is {} (not finite)", path, it.gguf, k, data[k]);
    if (it.permute_heads > 0) {
      const int64_t n_in = it.shape.size() == 2 ? it.shape[1] : 1;
      data = rope_interleaved_to_halves(data, it.permute_heads, cfg.head_dim, n_in);
    }
    m.tensors.push_back({it.hf, it.shape, std::move(data)});
    bar.update(++done);
  }
  bar.finish();
  return m;
}

}  // namespace fq
