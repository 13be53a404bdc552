// Shared by the fuzz targets. The readers take paths (as the CLI gives them), so each input is written to
// a file of this process first. A reader may reject any input with fq::Error -- that is the expected
// outcome; every other exception escapes and libFuzzer reports it (std::terminate -> abort), as it does
// crashes, sanitizer reports, timeouts and out-of-memory.
#pragma once
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "flatquant/error.h"

namespace fq::fuzz {

// Writes the input to "<tmp>/fq-fuzz-<pid>/<name>" (plain write: nothing else reads it concurrently) and
// returns the path. The directory is made once per process and removed at exit.
inline std::string input_file(const uint8_t* data, size_t size, const std::string& name) {
  static const std::string dir = [] {
    const char* t = std::getenv("TMPDIR");
    std::string d = std::string(t && *t ? t : "/tmp") + "/fq-fuzz-" + std::to_string(::getpid());
    std::string cmd = "mkdir -p '" + d + "'";
    if (std::system(cmd.c_str()) != 0) std::abort();
    static std::string cleanup;
    cleanup = "rm -rf '" + d + "'";
    std::atexit([] { (void)!std::system(cleanup.c_str()); });
    return d;
  }();
  const std::string path = dir + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

// Runs `f`, treating fq::Error as the normal rejection of a bad input. FQ_FUZZ_VERBOSE=1 prints the
// message (to see why a seed is rejected: FQ_FUZZ_VERBOSE=1 build-fuzz/fuzz_<target> file...).
template <typename F>
int expect_ok_or_error(F&& f) {
  static const bool verbose = std::getenv("FQ_FUZZ_VERBOSE") != nullptr;
  try {
    f();
    if (verbose) std::fprintf(stderr, "fuzz: accepted\n");
  } catch (const fq::Error& e) {
    if (verbose) std::fprintf(stderr, "fuzz: rejected: %s\n", e.what());
  }
  return 0;
}

// Texts that exercise a tokenizer: ASCII, spaces, newlines, multi-byte UTF-8, invalid UTF-8, special-token
// look-alikes.
inline const char* const kSampleTexts[] = {
    "Once upon a time, there was a little girl named Lily.",
    "  two  spaces\n\nand\ttabs ",
    "h\xC3\xA9llo \xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\xA4\x97",
    "bad \xFF\xFE utf8 \xC3",
    "<s></s><unk><|endoftext|><|im_start|>",
    "",
};

}  // namespace fq::fuzz
