// Calibration cost of one decoder layer (issue 3, "seconds per layer and peak GPU memory"): a random-weight
// layer of a given shape (default Llama-3-8B: hidden 4096, 32/8 heads, head_dim 128, ff 14336) trained with
// FlatQuant's full W4A4KV4 schedule on random inputs, exactly the loop `flatquant calibrate` runs per layer
// (FP pass + diag init + AdamW/cosine over epochs * nsamples / bsz steps). Prints one JSON object.
//
//   bench_calib_layer [--device cuda] [--nsamples 128] [--seqlen 2048] [--epochs 15] [--bsz 4]
//                     [--amp off|fp16|bf16] [--hidden 4096 --heads 32 --kv-heads 8 --ff 14336]
// Peak GPU memory is measured by the caller (scripts/device/calib_bench.sh polls nvidia-smi), so this
// program needs no CUDA header.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "calib/flat_layer.h"
#include "calib/layer_calib.h"
#include "flatquant/error.h"
#include "model/config.h"
#include "model/weights.h"

namespace {

std::vector<float> randn(size_t n, double std, std::mt19937_64& rng) {
  std::normal_distribution<float> d(0.0f, static_cast<float>(std));
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace fq;
  std::string device = "cuda", amp = "off";
  int64_t nsamples = 128, seqlen = 2048, bsz = 4, hidden = 4096, heads = 32, kv_heads = 8, ff = 14336;
  int epochs = 15;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--device") device = v;
    else if (k == "--amp") amp = v;
    else if (k == "--nsamples") nsamples = std::atoll(v.c_str());
    else if (k == "--seqlen") seqlen = std::atoll(v.c_str());
    else if (k == "--epochs") epochs = std::atoi(v.c_str());
    else if (k == "--bsz") bsz = std::atoll(v.c_str());
    else if (k == "--hidden") hidden = std::atoll(v.c_str());
    else if (k == "--heads") heads = std::atoll(v.c_str());
    else if (k == "--kv-heads") kv_heads = std::atoll(v.c_str());
    else if (k == "--ff") ff = std::atoll(v.c_str());
    else {
      std::fprintf(stderr, "bench_calib_layer: unknown option %s\n", k.c_str());
      return 1;
    }
  }
  try {
    ModelConfig cfg;
    cfg.architecture = "LlamaForCausalLM";
    cfg.model_type = "llama";
    cfg.n_embd = hidden;
    cfg.n_head = heads;
    cfg.n_head_kv = kv_heads;
    cfg.head_dim = hidden / heads;
    cfg.n_ff = ff;
    cfg.n_layer = 1;
    cfg.n_ctx = 8192;
    cfg.rope_theta = 500000.0;
    std::mt19937_64 rng(0);
    const int64_t qd = heads * cfg.head_dim, kvd = kv_heads * cfg.head_dim;
    LayerWeights w;
    w.attn_norm.assign(static_cast<size_t>(hidden), 1.0f);
    w.ffn_norm.assign(static_cast<size_t>(hidden), 1.0f);
    w.wq = randn(static_cast<size_t>(qd * hidden), 0.02, rng);
    w.wk = randn(static_cast<size_t>(kvd * hidden), 0.02, rng);
    w.wv = randn(static_cast<size_t>(kvd * hidden), 0.02, rng);
    w.wo = randn(static_cast<size_t>(hidden * qd), 0.02, rng);
    w.w_gate = randn(static_cast<size_t>(ff * hidden), 0.02, rng);
    w.w_up = randn(static_cast<size_t>(ff * hidden), 0.02, rng);
    w.w_down = randn(static_cast<size_t>(hidden * ff), 0.02, rng);

    const torch::Device dev(device == "cuda" ? torch::kCUDA : torch::kCPU);
    calib::LayerQuantConfig q;  // W4A4KV4 defaults: LWC, LAC, diag, SVD parametrization
    q.seed = 1;
    calib::FlatLayer layer(cfg, w, q);
    layer->to(dev);
    w = LayerWeights();  // the layer holds its own copy
    torch::manual_seed(0);
    // Residual-stream-like inputs with a few outlier channels, as real hidden states have.
    auto x = torch::randn({nsamples, seqlen, hidden}, torch::TensorOptions().device(dev));
    x.narrow(2, 0, 8).mul_(20.0);
    // With AMP the activations are stored in the autocast dtype, as `flatquant calibrate` does.
    if (amp == "fp16") x = x.to(torch::kHalf);
    if (amp == "bf16") x = x.to(torch::kBFloat16);

    calib::LayerCalibOptions lo;
    lo.epochs = epochs;
    lo.batch = bsz;
    lo.amp = amp != "off";
    lo.amp_dtype = amp == "fp16" ? torch::kHalf : torch::kBFloat16;
    int64_t steps = 0;
    double first_step_s = 0;
    auto t0 = std::chrono::steady_clock::now();
    lo.on_step = [&](int64_t step, double) {
      steps = step + 1;
      if (step == 0)
        first_step_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    torch::Tensor fp_out;
    const auto res = calib::calibrate_layer(layer, x, fp_out, lo);
    const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf(
        "{\"bench\": \"calib_layer\", \"device\": \"%s\", \"amp\": \"%s\", \"hidden\": %lld, \"heads\": %lld, "
        "\"kv_heads\": %lld, \"ff\": %lld, \"nsamples\": %lld, \"seqlen\": %lld, \"epochs\": %d, \"bsz\": %lld, "
        "\"steps\": %lld, \"seconds_per_layer\": %.2f, \"seconds_until_first_step\": %.2f, "
        "\"initial_loss\": %.6g, \"final_loss\": %.6g}\n",
        device.c_str(), amp.c_str(), static_cast<long long>(hidden), static_cast<long long>(heads),
        static_cast<long long>(kv_heads), static_cast<long long>(ff), static_cast<long long>(nsamples),
        static_cast<long long>(seqlen), epochs, static_cast<long long>(bsz), static_cast<long long>(steps), total,
        first_step_s, res.initial_loss, res.final_loss);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_calib_layer: error: %s\n", e.what());
    return 1;
  }
}
