// `flatquant plot calibration`: the per-layer loss curves of calib_log.csv and the final per-layer loss of
// several artifacts (manifest.json "layers") as PNG + CSV (docs/plots.md).
#pragma once
#include <string>
#include <vector>

#include "eval/plot.h"

namespace fq::plot {

// calib_log.csv ("layer,step,loss") as a wide table: column 0 = step, column 1 + i = the loss of the i-th
// layer present (NaN where that layer has no such step); `layers` = those layer indices, ascending.
struct LossCurves {
  std::vector<int> layers;
  Table table;
};
LossCurves read_calib_log(const std::string& path);

// What the bar chart needs from manifest.json: method, recipe, and layers[].final_loss by layer.
struct ArtifactLosses {
  std::string dir, method, recipe;
  std::vector<std::pair<int, double>> final_loss;  // (layer, loss), as listed
};
ArtifactLosses read_artifact_losses(const std::string& dir);

// Writes <out>/calib_loss_curves.png (from the first artifact with a calib_log.csv) and, with more than one
// artifact, <out>/calib_final_loss.png (artifacts without per-layer losses are left out, with a note on
// stderr). Returns the PNG paths written.
std::vector<std::string> plot_calibration(const std::vector<std::string>& artifacts, const std::string& out,
                                          Size size = {});

}  // namespace fq::plot
