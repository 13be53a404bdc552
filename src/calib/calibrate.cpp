// run_calibrate: the model-level calibration loop with resume (see calibrate.h, docs/calibration.md).
//
// Resume design: <out>.partial/ holds options.json (the run's identity) and layer_NNN.safetensors, one per
// finished layer, each written atomically: the layer's trained parameters plus, as metadata, its losses and
// the per-step loss log. FP activations are NOT stored: layer i's inputs are the FP model's hidden states,
// independent of any trained parameter, so a resumed run recomputes them by FP passes through the finished
// layers (the same per-sample forward_fp calls as the uninterrupted run, hence bit-identical on the same
// machine and thread count). That costs one FP forward per finished layer, small against training.
//
// After the last layer: transforms.safetensors (every layer's parameters) is assembled in the partial
// directory, and the export pass rebuilds each layer from it, folds in fp64 (FlatLayer::merge), quantizes the
// weights (RTN, or GPTQ on the quantized model's own activations, layer after layer), and writes the artifact.
// The export is not checkpointed: it is deterministic, so an interrupted export simply runs again.
#include "calib/calibrate.h"

#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "calib/export.h"
#include "calib/flat_layer.h"
#include "calib/gptq.h"
#include "calib/layer_calib.h"
#include "calib/transform_io.h"
#include "core/fs.h"
#include "core/progress.h"
#include "flatquant/error.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "model/artifact.h"
#include "model/recipe.h"
#include "model/weights.h"
#include "ref/hadamard.h"

namespace fq::calib {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int kFormatVersion = 2;

enum class Method { FlatQuant, Rtn, Hadamard, SmoothQuant };

Method parse_method(const std::string& m) {
  if (m == "flatquant") return Method::FlatQuant;
  if (m == "rtn") return Method::Rtn;
  if (m == "hadamard") return Method::Hadamard;
  if (m == "smoothquant") return Method::SmoothQuant;
  fail("--method {}: expected flatquant, rtn, hadamard or smoothquant", m);
}

// The layer's quantization and transforms for a recipe and method. The baselines are the same layer with
// other transforms and no training: rtn (none), hadamard (fixed randomized Hadamard matrices, QuaRot-style),
// smoothquant (per-channel scales, alpha 0.5, identity rotations); none of them has learnable clipping.
LayerQuantConfig quant_config(const Recipe& r, Method m, bool direct, uint64_t seed, int layer) {
  LayerQuantConfig q;
  q.w_bits = r.w_bits;
  q.a_bits = r.a_bits;
  q.k_bits = r.k_bits;
  q.v_bits = r.v_bits;
  q.w_sym = r.w_sym;
  q.a_sym = r.a_sym;
  q.k_sym = r.k_sym;
  q.v_sym = r.v_sym;
  q.w_group = r.w_group;
  const bool fq = m == Method::FlatQuant;
  q.lwc = fq && r.lwc && r.w_bits < 16;
  q.lac = fq && r.lac;
  q.add_diag = (fq && r.add_diag) || m == Method::SmoothQuant;
  q.param = (direct || !fq || r.param == "direct") ? TransParam::Direct : TransParam::Svd;
  q.transforms = m != Method::Rtn && r.has_transforms();
  q.kcache_transform = (fq || m == Method::Hadamard) && r.has_kcache_transform();
  q.seed = mix_seed(seed, 1000 + static_cast<uint64_t>(layer));
  return q;
}

// Fixed matrices of the baselines, written into the Direct-form factors.
void init_baseline(FlatLayerImpl& layer, Method m, uint64_t layer_seed) {
  if (m != Method::Hadamard && m != Method::SmoothQuant) return;
  torch::NoGradGuard ng;
  uint64_t k = 0;
  auto set = [&](Factor& f) {
    const int64_t n = f->size();
    torch::Tensor t;
    if (m == Method::SmoothQuant) {
      t = torch::eye(n, torch::kFloat64);
    } else {
      const ref::Rotation h = ref::randomized_hadamard(n, mix_seed(layer_seed, 200 + k));
      t = torch::from_blob(const_cast<double*>(h.matrix.data()), {n, n}, torch::kFloat64).clone();
    }
    ++k;
    f->m.copy_(t.to(f->m.scalar_type()));
  };
  if (layer.ln_trans) {
    for (KronTransform* t : {&layer.ln_trans, &layer.up_gate_trans, &layer.down_trans}) {
      set((*t)->left);
      set((*t)->right);
    }
    set(layer.vcache_trans->f);
    set(layer.o_trans->f);
  }
  if (layer.kcache_trans) set(layer.kcache_trans->f);
}

std::string layer_file(const std::string& partial, int i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "layer_%03d.safetensors", i);
  return path_join(partial, buf);
}

std::string fmt_double(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

uint64_t file_size_or_zero(const std::string& path) {
  return path.empty() || !file_exists(path) ? 0 : static_cast<uint64_t>(fs::file_size(path));
}

// Identity of a run: what must match for a resume to continue it bit-identically.
json run_identity(const CalibrateOptions& o, const CalibSettings& s, const Recipe& r, const std::string& model_abs,
                  const std::string& data_abs, uint64_t data_bytes, int64_t seqlen) {
  return {{"model", model_abs},
          {"calib_data", data_abs},
          {"calib_data_bytes", data_bytes},
          {"device", o.device},
          {"method", o.method},
          {"recipe", r.to_json()},
          {"load_transforms", o.load_transforms.empty() ? "" : fs::absolute(o.load_transforms).lexically_normal().string()},
          {"load_transforms_bytes", file_size_or_zero(o.load_transforms)},
          {"calib.epochs", s.epochs},
          {"calib.nsamples", s.nsamples},
          {"calib.seqlen", seqlen},
          {"calib.bsz", s.bsz},
          {"calib.lr", s.lr},
          {"calib.amp", s.amp},
          {"seed", s.seed},
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
  for (int64_t i = 0; i < x.size(0); ++i)
    outs.push_back(layer->forward_fp(x.narrow(0, i, 1).to(torch::kFloat32), &stats).to(x.scalar_type()));
  return torch::cat(outs, 0);
}

// transforms.safetensors from the per-layer files (each layer's parameters, in layer order).
void assemble_transforms(const std::string& partial, int n_layer, const std::string& path) {
  SafeTensorsWriter tw;
  std::vector<std::unique_ptr<SafeTensors>> files;
  for (int i = 0; i < n_layer; ++i) {
    files.push_back(std::make_unique<SafeTensors>(layer_file(partial, i)));
    for (const TensorInfo& t : files.back()->tensors()) tw.add(t.name, t.dtype, t.shape, files.back()->data(t), t.nbytes());
  }
  tw.set_metadata("format", "flatquant-transforms");
  tw.set_metadata("format_version", std::to_string(kFormatVersion));
  tw.write(path);
}

// Eval-mode forward over all samples in batches (the quantized model's activations for GPTQ).
torch::Tensor eval_pass(FlatLayerImpl& layer, const torch::Tensor& x, int64_t bsz) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> outs;
  for (int64_t i = 0; i < x.size(0); i += bsz) outs.push_back(layer.forward(x.narrow(0, i, std::min(bsz, x.size(0) - i))));
  return torch::cat(outs, 0);
}

// Weight quantization of one merged layer: RTN, or GPTQ group by group as the original's sequential order
// [k, v, q] -> [o] -> [up, gate] -> [down], each group's Hessians from the layer's inputs with the earlier
// groups already quantized. Installs the quantized weights as the layer's Eval weights.
std::map<std::string, QuantizedWeight> quantize_layer(FlatLayerImpl& layer, const Recipe& r, const torch::Tensor& xq,
                                                      int64_t bsz) {
  std::map<std::string, QuantizedWeight> qw;
  if (r.w_bits >= 16) return qw;
  const auto dt = layer.merged().wq.scalar_type();
  if (r.weight_quantizer == "rtn") {
    for (const std::string& n : linear_names()) {
      qw[n] = rtn_quantize(layer.merged_weight64(n), r.w_bits);
      layer.set_eval_weight(n, dequantize(qw[n], dt));
    }
    return qw;
  }
  GptqOptions go;
  go.bits = r.w_bits;
  go.blocksize = r.gptq.blocksize;
  go.percdamp = r.gptq.percdamp;
  go.act_order = r.gptq.act_order;
  go.mse = r.gptq.mse;
  const std::vector<std::vector<std::string>> groups = {{"k", "v", "q"}, {"o"}, {"up", "gate"}, {"down"}};
  for (const auto& g : groups) {
    std::map<std::string, HessianAccumulator> acc;
    for (const std::string& n : g) acc.emplace(n, HessianAccumulator());
    layer.capture = [&](const std::string& name, const torch::Tensor& x) {
      const auto it = acc.find(name);
      if (it != acc.end()) it->second.add(x);
    };
    eval_pass(layer, xq, bsz);
    layer.capture = nullptr;
    for (const std::string& n : g) {
      GptqResult res = gptq_quantize(layer.merged_weight64(n), acc.at(n).hessian(), go);
      qw[n] = QuantizedWeight{res.codes, res.scales.to(torch::kFloat32)};
      layer.set_eval_weight(n, dequantize(qw[n], dt));
    }
  }
  return qw;
}

}  // namespace

int run_calibrate(const CalibrateOptions& o) {
  CalibSettings s;
  s.apply(o.sets);
  Recipe recipe = load_recipe(o.recipe);
  if (!o.weight_quantizer.empty()) {
    recipe.weight_quantizer = o.weight_quantizer;
    recipe.validate("--weight-quantizer " + o.weight_quantizer);
  }
  const Method method = parse_method(o.method);
  FQ_CHECK(o.load_transforms.empty() || method == Method::FlatQuant,
           "--load-transforms: only with --method flatquant (the baselines have no trained transforms)");
  FQ_CHECK(!o.out.empty(), "--out: missing artifact directory");
  if (is_directory(o.out) && !is_artifact_dir(o.out))
    fail("{}: exists and is not a flatquant artifact (no manifest.json); refusing to replace it", o.out);
  FQ_CHECK(is_directory(o.model) && file_exists(path_join(o.model, "config.json")),
           "{}: not an HF model directory (no config.json)", o.model);
  const bool train = o.load_transforms.empty();
  const bool gptq = recipe.weight_quantizer == "gptq" && recipe.w_bits < 16;
  const bool need_data = train || gptq;
  FQ_CHECK(!need_data || !o.calib_data.empty(), "--calib-data: required (calibration{})",
           train ? "" : " data for GPTQ's Hessians");
  if (!o.calib_data.empty())
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
  std::vector<int32_t> ids;
  uint64_t text_bytes = 0;
  if (need_data) {
    const std::string text = read_file(o.calib_data);
    text_bytes = text.size();
    FQ_CHECK(!text.empty(), "{}: empty calibration text (0 bytes)", o.calib_data);
    const auto tok = load_tokenizer(o.model);
    ids = sample_windows(tok->encode_with_bos(text), s.nsamples, seqlen, s.seed, o.calib_data);
    for (int32_t t : ids)
      FQ_CHECK(t >= 0 && t < cfg.n_vocab, "{}: token id {} outside the model vocabulary ({})", o.calib_data, t,
               cfg.n_vocab);
  }
  // Loaded transforms are read (and validated) before any work starts.
  std::unique_ptr<TransformSet> loaded;
  if (!train) loaded = std::make_unique<TransformSet>(read_transforms(o.load_transforms));

  const std::string out = fs::path(o.out).lexically_normal().string();
  const std::string partial = (fs::path(out).has_filename() ? out : out.substr(0, out.size() - 1)) + ".partial";
  const json id = run_identity(o, s, recipe, fs::absolute(o.model).lexically_normal().string(),
                               o.calib_data.empty() ? "" : fs::absolute(o.calib_data).lexically_normal().string(),
                               text_bytes, seqlen);
  open_partial(partial, id);

  const int n_layer = static_cast<int>(cfg.n_layer);
  std::vector<LayerRecord> recs(n_layer);
  const bool direct_train = method != Method::FlatQuant;
  if (train) {
    int done = 0;
    while (done < n_layer && file_exists(layer_file(partial, done))) {
      recs[done] = read_record(SafeTensors(layer_file(partial, done)));
      ++done;
    }
    if (o.progress && done > 0)
      std::fprintf(stderr, "calibrate: resuming %s after %d finished layer(s)\n", partial.c_str(), done);
    if (done < n_layer) {
      // With calib.amp on CUDA the activations are kept in the autocast dtype, as the original (half the memory).
      const bool amp = s.amp != "off" && dev.is_cuda();
      const auto io = !amp ? torch::kFloat32 : s.amp == "fp16" ? torch::kHalf : torch::kBFloat16;
      torch::Tensor x = embed(w, ids, s.nsamples, seqlen).to(dev, io);
      for (int i = 0; i < done; ++i) x = fp_pass(cfg, w.layers[i], x, dev);

      LayerCalibOptions lo;
      lo.epochs = method == Method::FlatQuant ? s.epochs : 0;
      lo.batch = s.bsz;
      lo.lr = s.lr;
      lo.diag_alpha = method == Method::SmoothQuant ? 0.5 : recipe.diag_alpha;
      lo.train_transforms = recipe.train_transforms;
      lo.amp = s.amp != "off";
      lo.amp_dtype = s.amp == "fp16" ? torch::kHalf : torch::kBFloat16;
      Progress bar("calibrate", n_layer, o.progress);
      bar.update(done);
      int ran = 0;
      for (int i = done; i < n_layer; ++i) {
        if (o.stop_after_layers >= 0 && ran >= o.stop_after_layers) {
          if (o.progress) std::fprintf(stderr, "calibrate: stopped after %d layer(s) as asked\n", ran);
          return 0;
        }
        const auto t0 = std::chrono::steady_clock::now();
        const LayerQuantConfig q = quant_config(recipe, method, direct_train, s.seed, i);
        FlatLayer layer(cfg, w.layers[i], q);
        init_baseline(*layer, method, q.seed);
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
    }
  }

  // ---- export ----
  const std::string tpath = path_join(partial, "transforms.safetensors");
  const std::string lpath = path_join(partial, "calib_log.csv");
  json layers = json::array();
  if (train) {
    assemble_transforms(partial, n_layer, tpath);
    std::string csv = "layer,step,loss\n";
    for (int i = 0; i < n_layer; ++i) {
      csv += recs[i].log;
      layers.push_back({{"layer", i}, {"initial_loss", recs[i].initial}, {"final_loss", recs[i].final_},
                        {"seconds", recs[i].seconds}});
    }
    write_file_atomic(lpath, csv);
    loaded = std::make_unique<TransformSet>(read_transforms(tpath));
  }
  TransformSet& set = *loaded;
  const auto t_export = std::chrono::steady_clock::now();
  Artifact art;
  art.cfg = cfg;
  art.recipe = recipe;
  art.method = o.method;
  art.tok_embd = w.tok_embd;
  art.norm = w.norm;
  art.lm_head = w.lm_head;
  torch::Tensor xq;
  if (gptq) xq = embed(w, ids, s.nsamples, seqlen).to(dev);
  Progress bar("export", n_layer, o.progress);
  for (int i = 0; i < n_layer; ++i) {
    const LayerQuantConfig q = quant_config(recipe, method, direct_train || set.direct, s.seed, i);
    FlatLayer layer(cfg, w.layers[i], q);
    load_layer_params(*layer, i, set);
    layer->to(dev);
    layer->merge(/*quantize_weights=*/false);
    layer->set_mode(LayerMode::Eval);
    const auto qw = quantize_layer(*layer, recipe, xq, s.bsz);
    art.layers.push_back(export_layer(*layer, qw, recipe));
    if (gptq && i + 1 < n_layer) xq = eval_pass(*layer, xq, s.bsz);
    bar.update(i + 1);
  }
  bar.finish();
  check_all_used(set);
  const double export_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_export).count();
  art.info = {{"calibration", id}, {"layers", layers}, {"weight_quantizer", recipe.weight_quantizer},
              {"export_seconds", export_s}};
  std::vector<std::pair<std::string, std::string>> extra;
  if (train) {
    extra = {{"transforms.safetensors", tpath}, {"calib_log.csv", lpath}};
  } else {
    art.info["transforms_from"] = fs::absolute(o.load_transforms).lexically_normal().string();
  }
  if (!o.save_transforms.empty()) {
    FQ_CHECK(train, "--save-transforms: nothing was trained (--load-transforms given)");
    write_file_atomic(o.save_transforms, read_file(tpath));
  }
  write_artifact(art, out, o.model, extra);
  // Renamed away first, so that a kill during the removal never leaves a half-deleted <out>.partial (no
  // options.json) for the next run to trip over.
  const std::string gone = partial + ".old." + std::to_string(::getpid());
  std::error_code ec;
  fs::rename(partial, gone, ec);
  remove_tree(ec ? partial : gone);
  if (o.progress) std::fprintf(stderr, "calibrate: wrote %s\n", out.c_str());
  return 0;
}

std::vector<float> torch_fake_quant_logits(const std::string& art_dir, const std::vector<int32_t>& tokens) {
  torch::NoGradGuard ng;
  const Artifact art = load_artifact(art_dir);
  const json man = json::parse(read_file(path_join(art_dir, "manifest.json")));
  FQ_CHECK(man.contains("calibration"), "{}/manifest.json: no 'calibration' record", art_dir);
  const json& id = man.at("calibration");
  const ModelWeights w = load_hf_weights(id.at("model").get<std::string>());
  const ModelConfig& cfg = w.cfg;
  const Method method = parse_method(id.at("method").get<std::string>());
  TransformSet set = read_transforms(path_join(art_dir, "transforms.safetensors"));
  const int64_t T = static_cast<int64_t>(tokens.size());
  torch::Tensor x = embed(w, tokens, 1, T);
  for (int i = 0; i < static_cast<int>(cfg.n_layer); ++i) {
    const LayerQuantConfig q = quant_config(art.recipe, method, method != Method::FlatQuant || set.direct,
                                            id.at("seed").get<uint64_t>(), i);
    FlatLayer layer(cfg, w.layers[i], q);
    load_layer_params(*layer, i, set);
    layer->merge(/*quantize_weights=*/false);
    layer->set_mode(LayerMode::Eval);
    const ArtifactLayer& al = art.layers[static_cast<size_t>(i)];
    const std::map<std::string, const QLinear*> lins = {{"q", &al.q},   {"k", &al.k},       {"v", &al.v},     {"o", &al.o},
                                                        {"up", &al.up}, {"gate", &al.gate}, {"down", &al.down}};
    if (art.recipe.w_bits < 16)
      for (const auto& [name, l] : lins) {
        std::vector<float> d = l->dequantize();
        layer->set_eval_weight(name, torch::from_blob(d.data(), {l->out, l->in}, torch::kFloat32).clone());
      }
    x = layer->forward(x);
  }
  auto nw = torch::from_blob(const_cast<float*>(w.norm.data()), {cfg.n_embd}, torch::kFloat32);
  x = x * torch::rsqrt(x.pow(2).mean(-1, true) + cfg.rms_eps) * nw;
  const std::vector<float>& head = w.head();
  auto hw = torch::from_blob(const_cast<float*>(head.data()), {cfg.n_vocab, cfg.n_embd}, torch::kFloat32);
  auto logits = torch::matmul(x[0], hw.t()).contiguous();
  return std::vector<float>(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
}

}  // namespace fq::calib
