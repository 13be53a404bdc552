#include "eval/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/progress.h"
#include "flatquant/error.h"

namespace fq::eval {

WindowPlan plan_windows(int64_t n_tokens, int64_t seq_len, const std::string& source) {
  FQ_CHECK(seq_len >= 2, "{}: seq_len must be at least 2 (found {})", source, seq_len);
  FQ_CHECK(n_tokens > 0, "{}: empty dataset (0 tokens)", source);
  FQ_CHECK(n_tokens >= seq_len, "{}: {} tokens are fewer than one window of seq_len {}", source, n_tokens, seq_len);
  WindowPlan p;
  p.seq_len = seq_len;
  p.windows = n_tokens / seq_len;
  p.dropped = n_tokens - p.windows * seq_len;
  return p;
}

double log_softmax(const float* x, int64_t n, double* out) {
  double mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, (double)x[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp((double)x[i] - mx);
  const double lse = mx + std::log(sum);
  if (out)
    for (int64_t i = 0; i < n; ++i) out[i] = (double)x[i] - lse;
  return lse;
}

PplResult perplexity(CausalLM& lm, const std::vector<int32_t>& stream, const PplOptions& opt,
                     const std::string& source) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t V = lm.n_vocab();
  const int64_t seq_len = std::min(opt.seq_len, lm.max_ctx());
  WindowPlan plan = plan_windows((int64_t)stream.size(), seq_len, source);
  int64_t windows = plan.windows;
  if (opt.limit_windows > 0) windows = std::min(windows, opt.limit_windows);
  for (size_t i = 0; i < stream.size(); ++i)
    FQ_CHECK(stream[i] >= 0 && stream[i] < V, "{}: token {} at index {} is outside the model vocabulary of {}",
             source, stream[i], i, V);

  const int64_t chunk = std::max<int64_t>(1, std::min(opt.chunk, seq_len));
  std::vector<float> logits(chunk * V), lp_f32(opt.on_logprobs ? chunk * V : 0);
  std::vector<double> lp(V);
  double nll_sum = 0.0;
  int64_t predicted = 0;
  Progress bar("ppl", windows, opt.progress);
  for (int64_t w = 0; w < windows; ++w) {
    const int32_t* tok = stream.data() + w * seq_len;
    lm.reset();
    for (int64_t c0 = 0; c0 < seq_len; c0 += chunk) {
      const int64_t n = std::min(chunk, seq_len - c0);
      lm.forward(tok + c0, n, logits.data());
      // Row r (window position c0 + r) predicts token c0 + r + 1; the last position predicts nothing.
      const int64_t rows = std::min(n, seq_len - 1 - c0);
      for (int64_t r = 0; r < rows; ++r) {
        const float* row = logits.data() + r * V;
        const double lse = log_softmax(row, V, opt.on_logprobs ? lp.data() : nullptr);
        nll_sum += lse - (double)row[tok[c0 + r + 1]];
        if (opt.on_logprobs)
          for (int64_t v = 0; v < V; ++v) lp_f32[r * V + v] = (float)lp[v];
      }
      predicted += rows;
      if (opt.on_logprobs && rows > 0) opt.on_logprobs(w, c0, rows, lp_f32.data());
    }
    bar.update(w + 1, fmt::format("ppl {:.4f}", std::exp(nll_sum / (double)predicted)));
  }
  PplResult res;
  res.tokens = predicted;
  res.windows = windows;
  res.seq_len = seq_len;
  res.mean_nll = nll_sum / (double)predicted;
  res.ppl = std::exp(res.mean_nll);
  bar.finish(fmt::format("ppl {:.4f}", res.ppl));
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace fq::eval
