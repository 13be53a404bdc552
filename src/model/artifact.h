// The quantized model artifact (docs/artifact_format.md): what `flatquant calibrate` writes and every
// runtime (CPU reference, CUDA) reads. A directory:
//   manifest.json      format "flatquant-artifact", format_version 1, recipe, method, model_config, calibration
//                      options and per-layer losses, tokenizer files, sha256 + size of every other file
//   model.safetensors  the tensors below (fp32 unless stated)
//   config.json        the source model's config (config.json form), so HF-style tools find the shapes
//   tokenizer files    copied from the source model directory (whichever exist)
//   calib_log.csv      per-step losses (when calibrated)
// Tensor names (prefix P = "model.layers.{i}."):
//   model.embed_tokens.weight [V, E], model.norm.weight [E], lm_head.weight [V, E] (absent when tied)
//   P input_layernorm.weight, P post_attention_layernorm.weight [E]   (diag scales folded in)
//   P self_attn.{q,k,v,o}_proj.*, P mlp.{gate,up,down}_proj.*, each linear as
//       .qweight U8 [out, in/2] (4-bit, ref::pack_int4 order) | .qweight I8 [out, in] (8-bit)
//       | .weight F32 [out, in] (16-bit: not quantized)
//       .scales F32 [out] (4/8-bit: dequantized weight = code * scale)
//       .bias F32 [out] (q/k/v when the model has biases)
//       .act_clip F32 [2] = (clip_max, clip_min) factors (sigmoid applied) of this linear's input quantizer
//   P self_attn.ln_trans.left [L, L], .right [R, R]       online x -> (x)(left kron right) (ref::kron_transform)
//   P mlp.up_gate_trans.left/right, P mlp.down_trans.left/right   the same
//   P self_attn.o_trans.matrix [H, H]                      online attn -> ref::head_mix(Po) before o_proj
//   P self_attn.kcache_trans.matrix [d, d], .inv_t [d, d]  after RoPE: k <- k Pk, q <- q Pk^{-T}
//   P self_attn.k_cache.clip, P self_attn.v_cache.clip F32 [2]   KV quantizer (clip_max, clip_min)
// An absent transform is the identity. vcache_trans is folded into v_proj / o_proj and never online.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "model/recipe.h"

namespace fq {

inline constexpr int kArtifactFormatVersion = 1;

struct QLinear {
  int bits = 16;  // 4, 8 or 16
  int64_t out = 0, in = 0;
  std::vector<uint8_t> qweight;  // bits 4: [out, in/2] packed; bits 8: [out, in] int8 bytes
  std::vector<float> scales;     // [out] (bits 4/8)
  std::vector<float> weight;     // [out, in] (bits 16)
  std::vector<float> bias;       // [out] or empty
  float act_clip_max = 1.0f, act_clip_min = 1.0f;
  // Dequantized [out, in] fp32 (code * scale, or the weight itself).
  std::vector<float> dequantize() const;
};

struct KronPair {
  int64_t L = 0, R = 0;     // 0 = absent (identity)
  std::vector<float> left;  // [L, L]
  std::vector<float> right; // [R, R]
  bool present() const { return L > 0; }
};

struct ArtifactLayer {
  std::vector<float> attn_norm, ffn_norm;  // [E]
  QLinear q, k, v, o, gate, up, down;
  KronPair ln_trans, up_gate_trans, down_trans;
  std::vector<float> o_trans;                    // [H, H] or empty
  std::vector<float> kcache_trans, kcache_inv_t;  // [d, d] or empty (both or neither)
  float k_clip_max = 1.0f, k_clip_min = 1.0f, v_clip_max = 1.0f, v_clip_min = 1.0f;
};

struct Artifact {
  ModelConfig cfg;
  Recipe recipe;
  std::string method = "flatquant";       // flatquant | rtn | hadamard | smoothquant | fp
  std::vector<float> tok_embd;            // [V, E]
  std::vector<float> norm;                // [E]
  std::vector<float> lm_head;             // [V, E]; empty when cfg.tie_embeddings
  std::vector<ArtifactLayer> layers;
  nlohmann::json info = nlohmann::json::object();  // free-form manifest fields (calibration options, losses)
  const std::vector<float>& head() const { return lm_head.empty() ? tok_embd : lm_head; }
};

// True when `dir/manifest.json` exists and says format "flatquant-artifact", or cannot be parsed (so that
// load_artifact reports the broken manifest).
bool is_artifact_dir(const std::string& dir);

// Writes `dir` atomically (temp dir + rename; an existing artifact directory is replaced, any other existing
// directory is refused). Tokenizer files are copied from `source_model_dir`; `extra_files` (name -> path)
// are copied in too (e.g. calib_log.csv). Every file's sha256 goes into manifest.json.
void write_artifact(const Artifact& a, const std::string& dir, const std::string& source_model_dir,
                    const std::vector<std::pair<std::string, std::string>>& extra_files = {});

// Loads and validates: format and version, every file's size and sha256, recipe, config, every tensor's
// name, dtype and shape. Errors are one line naming the file and tensor or field.
Artifact load_artifact(const std::string& dir);

// Hex sha256 of a file (streamed).
std::string sha256_file(const std::string& path);

}  // namespace fq
