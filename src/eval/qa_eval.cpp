// The zero-shot evaluation run (qa_eval.h).
#include "eval/qa_eval.h"

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "core/progress.h"
#include "flatquant/error.h"
#include "io/tokenizer.h"

namespace fq::eval {

QaSuite encode_suite(const std::vector<QaTask>& tasks, std::vector<std::vector<QaDoc>> docs, const Tokenizer& tok,
                     bool add_bos) {
  FQ_ASSERT(tasks.size() == docs.size());
  QaSuite s;
  s.tasks = tasks;
  s.docs = std::move(docs);
  s.offset.resize(tasks.size());
  for (size_t t = 0; t < tasks.size(); ++t)
    for (const QaDoc& d : s.docs[t]) {
      s.offset[t].push_back(s.requests.size());
      for (const QaRequest& r : d.requests) s.requests.push_back(encode_pair(tok, r.context, r.continuation, add_bos));
    }
  return s;
}

int64_t longest_input(const QaSuite& s, int64_t max_length) {
  int64_t longest = 1;
  for (const TokenRequest& r : s.requests)
    longest = std::max(longest, std::min<int64_t>((int64_t)(r.context.size() + r.continuation.size()) - 1,
                                                  max_length));
  return longest;
}

QaOutcome evaluate(const QaSuite& s, LogLikelihood& ll, int64_t batch_size, bool progress) {
  FQ_CHECK(batch_size >= 1, "--batch-size must be at least 1 (found {})", batch_size);
  QaOutcome o;
  o.results.resize(s.requests.size());
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<size_t> order = sort_for_prefix_reuse(s.requests, ll.max_length());
  Progress bar("eval", (int64_t)order.size(), progress);
  for (size_t b = 0; b < order.size(); b += (size_t)batch_size) {
    const size_t e = std::min(order.size(), b + (size_t)batch_size);
    std::vector<TokenRequest> chunk;
    for (size_t i = b; i < e; ++i) chunk.push_back(s.requests[order[i]]);
    const std::vector<LoglikResult> res = ll.score(chunk);
    FQ_ASSERT(res.size() == chunk.size());
    for (size_t i = b; i < e; ++i) o.results[order[i]] = res[i - b];
    bar.update((int64_t)e);
  }
  bar.finish();
  o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  o.scores.resize(s.tasks.size());
  for (size_t t = 0; t < s.tasks.size(); ++t) {
    std::vector<double> logliks;
    for (size_t d = 0; d < s.docs[t].size(); ++d) {
      const QaDoc& doc = s.docs[t][d];
      const size_t first = s.offset[t][d];
      const std::vector<LoglikResult> res(o.results.begin() + (ptrdiff_t)first,
                                          o.results.begin() + (ptrdiff_t)(first + doc.requests.size()));
      o.scores[t].push_back(score_doc(doc, res));
      if (doc.gold < 0) logliks.push_back(res[0].loglik);
    }
    o.tasks.push_back(aggregate(s.tasks[t], o.scores[t], logliks));
  }
  o.average = paper_average(o.tasks);
  return o;
}

void write_item_log(const std::string& path, const QaSuite& s, const QaOutcome& o) {
  std::string out;
  for (size_t t = 0; t < s.tasks.size(); ++t)
    for (size_t d = 0; d < s.docs[t].size(); ++d) {
      const QaDoc& doc = s.docs[t][d];
      const DocScore& sc = o.scores[t][d];
      nlohmann::json j;
      j["task"] = task_name(s.tasks[t]);
      j["doc"] = d;
      j["gold"] = doc.gold;
      j["pred"] = sc.pred;
      j["acc"] = sc.acc;
      if (task_has_acc_norm(s.tasks[t])) {
        j["pred_norm"] = sc.pred_norm;
        j["acc_norm"] = sc.acc_norm;
      }
      nlohmann::json reqs = nlohmann::json::array();
      for (size_t k = 0; k < doc.requests.size(); ++k) {
        const LoglikResult& r = o.results[s.offset[t][d] + k];
        reqs.push_back({{"context", doc.requests[k].context},
                        {"continuation", doc.requests[k].continuation},
                        {"loglik", r.loglik},
                        {"is_greedy", r.greedy}});
      }
      j["requests"] = std::move(reqs);
      out += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
  write_file_atomic(path, out);
}

}  // namespace fq::eval
