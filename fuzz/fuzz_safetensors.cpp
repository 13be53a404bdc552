// safetensors reader: header parsing and validation, then every tensor converted to fp32.
#include "fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fq::fuzz::input_file(data, size, "model.safetensors");
  return fq::fuzz::expect_ok_or_error([&] {
    fq::SafeTensors st(path);
    for (const auto& t : st.tensors()) {
      if (st.find(t.name) != &t) std::abort();  // the index must agree with the list
      const std::vector<float> v = st.to_f32(t);
      if ((int64_t)v.size() != t.numel()) std::abort();
    }
  });
}
