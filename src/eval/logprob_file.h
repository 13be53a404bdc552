// The log-probabilities of a perplexity run saved for a later KL-divergence comparison (--save-logits /
// --kld-base), as one safetensors file:
//   "tokens"   I32 [windows, seq_len]             the evaluated windows
//   "logprobs" F32|F16 [windows, seq_len-1, n_vocab]  log-softmax of every predicting position
//   __metadata__: format "flatquant-logprobs", version "1"
// Storage: full fp32 rows when the whole tensor is at most 256 MiB in fp32 (exact KLD), otherwise fp16
// (log-probs in [-65504, 0], about 3 significant digits; enough for KLD means around 1e-3 and above). More
// than 4 GiB is refused up front: evaluate fewer windows (--limit-windows).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace fq {
class SafeTensors;
}

namespace fq::eval {

class LogprobWriter {
 public:
  LogprobWriter(std::string path, int64_t windows, int64_t seq_len, int64_t n_vocab, const int32_t* stream);
  // Rows [first_row, first_row + n_rows) of window `window`, [n_rows, n_vocab].
  void add(int64_t window, int64_t first_row, int64_t n_rows, const float* logprobs);
  // Writes the file atomically.
  void write() const;
  DType dtype() const { return dtype_; }

 private:
  std::string path_;
  int64_t windows_, seq_len_, n_vocab_;
  DType dtype_;
  std::vector<int32_t> tokens_;
  std::vector<float> f32_;
  std::vector<uint16_t> f16_;
};

class LogprobReader {
 public:
  // Opens and validates the file (names, dtypes, shapes); throws fq::Error naming the file.
  explicit LogprobReader(const std::string& path);
  ~LogprobReader();
  int64_t windows() const { return windows_; }
  int64_t seq_len() const { return seq_len_; }
  int64_t n_vocab() const { return n_vocab_; }
  // Throws unless the file holds exactly these windows of `stream` (same count, seq_len and tokens).
  void check_same_tokens(const int32_t* stream, int64_t windows, int64_t seq_len, int64_t n_vocab) const;
  // Row `row` of window `window` as fp32 [n_vocab].
  void row(int64_t window, int64_t row, float* out) const;

 private:
  std::string path_;
  std::unique_ptr<SafeTensors> st_;
  int64_t windows_ = 0, seq_len_ = 0, n_vocab_ = 0;
  DType dtype_ = DType::F32;
  const uint8_t* tokens_ = nullptr;
  const uint8_t* logprobs_ = nullptr;
};

}  // namespace fq::eval
