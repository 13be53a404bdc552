// The CPU reference decoder behind the evaluators' CausalLM interface.
#pragma once
#include "eval/causal_lm.h"
#include "ref/decoder.h"

namespace fq::eval {

class RefCausalLM : public CausalLM {
 public:
  // `w` must outlive this object.
  RefCausalLM(const ModelWeights& w, int64_t max_ctx, int n_threads) : dec_(w, max_ctx, n_threads) {}
  int64_t n_vocab() const override { return dec_.config().n_vocab; }
  int64_t max_ctx() const override { return dec_.max_ctx(); }
  void reset() override { dec_.reset(); }
  void forward(const int32_t* tokens, int64_t n, float* logits) override { dec_.forward(tokens, n, logits); }
  ref::RefDecoder& decoder() { return dec_; }

 private:
  ref::RefDecoder dec_;
};

}  // namespace fq::eval
