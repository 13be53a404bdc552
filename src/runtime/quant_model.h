// The artifact CPU runtime (ref::QuantDecoder) as a generator DecoderModel.
#pragma once
#include "flatquant/error.h"
#include "ref/quant_decoder.h"
#include "runtime/generator.h"

namespace fq::runtime {

class QuantDecoderModel : public DecoderModel {
 public:
  QuantDecoderModel(const Artifact& a, ref::QuantMode mode, int64_t max_ctx, int n_threads)
      : dec_(a, mode, max_ctx, n_threads) {}
  int64_t n_vocab() const override { return dec_.config().n_vocab; }
  int64_t max_ctx() const override { return dec_.max_ctx(); }
  void reset() override { dec_.reset(); }
  void append(const int32_t* tokens, int64_t n, float* last_logits) override {
    FQ_ASSERT(n >= 1);
    // Only the last position's logits are needed: skip the LM head for the rest.
    if (n > 1) dec_.forward(tokens, n - 1, nullptr);
    dec_.forward(tokens + n - 1, 1, last_logits);
  }
  int n_threads() const { return dec_.n_threads(); }
  ref::QuantDecoder& decoder() { return dec_; }

 private:
  ref::QuantDecoder dec_;
};

}  // namespace fq::runtime
