// llama2.c tokenizer .bin: the runtime loader (to EOF) with encode/decode, then the converter's reader and
// tokenizer.json builder (import_llama2c against a synthesized 1-layer checkpoint of the same vocab size),
// and the built tokenizer.json read back by our own loader.
#include <cstring>
#include <string>

#include "fuzz_util.h"
#include "io/convert.h"
#include "io/tokenizer.h"
#include "io/tokenizer_loaders.h"

namespace {

// dim 2, hidden 2, 1 layer, 1 head, 1 kv head, seq_len 1, shared classifier.
std::string synth_checkpoint(int32_t vocab) {
  const int32_t h[7] = {2, 2, 1, 1, 1, vocab, 1};
  const int64_t n_floats = (int64_t)vocab * 2 + 2 + 4 + 2 * 4 + 4 + 2 + 3 * 4 + 2 + 1 * 2;
  std::string b(reinterpret_cast<const char*>(h), sizeof h);
  b.append((size_t)n_floats * 4, '\0');
  return b;
}

void exercise(const fq::Tokenizer& t) {
  for (const char* s : fq::fuzz::kSampleTexts) {
    const std::vector<int32_t> ids = t.encode(s);
    for (int32_t id : ids)
      if (id < 0 || id >= t.n_vocab()) std::abort();
    (void)t.decode(ids);
  }
  for (int32_t i = 0; i < t.n_vocab() && i < 1024; ++i) (void)t.piece(i);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fq::fuzz::input_file(data, size, "tokenizer.bin");
  int32_t n_vocab = 0;
  fq::fuzz::expect_ok_or_error([&] {
    auto t = fq::tok::load_llama2c(path);
    n_vocab = t->n_vocab();
    exercise(*t);
  });
  if (n_vocab < 3 || n_vocab > 4096) return 0;
  const std::string ck = synth_checkpoint(n_vocab);
  const std::string ck_path = fq::fuzz::input_file(reinterpret_cast<const uint8_t*>(ck.data()), ck.size(), "model.bin");
  return fq::fuzz::expect_ok_or_error([&] {
    const fq::HfModel m = fq::import_llama2c(ck_path, path);
    exercise(*fq::tok::load_hf_json_text(m.tokenizer.tokenizer.dump(), "converted tokenizer.json"));
  });
}
