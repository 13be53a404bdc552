// `flatquant plot calibration ART_DIR [ART_DIR...] [--out DIR]`
// `flatquant plot flatness --model HF_DIR --artifact ART_DIR --layer N [--data FILE] [--tokens N] [--out DIR]`
// PNG figures (+ the CSV of their data) through gnuplot (src/eval/plot.h, docs/plots.md).
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "core/fs.h"
#include "eval/calib_plot.h"
#include "eval/flatness.h"
#include "flatquant/error.h"
#include "io/tokenizer.h"
#include "model/artifact.h"
#include "model/weights.h"

namespace fq::cli {

namespace {

struct Options {
  std::vector<std::string> artifacts;
  std::string out = "plots";
  std::string model, artifact, data;
  int layer = -1;
  int64_t tokens = 2048, window = 512;
  int threads = 0, width = 1000, height = 600;
};

std::string dir_name(std::string d) {
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  return std::filesystem::path(d).filename().string();
}

// The first `n` tokens of `text` (with BOS): tokenizes growing prefixes so that a long file is not tokenized
// whole for a few thousand tokens.
std::vector<int32_t> first_tokens(const Tokenizer& tok, const std::string& text, int64_t n) {
  size_t bytes = (size_t)n * 8 + 4096;
  while (true) {
    size_t end = std::min(bytes, text.size());
    while (end < text.size() && ((unsigned char)text[end] & 0xC0) == 0x80) ++end;  // UTF-8 boundary
    std::vector<int32_t> ids = tok.encode_with_bos(std::string_view(text).substr(0, end));
    if ((int64_t)ids.size() > n || end == text.size()) {
      if ((int64_t)ids.size() > n) ids.resize((size_t)n);
      return ids;
    }
    bytes *= 2;
  }
}

int run_calibration(const Options& o) {
  const auto pngs = plot::plot_calibration(o.artifacts, o.out, {o.width, o.height});
  for (const auto& p : pngs) fmt::print("wrote {} (+ {})\n", p, plot::csv_path_for(p));
  return 0;
}

int run_flatness(const Options& o) {
  FQ_CHECK(o.tokens >= 1, "--tokens must be positive (found {})", o.tokens);
  FQ_CHECK(is_directory(o.model) && file_exists(path_join(o.model, "config.json")),
           "--model {}: not an HF model directory (no config.json)", o.model);
  FQ_CHECK(is_artifact_dir(o.artifact), "--artifact {}: not a flatquant artifact (no manifest.json)", o.artifact);
  const std::string data =
      o.data.empty() ? path_join(data_dir(), "wikitext2_raw/wiki.train.nonempty.first1MB.txt") : o.data;
  FQ_CHECK(file_exists(data), "--data {}: no such file", data);
  const ModelWeights w = load_hf_weights(o.model);
  FQ_CHECK(o.layer >= 0 && o.layer < w.cfg.n_layer, "--layer {}: out of range (the model has {} layers: 0..{})",
           o.layer, w.cfg.n_layer, w.cfg.n_layer - 1);
  const Artifact art = load_artifact(o.artifact);
  const auto tok = load_tokenizer(o.model);
  const std::string text = read_file(data);
  FQ_CHECK(!text.empty(), "--data {}: empty file", data);
  plot::gnuplot_binary();  // after the input checks, before the slow part
  const std::vector<int32_t> ids = first_tokens(*tok, text, o.tokens);
  plot::FlatnessOptions fo;
  fo.layer = o.layer;
  fo.window = o.window;
  fo.threads = o.threads;
  const auto sites = plot::compute_flatness(w, art, ids, fo);
  const std::string model = dir_name(o.model);
  const auto pngs = plot::plot_flatness(
      sites, o.out, fmt::format("flatness_{}_layer{}", model, o.layer),
      fmt::format("{} layer {}, {} tokens; artifact {} {}", model, o.layer, ids.size(), art.method, art.recipe.name),
      art.method, {o.width, o.height});
  for (const auto& p : pngs) fmt::print("wrote {} (+ {})\n", p, plot::csv_path_for(p));
  return 0;
}

}  // namespace

Runner register_plot(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* sub = app.add_subcommand("plot", "PNG figures (gnuplot): calibration losses, activation flatness");
  sub->require_subcommand(1);
  auto* cal = sub->add_subcommand("calibration", "Per-layer calibration loss curves; final loss per method");
  cal->add_option("artifacts", o->artifacts, "artifact directories (the first with calib_log.csv gives the curves)")
      ->required();
  auto* fl = sub->add_subcommand("flatness", "Sorted per-channel max |x| and max |w| of a layer's linear inputs");
  fl->add_option("--model", o->model, "HF model directory (FP reference)")->required();
  fl->add_option("--artifact", o->artifact, "artifact directory (its online transforms and weights)")->required();
  fl->add_option("--layer", o->layer, "layer index")->required();
  fl->add_option("--data", o->data,
                 "calibration text (default <data_dir>/wikitext2_raw/wiki.train.nonempty.first1MB.txt)");
  fl->add_option("--tokens", o->tokens, "calibration tokens (prefix of the text)")->capture_default_str();
  fl->add_option("--window", o->window, "tokens per forward pass (capped at the model context)")
      ->capture_default_str();
  fl->add_option("--threads", o->threads, "CPU threads (0: all cores)");
  for (auto* c : {cal, fl}) {
    c->add_option("--out", o->out, "output directory")->capture_default_str();
    c->add_option("--width", o->width, "PNG width in pixels")->capture_default_str();
    c->add_option("--height", o->height, "PNG height in pixels")->capture_default_str();
  }
  return [o, cal]() -> int { return cal->parsed() ? run_calibration(*o) : run_flatness(*o); };
}

}  // namespace fq::cli
