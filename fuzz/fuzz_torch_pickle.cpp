// torch.save reader: zip container, pickle VM and tensor materialization. CRC checks are off so that
// mutations of data.pkl reach the VM instead of stopping at the zip layer.
#include "fuzz_util.h"
#include "io/torch_pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fq::fuzz::input_file(data, size, "flat_matrices.pth");
  return fq::fuzz::expect_ok_or_error([&] {
    fq::TorchLoadOptions opts;
    opts.verify_crc = false;
    const fq::TorchValue v = fq::load_torch_file(path, opts);
    // Walk the tree: every tensor must hold exactly numel() materialized elements.
    std::vector<const fq::TorchValue*> todo = {&v};
    while (!todo.empty()) {
      const fq::TorchValue* x = todo.back();
      todo.pop_back();
      if (x->is(fq::TorchValue::Kind::Dict)) {
        for (const auto& e : x->entries()) todo.push_back(&e.second);
      } else if (x->is(fq::TorchValue::Kind::List) || x->is(fq::TorchValue::Kind::Tuple)) {
        for (const auto& e : x->items()) todo.push_back(&e);
      } else if (x->is(fq::TorchValue::Kind::Tensor)) {
        const fq::TorchTensor& t = x->as_tensor();
        const size_t n = t.is_floating() ? t.f32.size() : t.i64.size();
        if ((int64_t)n != t.numel()) std::abort();
      }
    }
  });
}
