// HFLM-style log-likelihood requests and their scoring on a decoder with a rewindable cache (loglik.h).
#include "eval/loglik.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "eval/qa_tasks.h"
#include "flatquant/error.h"
#include "io/tokenizer.h"

namespace fq::eval {

TokenRequest encode_pair(const Tokenizer& tok, std::string_view context, std::string_view continuation,
                         bool add_bos) {
  auto enc = [&](std::string_view s) { return add_bos ? tok.encode_with_bos(s) : tok.encode(s); };
  TokenRequest r;
  if (context.empty()) {
    // HFLM's prefix_token_id: BOS, else EOS, stands in for the empty context.
    const int32_t prefix = tok.bos_id() >= 0 ? tok.bos_id() : tok.eos_id();
    FQ_CHECK(prefix >= 0, "a request with an empty context needs a BOS or EOS token, and the tokenizer has neither");
    r.context = {prefix};
    r.continuation = enc(continuation);
    return r;
  }
  // Trailing whitespace of the context belongs to the continuation (HFLM _encode_pair), so that "Answer: " +
  // "x" tokenizes as "Answer:" + " x".
  const size_t keep = py_rstrip(context).size();
  std::string ctx(context.substr(0, keep));
  std::string whole = ctx + std::string(context.substr(keep)) + std::string(continuation);
  r.context = enc(ctx);
  const std::vector<int32_t> all = enc(whole);
  if (all.size() > r.context.size()) r.continuation.assign(all.begin() + (ptrdiff_t)r.context.size(), all.end());
  return r;
}

ModelInput model_input(const TokenRequest& r, int64_t max_length) {
  const int64_t n_cont = (int64_t)r.continuation.size();
  FQ_CHECK(n_cont <= max_length, "a continuation of {} tokens does not fit in the model context of {} tokens",
           n_cont, max_length);
  std::vector<int32_t> full = r.context;
  full.insert(full.end(), r.continuation.begin(), r.continuation.end());
  const int64_t keep = std::min<int64_t>((int64_t)full.size(), max_length + 1);
  ModelInput mi;
  mi.tokens.assign(full.end() - keep, full.end() - 1);
  mi.first = (int64_t)mi.tokens.size() - n_cont;
  return mi;
}

double log_softmax_at(const float* row, int64_t n_vocab, int32_t token, bool* is_argmax) {
  int64_t best = 0;
  for (int64_t v = 1; v < n_vocab; ++v)
    if (row[v] > row[best]) best = v;
  const double mx = row[best];
  double sum = 0.0;
  for (int64_t v = 0; v < n_vocab; ++v) sum += std::exp((double)row[v] - mx);
  if (is_argmax) *is_argmax = best == token;
  return (double)row[token] - mx - std::log(sum);
}

std::vector<LoglikResult> CachedLogLikelihood::score(const std::vector<TokenRequest>& reqs) {
  std::vector<LoglikResult> out(reqs.size());
  const int64_t V = lm_.n_vocab();
  for (size_t i = 0; i < reqs.size(); ++i) {
    const TokenRequest& r = reqs[i];
    LoglikResult& res = out[i];
    res.greedy = true;
    if (r.continuation.empty()) continue;  // an empty sum: loglik 0, trivially greedy
    for (int32_t t : r.continuation)
      FQ_CHECK(t >= 0 && t < V, "continuation token id {} is out of range [0, {})", t, V);
    const ModelInput mi = model_input(r, max_length_);
    const int64_t L = (int64_t)mi.tokens.size();
    FQ_CHECK(L <= lm_.max_ctx(), "a request of {} tokens exceeds the decoder context of {} tokens", L,
             lm_.max_ctx());
    // Reuse the cached prefix, but recompute from `first` at the latest: its logits row is needed.
    int64_t lcp = 0;
    const int64_t nc = std::min<int64_t>((int64_t)cached_.size(), lm_.pos());
    while (lcp < nc && lcp < L && cached_[lcp] == mi.tokens[lcp]) ++lcp;
    const int64_t p = std::min(lcp, mi.first);
    lm_.rewind(p);
    cached_.resize(p);
    if (mi.first > p) lm_.forward(mi.tokens.data() + p, mi.first - p, nullptr);
    const int64_t n = L - mi.first;
    logits_.resize((size_t)(n * V));
    lm_.forward(mi.tokens.data() + mi.first, n, logits_.data());
    cached_ = mi.tokens;
    tokens_run_ += L - p;
    for (int64_t j = 0; j < n; ++j) {
      bool top = false;
      res.loglik += log_softmax_at(logits_.data() + j * V, V, r.continuation[j], &top);
      res.greedy = res.greedy && top;
    }
  }
  return out;
}

std::vector<size_t> sort_for_prefix_reuse(const std::vector<TokenRequest>& reqs, int64_t max_length) {
  std::vector<std::vector<int32_t>> inputs;
  inputs.reserve(reqs.size());
  for (const TokenRequest& r : reqs) inputs.push_back(model_input(r, max_length).tokens);
  std::vector<size_t> order(reqs.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return inputs[a] < inputs[b]; });
  return order;
}

}  // namespace fq::eval
