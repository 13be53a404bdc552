// `flatquant inspect PATH [--json]`: what is in an HF model directory (config summary + tensor table) or a
// single .safetensors file (tensors + metadata). Everything is validated on the way (the reader is strict),
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
      "inspect", "Show the config and tensors of an HF model directory or a .safetensors file");
  sub->add_option("path", o->path, "HF model directory or .safetensors file")->required();
  sub->add_flag("--json", o->json, "Print the same information as JSON");
  return [o]() -> int { return run(*o); };
}

}  // namespace fq::cli
