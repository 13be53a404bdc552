// Quantized-artifact reader: load_artifact on a directory built from the input, then every linear
// dequantized. The input is
//   <mode byte> manifest.json <kSep> model.safetensors [<kSep> config.json]
// (kSep below: NUL bytes never occur in a valid manifest or safetensors header). Without a third part,
// config.json is the manifest's model_config, so that mutations of the config reach the tensor checks
// instead of stopping at the config.json comparison. The reader checks every file's size and sha256
// before anything else, so the harness recomputes the "files" entries it finds for model.safetensors and
// config.json whenever the manifest parses; one mode in eight (low three bits of the mode byte all set)
// writes the manifest unchanged, which keeps the size / checksum paths and the manifest's exact bytes
// (duplicate keys, number forms) in reach.
#include <nlohmann/json.hpp>

#include "core/json_guard.h"
#include "core/sha256.h"
#include "fuzz_util.h"
#include "model/artifact.h"

namespace {

using nlohmann::json;

constexpr std::string_view kSep("\0FQ-FILE\0", 9);

// Splits off the part up to the next separator (the rest when there is none).
std::string_view next_part(std::string_view& rest, bool& had_sep) {
  const size_t p = rest.find(kSep);
  had_sep = p != std::string_view::npos;
  const std::string_view part = rest.substr(0, had_sep ? p : rest.size());
  rest.remove_prefix(had_sep ? p + kSep.size() : rest.size());
  return part;
}

// The manifest parsed, or null when it is not JSON the reader would parse (left for the reader to refuse).
json parse_manifest(std::string_view text) {
  try {
    fq::check_json_depth(text, "manifest.json");
    return json::parse(text.begin(), text.end());
  } catch (const fq::Error&) {
  } catch (const json::exception&) {
  }
  return json();
}

void set_checksum(json& files, const char* name, std::string_view content) {
  if (!files.contains(name) || !files[name].is_object()) return;
  files[name]["bytes"] = (uint64_t)content.size();
  files[name]["sha256"] = fq::sha256_hex(content);
}

const uint8_t* bytes(std::string_view s) {
  return reinterpret_cast<const uint8_t*>(s.data());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  bool more = false;
  const std::string_view manifest_in = next_part(rest, more);
  const std::string_view tensors = more ? next_part(rest, more) : std::string_view();
  const bool config_given = more;
  const std::string_view config_in = more ? rest : std::string_view();

  json man = parse_manifest(manifest_in);
  std::string config(config_in);
  if (!config_given)
    config = man.is_object() && man.contains("model_config") ? man["model_config"].dump(2) : std::string();
  std::string manifest(manifest_in);
  if ((mode & 7) != 7 && man.is_object() && man.contains("files") && man["files"].is_object()) {
    set_checksum(man["files"], "model.safetensors", tensors);
    set_checksum(man["files"], "config.json", config);
    manifest = man.dump(2);
  }

  fq::fuzz::input_file(bytes(tensors), tensors.size(), "model.safetensors");
  fq::fuzz::input_file(bytes(config), config.size(), "config.json");
  const std::string mp = fq::fuzz::input_file(bytes(manifest), manifest.size(), "manifest.json");
  const std::string dir = mp.substr(0, mp.size() - std::string("/manifest.json").size());

  return fq::fuzz::expect_ok_or_error([&] {
    const fq::Artifact a = fq::load_artifact(dir);
    if (!fq::is_artifact_dir(dir)) std::abort();  // a loadable artifact must be recognized as one
    if ((int64_t)a.layers.size() != a.cfg.n_layer) std::abort();
    if (a.tok_embd.size() != (size_t)(a.cfg.n_vocab * a.cfg.n_embd)) std::abort();
    if (a.head().size() != a.tok_embd.size()) std::abort();
    for (const fq::ArtifactLayer& l : a.layers) {
      for (const fq::QLinear* q : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down})
        if (q->dequantize().size() != (size_t)(q->out * q->in)) std::abort();
      for (const fq::KronPair* k : {&l.ln_trans, &l.up_gate_trans, &l.down_trans})
        if (k->left.size() != (size_t)(k->L * k->L) || k->right.size() != (size_t)(k->R * k->R)) std::abort();
    }
  });
}
