// `flatquant calibrate --model HF_DIR --calib-data FILE --out ART_DIR [--recipe w4a4kv4] [--device cpu|cuda]
//   [--method flatquant|rtn|hadamard|smoothquant] [--weight-quantizer rtn|gptq] [--save-transforms F]
//   [--load-transforms F] [--set key=value ...]`
// FlatQuant calibration (src/calib/calibrate.h, docs/calibration.md). The command always exists; without
// LibTorch (FLATQUANT_TORCH=OFF) it fails with one line. This file includes no torch header.
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "flatquant/error.h"
#ifdef FLATQUANT_WITH_TORCH
#include "calib/calibrate.h"
#endif

namespace fq::cli {

namespace {
struct Options {
  std::string model, calib_data, out, device = "cpu", recipe = "w4a4kv4", method = "flatquant";
  std::string weight_quantizer, save_transforms, load_transforms;
  std::vector<std::string> sets;
  int stop_after_layers = -1;
  int threads = 0;
};
}  // namespace

Runner register_calibrate(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* c = app.add_subcommand("calibrate", "Calibrate FlatQuant transforms and clipping layer by layer (LibTorch)");
  c->add_option("--model", o->model, "HF model directory")->required();
  c->add_option("--calib-data", o->calib_data,
                "calibration text file (tokenized as one stream); not needed with --load-transforms and RTN");
  c->add_option("--out", o->out, "artifact directory (resumable work in <out>.partial)")->required();
  c->add_option("--device", o->device, "cpu or cuda")->capture_default_str();
  c->add_option("--recipe", o->recipe, "w4a4kv4, w4a16, w4a8, w8a8, w16a16kv4 or a recipe .json")->capture_default_str();
  c->add_option("--method", o->method, "flatquant, or a baseline: rtn, hadamard, smoothquant")->capture_default_str();
  c->add_option("--weight-quantizer", o->weight_quantizer, "rtn or gptq (default: the recipe's)");
  c->add_option("--save-transforms", o->save_transforms, "also write the trained transforms to this .safetensors");
  c->add_option("--load-transforms", o->load_transforms,
                "skip training: transforms.safetensors of an earlier run, or the original's flat_matrices.pth");
  c->add_option("--set", o->sets,
                "key=value: calib.epochs (15), calib.nsamples (128), calib.seqlen (2048), calib.bsz (4), "
                "calib.lr (5e-3), seed (0)");
  c->add_option("--threads", o->threads, "CPU threads for LibTorch (0 = its default)");
  // Hidden: stop after N layers finished in this run (tests the resume).
  c->add_option("--stop-after-layers", o->stop_after_layers)->group("");
  return [o]() -> int {
#ifdef FLATQUANT_WITH_TORCH
    calib::CalibrateOptions co;
    co.model = o->model;
    co.calib_data = o->calib_data;
    co.out = o->out;
    co.device = o->device;
    co.recipe = o->recipe;
    co.method = o->method;
    co.weight_quantizer = o->weight_quantizer;
    co.save_transforms = o->save_transforms;
    co.load_transforms = o->load_transforms;
    co.sets = o->sets;
    co.stop_after_layers = o->stop_after_layers;
    co.threads = o->threads;
    return calib::run_calibrate(co);
#else
    fail("flatquant was built without LibTorch (FLATQUANT_TORCH=OFF): calibrate is unavailable");
#endif
  };
}

}  // namespace fq::cli
