#include "io/convert.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <cstdlib>

#include "core/fs.h"
#include "core/progress.h"
#include "flatquant/error.h"
#include "io/safetensors.h"

namespace fq {

std::string hf_layer_name(int64_t layer, const char* suffix) {
  return fmt::format("model.layers.{}.{}", layer, suffix);
}

double shortest_float_decimal(float f) {
  char buf[64];
  for (int prec = 1; prec <= 9; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
    if (std::strtof(buf, nullptr) == f) return std::strtod(buf, nullptr);
  }
  return (double)f;
}

namespace {

const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::F16:
      return "float16";
    case DType::BF16:
      return "bfloat16";
    default:
      return "float32";
  }
}

}  // namespace

void write_hf_dir(HfModel& m, const std::string& out_dir, bool force, DType dtype, bool progress) {
  FQ_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16,
           "{}: output dtype {} is not supported (f32, f16 or bf16)", out_dir, dtype_name(dtype));
  // The runtime refuses non-finite weights (load_hf_weights); refuse them here too, before anything is
  // written, and values that the narrower output dtype would turn into infinities.
  const float limit = dtype == DType::F16 ? 65504.0f : std::numeric_limits<float>::max();
  for (const HfTensor& t : m.tensors)
    for (size_t k = 0; k < t.data.size(); ++k)
      if (!(std::fabs(t.data[k]) <= limit))
        fail("{}: tensor '{}': element {} is {} ({})", m.source, t.name, k, t.data[k],
             std::isfinite(t.data[k]) ? fmt::format("out of range for {}", dtype_name(dtype)) : "not finite");
  AtomicDir dir(out_dir, force);
  m.cfg.torch_dtype = torch_dtype_name(dtype);

  nlohmann::json config = m.cfg.to_json();
  write_file_atomic(dir.file("config.json"), config.dump(2) + "\n");

  SafeTensorsWriter w;
  w.set_metadata("format", "pt");  // what transformers' safe_open expects for PyTorch checkpoints
  int64_t total = 0;
  for (const HfTensor& t : m.tensors) total += (int64_t)t.data.size();
  Progress bar("convert: writing tensors", total, progress);
  int64_t done = 0;
  for (HfTensor& t : m.tensors) {
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    FQ_ASSERT(numel == (int64_t)t.data.size());
    w.add_from_f32(t.name, dtype, t.shape, t.data.data());
    done += numel;
    std::vector<float>().swap(t.data);  // release as we go: peak memory ~ one copy of the model
    bar.update(done);
  }
  bar.finish();
  w.write(dir.file("model.safetensors"));

  write_file_atomic(dir.file("tokenizer.json"), m.tokenizer.tokenizer.dump(2) + "\n");
  write_file_atomic(dir.file("tokenizer_config.json"), m.tokenizer.config.dump(2) + "\n");
  write_file_atomic(dir.file("generation_config.json"), m.generation_config.dump(2) + "\n");
  for (const auto& [name, src] : m.copy_files) write_file_atomic(dir.file(name), read_file(src));
  dir.commit();
}

}  // namespace fq
