// run_calibrate: the model-level calibration loop with resume (see calibrate.h, docs/calibration.md).
//
// Resume design: <out>.partial/ holds options.json (the run's identity) and layer_NNN.safetensors, one per
// finished layer, each written atomically: the layer's trained parameters plus, as metadata, its losses and
// the per-step loss log. FP activations are NOT stored: layer i's inputs are the FP model's hidden states,
// independent of any trained parameter, so a resumed run recomputes them by FP passes through the finished
// layers (the same per-sample forward_fp calls as the uninterrupted run, hence bit-identical on the same
// machine and thread count). That costs one FP forward per finished layer, small against training.
#include "calib/calibrate.h"

#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "calib/flat_layer.h"
#include "calib/layer_calib.h"
#include "core/fs.h"
#include "core/progress.h"
#include "flatquant/error.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "model/weights.h"

namespace fq::calib {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int kFormatVersion = 1;

// The quantization the transforms are trained for. Recipes (w4a16, w8a8, ...) are the next stage; until
// then every run is W4A4KV4 as the paper's main setting.
LayerQuantConfig quant_config(uint64_t seed, int layer) {
  LayerQuantConfig q;
  q.seed = mix_seed(seed, 1000 + static_cast<uint64_t>(layer));
  q.set_transforms_auto();
  return q;
}

json quant_json(const LayerQuantConfig& q) {
  return {{"w_bits", q.w_bits}, {"a_bits", q.a_bits}, {"k_bits", q.k_bits}, {"v_bits", q.v_bits},
          {"w_sym", q.w_sym},   {"a_sym", q.a_sym},   {"k_sym", q.k_sym},   {"v_sym", q.v_sym},
          {"w_group", q.w_group}, {"lwc", q.lwc}, {"lac", q.lac}, {"add_diag", q.add_diag},
          {"param", q.param == TransParam::Svd ? "svd" : "direct"}};
}

std::string layer_file(const std::string& partial, int i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "layer_%03d.safetensors", i);
  return path_join(partial, buf);
}

// "ln_trans.left.u_raw" -> "model.layers.3.self_attn.ln_trans.left.u_raw"; MLP-side modules under mlp.
std::string public_name(int layer, const std::string& key) {
  const std::string mod = key.substr(0, key.find('.'));
  const bool mlp = mod == "up_gate_trans" || mod == "down_trans" || mod == "aq_up" || mod == "aq_gate" ||
                   mod == "aq_down" || mod == "wq_up" || mod == "wq_gate" || mod == "wq_down";
  return "model.layers." + std::to_string(layer) + (mlp ? ".mlp." : ".self_attn.") + key;
}

std::string fmt_double(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

// Identity of a run: what must match for a resume to continue it bit-identically.
json run_identity(const CalibrateOptions& o, const CalibSettings& s, const std::string& model_abs,
                  const std::string& data_abs, uint64_t data_bytes, int64_t seqlen) {
  return {{"model", model_abs},
          {"calib_data", data_abs},
          {"calib_data_bytes", data_bytes},
          {"device", o.device},
          {"calib.epochs", s.epochs},
          {"calib.nsamples", s.nsamples},
          {"calib.seqlen", seqlen},
          {"calib.bsz", s.bsz},
          {"calib.lr", s.lr},
          {"seed", s.seed},
          {"quant", quant_json(quant_config(s.seed, 0))},
          {"format_version", kFormatVersion}};
}

// Creates <partial>/options.json, or checks that the stored one equals `id` (one-line error per key).
void open_partial(const std::string& partial, const json& id) {
  const std::string path = path_join(partial, "options.json");
  if (!is_directory(partial)) {
    // Created whole (with its options.json) or not at all: a kill in between would otherwise leave a
    // directory that the next run refuses as "not a calibration in progress".
    AtomicDir d(partial, /*replace_existing=*/false);
    write_file_atomic(d.file("options.json"), id.dump(2) + "\n");
    d.commit();
    return;
  }
  if (!file_exists(path)) fail("{}: missing; {} is not a calibration in progress (delete it)", path, partial);
  json old;
  try {
    old = json::parse(read_file(path));
  } catch (const json::exception& e) {
    fail("{}: invalid JSON ({}); delete {} to start over", path, e.what(), partial);
  }
  for (auto it = id.begin(); it != id.end(); ++it) {
    const auto f = old.find(it.key());
    if (f == old.end() || *f != it.value())
      fail("{}: option '{}' was {} in the interrupted run but is {} now; rerun with the same options or delete {}",
           path, it.key(), f == old.end() ? std::string("missing") : f->dump(), it.value().dump(), partial);
  }
}

struct LayerRecord {
  double initial = 0, final_ = 0, seconds = 0;
  std::string log;  // CSV rows "layer,step,loss\n"
};

void save_layer(const std::string& path, int i, FlatLayer& layer, const LayerRecord& r) {
  SafeTensorsWriter w;
  for (const auto& p : layer->named_parameters(true)) {
    const torch::Tensor t = p.value().detach().to(torch::kCPU, torch::kFloat32).contiguous();
    w.add_f32(public_name(i, p.key()), std::vector<int64_t>(t.sizes().begin(), t.sizes().end()),
              t.data_ptr<float>());
  }
  w.set_metadata("layer", std::to_string(i));
  w.set_metadata("initial_loss", fmt_double(r.initial));
  w.set_metadata("final_loss", fmt_double(r.final_));
  w.set_metadata("seconds", fmt_double(r.seconds));
  w.set_metadata("log", r.log);
  w.write(path);
}

LayerRecord read_record(const SafeTensors& st) {
  LayerRecord r;
  const auto& m = st.metadata();
  auto get = [&](const char* k) -> const std::string& {
    const auto it = m.find(k);
    if (it == m.end()) fail("{}: metadata '{}' missing (not a calibration layer file)", st.path(), k);
    return it->second;
  };
  try {
    r.initial = std::stod(get("initial_loss"));
    r.final_ = std::stod(get("final_loss"));
    r.seconds = std::stod(get("seconds"));
  } catch (const std::logic_error&) {
    fail("{}: metadata losses are not numbers", st.path());
  }
  r.log = get("log");
  return r;
}

// Layer 0's inputs: the token embeddings of the windows, [nsamples, seqlen, n_embd] fp32.
torch::Tensor embed(const ModelWeights& w, const std::vector<int32_t>& ids, int64_t nsamples, int64_t seqlen) {
  const int64_t E = w.cfg.n_embd;
  auto emb = torch::from_blob(const_cast<float*>(w.tok_embd.data()), {w.cfg.n_vocab, E}, torch::kFloat32);
  auto idx = torch::from_blob(const_cast<int32_t*>(ids.data()), {nsamples * seqlen}, torch::kInt32).to(torch::kLong);
  return emb.index_select(0, idx).reshape({nsamples, seqlen, E}).clone();
}

// FP outputs of a layer, one sample at a time exactly as calibrate_layer computes its targets.
torch::Tensor fp_pass(const ModelConfig& cfg, const LayerWeights& lw, const torch::Tensor& x,
                      const torch::Device& dev) {
  LayerQuantConfig q;
  q.transforms = q.kcache_transform = false;  // the FP forward never touches them
  FlatLayer layer(cfg, lw, q);
  layer->to(dev);
  layer->set_mode(LayerMode::Fp);
  torch::NoGradGuard ng;
  ActStats stats;
  std::vector<torch::Tensor> outs;
  for (int64_t i = 0; i < x.size(0); ++i) outs.push_back(layer->forward_fp(x.narrow(0, i, 1), &stats));
  return torch::cat(outs, 0);
}

void write_artifact(const std::string& out, const std::string& partial, int n_layer, const json& id,
                    const ModelConfig& cfg, const std::vector<LayerRecord>& recs) {
  if (is_directory(out) && !file_exists(path_join(out, "manifest.json")))
    fail("{}: exists and is not a flatquant artifact (no manifest.json); refusing to replace it", out);
  SafeTensorsWriter tw;
  std::string csv = "layer,step,loss\n";
  json layers = json::array();
  for (int i = 0; i < n_layer; ++i) {
    const SafeTensors st(layer_file(partial, i));
    for (const TensorInfo& t : st.tensors()) tw.add(t.name, t.dtype, t.shape, st.data(t), t.nbytes());
    csv += recs[i].log;
    layers.push_back({{"layer", i}, {"initial_loss", recs[i].initial}, {"final_loss", recs[i].final_},
                      {"seconds", recs[i].seconds}});
  }
  tw.set_metadata("format", "flatquant-transforms");
  tw.set_metadata("format_version", std::to_string(kFormatVersion));
  json man = {{"format", "flatquant-calibration"},
              {"format_version", kFormatVersion},
              {"stage", "transforms-only"},
              {"options", id},
              {"model_config", cfg.to_json()},
              {"layers", layers},
              {"files", {"transforms.safetensors", "calib_log.csv"}}};
  AtomicDir dir(out, /*replace_existing=*/true);
  tw.write(dir.file("transforms.safetensors"));
  write_file_atomic(dir.file("calib_log.csv"), csv);
  write_file_atomic(dir.file("manifest.json"), man.dump(2) + "\n");
  dir.commit();
}

}  // namespace

int run_calibrate(const CalibrateOptions& o) {
  CalibSettings s;
  s.apply(o.sets);
  FQ_CHECK(!o.out.empty(), "--out: missing artifact directory");
  if (is_directory(o.out) && !file_exists(path_join(o.out, "manifest.json")))
    fail("{}: exists and is not a flatquant artifact (no manifest.json); refusing to replace it", o.out);
  FQ_CHECK(is_directory(o.model) && file_exists(path_join(o.model, "config.json")),
           "{}: not an HF model directory (no config.json)", o.model);
  FQ_CHECK(file_exists(o.calib_data) && !is_directory(o.calib_data), "{}: calibration text file not found",
           o.calib_data);
  FQ_CHECK(o.device == "cpu" || o.device == "cuda", "--device {}: expected cpu or cuda", o.device);
  if (o.device == "cuda" && !torch::cuda::is_available())
    fail("--device cuda: no CUDA device available to this LibTorch build");
  const torch::Device dev(o.device == "cuda" ? torch::kCUDA : torch::kCPU);
  if (o.threads > 0) torch::set_num_threads(o.threads);
  disable_tf32();

  const ModelWeights w = load_hf_weights(o.model);
  const ModelConfig& cfg = w.cfg;
  const int64_t seqlen = cfg.n_ctx > 0 ? std::min(s.seqlen, cfg.n_ctx) : s.seqlen;
  const std::string text = read_file(o.calib_data);
  FQ_CHECK(!text.empty(), "{}: empty calibration text (0 bytes)", o.calib_data);
  const auto tok = load_tokenizer(o.model);
  const std::vector<int32_t> ids = sample_windows(tok->encode_with_bos(text), s.nsamples, seqlen, s.seed, o.calib_data);
  for (int32_t t : ids)
    FQ_CHECK(t >= 0 && t < cfg.n_vocab, "{}: token id {} outside the model vocabulary ({})", o.calib_data, t,
             cfg.n_vocab);

  const std::string out = fs::path(o.out).lexically_normal().string();
  const std::string partial = (fs::path(out).has_filename() ? out : out.substr(0, out.size() - 1)) + ".partial";
  const json id = run_identity(o, s, fs::absolute(o.model).lexically_normal().string(),
                               fs::absolute(o.calib_data).lexically_normal().string(), text.size(), seqlen);
  open_partial(partial, id);

  const int n_layer = static_cast<int>(cfg.n_layer);
  std::vector<LayerRecord> recs(n_layer);
  int done = 0;
  while (done < n_layer && file_exists(layer_file(partial, done))) {
    recs[done] = read_record(SafeTensors(layer_file(partial, done)));
    ++done;
  }
  if (o.progress && done > 0)
    std::fprintf(stderr, "calibrate: resuming %s after %d finished layer(s)\n", partial.c_str(), done);

  torch::Tensor x = embed(w, ids, s.nsamples, seqlen).to(dev);
  for (int i = 0; i < done; ++i) x = fp_pass(cfg, w.layers[i], x, dev);

  LayerCalibOptions lo;
  lo.epochs = s.epochs;
  lo.batch = s.bsz;
  lo.lr = s.lr;
  Progress bar("calibrate", n_layer, o.progress);
  bar.update(done);
  int ran = 0;
  for (int i = done; i < n_layer; ++i) {
    if (o.stop_after_layers >= 0 && ran >= o.stop_after_layers) {
      if (o.progress) std::fprintf(stderr, "calibrate: stopped after %d layer(s) as asked\n", ran);
      return 0;
    }
    const auto t0 = std::chrono::steady_clock::now();
    FlatLayer layer(cfg, w.layers[i], quant_config(s.seed, i));
    layer->to(dev);
    LayerRecord& r = recs[i];
    r.log.clear();
    lo.on_step = [&r, i](int64_t step, double mse) {
      r.log += std::to_string(i) + "," + std::to_string(step) + "," + fmt_double(mse) + "\n";
    };
    torch::Tensor fp_out;
    const LayerCalibResult res = calibrate_layer(layer, x, fp_out, lo);
    r.initial = res.initial_loss;
    r.final_ = res.final_loss;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    save_layer(layer_file(partial, i), i, layer, r);
    x = fp_out;
    ++ran;
    if (o.progress)
      std::fprintf(stderr, "\rlayer %d/%d: loss %.6g -> %.6g  (%.1f s)\n", i + 1, n_layer, r.initial, r.final_,
                   r.seconds);
    bar.update(i + 1);
  }
  bar.finish();
  write_artifact(out, partial, n_layer, id, cfg, recs);
  // Renamed away first, so that a kill during the removal never leaves a half-deleted <out>.partial (no
  // options.json) for the next run to trip over; a leftover <out>.partial.old.<pid> is removed by the next
  // AtomicDir of <out>.partial.
  const std::string gone = partial + ".old." + std::to_string(::getpid());
  std::error_code ec;
  fs::rename(partial, gone, ec);
  remove_tree(ec ? partial : gone);
  if (o.progress) std::fprintf(stderr, "calibrate: wrote %s\n", out.c_str());
  return 0;
}

}  // namespace fq::calib
