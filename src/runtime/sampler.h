// Next-token sampling on the CPU from one row of fp32 logits: greedy, or repetition penalty -> temperature ->
// top-k -> top-p (nucleus) -> one draw, in the order Hugging Face's generate() applies its logits warpers.
// Deterministic: a seeded std::mt19937_64 and our own [0,1) conversion (no std::*_distribution, whose
// algorithms differ between standard libraries), so one seed gives one output everywhere.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace fq::runtime {

struct SamplerOptions {
  // <= 0: greedy (argmax). Otherwise logits are divided by it before the softmax.
  double temperature = 1.0;
  // Keep only the k most likely tokens; <= 0 (or >= n_vocab): off. 1 is greedy.
  int64_t top_k = 0;
  // Keep the smallest set of most likely tokens whose probability mass reaches top_p; >= 1: off.
  double top_p = 1.0;
  // HF's CTRL-style penalty on every token already in the history: logit / p if logit > 0 else logit * p.
  // 1: off.
  double repetition_penalty = 1.0;
  uint64_t seed = 0;
};

// Index of the largest value; the lowest index among equal maxima (as torch.argmax). n must be >= 1.
int32_t argmax(const float* v, int64_t n);

class Sampler {
 public:
  // Throws fq::Error for invalid options (negative top_p, repetition_penalty <= 0, NaN temperature).
  explicit Sampler(const SamplerOptions& o);
  // Picks the next token from logits[0 .. n_vocab). `history`: the tokens the repetition penalty applies to
  // (the prompt and what was generated, as HF does). Non-finite logits are treated as -inf; when all are,
  // throws fq::Error.
  int32_t sample(const float* logits, int64_t n_vocab, const std::vector<int32_t>& history = {});
  // The probabilities sample() draws from (after all filters; 0 for removed tokens), for tests and debugging.
  std::vector<double> distribution(const float* logits, int64_t n_vocab, const std::vector<int32_t>& history = {});
  bool greedy() const { return o_.temperature <= 0 || o_.top_k == 1; }
  const SamplerOptions& options() const { return o_; }

 private:
  // Fills cand_ with (probability, id) of the surviving tokens, most likely first, probabilities summing to 1.
  void filter(const float* logits, int64_t n_vocab, const std::vector<int32_t>& history);
  // Uniform double in [0, 1) from the top 53 bits of one draw.
  double uniform();

  SamplerOptions o_;
  std::mt19937_64 rng_;
  std::vector<float> work_;
  std::vector<std::pair<double, int32_t>> cand_;
};

}  // namespace fq::runtime
