// Perplexity with the protocol of GPTQ / QuaRot / FlatQuant (docs/numerics.md, "Perplexity"):
//  - the text is tokenized as ONE stream, with BOS once at the very start when the tokenizer adds BOS;
//  - it is cut into non-overlapping windows of seq_len tokens, the remainder (< seq_len) is dropped;
//  - every window starts from an empty cache and predicts its seq_len - 1 shifted targets;
//  - ppl = exp(mean NLL over all predicted tokens), log-softmax and sums in double.
// FlatQuant computes exp(sum_w mean_nll_w * seq_len / (n_windows * seq_len)), i.e. it weights windows
// equally; since every window predicts the same number of tokens, that equals the mean over all predicted
// tokens computed here.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eval/causal_lm.h"

namespace fq::eval {

struct WindowPlan {
  int64_t seq_len = 0;
  int64_t windows = 0;  // full windows
  int64_t dropped = 0;  // trailing tokens that fill no window
};

// Throws fq::Error naming `source` when the stream is empty or shorter than one window, or seq_len < 2.
WindowPlan plan_windows(int64_t n_tokens, int64_t seq_len, const std::string& source);

struct PplOptions {
  int64_t seq_len = 2048;
  int64_t limit_windows = 0;  // 0: all windows
  int64_t chunk = 256;        // tokens per forward() call; bounds the logits buffer to chunk * n_vocab floats
  bool progress = false;      // a progress bar with ETA and running ppl on stderr
  // Receives the log-probabilities of every predicted position, in order: rows [first_row, first_row + n_rows)
  // of window `window`, where row r is the distribution that predicts window token r + 1. logprobs is
  // [n_rows, n_vocab] fp32 (computed in double, rounded once).
  std::function<void(int64_t window, int64_t first_row, int64_t n_rows, const float* logprobs)> on_logprobs;
};

struct PplResult {
  double ppl = 0;
  double mean_nll = 0;
  int64_t tokens = 0;   // predicted tokens = windows * (seq_len - 1)
  int64_t windows = 0;
  int64_t seq_len = 0;
  double seconds = 0;
};

// Evaluates `stream` (already tokenized, BOS included when wanted). seq_len is capped at lm.max_ctx();
// `source` names the data in error messages. Throws fq::Error for token ids outside the vocabulary.
PplResult perplexity(CausalLM& lm, const std::vector<int32_t>& stream, const PplOptions& opt,
                     const std::string& source);

// log-softmax of one row in double: out[v] = x[v] - (max + log(sum exp(x - max))). Returns the log-sum-exp.
double log_softmax(const float* x, int64_t n, double* out);

}  // namespace fq::eval
