// Quantization recipes (`recipes/*.json`, embedded in the binary and in every artifact's manifest).
// A recipe fixes what is quantized and how; the calibration schedule (epochs, samples, ...) stays in
// `--set`. Built-in names: w4a4kv4 (default), w4a16, w4a8, w8a8, w16a16kv4. docs/recipes.md lists the fields.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace fq {

struct GptqRecipe {
  int64_t blocksize = 128;  // >= 1
  double percdamp = 0.01;   // > 0
  bool act_order = false;
  bool mse = false;  // MSE grid search of the per-row clipping (as the original's --gptq_mse)
};

struct Recipe {
  std::string name;
  // Weights: symmetric per output channel (group -1) is what the artifact stores (the original hard-codes
  // sym for packing); bits 4, 8 or 16 (16 = not quantized).
  int w_bits = 4;
  bool w_sym = true;
  int64_t w_group = -1;
  // Activations: dynamic per token; bits 4, 8 or 16.
  int a_bits = 4;
  bool a_sym = true;
  // KV cache: per (token, head); bits 4, 8 or 16; asymmetric as the paper.
  int k_bits = 4, v_bits = 4;
  bool k_sym = false, v_sym = false;
  // Calibration knobs (flatquant.md 1.10).
  bool lwc = true, lac = true;   // learnable weight / activation clipping
  bool add_diag = true;          // per-channel scaling
  double diag_alpha = 0.3;
  std::string param = "svd";     // "svd" | "direct"
  bool train_transforms = true;  // --cali_trans
  std::string weight_quantizer = "rtn";  // "rtn" | "gptq"
  GptqRecipe gptq;

  // Parses and validates; `source` names the file (or "recipe 'w4a4kv4'") in errors, which are one line:
  // "<source>: field 'a_bits': expected one of 4, 8, 16, found 3". Unknown fields are errors.
  static Recipe from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
  // Cross-field checks (also run by from_json).
  void validate(const std::string& source) const;
  bool quantizes_weights() const { return w_bits < 16; }
  bool quantizes_acts() const { return a_bits < 16; }
  // The original's set_transforms_auto: transforms when weights or activations are quantized, the K
  // transform when K is.
  bool has_transforms() const { return w_bits < 16 || a_bits < 16; }
  bool has_kcache_transform() const { return k_bits < 16; }
};

// A built-in name (w4a4kv4, ...) or a path to a JSON file. Throws fq::Error naming what was not found.
Recipe load_recipe(const std::string& name_or_path);
std::vector<std::string> builtin_recipe_names();
// The embedded JSON text of a built-in recipe; throws for an unknown name.
const std::string& builtin_recipe_json(const std::string& name);

}  // namespace fq
