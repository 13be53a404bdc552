// Loads a Llama-family HF directory into fp32 ModelWeights. Every tensor's shape comes from config.json and
// is checked before conversion; weights must be finite floats; tensors the decoder would not use are rejected
// (an ignored o_proj bias, say, would silently change the numerics).
#include "model/weights.h"

#include <fmt/format.h>

#include <cmath>
#include <set>

#include "flatquant/error.h"
#include "io/safetensors.h"

namespace fq {

std::string TensorNames::layer(int i, const char* suffix) {
  return fmt::format("model.layers.{}.{}", i, suffix);
}

namespace {

class Loader {
 public:
  Loader(const std::string& dir, const TensorStore& store) : dir_(dir), store_(store) {}

  std::vector<float> read(const std::string& name, const std::vector<int64_t>& expected) {
    const SafeTensors* f = nullptr;
    const TensorInfo* t = store_.find(name, &f);
    if (!t) fail("{}: missing tensor '{}'", dir_, name);
    used_.insert(name);
    if (t->shape != expected)
      fail("{}: tensor '{}': shape {} does not match config.json (expected {})", f->path(), name,
           shape_str(t->shape), shape_str(expected));
    if (t->dtype != DType::F32 && t->dtype != DType::F16 && t->dtype != DType::BF16 && t->dtype != DType::F64)
      fail("{}: tensor '{}': dtype {} is not a float type (expected F32, F16, BF16 or F64)", f->path(), name,
           dtype_name(t->dtype));
    std::vector<float> v = f->to_f32(*t);
    for (size_t k = 0; k < v.size(); ++k)
      if (!std::isfinite(v[k]))
        fail("{}: tensor '{}': element {} is not finite ({})", f->path(), name, k, v[k]);
    return v;
  }

  void mark_used(const std::string& name) { used_.insert(name); }

  // Anything left over is a tensor the decoder has no slot for.
  void check_all_used(const ModelConfig& cfg) const {
    for (const auto& [f, t] : store_.all()) {
      if (used_.count(t->name)) continue;
      // Older checkpoints store the RoPE frequencies; they are recomputed from config.json.
      if (t->name.find("rotary_emb.inv_freq") != std::string::npos) continue;
      fail("{}: tensor '{}': not used by {} with this config.json (unexpected tensor)", f->path(), t->name,
           cfg.architecture);
    }
  }

 private:
  const std::string& dir_;
  const TensorStore& store_;
  std::set<std::string> used_;
};

}  // namespace

ModelWeights load_hf_weights(const std::string& dir) {
  if (!is_directory(dir)) fail("{}: not a directory", dir);
  ModelWeights w;
  w.cfg = ModelConfig::load(path_join(dir, "config.json"));
  const ModelConfig& c = w.cfg;
  const TensorStore store = TensorStore::open_dir(dir);
  Loader ld(dir, store);

  const int64_t q_dim = c.n_head * c.head_dim, kv_dim = c.n_head_kv * c.head_dim;
  w.tok_embd = ld.read("model.embed_tokens.weight", {c.n_vocab, c.n_embd});
  w.norm = ld.read("model.norm.weight", {c.n_embd});
  if (c.tie_embeddings) {
    // Some exporters store the tied head anyway; transformers ignores it, so do we.
    ld.mark_used("lm_head.weight");
  } else {
    if (!store.has("lm_head.weight"))
      fail("{}: missing tensor 'lm_head.weight' (config.json has tie_word_embeddings false)", dir);
    w.lm_head = ld.read("lm_head.weight", {c.n_vocab, c.n_embd});
  }
  // num_hidden_layers comes from config.json: make sure the file has that many layers before allocating.
  const std::string last = TensorNames::layer((int)c.n_layer - 1, "input_layernorm.weight");
  if (!store.has(last))
    fail("{}: missing tensor '{}' (config.json has num_hidden_layers {})", dir, last, c.n_layer);
  w.layers.resize((size_t)c.n_layer);
  for (int i = 0; i < (int)c.n_layer; ++i) {
    LayerWeights& L = w.layers[(size_t)i];
    auto n = [i](const char* s) { return TensorNames::layer(i, s); };
    L.attn_norm = ld.read(n("input_layernorm.weight"), {c.n_embd});
    L.wq = ld.read(n("self_attn.q_proj.weight"), {q_dim, c.n_embd});
    L.wk = ld.read(n("self_attn.k_proj.weight"), {kv_dim, c.n_embd});
    L.wv = ld.read(n("self_attn.v_proj.weight"), {kv_dim, c.n_embd});
    L.wo = ld.read(n("self_attn.o_proj.weight"), {c.n_embd, q_dim});
    if (c.attn_bias) {
      L.bq = ld.read(n("self_attn.q_proj.bias"), {q_dim});
      L.bk = ld.read(n("self_attn.k_proj.bias"), {kv_dim});
      L.bv = ld.read(n("self_attn.v_proj.bias"), {kv_dim});
    }
    L.ffn_norm = ld.read(n("post_attention_layernorm.weight"), {c.n_embd});
    L.w_gate = ld.read(n("mlp.gate_proj.weight"), {c.n_ff, c.n_embd});
    L.w_up = ld.read(n("mlp.up_proj.weight"), {c.n_ff, c.n_embd});
    L.w_down = ld.read(n("mlp.down_proj.weight"), {c.n_embd, c.n_ff});
  }
  ld.check_all_used(c);
  return w;
}

}  // namespace fq
