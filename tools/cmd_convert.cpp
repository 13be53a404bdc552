// flatquant convert: llama2.c / GGUF -> Hugging Face model directory.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "commands.h"
#include "core/dtype.h"
#include "flatquant/error.h"
#include "io/convert.h"

namespace fq::cli {

namespace {

struct ConvertArgs {
  std::string from, model, tokenizer, out, dtype = "f32";
  bool force = false;
};

}  // namespace

Runner register_convert(CLI::App& app) {
  auto args = std::make_shared<ConvertArgs>();
  auto* sub = app.add_subcommand(
      "convert", "Convert a llama2.c checkpoint or a GGUF file into a Hugging Face model directory");
  sub->add_option("--from", args->from, "Input format")
      ->required()
      ->check(CLI::IsMember({"llama2c", "gguf"}));
  sub->add_option("--model", args->model, "Input model file (llama2.c .bin or .gguf)")->required();
  sub->add_option("--tokenizer", args->tokenizer,
                  "llama2.c tokenizer .bin (default: tok<vocab>.bin or tokenizer.bin beside the model)");
  sub->add_option("--out", args->out, "Output directory (written atomically)")->required();
  sub->add_flag("--force", args->force, "Replace an existing output directory");
  sub->add_option("--dtype", args->dtype, "Stored weight dtype (f32 keeps GGUF dequantized values exact)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  return [args]() -> int {
    const auto t0 = std::chrono::steady_clock::now();
    if (args->from == "gguf" && !args->tokenizer.empty())
      fail("convert: --tokenizer is only used with --from llama2c (a GGUF file carries its tokenizer)");
    const DType dtype = args->dtype == "f16" ? DType::F16 : args->dtype == "bf16" ? DType::BF16 : DType::F32;
    // A status line for people watching a long read; logs get the result line on stdout (and an error
    // stays the only line on stderr).
    if (::isatty(2)) std::fprintf(stderr, "convert: reading %s (%s)\n", args->model.c_str(), args->from.c_str());
    HfModel m =
        args->from == "llama2c" ? import_llama2c(args->model, args->tokenizer) : import_gguf(args->model);
    int64_t n_params = 0;
    for (const HfTensor& t : m.tensors) n_params += (int64_t)t.data.size();
    const size_t n_tensors = m.tensors.size();
    const ModelConfig cfg = m.cfg;
    write_hf_dir(m, args->out, args->force, dtype, true);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf(
        "converted %s -> %s: %s, %zu tensors, %.2fM params, vocab %lld, %lld layers, dtype %s (%.1f s)\n",
        args->model.c_str(), args->out.c_str(), cfg.architecture.c_str(), n_tensors, n_params / 1e6,
        (long long)cfg.n_vocab, (long long)cfg.n_layer, args->dtype.c_str(), secs);
    return 0;
  };
}

}  // namespace fq::cli
