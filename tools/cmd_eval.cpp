// `flatquant eval --model DIR [--quant fake|real] [--device cpu|cuda] --tasks piqa,hellaswag,... --data-dir DIR [--limit N] [--batch-size N]
//                 [--threads N] [--add-bos] [--json] [--log-items FILE]`
// Zero-shot accuracy by lm-evaluation-harness's protocol (src/eval/qa_*.h, docs/eval.md) on the CPU
// reference decoder (HF directory) or the artifact runtime (quantized artifact), or with --device cuda on the
// CUDA engine (FP16 / W4A4KV4): <data-dir>/<task>.jsonl holds each task's Hugging Face rows.
#include <fmt/format.h>

#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "commands.h"
#include "core/fs.h"
#include "eval/loglik.h"
#include "eval/qa_eval.h"
#include "flatquant/error.h"
#include "io/tokenizer.h"
#include "model_source.h"

namespace fq::cli {

namespace {

struct Options {
  std::string model, quant, device = "cpu", tasks = "piqa,hellaswag,arc_easy,arc_challenge,winogrande,lambada_openai", data_dir, log_items;
  int64_t limit = 0, batch_size = 64;
  int threads = 0;
  bool json = false, add_bos = false;
};

std::vector<eval::QaTask> parse_tasks(const std::string& list) {
  std::vector<eval::QaTask> out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    const std::string name = list.substr(start, end - start);
    if (!name.empty()) {
      const eval::QaTask t = eval::parse_task(name);
      for (eval::QaTask u : out) FQ_CHECK(u != t, "--tasks: '{}' is listed twice", name);
      out.push_back(t);
    }
    start = end + 1;
  }
  FQ_CHECK(!out.empty(), "--tasks: no task given");
  return out;
}

nlohmann::json num(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); }

int run(const Options& o) {
  // Command-line values first: they are cheaper to check than any file.
  FQ_CHECK(o.limit >= 0, "--limit must not be negative (found {})", o.limit);
  FQ_CHECK(o.batch_size >= 1, "--batch-size must be at least 1 (found {})", o.batch_size);
  const std::vector<eval::QaTask> tasks = parse_tasks(o.tasks);
  FQ_CHECK(is_directory(o.model), "{}: not a directory (expected an HF model directory or a flatquant artifact)",
           o.model);
  FQ_CHECK(file_exists(path_join(o.model, "config.json")),
           "{}: no config.json (expected an HF model directory or a flatquant artifact)", o.model);
  FQ_CHECK(is_directory(o.data_dir), "{}: not a directory (expected <task>.jsonl files)", o.data_dir);

  // Read every task file first: a bad row fails before the model is loaded.
  std::vector<std::vector<eval::QaDoc>> docs;
  for (eval::QaTask t : tasks)
    docs.push_back(eval::load_task_file(t, path_join(o.data_dir, std::string(eval::task_name(t)) + ".jsonl"), o.limit));

  ModelSource src(o.model, o.quant, o.device);
  const ModelConfig& cfg = src.cfg();
  const auto tok = load_tokenizer(o.model);
  FQ_CHECK(tok->n_vocab() <= cfg.n_vocab, "{}: the tokenizer has {} tokens but the model vocabulary has {}",
           o.model, tok->n_vocab(), cfg.n_vocab);
  const eval::QaSuite suite = eval::encode_suite(tasks, std::move(docs), *tok, o.add_bos);
  // HFLM's max_length is the model's max_position_embeddings; the cache only needs the longest input.
  const int64_t max_length = cfg.n_ctx;
  int n_threads = 0;
  const std::unique_ptr<eval::PrefixLM> lm =
      src.prefix_lm(eval::longest_input(suite, max_length), o.threads, &n_threads);
  eval::CachedLogLikelihood ll(*lm, max_length);
  const eval::QaOutcome out = eval::evaluate(suite, ll, o.batch_size, !o.json);
  if (!o.log_items.empty()) eval::write_item_log(o.log_items, suite, out);
  const double rps = (double)suite.requests.size() / std::max(out.seconds, 1e-9);

  if (o.json) {
    nlohmann::json j, jt = nlohmann::json::object();
    for (const eval::TaskResult& r : out.tasks) {
      nlohmann::json e;
      e["acc"] = num(r.acc);
      e["acc_stderr"] = num(r.acc_stderr);
      e["acc_norm"] = r.has_acc_norm ? num(r.acc_norm) : nlohmann::json(nullptr);
      e["acc_norm_stderr"] = r.has_acc_norm ? num(r.acc_norm_stderr) : nlohmann::json(nullptr);
      e["n"] = r.n;
      if (r.has_perplexity) e["perplexity"] = num(r.perplexity);
      jt[eval::task_name(r.task)] = e;
    }
    j["tasks"] = jt;
    j["average"] = num(out.average);
    j["seconds"] = out.seconds;
    j["requests"] = suite.requests.size();
    j["requests_per_second"] = rps;
    src.add_json(j);
    fmt::print("{}\n", j.dump());
    return 0;
  }
  fmt::print("model    {} ({}, {} layers, n_embd {}, vocab {}{}), add_bos {}\n", o.model, cfg.architecture,
             cfg.n_layer, cfg.n_embd, cfg.n_vocab, src.describe(), o.add_bos);
  fmt::print("{:<16} {:>6} {:>8} {:>8} {:>9} {:>8}\n", "task", "n", "acc", "±", "acc_norm", "±");
  for (const eval::TaskResult& r : out.tasks) {
    std::string norm = r.has_acc_norm ? fmt::format("{:>9.4f} {:>8.4f}", r.acc_norm, r.acc_norm_stderr) : "";
    fmt::print("{:<16} {:>6} {:>8.4f} {:>8.4f} {}\n", eval::task_name(r.task), r.n, r.acc, r.acc_stderr, norm);
    if (r.has_perplexity) fmt::print("{:<16} perplexity {:.4f}\n", "", r.perplexity);
  }
  fmt::print("average  {:.2f} (x100; acc_norm for piqa/hellaswag/arc, acc for winogrande/lambada; over {} task{})\n",
             out.average, out.tasks.size(), out.tasks.size() == 1 ? "" : "s");
  fmt::print("time     {:.1f} s, {} requests ({:.1f} requests/s, {} token positions run, {})\n",
             out.seconds, suite.requests.size(), rps, ll.tokens_run(), src.compute(n_threads));
  if (!o.log_items.empty()) fmt::print("items    {}\n", o.log_items);
  return 0;
}

}  // namespace

Runner register_eval(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* sub = app.add_subcommand("eval", "Zero-shot accuracy (lm-evaluation-harness protocol) on QA tasks");
  sub->add_option("--model", o->model, "HF model directory or flatquant artifact directory")->required();
  add_quant_flag(sub, o->quant);
  add_device_flag(sub, o->device);
  sub->add_option("--tasks", o->tasks, "Comma-separated tasks")->capture_default_str();
  sub->add_option("--data-dir", o->data_dir, "Directory with <task>.jsonl (the tasks' HF rows)")->required();
  sub->add_option("--limit", o->limit, "Evaluate only the first N documents of each task (0: all)");
  sub->add_option("--batch-size", o->batch_size, "Requests per scoring call")->capture_default_str();
  sub->add_option("--threads", o->threads, "CPU threads (0: all cores)");
  sub->add_flag("--add-bos", o->add_bos, "Prepend BOS as the tokenizer does (lm-eval add_bos_token=True)");
  sub->add_flag("--json", o->json, "Print one JSON object line to stdout");
  sub->add_option("--log-items", o->log_items, "Write one JSON line per document (requests, logliks, scores)");
  return [o]() -> int { return run(*o); };
}

}  // namespace fq::cli
