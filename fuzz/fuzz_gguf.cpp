// GGUF reader: header, metadata and tensor table validation, dequantization of every tensor, then the
// whole import (config + tokenizer conversion) as `convert --from gguf` runs it, without writing.
#include "fuzz_util.h"
#include "io/convert.h"
#include "io/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fq::fuzz::input_file(data, size, "model.gguf");
  fq::fuzz::expect_ok_or_error([&] {
    fq::GgufFile g(path);
    for (const auto& t : g.tensors()) {
      if (!fq::ggml_type_dequantizable(t.type)) continue;
      const std::vector<float> v = g.read_f32(t);
      if ((int64_t)v.size() != t.numel()) std::abort();
    }
  });
  return fq::fuzz::expect_ok_or_error([&] { fq::import_gguf(path); });
}
