// The zero-shot evaluation run: documents -> HFLM token requests -> log-likelihoods (any LogLikelihood
// backend) -> per-document acc / acc_norm -> task metrics and the paper's average.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "eval/loglik.h"
#include "eval/qa_metrics.h"
#include "eval/qa_tasks.h"

namespace fq {
class Tokenizer;
}

namespace fq::eval {

struct QaSuite {
  std::vector<QaTask> tasks;
  std::vector<std::vector<QaDoc>> docs;      // per task
  std::vector<TokenRequest> requests;        // every request, in task / document / choice order
  std::vector<std::vector<size_t>> offset;   // per task and document: the index of its first request
};

// Tokenizes every request of `docs` (per task, parallel to `tasks`) as HFLM does (encode_pair).
QaSuite encode_suite(const std::vector<QaTask>& tasks, std::vector<std::vector<QaDoc>> docs, const Tokenizer& tok,
                     bool add_bos);

// The longest model input of the suite (the KV cache a decoder needs), at most max_length.
int64_t longest_input(const QaSuite& s, int64_t max_length);

struct QaOutcome {
  std::vector<LoglikResult> results;             // parallel to QaSuite::requests
  std::vector<std::vector<DocScore>> scores;     // per task and document
  std::vector<TaskResult> tasks;
  double average = 0.0;                          // paper_average
  double seconds = 0.0;                          // scoring time
};

// Scores the suite in chunks of `batch_size` requests, ordered for prefix reuse (sort_for_prefix_reuse);
// progress: a bar with ETA on stderr.
QaOutcome evaluate(const QaSuite& s, LogLikelihood& ll, int64_t batch_size, bool progress);

// One JSON line per document: task, doc, gold, pred, pred_norm, acc, acc_norm, and its requests (context,
// continuation, loglik, is_greedy).
void write_item_log(const std::string& path, const QaSuite& s, const QaOutcome& o);

}  // namespace fq::eval
