#include "calib/transform_io.h"

#include <cstring>
#include <limits>
#include <vector>

#include "core/fs.h"
#include "flatquant/error.h"
#include "io/safetensors.h"
#include "io/torch_pickle.h"

namespace fq::calib {
namespace {

std::string shape_str(torch::IntArrayRef s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// One key of a flat_matrices.pth layer dict -> our parameter key within the layer ("" = ignored).
std::string map_original_key(const std::string& key, const std::string& source, int layer) {
  auto bad = [&]() -> std::string {
    fail("{}: layer {}: key '{}' is not a FlatQuant transform or clipping parameter", source, layer, key);
  };
  const auto dot = key.find('.');
  if (dot == std::string::npos) return bad();
  const std::string block = key.substr(0, dot);  // self_attn | mlp
  std::string rest = key.substr(dot + 1);
  if (block != "self_attn" && block != "mlp") return bad();
  const auto dot2 = rest.find('.');
  if (dot2 == std::string::npos) return bad();
  const std::string mod = rest.substr(0, dot2);
  const std::string leaf = rest.substr(dot2 + 1);
  // Transforms.
  if (mod == "ln_trans" || mod == "up_gate_trans" || mod == "down_trans") {
    if (leaf == "matrix_left") return mod + ".left.matrix";
    if (leaf == "matrix_right") return mod + ".right.matrix";
    if (leaf == "diag_scale") return mod + ".diag_scale";
    if (leaf == "matrix_left_inv" || leaf == "matrix_right_inv") return "";
    return bad();
  }
  if (mod == "o_trans" || mod == "vcache_trans" || mod == "kcache_trans") {
    if (leaf == "matrix") return mod + ".f.matrix";
    if (leaf == "matrix_inv_t") return "";
    return bad();
  }
  // KV quantizers.
  if (mod == "k_cache_quantizer" || mod == "v_cache_quantizer") {
    if (leaf == "clip_factor_a_max" || leaf == "clip_factor_a_min")
      return std::string(mod == "k_cache_quantizer" ? "k_quant." : "v_quant.") + leaf;
    return bad();
  }
  // Linears: q_proj ... down_proj.
  static const std::map<std::string, std::string> lin = {{"q_proj", "q"},   {"k_proj", "k"},       {"v_proj", "v"},
                                                         {"o_proj", "o"},   {"up_proj", "up"},     {"gate_proj", "gate"},
                                                         {"down_proj", "down"}};
  const auto it = lin.find(mod);
  if (it == lin.end()) return bad();
  if (leaf == "clip_factor_w_max" || leaf == "clip_factor_w_min") return "wq_" + it->second + "." + leaf;
  if (leaf == "act_quantizer.clip_factor_a_max" || leaf == "act_quantizer.clip_factor_a_min")
    return "aq_" + it->second + "." + leaf.substr(std::string("act_quantizer.").size());
  return bad();
}

TransformSet read_pth(const std::string& path) {
  TransformSet set;
  set.source = path;
  set.direct = true;
  // LibTorch 1.13's pickle_load cannot rebuild nn.Parameter; fq::load_torch_file reads the zip and the pickle
  // itself (docs/torch_pickle.md), the same on every LibTorch version.
  const TorchValue root = load_torch_file(path);
  FQ_CHECK(root.is(TorchValue::Kind::Dict), "{}: expected a dict {{layer index: {{name: tensor}}}}, found {}", path,
           root.kind_name());
  for (const auto& [key, value] : root.entries()) {
    int layer = -1;
    if (key.is(TorchValue::Kind::Int)) {
      if (key.as_int() >= 0 && key.as_int() <= std::numeric_limits<int>::max()) layer = static_cast<int>(key.as_int());
    } else {  // dict keys are int or str
      const std::string& s = key.as_string();
      if (!s.empty() && s.size() <= 9 && s.find_first_not_of("0123456789") == std::string::npos) layer = std::stoi(s);
    }
    FQ_CHECK(layer >= 0, "{}: top-level key is not a layer index", path);
    FQ_CHECK(value.is(TorchValue::Kind::Dict), "{}: layer {}: expected a dict of tensors, found {}", path, layer,
             value.kind_name());
    for (const auto& [name, tv] : value.entries()) {
      FQ_CHECK(name.is(TorchValue::Kind::String) && tv.is(TorchValue::Kind::Tensor),
               "{}: layer {}: expected name -> tensor entries", path, layer);
      const std::string ours = map_original_key(name.as_string(), path, layer);
      if (ours.empty()) continue;
      const TorchTensor& t = tv.as_tensor();
      FQ_CHECK(t.is_floating(), "{}: layer {}: tensor '{}' has integer dtype {}", path, layer, name.as_string(),
               dtype_name(t.dtype));
      torch::Tensor out = torch::empty(t.shape, torch::kFloat32);  // t.f32 is contiguous row-major over t.shape
      if (!t.f32.empty()) std::memcpy(out.data_ptr<float>(), t.f32.data(), t.f32.size() * sizeof(float));
      FQ_CHECK(set.tensors.emplace(public_name(layer, ours), std::move(out)).second,
               "{}: layer {}: tensor '{}' appears twice (the layer is under two keys)", path, layer, name.as_string());
    }
  }
  return set;
}

TransformSet read_safetensors(const std::string& path) {
  TransformSet set;
  set.source = path;
  const SafeTensors st(path);
  const auto& meta = st.metadata();
  const auto f = meta.find("format");
  FQ_CHECK(f != meta.end() && f->second == "flatquant-transforms",
           "{}: metadata 'format' is not 'flatquant-transforms' (not a transforms file)", path);
  for (const TensorInfo& t : st.tensors()) {
    std::vector<float> v = st.to_f32(t);
    set.tensors[t.name] = torch::from_blob(v.data(), t.shape, torch::kFloat32).clone();
    if (t.name.find(".matrix") != std::string::npos) set.direct = true;
  }
  return set;
}

}  // namespace

std::string public_name(int layer, const std::string& key) {
  const std::string mod = key.substr(0, key.find('.'));
  const bool mlp = mod == "up_gate_trans" || mod == "down_trans" || mod == "aq_up" || mod == "aq_gate" ||
                   mod == "aq_down" || mod == "wq_up" || mod == "wq_gate" || mod == "wq_down";
  return "model.layers." + std::to_string(layer) + (mlp ? ".mlp." : ".self_attn.") + key;
}

TransformSet read_transforms(const std::string& path) {
  FQ_CHECK(file_exists(path) && !is_directory(path), "{}: transforms file not found", path);
  if (ends_with(path, ".pth") || ends_with(path, ".pt")) return read_pth(path);
  return read_safetensors(path);
}

void load_layer_params(FlatLayerImpl& layer, int i, TransformSet& set) {
  torch::NoGradGuard ng;
  for (auto& p : layer.named_parameters(true)) {
    const std::string name = public_name(i, p.key());
    const auto it = set.tensors.find(name);
    FQ_CHECK(it != set.tensors.end(), "{}: missing tensor '{}' (the transforms were made for another recipe or model)",
             set.source, name);
    const torch::Tensor& src = it->second;
    // The original stores per-quantizer scalars as [1] and LWC logits as [out, 1]; accept any shape with the
    // same number of elements only for those, exact shapes elsewhere.
    const bool clip = p.key().find("clip_factor") != std::string::npos;
    FQ_CHECK(clip ? src.numel() == p.value().numel() : src.sizes() == p.value().sizes(),
             "{}: tensor '{}': expected shape {}, found {}", set.source, name, shape_str(p.value().sizes()), shape_str(src.sizes()));
    FQ_CHECK(torch::isfinite(src).all().item<bool>(), "{}: tensor '{}': contains NaN or Inf", set.source, name);
    p.value().copy_(src.reshape(p.value().sizes()).to(p.value().device(), p.value().scalar_type()));
    set.used.insert(name);
  }
}

void check_all_used(const TransformSet& set) {
  for (const auto& [name, t] : set.tensors)
    FQ_CHECK(set.used.count(name), "{}: tensor '{}' does not belong to this model and recipe", set.source, name);
}

}  // namespace fq::calib
