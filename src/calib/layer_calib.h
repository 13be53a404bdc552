// Layer-wise calibration of one FlatLayer (flatquant.md 1.6, cali_flat_quant):
//   1. FP pass over every sample (one at a time): the targets fp_out and per-channel max |x| statistics.
//   2. SmoothQuant-style diag init (alpha), if the layer has diag scales.
//   3. AdamW (default betas 0.9/0.999, eps 1e-8, weight decay on every group) with three groups: transform
//      parameters (lr), diag scales (lr), clipping logits (lr * clip_lr_mult); cosine annealing from each
//      group's lr to eta_min = lr * 1e-3 (one eta_min for all groups, as CosineAnnealingLR) over
//      epochs * n_samples / batch steps, stepped every iteration.
//   4. Each epoch: batches in order (no shuffle), loss = MSE(fp_out, q_out); backward on loss / loss.detach()
//      (the gradient of log MSE).
// Runs in the layer's dtype (fp32 for calibration; no autocast: a documented deviation from the original's
// fp16 autocast for Llama). TF32 is switched off for the run. Deterministic for a fixed seed on CPU.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "calib/flat_layer.h"

namespace fq::calib {

struct LayerCalibOptions {
  int epochs = 15;
  int64_t batch = 4;
  double lr = 5e-3;
  double clip_lr_mult = 10.0;
  double weight_decay = 0.01;
  double diag_alpha = 0.3;
  bool train_transforms = true;  // --cali_trans
  // Mixed precision of the training forward on CUDA (the original's autocast: fp16 for Llama, bf16 for
  // others); parameters, targets, the loss and the optimizer stay fp32. Ignored on the CPU.
  bool amp = false;
  torch::ScalarType amp_dtype = torch::kBFloat16;
  // Called after every training batch with the 0-based step and that batch's MSE (before the update).
  std::function<void(int64_t step, double mse)> on_step;
};

struct LayerCalibResult {
  double initial_loss = 0;  // mean MSE over all samples before training (train-mode forward, no grad)
  double final_loss = 0;    // the same after training
  std::vector<double> epoch_loss;  // mean training-batch MSE of each epoch
  int64_t steps = 0;
};

// inputs: [n_samples, n_tokens, n_embd] on the layer's device, in the layer's dtype or in fp16 / bf16 (then
// upcast batch by batch, and fp_out is stored in that dtype too). Returns the FP outputs of the layer (the next
// layer's inputs) in fp_out. Leaves the layer in Train mode with the trained parameters.
LayerCalibResult calibrate_layer(FlatLayer& layer, const torch::Tensor& inputs, torch::Tensor& fp_out,
                                 const LayerCalibOptions& opt);

// Mean MSE between the layer's current forward (its mode) and `target`, batch by batch, without gradients.
double layer_loss(FlatLayer& layer, const torch::Tensor& inputs, const torch::Tensor& target, int64_t batch);

// TF32 off for matmul and convolutions (a no-op on CPU builds).
void disable_tf32();

}  // namespace fq::calib
