// The model as the evaluators see it: a causal LM with a cache that appends tokens and yields fp32 logits.
// The CPU reference decoder and, later, the CUDA runtime both plug in here.
#pragma once
#include <cstdint>

namespace fq::eval {

class CausalLM {
 public:
  virtual ~CausalLM() = default;
  virtual int64_t n_vocab() const = 0;
  // The longest sequence forward() accepts after reset().
  virtual int64_t max_ctx() const = 0;
  // Starts a new sequence (empties the cache).
  virtual void reset() = 0;
  // Appends n tokens; logits: [n, n_vocab] for the n new positions.
  virtual void forward(const int32_t* tokens, int64_t n, float* logits) = 0;
};

}  // namespace fq::eval
