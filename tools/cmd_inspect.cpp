// `flatquant inspect PATH [--json]`: what is in an HF model directory (config summary + tensor table), a
// quantized artifact directory (manifest summary, then the same; the artifact is fully validated, checksums
// included) or a single .safetensors file (tensors + metadata). Everything is validated on the way (the reader is strict),
// so inspect doubles as a checker: a corrupt file gives one error line and exit code 1.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "core/fs.h"
#include "flatquant/error.h"
#include "io/safetensors.h"
#include "model/artifact.h"
#include "model/config.h"

namespace fq::cli {

namespace {

struct Options {
  std::string path;
  bool json = false;
};

struct Row {
  std::string file, name, dtype, shape;
  int64_t numel = 0;
  uint64_t bytes = 0;
  std::vector<int64_t> dims;
};

std::string base_name(const std::string& p) {
  const auto s = p.find_last_of('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::string human_bytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)b;
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", b) : fmt::format("{:.1f} {}", v, units[u]);
}

void add_rows(std::vector<Row>& rows, const SafeTensors& f, const TensorInfo& t) {
  rows.push_back(
      {base_name(f.path()), t.name, dtype_name(t.dtype), shape_str(t.shape), t.numel(), t.nbytes(), t.shape});
}

// The manifest summary of an artifact (after load_artifact has validated everything).
nlohmann::ordered_json artifact_summary(const std::string& dir, const Artifact& a) {
  const nlohmann::json man = nlohmann::json::parse(read_file(path_join(dir, "manifest.json")));
  nlohmann::ordered_json j;
  j["format"] = man["format"];
  j["format_version"] = man["format_version"];
  j["method"] = a.method;
  j["recipe"] = a.recipe.to_json();
  j["files"] = man["files"];
  j["tokenizer_files"] = man.value("tokenizer_files", nlohmann::json::array());
  int ln = 0, ug = 0, down = 0, o = 0, kc = 0;
  for (const ArtifactLayer& l : a.layers) {
    ln += l.ln_trans.present();
    ug += l.up_gate_trans.present();
    down += l.down_trans.present();
    o += !l.o_trans.empty();
    kc += !l.kcache_trans.empty();
  }
  j["online_transforms"] = {{"ln_trans", ln}, {"up_gate_trans", ug}, {"down_trans", down}, {"o_trans", o},
                            {"kcache_trans", kc}, {"layers", a.layers.size()}};
  j["info"] = a.info;
  return j;
}

void print_artifact_summary(const nlohmann::ordered_json& s) {
  const auto& r = s["recipe"];
  fmt::print("artifact: {} v{}, method {}, recipe {} (w{} a{} k{} v{}, weights {}{})\n",
             s["format"].get<std::string>(), s["format_version"].get<int>(), s["method"].get<std::string>(),
             r["name"].get<std::string>(), r["w_bits"].get<int>(), r["a_bits"].get<int>(), r["k_bits"].get<int>(),
             r["v_bits"].get<int>(), r["weight_quantizer"].get<std::string>(), r["lwc"].get<bool>() ? " + lwc" : "");
  const auto& t = s["online_transforms"];
  fmt::print("online transforms (layers with each, of {}): ln_trans {}, up_gate_trans {}, down_trans {}, o_trans {}, "
             "kcache_trans {}\n",
             t["layers"].get<int>(), t["ln_trans"].get<int>(), t["up_gate_trans"].get<int>(),
             t["down_trans"].get<int>(), t["o_trans"].get<int>(), t["kcache_trans"].get<int>());
  fmt::print("files (sizes and sha256 verified):\n");
  for (auto it = s["files"].begin(); it != s["files"].end(); ++it)
    fmt::print("  {:<24} {:>12} bytes  sha256 {}\n", it.key(), it.value()["bytes"].get<uint64_t>(),
               it.value()["sha256"].get<std::string>());
  if (!s["info"].empty()) {
    std::string keys;
    for (auto it = s["info"].begin(); it != s["info"].end(); ++it) keys += (keys.empty() ? "" : ", ") + it.key();
    fmt::print("manifest info: {}\n", keys);
  }
}

int run(const Options& o) {
  const std::string& p = o.path;
  if (ends_with(p, ".gguf") || ends_with(p, ".bin"))
    fail(
        "{}: GGUF and llama2.c files are not inspected yet; import it first with `flatquant convert` and "
        "inspect "
        "the resulting directory",
        p);

  std::unique_ptr<ModelConfig> cfg;
  std::map<std::string, std::string> metadata;
  std::vector<Row> rows;
  nlohmann::ordered_json artifact;
  if (is_directory(p) && is_artifact_dir(p)) artifact = artifact_summary(p, load_artifact(p));
  if (is_directory(p)) {
    const std::string cj = path_join(p, "config.json");
    if (file_exists(cj)) cfg = std::make_unique<ModelConfig>(ModelConfig::load(cj));
    const TensorStore store = TensorStore::open_dir(p);
    for (const auto& [f, t] : store.all()) add_rows(rows, *f, *t);
    if (store.all().size() > 0) {
      // Metadata of a sharded checkpoint is per file; show the first file's (they normally agree).
      const SafeTensors* first = store.all().front().first;
      metadata = first->metadata();
    }
  } else if (file_exists(p)) {
    const SafeTensors st(p);
    for (const auto& t : st.tensors()) add_rows(rows, st, t);
    metadata = st.metadata();
  } else {
    fail("{}: no such file or directory", p);
  }

  int64_t params = 0;
  uint64_t bytes = 0;
  bool multi_file = false;
  for (const auto& r : rows) {
    params += r.numel;
    bytes += r.bytes;
    multi_file = multi_file || r.file != rows.front().file;
  }

  if (o.json) {
    nlohmann::ordered_json j;
    j["path"] = p;
    j["config"] = cfg ? cfg->to_json() : nlohmann::json(nullptr);
    if (!artifact.is_null()) j["artifact"] = artifact;
    j["metadata"] = metadata;
    nlohmann::ordered_json ts = nlohmann::ordered_json::array();
    for (const auto& r : rows)
      ts.push_back(
          {{"name", r.name}, {"dtype", r.dtype}, {"shape", r.dims}, {"bytes", r.bytes}, {"file", r.file}});
    j["tensors"] = ts;
    j["totals"] = {{"tensors", rows.size()}, {"parameters", params}, {"bytes", bytes}};
    fmt::print("{}\n", j.dump(2));
    return 0;
  }

  if (!artifact.is_null()) print_artifact_summary(artifact);
  if (cfg) fmt::print("config: {}\n", cfg->summary());
  if (!metadata.empty()) {
    fmt::print("metadata:\n");
    for (const auto& [k, v] : metadata) fmt::print("  {} = {}\n", k, v);
    fmt::print("\n");
  }
  size_t wn = 4, ws = 5, wf = 4;
  for (const auto& r : rows) {
    wn = std::max(wn, r.name.size());
    ws = std::max(ws, r.shape.size());
    wf = std::max(wf, r.file.size());
  }
  if (multi_file) fmt::print("{:<{}}  ", "file", wf);
  fmt::print("{:<{}}  {:<5}  {:<{}}  {:>12}\n", "name", wn, "dtype", "shape", ws, "bytes");
  for (const auto& r : rows) {
    if (multi_file) fmt::print("{:<{}}  ", r.file, wf);
    fmt::print("{:<{}}  {:<5}  {:<{}}  {:>12}\n", r.name, wn, r.dtype, r.shape, ws, r.bytes);
  }
  fmt::print("\ntotal: {} tensors, {} parameters, {} bytes ({})\n", rows.size(), params, bytes,
             human_bytes(bytes));
  return 0;
}

}  // namespace

Runner register_inspect(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* sub = app.add_subcommand(
      "inspect", "Show the config and tensors of an HF model directory, an artifact or a .safetensors file");
  sub->add_option("path", o->path, "HF model directory, artifact directory or .safetensors file")->required();
  sub->add_flag("--json", o->json, "Print the same information as JSON");
  return [o]() -> int { return run(*o); };
}

}  // namespace fq::cli
