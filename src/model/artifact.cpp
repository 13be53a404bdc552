#include "model/artifact.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <tuple>

#include "core/fs.h"
#include "core/json_guard.h"
#include "core/sha256.h"
#include "flatquant/error.h"
#include "io/safetensors.h"
#include "ref/quant.h"

namespace fq {

using json = nlohmann::json;

namespace {

constexpr const char* kFormatName = "flatquant-artifact";
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kConfigFile = "config.json";
constexpr const char* kManifestFile = "manifest.json";

// Copied from the source model directory when present (what load_tokenizer, the chat template and
// collect_eos_ids read).
const char* const kTokenizerFiles[] = {"tokenizer.json",         "tokenizer.model",
                                       "tokenizer_config.json",  "special_tokens_map.json",
                                       "generation_config.json", "tokenizer.bin"};

// Manifest keys the writer owns; Artifact::info may not use them.
const std::set<std::string>& reserved_keys() {
  static const std::set<std::string> k = {"format", "format_version", "writer", "recipe",
                                          "method", "model_config",   "files",  "tokenizer_files"};
  return k;
}

const char* const kLinearNames[] = {"q", "k", "v", "o", "gate", "up", "down"};

std::string linear_prefix(int il, const char* lin) {
  const bool attn = lin[0] == 'q' || lin[0] == 'k' || lin[0] == 'v' || lin[0] == 'o';
  return fmt::format("model.layers.{}.{}.{}_proj", il, attn ? "self_attn" : "mlp", lin);
}

std::string layer_prefix(int il) {
  return fmt::format("model.layers.{}.", il);
}

// [out, in] of each linear of a layer, by name.
std::pair<int64_t, int64_t> linear_shape(const ModelConfig& c, const std::string& lin) {
  const int64_t qd = c.n_head * c.head_dim, kvd = c.n_head_kv * c.head_dim;
  if (lin == "q") return {qd, c.n_embd};
  if (lin == "k" || lin == "v") return {kvd, c.n_embd};
  if (lin == "o") return {c.n_embd, qd};
  if (lin == "gate" || lin == "up") return {c.n_ff, c.n_embd};
  return {c.n_embd, c.n_ff};  // down
}

QLinear& linear_of(ArtifactLayer& l, const std::string& lin) {
  if (lin == "q") return l.q;
  if (lin == "k") return l.k;
  if (lin == "v") return l.v;
  if (lin == "o") return l.o;
  if (lin == "gate") return l.gate;
  if (lin == "up") return l.up;
  return l.down;
}
const QLinear& linear_of(const ArtifactLayer& l, const std::string& lin) {
  return linear_of(const_cast<ArtifactLayer&>(l), lin);
}

bool has_bias(const std::string& lin) {
  return lin == "q" || lin == "k" || lin == "v";
}

// ---------------------------------------------------------------------------------------------- writer

// Adds tensors to the writer after checking that each in-memory vector has the size its shape says, so a
// bug in the producer is reported here (naming the tensor) instead of producing an unloadable artifact.
class TensorSink {
 public:
  explicit TensorSink(const std::string& dir) : dir_(dir) {}
  void f32(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
    check(name, shape, v.size());
    for (size_t i = 0; i < v.size(); ++i)
      FQ_CHECK(std::isfinite(v[i]), "write_artifact {}: tensor '{}' has a non-finite value ({}) at index {}",
               dir_, name, v[i], i);
    w_.add_f32(name, shape, v.data());
  }
  void bytes(const std::string& name, DType dt, std::vector<int64_t> shape, const std::vector<uint8_t>& v) {
    check(name, shape, v.size());
    w_.add(name, dt, shape, v.data(), v.size());
  }
  void write(const std::string& path) { w_.write(path); }
  SafeTensorsWriter& writer() { return w_; }

 private:
  void check(const std::string& name, const std::vector<int64_t>& shape, size_t n) {
    int64_t want = 1;
    for (int64_t s : shape) want *= s;
    FQ_CHECK((int64_t)n == want, "write_artifact {}: tensor '{}' has {} elements (expected {} for shape {})",
             dir_, name, n, want, shape_str(shape));
  }
  std::string dir_;
  SafeTensorsWriter w_;
};

void add_linear(TensorSink& s, const ModelConfig& c, const Recipe& r, int il, const std::string& lin,
                const QLinear& q) {
  const std::string p = linear_prefix(il, lin.c_str());
  const auto [out, in] = linear_shape(c, lin);
  FQ_CHECK(q.bits == r.w_bits, "write_artifact: {}: bits {} differ from the recipe's w_bits {}", p, q.bits,
           r.w_bits);
  FQ_CHECK(q.out == out && q.in == in,
           "write_artifact: {}: shape [{}, {}] (expected [{}, {}] from the config)", p, q.out, q.in, out, in);
  if (q.bits == 4) {
    FQ_CHECK(in % 2 == 0, "write_artifact: {}: in_features {} is odd and cannot be packed as int4", p, in);
    s.bytes(p + ".qweight", DType::U8, {out, in / 2}, q.qweight);
    s.f32(p + ".scales", {out}, q.scales);
  } else if (q.bits == 8) {
    s.bytes(p + ".qweight", DType::I8, {out, in}, q.qweight);
    s.f32(p + ".scales", {out}, q.scales);
  } else {
    s.f32(p + ".weight", {out, in}, q.weight);
  }
  if (has_bias(lin) && c.attn_bias)
    s.f32(p + ".bias", {out}, q.bias);
  else
    FQ_CHECK(q.bias.empty(), "write_artifact: {}: has a bias but the config has none", p);
  s.f32(p + ".act_clip", {2}, {q.act_clip_max, q.act_clip_min});
}

void add_kron(TensorSink& s, const std::string& name, const KronPair& k, int64_t dim) {
  if (!k.present()) return;
  FQ_CHECK(k.L >= 1 && k.R >= 1 && k.L * k.R == dim,
           "write_artifact: {}: factor sizes {} x {} do not multiply to the dimension {}", name, k.L, k.R,
           dim);
  s.f32(name + ".left", {k.L, k.L}, k.left);
  s.f32(name + ".right", {k.R, k.R}, k.right);
}

void add_tensors(TensorSink& s, const Artifact& a) {
  const ModelConfig& c = a.cfg;
  s.f32("model.embed_tokens.weight", {c.n_vocab, c.n_embd}, a.tok_embd);
  s.f32("model.norm.weight", {c.n_embd}, a.norm);
  if (c.tie_embeddings)
    FQ_CHECK(a.lm_head.empty(), "write_artifact: lm_head given but the config ties embeddings");
  else
    s.f32("lm_head.weight", {c.n_vocab, c.n_embd}, a.lm_head);
  FQ_CHECK((int64_t)a.layers.size() == c.n_layer, "write_artifact: {} layers (expected n_layer {})",
           a.layers.size(), c.n_layer);
  for (int il = 0; il < (int)c.n_layer; ++il) {
    const ArtifactLayer& l = a.layers[il];
    const std::string p = layer_prefix(il);
    s.f32(p + "input_layernorm.weight", {c.n_embd}, l.attn_norm);
    s.f32(p + "post_attention_layernorm.weight", {c.n_embd}, l.ffn_norm);
    for (const char* lin : kLinearNames) add_linear(s, c, a.recipe, il, lin, linear_of(l, lin));
    add_kron(s, p + "self_attn.ln_trans", l.ln_trans, c.n_embd);
    add_kron(s, p + "mlp.up_gate_trans", l.up_gate_trans, c.n_embd);
    add_kron(s, p + "mlp.down_trans", l.down_trans, c.n_ff);
    if (!l.o_trans.empty()) s.f32(p + "self_attn.o_trans.matrix", {c.n_head, c.n_head}, l.o_trans);
    FQ_CHECK(
        l.kcache_trans.empty() == l.kcache_inv_t.empty(),
        "write_artifact: {}self_attn.kcache_trans: matrix and inv_t must both be given or both be absent", p);
    if (!l.kcache_trans.empty()) {
      s.f32(p + "self_attn.kcache_trans.matrix", {c.head_dim, c.head_dim}, l.kcache_trans);
      s.f32(p + "self_attn.kcache_trans.inv_t", {c.head_dim, c.head_dim}, l.kcache_inv_t);
    }
    s.f32(p + "self_attn.k_cache.clip", {2}, {l.k_clip_max, l.k_clip_min});
    s.f32(p + "self_attn.v_cache.clip", {2}, {l.v_clip_max, l.v_clip_min});
  }
}

// ---------------------------------------------------------------------------------------------- loader

// The tensors of model.safetensors, each consumed once; whatever is left at the end is unknown.
class TensorReader {
 public:
  explicit TensorReader(const std::string& path) : st_(path), path_(path) {
    for (const TensorInfo& t : st_.tensors()) left_.insert(t.name);
  }
  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return st_.find(name) != nullptr; }
  size_t count() const { return st_.tensors().size(); }
  const TensorInfo* info(const std::string& name) const { return st_.find(name); }

  std::vector<float> f32(const std::string& name, const std::vector<int64_t>& shape) {
    const TensorInfo& t = take(name, DType::F32, shape);
    std::vector<float> v((size_t)t.numel());
    if (!v.empty()) std::memcpy(v.data(), st_.data(t), t.nbytes());
    for (size_t i = 0; i < v.size(); ++i)
      if (!std::isfinite(v[i]))
        fail("{}: tensor '{}' has a non-finite value ({}) at index {}", path_, name, v[i], i);
    return v;
  }
  std::vector<uint8_t> bytes(const std::string& name, DType dt, const std::vector<int64_t>& shape) {
    const TensorInfo& t = take(name, dt, shape);
    const uint8_t* p = st_.data(t);
    return std::vector<uint8_t>(p, p + t.nbytes());
  }
  // A [2] clip pair.
  std::pair<float, float> pair(const std::string& name) {
    const std::vector<float> v = f32(name, {2});
    return {v[0], v[1]};
  }
  void check_all_used() const {
    if (!left_.empty())
      fail("{}: unknown tensor '{}' (not part of the artifact format for this config and recipe{})", path_,
           *left_.begin(), left_.size() > 1 ? fmt::format("; {} unknown tensors in all", left_.size()) : "");
  }

 private:
  const TensorInfo& take(const std::string& name, DType dt, const std::vector<int64_t>& shape) {
    const TensorInfo* t = st_.find(name);
    if (!t) fail("{}: missing tensor '{}' (expected {} {})", path_, name, dtype_name(dt), shape_str(shape));
    FQ_CHECK(t->dtype == dt, "{}: tensor '{}' has dtype {} (expected {})", path_, name, dtype_name(t->dtype),
             dtype_name(dt));
    FQ_CHECK(t->shape == shape, "{}: tensor '{}' has shape {} (expected {})", path_, name,
             shape_str(t->shape), shape_str(shape));
    left_.erase(name);
    return *t;
  }
  SafeTensors st_;
  std::string path_;
  std::set<std::string> left_;
};

void read_linear(TensorReader& r, const ModelConfig& c, const Recipe& rec, int il, const std::string& lin,
                 QLinear& q) {
  const std::string p = linear_prefix(il, lin.c_str());
  const auto [out, in] = linear_shape(c, lin);
  q.bits = rec.w_bits;
  q.out = out;
  q.in = in;
  if (q.bits == 4) {
    FQ_CHECK(in % 2 == 0, "{}: {}: in_features {} is odd, which 4-bit packing (recipe '{}') cannot store",
             r.path(), p, in, rec.name);
    q.qweight = r.bytes(p + ".qweight", DType::U8, {out, in / 2});
    q.scales = r.f32(p + ".scales", {out});
  } else if (q.bits == 8) {
    q.qweight = r.bytes(p + ".qweight", DType::I8, {out, in});
    q.scales = r.f32(p + ".scales", {out});
  } else {
    q.weight = r.f32(p + ".weight", {out, in});
  }
  if (has_bias(lin) && c.attn_bias) q.bias = r.f32(p + ".bias", {out});
  std::tie(q.act_clip_max, q.act_clip_min) = r.pair(p + ".act_clip");
}

KronPair read_kron(TensorReader& r, const std::string& name, int64_t dim) {
  KronPair k;
  const TensorInfo* left = r.info(name + ".left");
  const TensorInfo* right = r.info(name + ".right");
  if (!left && !right) return k;
  FQ_CHECK(left && right, "{}: tensor '{}' without '{}' (a Kronecker transform needs both factors)", r.path(),
           left ? name + ".left" : name + ".right", left ? name + ".right" : name + ".left");
  FQ_CHECK(left->shape.size() == 2 && right->shape.size() == 2 && left->shape[0] > 0 && right->shape[0] > 0,
           "{}: tensors '{}.left' {} / '.right' {}: expected square matrices", r.path(), name,
           shape_str(left->shape), shape_str(right->shape));
  k.L = left->shape[0];
  k.R = right->shape[0];
  // Each factor is at most the dimension (<= INT32_MAX, so the product cannot overflow); a shape like
  // [2^62, 0] is a valid empty tensor and must not reach the multiplication.
  FQ_CHECK(k.L <= dim && k.R <= dim && k.L * k.R == dim,
           "{}: tensors '{}.left' {} and '.right' {}: factor sizes {} x {} != dimension {}", r.path(), name,
           shape_str(left->shape), shape_str(right->shape), k.L, k.R, dim);
  k.left = r.f32(name + ".left", {k.L, k.L});
  k.right = r.f32(name + ".right", {k.R, k.R});
  return k;
}

json read_json_file(const std::string& path) {
  const std::string text = read_file(path);
  check_json_depth(text, path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", path, e.what());
  }
}

// The first top-level key whose values differ (for the config.json vs manifest message).
std::string first_difference(const json& a, const json& b) {
  for (auto it = a.begin(); it != a.end(); ++it)
    if (!b.contains(it.key()) || b[it.key()] != it.value()) return it.key();
  for (auto it = b.begin(); it != b.end(); ++it)
    if (!a.contains(it.key())) return it.key();
  return "?";
}

void verify_files(const std::string& dir, const json& files, const std::string& man_path) {
  FQ_CHECK(files.is_object(), "{}: field 'files': expected an object {{name: {{bytes, sha256}}}}", man_path);
  for (const char* required : {kModelFile, kConfigFile})
    FQ_CHECK(files.contains(required), "{}: field 'files': '{}' is not listed", man_path, required);
  for (auto it = files.begin(); it != files.end(); ++it) {
    const std::string& name = it.key();
    const json& e = it.value();
    FQ_CHECK(!name.empty() && name.find('/') == std::string::npos && name != "." && name != ".." &&
                 name != kManifestFile,
             "{}: field 'files': invalid file name '{}'", man_path, name);
    FQ_CHECK(e.is_object() && e.contains("bytes") && e["bytes"].is_number_unsigned() &&
                 e.contains("sha256") && e["sha256"].is_string() &&
                 e["sha256"].get<std::string>().size() == 64,
             "{}: field 'files.{}': expected {{\"bytes\": N, \"sha256\": 64 hex digits}}", man_path, name);
    const std::string path = path_join(dir, name);
    FQ_CHECK(file_exists(path), "{}: missing (listed in manifest.json)", path);
    std::error_code ec;
    const uint64_t size = std::filesystem::file_size(path, ec);
    FQ_CHECK(!ec, "{}: cannot stat: {}", path, ec.message());
    const uint64_t want = e["bytes"].get<uint64_t>();
    FQ_CHECK(size == want,
             "{}: size mismatch (expected {} bytes, found {}): the file was modified or truncated", path,
             want, size);
    const std::string expect = e["sha256"].get<std::string>();
    const std::string found = sha256_file(path);
    FQ_CHECK(found == expect,
             "{}: sha256 mismatch (expected {}, found {}): the file was modified or is corrupt", path, expect,
             found);
  }
}

}  // namespace

std::vector<float> QLinear::dequantize() const {
  const size_t n = (size_t)out * (size_t)in;
  if (bits == 16) {
    FQ_CHECK(weight.size() == n, "QLinear::dequantize: weight has {} elements (expected {})", weight.size(),
             n);
    return weight;
  }
  FQ_CHECK(scales.size() == (size_t)out, "QLinear::dequantize: scales has {} elements (expected {})",
           scales.size(), out);
  std::vector<float> w(n);
  if (bits == 4) {
    FQ_CHECK(qweight.size() == n / 2 && in % 2 == 0,
             "QLinear::dequantize: 4-bit qweight has {} bytes (expected {})", qweight.size(), n / 2);
    ref::dequantize_sym_int4(qweight.data(), scales.data(), out, in, w.data());
  } else if (bits == 8) {
    FQ_CHECK(qweight.size() == n, "QLinear::dequantize: 8-bit qweight has {} bytes (expected {})",
             qweight.size(), n);
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i) {
        const size_t k = (size_t)(o * in + i);
        w[k] = (float)(int8_t)qweight[k] * scales[(size_t)o];
      }
  } else {
    fail("QLinear::dequantize: unsupported bit width {}", bits);
  }
  return w;
}

std::string sha256_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  FQ_CHECK(f.good(), "{}: cannot open for reading", path);
  Sha256 h;
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), (std::streamsize)buf.size());
    const std::streamsize got = f.gcount();
    if (got > 0) h.update(buf.data(), (size_t)got);
  }
  FQ_CHECK(f.eof(), "{}: read error", path);
  return h.finish_hex();
}

bool is_artifact_dir(const std::string& dir) {
  const std::string m = path_join(dir, kManifestFile);
  if (!is_directory(dir) || !file_exists(m)) return false;
  // A manifest that cannot be read as JSON counts as an artifact's: load_artifact then names the file and
  // the problem, instead of the directory being taken for an HF model with "missing tensor" errors.
  try {
    const std::string text = read_file(m);
    check_json_depth(text, m);
    const json j = json::parse(text);
    return j.is_object() && j.contains("format") && j["format"] == kFormatName;
  } catch (const std::exception&) {
    return true;
  }
}

void write_artifact(const Artifact& a, const std::string& dir, const std::string& source_model_dir,
                    const std::vector<std::pair<std::string, std::string>>& extra_files) {
  a.recipe.validate("write_artifact " + dir + ": recipe '" + a.recipe.name + "'");
  FQ_CHECK(!a.method.empty(), "write_artifact {}: empty method", dir);
  FQ_CHECK(a.info.is_object(), "write_artifact {}: info must be a JSON object", dir);
  for (auto it = a.info.begin(); it != a.info.end(); ++it)
    FQ_CHECK(!reserved_keys().count(it.key()),
             "write_artifact {}: info key '{}' is reserved for the manifest", dir, it.key());
  {
    // The loader reads the config back from JSON: refuse one that config.json cannot state (e.g. q/k/v
    // biases on a Llama config), which would otherwise give an artifact that does not load.
    const json cj = a.cfg.to_json();
    const json back = ModelConfig::from_json(cj, dir + "/config.json").to_json();
    FQ_CHECK(back == cj, "write_artifact {}: the model config does not survive config.json (field '{}')", dir,
             first_difference(cj, back));
    FQ_CHECK(ModelConfig::from_json(cj, dir + "/config.json").attn_bias == a.cfg.attn_bias,
             "write_artifact {}: the model config does not survive config.json (q/k/v bias {} for model_type "
             "'{}')",
             dir, a.cfg.attn_bias, a.cfg.model_type);
  }
  if (std::filesystem::exists(dir)) {
    FQ_CHECK(is_directory(dir), "{}: exists and is not a directory; refusing to replace it", dir);
    FQ_CHECK(is_artifact_dir(dir) || std::filesystem::is_empty(dir),
             "{}: exists and is not a flatquant artifact (no manifest.json with format \"{}\"); refusing to "
             "replace it",
             dir, kFormatName);
  }

  // Every tensor is checked before anything is written.
  TensorSink sink(dir);
  add_tensors(sink, a);
  sink.writer().set_metadata("format", "pt");
  sink.writer().set_metadata("flatquant", kFormatName);

  AtomicDir out(dir, /*replace_existing=*/true);
  std::vector<std::string> files;  // in manifest order
  sink.write(out.file(kModelFile));
  files.push_back(kModelFile);
  write_file_atomic(out.file(kConfigFile), a.cfg.to_json().dump(2) + "\n");
  files.push_back(kConfigFile);

  json tok_files = json::array();
  if (!source_model_dir.empty()) {
    FQ_CHECK(is_directory(source_model_dir), "{}: not a directory (the source model of the artifact)",
             source_model_dir);
    for (const char* name : kTokenizerFiles) {
      const std::string src = path_join(source_model_dir, name);
      if (!file_exists(src)) continue;
      std::error_code ec;
      std::filesystem::copy_file(src, out.file(name), ec);
      FQ_CHECK(!ec, "{}: cannot copy into the artifact: {}", src, ec.message());
      files.push_back(name);
      tok_files.push_back(name);
    }
  }
  for (const auto& [name, src] : extra_files) {
    FQ_CHECK(!name.empty() && name.find('/') == std::string::npos && name != kManifestFile,
             "write_artifact {}: invalid extra file name '{}'", dir, name);
    for (const std::string& f : files)
      FQ_CHECK(f != name, "write_artifact {}: extra file '{}' clashes with a file of the artifact", dir,
               name);
    FQ_CHECK(file_exists(src), "{}: extra file not found", src);
    std::error_code ec;
    std::filesystem::copy_file(src, out.file(name), ec);
    FQ_CHECK(!ec, "{}: cannot copy into the artifact: {}", src, ec.message());
    files.push_back(name);
  }

  json man = json::object();
  man["format"] = kFormatName;
  man["format_version"] = kArtifactFormatVersion;
  man["writer"] = "flatquant 0.1.0";
  man["method"] = a.method;
  man["recipe"] = a.recipe.to_json();
  man["model_config"] = a.cfg.to_json();
  man["tokenizer_files"] = tok_files;
  for (auto it = a.info.begin(); it != a.info.end(); ++it) man[it.key()] = it.value();
  json jf = json::object();
  for (const std::string& f : files) {
    const std::string p = out.file(f);
    jf[f] = {{"bytes", (uint64_t)std::filesystem::file_size(p)}, {"sha256", sha256_file(p)}};
  }
  man["files"] = jf;
  write_file_atomic(out.file(kManifestFile), man.dump(2) + "\n");
  out.commit();
}

Artifact load_artifact(const std::string& dir) {
  FQ_CHECK(is_directory(dir), "{}: not a directory (expected a flatquant artifact)", dir);
  const std::string mp = path_join(dir, kManifestFile);
  FQ_CHECK(file_exists(mp), "{}: missing (not a flatquant artifact directory)", mp);
  const json man = read_json_file(mp);
  FQ_CHECK(man.is_object(), "{}: expected a JSON object", mp);
  FQ_CHECK(man.contains("format") && man["format"].is_string(),
           "{}: field 'format': missing (expected \"{}\")", mp, kFormatName);
  FQ_CHECK(man["format"] == kFormatName, "{}: field 'format': expected \"{}\", found \"{}\"", mp, kFormatName,
           man["format"].get<std::string>());
  FQ_CHECK(man.contains("format_version") && man["format_version"].is_number_integer(),
           "{}: field 'format_version': missing or not an integer", mp);
  const int64_t ver = man["format_version"].get<int64_t>();
  FQ_CHECK(ver <= kArtifactFormatVersion,
           "{}: format_version {} was written by a newer flatquant (this build reads format_version {}); "
           "upgrade flatquant",
           mp, ver, kArtifactFormatVersion);
  FQ_CHECK(ver >= 1, "{}: field 'format_version': expected 1..{}, found {}", mp, kArtifactFormatVersion, ver);
  FQ_CHECK(man.contains("files"), "{}: field 'files': missing", mp);
  verify_files(dir, man["files"], mp);

  Artifact a;
  FQ_CHECK(man.contains("method") && man["method"].is_string() && !man["method"].get<std::string>().empty(),
           "{}: field 'method': expected a non-empty string", mp);
  a.method = man["method"].get<std::string>();
  FQ_CHECK(man.contains("recipe"), "{}: field 'recipe': missing", mp);
  a.recipe = Recipe::from_json(man["recipe"], mp + " recipe");
  FQ_CHECK(man.contains("model_config"), "{}: field 'model_config': missing", mp);
  a.cfg = ModelConfig::from_json(man["model_config"], mp + " model_config");
  const std::string cp = path_join(dir, kConfigFile);
  const ModelConfig file_cfg = ModelConfig::load(cp);
  const json j1 = file_cfg.to_json(), j2 = a.cfg.to_json();
  FQ_CHECK(j1 == j2, "{}: differs from manifest.json model_config (field '{}')", cp,
           first_difference(j1, j2));
  for (auto it = man.begin(); it != man.end(); ++it)
    if (!reserved_keys().count(it.key())) a.info[it.key()] = it.value();

  const ModelConfig& c = a.cfg;
  TensorReader r(path_join(dir, kModelFile));
  a.tok_embd = r.f32("model.embed_tokens.weight", {c.n_vocab, c.n_embd});
  a.norm = r.f32("model.norm.weight", {c.n_embd});
  if (!c.tie_embeddings) a.lm_head = r.f32("lm_head.weight", {c.n_vocab, c.n_embd});
  // A layer has at least kMinLayerTensors tensors (two norms, seven linears of two or more, two KV clips):
  // a layer count the file cannot hold is refused before the layers are allocated (num_hidden_layers may be
  // up to INT32_MAX, a few TB of ArtifactLayer).
  constexpr int64_t kMinLayerTensors = 18;
  FQ_CHECK(c.n_layer <= (int64_t)(r.count() / kMinLayerTensors),
           "{}: {} tensors cannot hold num_hidden_layers {} of manifest.json model_config (each layer has at "
           "least {})",
           r.path(), r.count(), c.n_layer, kMinLayerTensors);
  a.layers.resize((size_t)c.n_layer);
  for (int il = 0; il < (int)c.n_layer; ++il) {
    ArtifactLayer& l = a.layers[il];
    const std::string p = layer_prefix(il);
    l.attn_norm = r.f32(p + "input_layernorm.weight", {c.n_embd});
    l.ffn_norm = r.f32(p + "post_attention_layernorm.weight", {c.n_embd});
    for (const char* lin : kLinearNames) read_linear(r, c, a.recipe, il, lin, linear_of(l, lin));
    l.ln_trans = read_kron(r, p + "self_attn.ln_trans", c.n_embd);
    l.up_gate_trans = read_kron(r, p + "mlp.up_gate_trans", c.n_embd);
    l.down_trans = read_kron(r, p + "mlp.down_trans", c.n_ff);
    if (r.has(p + "self_attn.o_trans.matrix"))
      l.o_trans = r.f32(p + "self_attn.o_trans.matrix", {c.n_head, c.n_head});
    const bool km = r.has(p + "self_attn.kcache_trans.matrix"),
               ki = r.has(p + "self_attn.kcache_trans.inv_t");
    FQ_CHECK(km == ki, "{}: tensor '{}self_attn.kcache_trans.{}' without '.{}' (both or neither)", r.path(),
             p, km ? "matrix" : "inv_t", km ? "inv_t" : "matrix");
    if (km) {
      l.kcache_trans = r.f32(p + "self_attn.kcache_trans.matrix", {c.head_dim, c.head_dim});
      l.kcache_inv_t = r.f32(p + "self_attn.kcache_trans.inv_t", {c.head_dim, c.head_dim});
    }
    std::tie(l.k_clip_max, l.k_clip_min) = r.pair(p + "self_attn.k_cache.clip");
    std::tie(l.v_clip_max, l.v_clip_min) = r.pair(p + "self_attn.v_cache.clip");
  }
  r.check_all_used();
  return a;
}

}  // namespace fq
