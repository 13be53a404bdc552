// Reading and writing trained transforms (`--save-transforms` / `--load-transforms`), including the
// original FlatQuant's model-zoo file flat_matrices.pth (flatquant.md 1.10).
#pragma once
#include <torch/torch.h>

#include <map>
#include <set>
#include <string>

#include "calib/flat_layer.h"

namespace fq::calib {

// "ln_trans.left.u_raw" of layer 3 -> "model.layers.3.self_attn.ln_trans.left.u_raw" (MLP-side modules under
// "mlp."): the names of transforms.safetensors.
std::string public_name(int layer, const std::string& key);

// A set of transform tensors by public name, fp32 on the CPU.
struct TransformSet {
  std::string source;  // file path, for errors
  bool direct = false;  // transforms are plain matrices (flat_matrices.pth): build the layers with
                        // TransParam::Direct
  std::map<std::string, torch::Tensor> tensors;
  std::set<std::string> used;  // names consumed by load_layer_params
};

// transforms.safetensors (ours, any parametrization) or flat_matrices.pth (the original's eval-mode
// matrices: `trans.matrix*`, `diag_scale`, `clip_factor_w_*` logits, `act_quantizer.clip_factor_a_*`,
// `{k,v}_cache_quantizer.clip_factor_a_*`; the stored inverses `*_inv`, `matrix_inv_t` are ignored and
// recomputed in fp64; read by src/io/torch_pickle, not LibTorch). Chosen by extension (.pth / .pt, else
// safetensors).
TransformSet read_transforms(const std::string& path);

// Copies layer i's parameters from `set` (every parameter must be there with its shape; one-line error
// naming the file and tensor otherwise) and marks them used.
void load_layer_params(FlatLayerImpl& layer, int i, TransformSet& set);
// After all layers: a tensor the model never asked for (another recipe, another model) is an error.
void check_all_used(const TransformSet& set);

}  // namespace fq::calib
