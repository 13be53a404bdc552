#include "calib/layer_calib.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <cmath>
#include <memory>

#include "flatquant/error.h"

namespace fq::calib {

void disable_tf32() {
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
}

namespace {

// CUDA autocast for the training forward, as the original's torch.amp.autocast (fp16 for Llama, bf16
// otherwise). The C++ API was renamed in PyTorch 2.4; both spellings are handled here.
class AutocastScope {
 public:
  explicit AutocastScope(torch::ScalarType dtype, bool enabled) : enabled_(enabled) {
    if (!enabled_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_dtype(at::kCUDA, dtype);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
#else
    at::autocast::set_autocast_gpu_dtype(dtype);
    at::autocast::set_enabled(true);
#endif
  }
  ~AutocastScope() {
    if (!enabled_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(at::kCUDA, false);
#else
    at::autocast::set_enabled(false);
#endif
    at::autocast::clear_cache();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
};

// Activations may be stored in fp16 / bf16 to halve their memory (calib.amp, as the original keeps its
// inputs and targets in the autocast dtype); the layer computes in its own dtype.
torch::Tensor upcast(const torch::Tensor& t) {
  return t.scalar_type() == torch::kHalf || t.scalar_type() == torch::kBFloat16 ? t.to(torch::kFloat32) : t;
}

}  // namespace

double layer_loss(FlatLayer& layer, const torch::Tensor& inputs, const torch::Tensor& target, int64_t batch) {
  torch::NoGradGuard ng;
  const int64_t n = inputs.size(0);
  double sum = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < n; i += batch) {
    const int64_t b = std::min(batch, n - i);
    auto out = layer->forward(upcast(inputs.narrow(0, i, b)));
    auto t = upcast(target.narrow(0, i, b));
    sum += torch::mse_loss(out.to(t.scalar_type()), t).item<double>() * static_cast<double>(b);
    count += b;
  }
  return sum / static_cast<double>(count);
}

LayerCalibResult calibrate_layer(FlatLayer& layer, const torch::Tensor& inputs, torch::Tensor& fp_out,
                                 const LayerCalibOptions& opt) {
  FQ_CHECK(inputs.dim() == 3, "calibrate_layer: inputs must be [n_samples, n_tokens, n_embd], got {} dims",
           inputs.dim());
  FQ_CHECK(opt.epochs >= 0 && opt.batch >= 1, "calibrate_layer: epochs {} / batch {} out of range", opt.epochs,
           opt.batch);
  const int64_t n = inputs.size(0);
  FQ_CHECK(n % opt.batch == 0, "calibrate_layer: {} samples is not a multiple of the batch size {}", n, opt.batch);
  disable_tf32();

  // 1. FP targets and statistics, one sample at a time as the original.
  ActStats stats;
  {
    torch::NoGradGuard ng;
    layer->set_mode(LayerMode::Fp);
    std::vector<torch::Tensor> outs;
    for (int64_t i = 0; i < n; ++i)
      outs.push_back(layer->forward_fp(upcast(inputs.narrow(0, i, 1)), &stats).to(inputs.scalar_type()));
    fp_out = torch::cat(outs, 0);
    outs.clear();
  }
  // 2. Diag init.
  layer->init_diag_scales(stats, opt.diag_alpha);
  layer->set_mode(LayerMode::Train);

  LayerCalibResult res;
  res.initial_loss = layer_loss(layer, inputs, fp_out, opt.batch);

  // 3. Optimizer groups.
  std::vector<torch::optim::OptimizerParamGroup> groups;
  std::vector<double> base_lr;
  auto add = [&](std::vector<torch::Tensor> ps, double lr) {
    if (ps.empty()) return;
    auto o = std::make_unique<torch::optim::AdamWOptions>(lr);
    o->weight_decay(opt.weight_decay);
    groups.emplace_back(std::move(ps), std::move(o));
    base_lr.push_back(lr);
  };
  if (opt.train_transforms) {
    add(layer->transform_params(), opt.lr);
  } else {
    for (auto& p : layer->transform_params()) p.set_requires_grad(false);
  }
  add(layer->diag_params(), opt.lr);
  add(layer->clip_params(), opt.lr * opt.clip_lr_mult);
  const int64_t steps_per_epoch = n / opt.batch;
  const int64_t total = static_cast<int64_t>(opt.epochs) * steps_per_epoch;
  if (groups.empty() || total == 0) {
    res.final_loss = res.initial_loss;
    return res;
  }
  torch::optim::AdamW adam(std::move(groups), torch::optim::AdamWOptions(opt.lr).weight_decay(opt.weight_decay));
  const double eta_min = opt.lr * 1e-3;

  // 4. Epochs.
  int64_t step = 0;
  for (int e = 0; e < opt.epochs; ++e) {
    double sum = 0;
    for (int64_t j = 0; j < steps_per_epoch; ++j, ++step) {
      // Cosine annealing (closed form of CosineAnnealingLR) at this step.
      const double c = 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(step) / static_cast<double>(total)));
      for (size_t gi = 0; gi < adam.param_groups().size(); ++gi)
        static_cast<torch::optim::AdamWOptions&>(adam.param_groups()[gi].options()).lr(eta_min + (base_lr[gi] - eta_min) * c);
      torch::Tensor out;
      {
        AutocastScope amp(opt.amp_dtype, opt.amp && inputs.is_cuda());
        out = layer->forward(upcast(inputs.narrow(0, j * opt.batch, opt.batch)));
      }
      auto target = upcast(fp_out.narrow(0, j * opt.batch, opt.batch));
      auto mse = torch::mse_loss(out.to(target.scalar_type()), target);
      const double v = mse.item<double>();
      sum += v;
      if (opt.on_step) opt.on_step(step, v);
      if (!(v > 0)) continue;  // exact (or NaN) output: no gradient step; loss / loss.detach() would be 0/0
      auto loss = mse / mse.detach();
      adam.zero_grad();
      loss.backward();
      adam.step();
    }
    res.epoch_loss.push_back(sum / static_cast<double>(steps_per_epoch));
  }
  res.steps = step;
  res.final_loss = layer_loss(layer, inputs, fp_out, opt.batch);
  return res;
}

}  // namespace fq::calib
