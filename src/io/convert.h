// Model import: llama2.c checkpoints and GGUF files -> a Hugging Face model directory (config.json,
// model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json) that transformers and
// fq::load_hf_weights read identically. Weights keep their exact values: GGUF quantized tensors are
// dequantized with ggml's formulas and stored as fp32 (unless another dtype is asked for).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "io/convert_tokenizer.h"
#include "model/config.h"

namespace fq {

struct HfTensor {
  std::string name;            // HF name, e.g. "model.layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // HF order, row-major [out, in]
  std::vector<float> data;
};

// A converted model held in memory before it is written.
struct HfModel {
  ModelConfig cfg;
  std::vector<HfTensor> tensors;  // in the order they are written; tied lm_head omitted
  TokenizerFiles tokenizer;
  nlohmann::ordered_json generation_config;
  // Extra files copied verbatim into the output directory: {name in the directory, source path}.
  std::vector<std::pair<std::string, std::string>> copy_files;
  std::string source;  // input path, for messages
};

// llama2.c checkpoint + tokenizer .bin. An empty `tokenizer_path` looks for tok<vocab>.bin and then
// tokenizer.bin next to the checkpoint.
HfModel import_llama2c(const std::string& model_path, const std::string& tokenizer_path);

// Llama-family GGUF (general.architecture llama | qwen2), F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors.
HfModel import_gguf(const std::string& path);

// HF names of the Llama-family tensors of layer i.
std::string hf_layer_name(int64_t layer, const char* suffix);

// Writes `m` into `out_dir` atomically (built under a temporary name, renamed at the end). Tensor data is
// released as it is copied into the writer. Refuses a non-empty `out_dir` unless `force`.
void write_hf_dir(HfModel& m, const std::string& out_dir, bool force, DType dtype, bool progress);

// The shortest decimal that reads back as the same float: GGUF stores fp32 (1e-5 is 9.99999974738e-06 as
// fp32); config.json should say 1e-05, as the original did.
double shortest_float_decimal(float f);

}  // namespace fq
