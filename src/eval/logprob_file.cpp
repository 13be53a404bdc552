#include "eval/logprob_file.h"

#include <cstring>
#include <filesystem>

#include "flatquant/error.h"
#include "io/safetensors.h"

namespace fq::eval {

namespace {
constexpr uint64_t kF32Limit = 256ull << 20;
constexpr uint64_t kLimit = 4ull << 30;
}  // namespace

LogprobWriter::LogprobWriter(std::string path, int64_t windows, int64_t seq_len, int64_t n_vocab,
                             const int32_t* stream)
    : path_(std::move(path)), windows_(windows), seq_len_(seq_len), n_vocab_(n_vocab) {
  FQ_CHECK(windows > 0 && seq_len >= 2 && n_vocab > 0, "{}: nothing to save ({} windows of {} tokens, vocab {})",
           path_, windows, seq_len, n_vocab);
  // The file is written at the end of the run: fail now, not after the whole evaluation, when it cannot be.
  const std::filesystem::path parent = std::filesystem::path(path_).parent_path();
  FQ_CHECK(parent.empty() || std::filesystem::is_directory(parent), "{}: directory {} does not exist", path_,
           parent.string());
  const uint64_t count = (uint64_t)windows * (uint64_t)(seq_len - 1) * (uint64_t)n_vocab;
  dtype_ = count * 4 <= kF32Limit ? DType::F32 : DType::F16;
  FQ_CHECK(count * dtype_size(dtype_) <= kLimit,
           "{}: {} windows x {} positions x {} vocab log-probs would take {:.1f} GiB (limit 4 GiB); use "
           "--limit-windows",
           path_, windows, seq_len - 1, n_vocab, (double)(count * dtype_size(dtype_)) / (1ull << 30));
  tokens_.assign(stream, stream + windows * seq_len);
  if (dtype_ == DType::F32)
    f32_.assign(count, 0.0f);
  else
    f16_.assign(count, 0);
}

void LogprobWriter::add(int64_t window, int64_t first_row, int64_t n_rows, const float* lp) {
  FQ_ASSERT(window >= 0 && window < windows_ && first_row >= 0 && first_row + n_rows <= seq_len_ - 1);
  const size_t off = ((size_t)window * (size_t)(seq_len_ - 1) + (size_t)first_row) * (size_t)n_vocab_;
  const size_t n = (size_t)n_rows * (size_t)n_vocab_;
  if (dtype_ == DType::F32) {
    std::memcpy(f32_.data() + off, lp, n * sizeof(float));
  } else {
    for (size_t i = 0; i < n; ++i) f16_[off + i] = f32_to_f16(lp[i]);
  }
}

void LogprobWriter::write() const {
  SafeTensorsWriter w;
  w.set_metadata("format", "flatquant-logprobs");
  w.set_metadata("version", "1");
  w.add("tokens", DType::I32, {windows_, seq_len_}, tokens_.data(), tokens_.size() * sizeof(int32_t));
  const std::vector<int64_t> shape = {windows_, seq_len_ - 1, n_vocab_};
  if (dtype_ == DType::F32)
    w.add("logprobs", DType::F32, shape, f32_.data(), f32_.size() * sizeof(float));
  else
    w.add("logprobs", DType::F16, shape, f16_.data(), f16_.size() * sizeof(uint16_t));
  w.write(path_);
}

LogprobReader::LogprobReader(const std::string& path) : path_(path), st_(std::make_unique<SafeTensors>(path)) {
  auto fmt_it = st_->metadata().find("format");
  FQ_CHECK(fmt_it != st_->metadata().end() && fmt_it->second == "flatquant-logprobs",
           "{}: not a flatquant log-prob file (metadata 'format' is not 'flatquant-logprobs')", path);
  const TensorInfo* tok = st_->find("tokens");
  const TensorInfo* lp = st_->find("logprobs");
  FQ_CHECK(tok != nullptr, "{}: missing tensor 'tokens'", path);
  FQ_CHECK(lp != nullptr, "{}: missing tensor 'logprobs'", path);
  FQ_CHECK(tok->dtype == DType::I32 && tok->shape.size() == 2,
           "{}: tensor 'tokens' must be I32 [windows, seq_len] (found {} {})", path, dtype_name(tok->dtype),
           shape_str(tok->shape));
  FQ_CHECK((lp->dtype == DType::F32 || lp->dtype == DType::F16) && lp->shape.size() == 3,
           "{}: tensor 'logprobs' must be F32 or F16 [windows, seq_len-1, n_vocab] (found {} {})", path,
           dtype_name(lp->dtype), shape_str(lp->shape));
  windows_ = tok->shape[0];
  seq_len_ = tok->shape[1];
  n_vocab_ = lp->shape[2];
  FQ_CHECK(windows_ > 0 && seq_len_ >= 2 && n_vocab_ > 0 && lp->shape[0] == windows_ && lp->shape[1] == seq_len_ - 1,
           "{}: tensor 'logprobs' shape {} does not match tokens {} (expected [{}, {}, n_vocab])", path,
           shape_str(lp->shape), shape_str(tok->shape), windows_, seq_len_ - 1);
  dtype_ = lp->dtype;
  tokens_ = st_->data(*tok);
  logprobs_ = st_->data(*lp);
}

LogprobReader::~LogprobReader() = default;

void LogprobReader::check_same_tokens(const int32_t* stream, int64_t windows, int64_t seq_len,
                                      int64_t n_vocab) const {
  FQ_CHECK(windows == windows_ && seq_len == seq_len_,
           "{}: the baseline has {} windows of {} tokens but this run has {} windows of {} tokens", path_, windows_,
           seq_len_, windows, seq_len);
  FQ_CHECK(n_vocab == n_vocab_, "{}: the baseline vocabulary has {} entries but the model has {}", path_, n_vocab_,
           n_vocab);
  for (int64_t i = 0; i < windows * seq_len; ++i) {
    int32_t t;
    std::memcpy(&t, tokens_ + i * 4, 4);
    FQ_CHECK(t == stream[i], "{}: token {} of window {} differs from this run (baseline {}, now {})", path_,
             i % seq_len, i / seq_len, t, stream[i]);
  }
}

void LogprobReader::row(int64_t window, int64_t r, float* out) const {
  FQ_ASSERT(window >= 0 && window < windows_ && r >= 0 && r < seq_len_ - 1);
  const size_t off = ((size_t)window * (size_t)(seq_len_ - 1) + (size_t)r) * (size_t)n_vocab_;
  if (dtype_ == DType::F32) {
    std::memcpy(out, logprobs_ + off * 4, (size_t)n_vocab_ * 4);
  } else {
    for (int64_t v = 0; v < n_vocab_; ++v) {
      uint16_t h;
      std::memcpy(&h, logprobs_ + (off + (size_t)v) * 2, 2);
      out[v] = f16_to_f32(h);
    }
  }
}

}  // namespace fq::eval
