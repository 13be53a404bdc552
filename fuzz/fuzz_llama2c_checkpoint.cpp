// llama2.c checkpoint: the whole import as `convert --from llama2c` runs it (header checks, exact size,
// RoPE row permutation), without writing. A tokenizer .bin with as many tokens as the header's vocab_size
// is synthesized so that the import gets past the tokenizer.
#include <cstring>
#include <string>

#include "fuzz_util.h"
#include "io/convert.h"

namespace {

std::string synth_tokenizer(int64_t vocab) {
  std::string b(4, '\0');
  const int32_t max_len = 8;
  std::memcpy(&b[0], &max_len, 4);
  for (int64_t i = 0; i < vocab; ++i) {
    std::string piece = i < 3 ? std::string(i == 0 ? "<unk>" : i == 1 ? "\n<s>\n" : "\n</s>\n")
                              : std::string(1, char('a' + i % 26)) + std::to_string(i / 26);
    const float score = -float(i);
    const int32_t len = (int32_t)piece.size();
    b.append(reinterpret_cast<const char*>(&score), 4);
    b.append(reinterpret_cast<const char*>(&len), 4);
    b += piece;
  }
  return b;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fq::fuzz::input_file(data, size, "model.bin");
  int64_t vocab = 3;
  if (size >= 24) {
    int32_t v;
    std::memcpy(&v, data + 20, 4);
    // The file size check bounds a valid vocab by the input size; keep the synthesized file small.
    if (v != INT32_MIN) vocab = v < 0 ? -(int64_t)v : v;
    if (vocab < 3 || vocab > 4096) vocab = 3;
  }
  const std::string tok = synth_tokenizer(vocab);
  const std::string tok_path = fq::fuzz::input_file(reinterpret_cast<const uint8_t*>(tok.data()), tok.size(), "tok.bin");
  return fq::fuzz::expect_ok_or_error([&] { fq::import_llama2c(path, tok_path); });
}
