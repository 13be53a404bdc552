// Metrics of the zero-shot tasks (qa_metrics.h).
#include "eval/qa_metrics.h"

#include <cmath>
#include <limits>

#include "flatquant/error.h"

namespace fq::eval {

int argmax_first(const std::vector<double>& v) {
  int best = -1;
  for (size_t i = 0; i < v.size(); ++i)
    if (best < 0 || v[i] > v[(size_t)best]) best = (int)i;
  return best;
}

DocScore score_doc(const QaDoc& doc, const std::vector<LoglikResult>& res) {
  FQ_ASSERT(res.size() == doc.requests.size());
  DocScore s;
  if (doc.gold < 0) {  // lambada_openai: greedy match of the whole continuation
    s.acc = res.at(0).greedy ? 1.0 : 0.0;
    return s;
  }
  std::vector<double> ll, norm;
  for (size_t i = 0; i < res.size(); ++i) {
    ll.push_back(res[i].loglik);
    if (!doc.choice_len.empty()) norm.push_back(res[i].loglik / doc.choice_len[i]);
  }
  s.pred = argmax_first(ll);
  s.acc = s.pred == doc.gold ? 1.0 : 0.0;
  if (!norm.empty()) {
    s.pred_norm = argmax_first(norm);
    s.acc_norm = s.pred_norm == doc.gold ? 1.0 : 0.0;
  }
  return s;
}

double mean(const std::vector<double>& x) {
  if (x.empty()) return std::numeric_limits<double>::quiet_NaN();
  double s = 0.0;
  for (double v : x) s += v;
  return s / (double)x.size();
}

double mean_stderr(const std::vector<double>& x) {
  const size_t n = x.size();
  if (n < 2) return std::numeric_limits<double>::quiet_NaN();
  const double mu = mean(x);
  double ss = 0.0;
  for (double v : x) ss += (v - mu) * (v - mu);
  return std::sqrt(ss / (double)(n - 1)) / std::sqrt((double)n);
}

TaskResult aggregate(QaTask t, const std::vector<DocScore>& docs, const std::vector<double>& logliks) {
  TaskResult r;
  r.task = t;
  r.n = (int64_t)docs.size();
  std::vector<double> acc, acc_norm;
  for (const DocScore& d : docs) {
    acc.push_back(d.acc);
    acc_norm.push_back(d.acc_norm);
  }
  r.acc = mean(acc);
  r.acc_stderr = mean_stderr(acc);
  r.has_acc_norm = task_has_acc_norm(t);
  if (r.has_acc_norm) {
    r.acc_norm = mean(acc_norm);
    r.acc_norm_stderr = mean_stderr(acc_norm);
  }
  if (t == QaTask::lambada_openai && !logliks.empty()) {
    r.has_perplexity = true;
    r.perplexity = std::exp(-mean(logliks));
  }
  return r;
}

double paper_metric(const TaskResult& r) { return r.has_acc_norm ? r.acc_norm : r.acc; }

double paper_average(const std::vector<TaskResult>& results) {
  if (results.empty()) return std::numeric_limits<double>::quiet_NaN();
  double s = 0.0;
  for (const TaskResult& r : results) s += paper_metric(r);
  return 100.0 * s / (double)results.size();
}

}  // namespace fq::eval
