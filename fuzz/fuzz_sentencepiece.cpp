// SentencePiece tokenizer.model (protobuf ModelProto, BPE): loading, then encode/decode of a few texts.
#include "fuzz_util.h"
#include "io/tokenizer.h"
#include "io/tokenizer_loaders.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fq::fuzz::input_file(data, size, "tokenizer.model");
  return fq::fuzz::expect_ok_or_error([&] {
    auto t = fq::tok::load_sentencepiece(path);
    for (const char* s : fq::fuzz::kSampleTexts) {
      const std::vector<int32_t> ids = t->encode(s);
      for (int32_t id : ids)
        if (id < 0 || id >= t->n_vocab()) std::abort();
      (void)t->decode(ids);
    }
    for (int32_t i = 0; i < t->n_vocab() && i < 1024; ++i) (void)t->piece(i);
  });
}
