#include "eval/kld.h"

#include <algorithm>
#include <cmath>

namespace fq::eval {

void KldAccumulator::add(const float* base, const float* cur, int64_t V) {
  double kl = 0.0;
  int64_t arg_b = 0, arg_c = 0;
  for (int64_t v = 0; v < V; ++v) {
    const double lb = base[v], lc = cur[v];
    // p_base = 0 (log -inf) contributes nothing, whatever the current model says.
    if (std::isfinite(lb)) kl += std::exp(lb) * (lb - lc);
    if (base[v] > base[arg_b]) arg_b = v;
    if (cur[v] > cur[arg_c]) arg_c = v;
  }
  // Rounding of the stored log-probs can make a near-zero divergence slightly negative.
  kld_.push_back(std::max(0.0, kl));
  agree_ += arg_b == arg_c;
}

KldStats KldAccumulator::stats() const {
  KldStats s;
  s.n = (int64_t)kld_.size();
  if (s.n == 0) return s;
  double sum = 0.0;
  for (double k : kld_) sum += k;
  s.mean = sum / (double)s.n;
  std::vector<double> sorted = kld_;
  std::sort(sorted.begin(), sorted.end());
  // Nearest rank: the smallest value with at least 99% of the positions at or below it.
  const int64_t rank = (int64_t)std::ceil(0.99 * (double)s.n);
  s.p99 = sorted[std::max<int64_t>(1, rank) - 1];
  s.max = sorted.back();
  s.top1_agree_pct = 100.0 * (double)agree_ / (double)s.n;
  return s;
}

}  // namespace fq::eval
