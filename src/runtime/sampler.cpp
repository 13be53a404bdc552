#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "flatquant/error.h"

namespace fq::runtime {

int32_t argmax(const float* v, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (v[i] > v[best] || (std::isnan(v[best]) && !std::isnan(v[i]))) best = i;
  return static_cast<int32_t>(best);
}

Sampler::Sampler(const SamplerOptions& o) : o_(o), rng_(o.seed) {
  FQ_CHECK(!std::isnan(o.temperature), "--temperature must be a number (found NaN)");
  FQ_CHECK(o.top_p > 0 && o.top_p <= 1, "--top-p must be in (0, 1] (found {})", o.top_p);
  FQ_CHECK(o.repetition_penalty > 0 && std::isfinite(o.repetition_penalty),
           "--repetition-penalty must be positive (found {})", o.repetition_penalty);
}

double Sampler::uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

void Sampler::filter(const float* logits, int64_t n_vocab, const std::vector<int32_t>& history) {
  FQ_CHECK(n_vocab >= 1, "sampler: empty logits row");
  work_.assign(logits, logits + n_vocab);
  for (float& x : work_)
    if (!std::isfinite(x)) x = -std::numeric_limits<float>::infinity();
  if (o_.repetition_penalty != 1.0) {
    // Each distinct token is penalized once however often it occurs (HF gathers then scatters).
    std::vector<int32_t> seen(history);
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    const float p = static_cast<float>(o_.repetition_penalty);
    for (int32_t id : seen)
      if (id >= 0 && id < n_vocab) work_[id] = work_[id] > 0 ? work_[id] / p : work_[id] * p;
  }
  cand_.clear();
  if (greedy()) {
    const int32_t best = argmax(work_.data(), n_vocab);
    FQ_CHECK(std::isfinite(work_[best]), "sampler: every logit is -inf or not finite");
    cand_.emplace_back(1.0, best);
    return;
  }
  // Scaled logits in double: the softmax of x/T for tiny T must not overflow, so subtract the max first.
  const double inv_t = 1.0 / o_.temperature;
  cand_.reserve(n_vocab);
  for (int64_t i = 0; i < n_vocab; ++i)
    if (std::isfinite(work_[i])) cand_.emplace_back(static_cast<double>(work_[i]) * inv_t, static_cast<int32_t>(i));
  FQ_CHECK(!cand_.empty(), "sampler: every logit is -inf or not finite");
  // Most likely first; ties by lower id so the order (and hence every draw) is fully determined.
  auto by_logit = [](const std::pair<double, int32_t>& a, const std::pair<double, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  const size_t k = (o_.top_k > 0 && static_cast<size_t>(o_.top_k) < cand_.size()) ? static_cast<size_t>(o_.top_k)
                                                                                   : cand_.size();
  std::partial_sort(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(k), cand_.end(), by_logit);
  cand_.resize(k);  // top-k (HF also keeps ties at the k-th value; exact ties of float logits are negligible)
  const double mx = cand_.front().first;
  double sum = 0;
  for (auto& c : cand_) sum += (c.first = std::exp(c.first - mx));
  for (auto& c : cand_) c.first /= sum;
  if (o_.top_p < 1.0) {
    // Keep the most likely tokens until their mass reaches top_p (the token that crosses it is kept, and
    // always at least one), as HF's TopPLogitsWarper; then renormalize.
    double cum = 0;
    size_t keep = 0;
    while (keep < cand_.size()) {
      cum += cand_[keep++].first;
      if (cum >= o_.top_p) break;
    }
    cand_.resize(keep);
    for (auto& c : cand_) c.first /= cum;
  }
}

std::vector<double> Sampler::distribution(const float* logits, int64_t n_vocab, const std::vector<int32_t>& history) {
  filter(logits, n_vocab, history);
  std::vector<double> p(static_cast<size_t>(n_vocab), 0.0);
  for (const auto& c : cand_) p[c.second] = c.first;
  return p;
}

int32_t Sampler::sample(const float* logits, int64_t n_vocab, const std::vector<int32_t>& history) {
  filter(logits, n_vocab, history);
  if (cand_.size() == 1) return cand_.front().second;
  // Inverse CDF over the candidates in their fixed order; the last one absorbs rounding.
  const double u = uniform();
  double cum = 0;
  for (const auto& c : cand_) {
    cum += c.first;
    if (u < cum) return c.second;
  }
  return cand_.back().second;
}

}  // namespace fq::runtime
