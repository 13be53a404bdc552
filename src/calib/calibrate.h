// Model-level FlatQuant calibration (`flatquant calibrate`), behind a plain C++ interface: this header
// includes no LibTorch header, so tools/ can call it without parsing torch.
//
// Layer by layer (flatquant.md 1.6): the FP pass of layer i over all calibration samples gives the targets
// and the diag-init statistics, the layer's transforms and clipping are trained, and the FP outputs become
// layer i+1's inputs. Each finished layer is saved to <out>.partial/ (resume), and at the end
// the artifact (src/model/artifact.h: folded, quantized weights + online transforms + transforms.safetensors +
// calib_log.csv) is written atomically. See docs/calibration.md.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fq::calib {

// The `--set key=value` settings. Defaults are the paper's.
struct CalibSettings {
  int epochs = 15;          // calib.epochs   >= 0
  int64_t nsamples = 128;   // calib.nsamples >= 1, a multiple of calib.bsz
  int64_t seqlen = 2048;    // calib.seqlen   >= 2, capped at the model context (max_position_embeddings)
  int64_t bsz = 4;          // calib.bsz      >= 1
  double lr = 5e-3;         // calib.lr       > 0 (clipping parameters get 10x)
  uint64_t seed = 0;        // seed           (window sampling and transform init)
  std::string amp = "off";  // calib.amp      off | fp16 | bf16: autocast of the training forward on CUDA
                            //                (the original: fp16 for Llama); ignored on the CPU

  // Applies "key=value" strings in order. Throws fq::Error naming the key for unknown keys, unparsable or
  // out-of-range values.
  void apply(const std::vector<std::string>& sets);
  // Cross-field checks (nsamples % bsz == 0); throws naming the keys.
  void validate() const;
};

struct CalibrateOptions {
  std::string model;       // HF model directory
  std::string calib_data;  // any text file
  std::string out;         // artifact directory
  std::string device = "cpu";  // "cpu" | "cuda"
  std::string recipe = "w4a4kv4";  // built-in name or JSON path
  std::string method = "flatquant";  // flatquant | rtn | hadamard | smoothquant
  std::string weight_quantizer;      // rtn | gptq; empty = the recipe's
  std::string save_transforms;       // also write transforms.safetensors here
  std::string load_transforms;       // skip training: transforms.safetensors or the original's flat_matrices.pth
  std::vector<std::string> sets;  // --set key=value
  int stop_after_layers = -1;     // hidden (tests): stop after this many layers finished in this run
  bool progress = true;           // per-layer lines and the progress bar on stderr
  int threads = 0;                // torch intra-op threads; 0 = leave the default
};

// Runs the calibration; returns 0 on success (also when stopped by stop_after_layers). Throws fq::Error.
int run_calibrate(const CalibrateOptions& opt);

// The fake-quantized model of a calibrated artifact as the calibration's LibTorch layers compute it (FlatLayer
// Eval mode: the layers rebuilt from the source model and transforms.safetensors as the export does, with the
// artifact's dequantized weights installed), for cross-checking the CPU runtime: logits [n_tokens, n_vocab]
// for one sequence at positions 0..n-1. Needs the source model directory recorded in the manifest.
std::vector<float> torch_fake_quant_logits(const std::string& art_dir, const std::vector<int32_t>& tokens);

// Calibration windows: the whole text tokenized as one stream (BOS at the start only), then `nsamples`
// windows of `seqlen` tokens. Start of window j: r_j mod (n_tokens - seqlen + 1), r_j the j-th output of
// std::mt19937_64 seeded with `seed` (portable: no std::uniform_int_distribution, whose algorithm differs
// between standard libraries). Throws when the stream is shorter than seqlen. Returns nsamples * seqlen ids.
std::vector<int32_t> sample_windows(const std::vector<int32_t>& stream, int64_t nsamples, int64_t seqlen,
                                    uint64_t seed, const std::string& what);

}  // namespace fq::calib
