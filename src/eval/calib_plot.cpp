#include "eval/calib_plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/fs.h"
#include "flatquant/error.h"

namespace fq::plot {

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string basename_of(const std::string& dir) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  return std::filesystem::path(d).filename().string();
}

// A calibration log with at least one row (baselines without training write only the header).
bool has_log_rows(const std::string& path) {
  if (!file_exists(path)) return false;
  const std::string t = read_file(path);
  const size_t nl = t.find('\n');
  return nl != std::string::npos && t.find_first_not_of("\r\n", nl) != std::string::npos;
}

}  // namespace

LossCurves read_calib_log(const std::string& path) {
  FQ_CHECK(file_exists(path), "{}: no such file (the artifact has no calibration log)", path);
  std::stringstream ss(read_file(path));
  std::string line;
  FQ_CHECK(std::getline(ss, line), "{}: empty file (expected header 'layer,step,loss')", path);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  FQ_CHECK(line == "layer,step,loss", "{}: header '{}' (expected 'layer,step,loss')", path, line);
  std::map<int, std::map<int64_t, double>> by_layer;
  std::set<int64_t> steps;
  int64_t ln = 1;
  while (std::getline(ss, line)) {
    ++ln;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    long layer = 0;
    long long step = 0;
    double loss = 0;
    char tail = 0;
    FQ_CHECK(std::sscanf(line.c_str(), "%ld,%lld,%lf%c", &layer, &step, &loss, &tail) == 3 && layer >= 0,
             "{}: line {}: '{}' is not 'layer,step,loss'", path, ln, line);
    by_layer[(int)layer][step] = loss;
    steps.insert(step);
  }
  FQ_CHECK(!by_layer.empty(), "{}: no loss rows", path);
  LossCurves c;
  c.table.columns.push_back("step");
  for (const auto& [layer, _] : by_layer) {
    c.layers.push_back(layer);
    c.table.columns.push_back(fmt::format("layer{}", layer));
  }
  for (int64_t step : steps) {
    std::vector<double> row{(double)step};
    for (const auto& [layer, m] : by_layer) {
      auto it = m.find(step);
      row.push_back(it == m.end() ? kNaN : it->second);
    }
    c.table.rows.push_back(std::move(row));
  }
  return c;
}

ArtifactLosses read_artifact_losses(const std::string& dir) {
  const std::string mpath = path_join(dir, "manifest.json");
  FQ_CHECK(is_directory(dir), "{}: not a directory (expected a flatquant artifact)", dir);
  FQ_CHECK(file_exists(mpath), "{}: no manifest.json (expected a flatquant artifact)", dir);
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(read_file(mpath));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: invalid JSON: {}", mpath, e.what());
  }
  FQ_CHECK(m.is_object() && m.value("format", std::string()) == "flatquant-artifact",
           "{}: format is not 'flatquant-artifact'", mpath);
  ArtifactLosses a;
  a.dir = dir;
  a.method = m.contains("method") && m["method"].is_string() ? m["method"].get<std::string>() : "?";
  if (m.contains("recipe")) {
    const auto& r = m["recipe"];
    a.recipe = r.is_string() ? r.get<std::string>() : (r.is_object() ? r.value("name", std::string()) : "");
  }
  if (m.contains("layers")) {
    FQ_CHECK(m["layers"].is_array(), "{}: 'layers' is not an array", mpath);
    for (const auto& l : m["layers"]) {
      FQ_CHECK(l.is_object() && l.contains("layer") && l["layer"].is_number_integer() && l.contains("final_loss") &&
                   l["final_loss"].is_number(),
               "{}: a 'layers' entry lacks an integer 'layer' or a numeric 'final_loss'", mpath);
      a.final_loss.emplace_back(l["layer"].get<int>(), l["final_loss"].get<double>());
    }
  }
  return a;
}

std::vector<std::string> plot_calibration(const std::vector<std::string>& artifacts, const std::string& out,
                                          Size size) {
  FQ_CHECK(!artifacts.empty(), "plot calibration: no artifact directory given");
  std::vector<ArtifactLosses> all;
  for (const auto& d : artifacts) all.push_back(read_artifact_losses(d));
  // Loss curves: the first artifact that has a log (baselines without training have none, or an empty one).
  size_t first = all.size();
  for (size_t i = 0; i < all.size() && first == all.size(); ++i)
    if (has_log_rows(path_join(all[i].dir, "calib_log.csv"))) first = i;
  FQ_CHECK(first < all.size() || all.size() > 1, "{}: no calib_log.csv rows (the artifact was not calibrated)",
           path_join(artifacts[0], "calib_log.csv"));
  gnuplot_binary();  // after the input checks, before anything is written
  std::filesystem::create_directories(out);
  std::vector<std::string> written;
  if (first < all.size()) {
    const LossCurves c = read_calib_log(path_join(all[first].dir, "calib_log.csv"));
    Panel p;
    p.title = "";
    p.xlabel = "training step";
    p.ylabel = "layer output MSE";
    for (size_t i = 0; i < c.layers.size(); ++i) {
      p.columns.push_back(i + 1);
      p.legends.push_back(fmt::format("layer {}", c.layers[i]));
    }
    const std::string png = path_join(out, "calib_loss_curves.png");
    line_figure(png,
                c.table,
                fmt::format("Calibration loss per layer: {} {} ({})", all[first].method, all[first].recipe,
                            basename_of(all[first].dir)),
                {p}, size);
    written.push_back(png);
  } else {
    std::fprintf(stderr, "plot calibration: no artifact has calibration log rows; no loss curves\n");
  }

  if (all.size() > 1) {
    // Legends: the method, with the directory name where two artifacts share a method.
    std::map<std::string, int> count;
    for (const auto& a : all) ++count[a.method];
    Table t;
    t.columns.push_back("layer");
    std::set<int> layers;
    std::vector<const ArtifactLosses*> used;
    for (const auto& a : all) {
      if (a.final_loss.empty()) {
        std::fprintf(stderr, "plot calibration: %s (%s) has no per-layer losses in manifest.json; left out\n",
                     a.dir.c_str(), a.method.c_str());
        continue;
      }
      used.push_back(&a);
      t.columns.push_back(count[a.method] > 1 ? fmt::format("{} ({})", a.method, basename_of(a.dir)) : a.method);
      for (const auto& [l, _] : a.final_loss) layers.insert(l);
    }
    FQ_CHECK(!used.empty(), "plot calibration: none of the {} artifacts has per-layer losses in manifest.json",
             all.size());
    for (int l : layers) {
      std::vector<double> row{(double)l};
      for (const ArtifactLosses* a : used) {
        double v = kNaN;
        for (const auto& [ll, loss] : a->final_loss)
          if (ll == l) v = loss;
        row.push_back(v);
      }
      t.rows.push_back(std::move(row));
    }
    const std::string png = path_join(out, "calib_final_loss.png");
    bar_figure(png, t, "Final calibration loss per layer and method", "layer", "layer output MSE (final)", true,
               size);
    written.push_back(png);
  }
  return written;
}

}  // namespace fq::plot
