// lm-evaluation-harness's metrics for the zero-shot tasks: per-document acc / acc_norm from the requests'
// log-likelihoods, task means with lm-eval's standard error of the mean (sample standard deviation / sqrt(n),
// i.e. sqrt(p (1 - p) / (n - 1)) for 0/1 scores), lambada's perplexity exp(-mean loglik), and the FlatQuant
// paper's average.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "eval/loglik.h"
#include "eval/qa_tasks.h"

namespace fq::eval {

struct DocScore {
  int pred = -1, pred_norm = -1;  // argmax choices (-1 for lambada_openai)
  double acc = 0.0, acc_norm = 0.0;
};

// The first index of the maximum (numpy.argmax).
int argmax_first(const std::vector<double>& v);

// Scores one document from the results of its requests (in the document's request order). Multiple choice:
// acc = [argmax ll == gold], acc_norm = [argmax ll / choice_len == gold]; lambada_openai: acc = is_greedy.
DocScore score_doc(const QaDoc& doc, const std::vector<LoglikResult>& res);

struct TaskResult {
  QaTask task = QaTask::piqa;
  int64_t n = 0;
  double acc = 0, acc_stderr = 0;
  bool has_acc_norm = false;
  double acc_norm = 0, acc_norm_stderr = 0;  // meaningful when has_acc_norm
  bool has_perplexity = false;
  double perplexity = 0;  // lambada_openai
};

// The mean of `x` and lm-eval's mean_stderr (NaN when n < 2).
double mean(const std::vector<double>& x);
double mean_stderr(const std::vector<double>& x);

// Aggregates the documents of one task; `logliks` holds lambada's per-document log-likelihoods (its
// perplexity) and is ignored for the other tasks.
TaskResult aggregate(QaTask t, const std::vector<DocScore>& docs, const std::vector<double>& logliks);

// The metric the FlatQuant paper averages: acc_norm where the task has it, else acc.
double paper_metric(const TaskResult& r);
// 100 x the mean of paper_metric over `results` (NaN when empty).
double paper_average(const std::vector<TaskResult>& results);

}  // namespace fq::eval
