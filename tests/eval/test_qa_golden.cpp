// Zero-shot requests and log-likelihoods against scripts/gen_qa_golden.py (transformers fp32 on CPU, lm-eval's
// request construction re-implemented in Python, run on the GPU machine): for every request of the
// hand-written items in tests/data/qa/, the same context and continuation strings, the same tokens, |loglik
// diff| <= 1e-3 and the same is_greedy. Each golden skips while it or its model is absent; the CLI test runs
// `flatquant eval` end to end on stories260K.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eval/qa_eval.h"
#include "io/tokenizer.h"
#include "model/weights.h"
#include "test_util.h"

namespace fq::eval {
namespace {

std::string models_cache() {
  const char* env = std::getenv("FLATQUANT_MODELS");
  return env && *env ? std::string(env) : test::source_path(".cache/models");
}

void check_golden(const std::string& name) {
  const std::string golden = test::source_path("tests/data/qa/golden_" + name + ".json");
  const std::string model = path_join(models_cache(), name);
  FQ_REQUIRE_FILE(golden);
  FQ_REQUIRE_FILE(path_join(model, "config.json"));
  const nlohmann::json g = nlohmann::json::parse(read_file(golden));
  const int64_t max_length = g.at("max_length").get<int64_t>();
  const bool add_bos = g.at("add_bos").get<bool>();
  const nlohmann::json& want = g.at("requests");

  std::vector<std::vector<QaDoc>> docs;
  const std::vector<QaTask> tasks = all_tasks();
  for (QaTask t : tasks)
    docs.push_back(load_task_file(t, test::source_path(std::string("tests/data/qa/") + task_name(t) + ".jsonl"), 0));
  const ModelWeights w = load_hf_weights(model);
  const auto tok = load_tokenizer(model);
  const QaSuite s = encode_suite(tasks, std::move(docs), *tok, add_bos);
  ASSERT_EQ(s.requests.size(), want.size()) << golden;
  ASSERT_EQ(max_length, w.cfg.n_ctx) << golden;

  RefPrefixLM lm(w, longest_input(s, max_length), 0);
  CachedLogLikelihood ll(lm, max_length);
  const QaOutcome o = evaluate(s, ll, 16, false);
  double max_diff = 0.0;
  size_t i = 0;
  for (size_t t = 0; t < tasks.size(); ++t)
    for (const QaDoc& d : s.docs[t])
      for (const QaRequest& r : d.requests) {
        const nlohmann::json& e = want[i];
        const std::string where = golden + " request " + std::to_string(i);
        EXPECT_EQ(e.at("task").get<std::string>(), task_name(tasks[t])) << where;
        EXPECT_EQ(r.context, e.at("context").get<std::string>()) << where;
        EXPECT_EQ(r.continuation, e.at("continuation").get<std::string>()) << where;
        EXPECT_EQ(s.requests[i].context, e.at("context_tokens").get<std::vector<int32_t>>()) << where;
        EXPECT_EQ(s.requests[i].continuation, e.at("continuation_tokens").get<std::vector<int32_t>>()) << where;
        const double diff = std::fabs(o.results[i].loglik - e.at("loglik").get<double>());
        max_diff = std::max(max_diff, diff);
        EXPECT_LE(diff, 1e-3) << where << ": loglik " << o.results[i].loglik << " vs " << e.at("loglik");
        EXPECT_EQ(o.results[i].greedy, e.at("is_greedy").get<bool>()) << where;
        ++i;
      }
  ::testing::Test::RecordProperty("max_loglik_diff", std::to_string(max_diff));
}

TEST(QaGolden, Stories260K) { check_golden("stories260K"); }
TEST(QaGolden, SmolLM2) { check_golden("SmolLM2-135M-Instruct"); }

TEST(QaCli, EvalJsonOnStories260K) {
  const std::string model = path_join(models_cache(), "stories260K");
  FQ_REQUIRE_FILE(path_join(model, "config.json"));
  const std::string data = test::source_path("tests/data/qa");
  test::TempDir tmp;
  const test::CliResult r = test::run_cli("eval --model '" + model + "' --data-dir '" + data +
                                          "' --threads 2 --batch-size 5 --json --log-items '" +
                                          tmp.file("items.jsonl") + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  const std::vector<std::pair<std::string, int>> n = {{"piqa", 3},      {"hellaswag", 3},  {"arc_easy", 3},
                                                      {"arc_challenge", 2}, {"winogrande", 3}, {"lambada_openai", 3}};
  double sum = 0.0;
  for (const auto& [task, count] : n) {
    const nlohmann::json& t = j.at("tasks").at(task);
    EXPECT_EQ(t.at("n").get<int>(), count) << task;
    const double acc = t.at("acc").get<double>();
    EXPECT_TRUE(acc >= 0.0 && acc <= 1.0) << task;
    const bool norm = task != "winogrande" && task != "lambada_openai";
    EXPECT_EQ(t.at("acc_norm").is_null(), !norm) << task;
    sum += norm ? t.at("acc_norm").get<double>() : acc;
  }
  EXPECT_NEAR(j.at("average").get<double>(), 100.0 * sum / 6.0, 1e-9);
  EXPECT_GT(j.at("tasks").at("lambada_openai").at("perplexity").get<double>(), 1.0);
  // The item log: one line per document, 17 in all.
  const std::string items = read_file(tmp.file("items.jsonl"));
  EXPECT_EQ(std::count(items.begin(), items.end(), '\n'), 17);

  // --limit 1 and a single task.
  const test::CliResult one = test::run_cli("eval --model '" + model + "' --data-dir '" + data +
                                            "' --tasks winogrande --limit 1 --json");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  const nlohmann::json j1 = nlohmann::json::parse(one.out);
  EXPECT_EQ(j1.at("tasks").size(), 1u);
  EXPECT_EQ(j1.at("tasks").at("winogrande").at("n").get<int>(), 1);
  EXPECT_TRUE(j1.at("tasks").at("winogrande").at("acc_stderr").is_null());  // n = 1: undefined
}

TEST(QaCli, Errors) {
  const std::string model = path_join(models_cache(), "stories260K");
  FQ_REQUIRE_FILE(path_join(model, "config.json"));
  test::TempDir tmp;
  write_file_atomic(tmp.file("piqa.jsonl"), "{\"goal\":\"g\",\"sol1\":\"a\",\"label\":0}\n");
  test::CliResult r = test::run_cli("eval --model '" + model + "' --data-dir '" + tmp.path() + "' --tasks piqa");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("piqa.jsonl:1: field 'sol2' is missing"), std::string::npos) << r.err;
  r = test::run_cli("eval --model '" + model + "' --data-dir '" + tmp.path() + "' --tasks mmlu");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("unknown task 'mmlu'"), std::string::npos) << r.err;
  r = test::run_cli("eval --model '" + model + "' --data-dir '" + tmp.path() + "' --tasks hellaswag");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("hellaswag.jsonl: no such file"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace fq::eval
