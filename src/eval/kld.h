// KL divergence of a model against a saved baseline, llama.cpp style: for every predicted position,
// KLD(base || cur) = sum_v p_base(v) * (log p_base(v) - log p_cur(v)), in double, plus whether the two
// argmax tokens agree. Reported: mean, 99th percentile (nearest rank), max, and top-1 agreement in %.
#pragma once
#include <cstdint>
#include <vector>

namespace fq::eval {

struct KldStats {
  int64_t n = 0;  // positions compared
  double mean = 0, p99 = 0, max = 0;
  double top1_agree_pct = 0;
};

class KldAccumulator {
 public:
  // One position: both rows are log-probabilities over n_vocab entries.
  void add(const float* base_logprobs, const float* cur_logprobs, int64_t n_vocab);
  KldStats stats() const;

 private:
  std::vector<double> kld_;
  int64_t agree_ = 0;
};

}  // namespace fq::eval
