// `flatquant plot flatness`: how flat the inputs of a layer's linears are under different pre-quantization
// transforms (the FlatQuant paper's flatness figure; docs/plots.md). For each of the four inputs of layer N
// (q/k/v: post-RMSNorm; o_proj: attention output; gate/up: post-attention RMSNorm; down: silu(g) * u), over
// the calibration tokens of the FP reference decoder:
//   act_*: per-channel max |x|, sorted descending; w_*: per-input-channel max |w| of the consumer weights
//   (stacked, e.g. q, k and v), sorted descending; under
//   none        x, W
//   smoothquant x / s, W diag(s), s_j = sqrt(max|x_j|) / sqrt(max|W_:j|)
//   hadamard    x M, W M with M = H_L (x) H_R (ref::randomized_hadamard of the ref::decompose_dim factors;
//               heads x head_dim for o_proj)
//   artifact    the artifact's online transform applied to the FP activations: (x * s)(A (x) B) for the two
//               norm-fed inputs, with s = artifact_norm / fp_norm (the artifact folds s into the norm
//               weights); head_mix(Po) for o_proj (Pv is folded into v_proj and cannot be recovered, so it is
//               not applied); (A (x) B) without the diag scale for down (s_down is folded into up's rows);
//               weights: the artifact's dequantized weights.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "eval/plot.h"
#include "model/artifact.h"
#include "model/weights.h"

namespace fq::plot {

struct FlatnessSite {
  std::string name;   // qkv | o_proj | gate_up | down_proj
  std::string label;  // human-readable, for titles
  // Columns: channel (0-based rank), act_none, act_smoothquant, act_hadamard, act_artifact, w_none,
  // w_smoothquant, w_hadamard, w_artifact; one row per channel.
  Table table;
};

struct FlatnessOptions {
  int layer = 0;
  int64_t window = 512;  // tokens per forward (the decoder is reset between windows)
  int threads = 0;
  uint64_t seed = 0;     // Hadamard sign seeds: seed (left factor), seed + 1 (right factor)
};

// The four sites of `opt.layer`. `art` must have the model's shapes. Throws fq::Error (one line) on a bad
// layer index, mismatched shapes or too few tokens.
std::vector<FlatnessSite> compute_flatness(const ModelWeights& w, const Artifact& art,
                                           const std::vector<int32_t>& tokens, const FlatnessOptions& opt);

// The column indices of the table above.
enum FlatnessColumn : size_t {
  kChannel = 0, kActNone, kActSmooth, kActHadamard, kActArtifact, kWNone, kWSmooth, kWHadamard, kWArtifact
};

// Writes <out>/<prefix>_<site>.png (+ .csv) for each site; returns the PNG paths.
std::vector<std::string> plot_flatness(const std::vector<FlatnessSite>& sites, const std::string& out,
                                       const std::string& prefix, const std::string& title_suffix,
                                       const std::string& method, Size size = {});

}  // namespace fq::plot
