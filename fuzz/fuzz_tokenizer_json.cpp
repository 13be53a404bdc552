// tokenizer.json (HF tokenizers, BPE): loading (vocab, merges, added tokens, normalizer, pre-tokenizer
// regexes, decoder), then encode/decode of a few texts and every piece.
#include <string_view>

#include "fuzz_util.h"
#include "io/tokenizer.h"
#include "io/tokenizer_loaders.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fq::fuzz::expect_ok_or_error([&] {
    auto t = fq::tok::load_hf_json_text(std::string_view(reinterpret_cast<const char*>(data), size), "tokenizer.json");
    for (const char* s : fq::fuzz::kSampleTexts) {
      const std::vector<int32_t> ids = t->encode(s);
      for (int32_t id : ids)
        if (id < 0 || id >= t->n_vocab()) std::abort();
      (void)t->decode(ids);
    }
    for (int32_t i = 0; i < t->n_vocab() && i < 1024; ++i) (void)t->piece(i);
  });
}
