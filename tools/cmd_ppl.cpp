// `flatquant ppl --model DIR [--quant fake|real] [--data FILE] [--seq-len N] [--limit-windows N] [--threads N]
//                [--json] [--save-logits F] [--kld-base F] [--device cpu|cuda] [--head-int8]`
// WikiText-2 style perplexity of an HF model directory (CPU reference decoder) or a quantized artifact (CPU
// artifact runtime), with the paper's protocol (src/eval/perplexity.h), and optionally the KL divergence
// against a saved baseline run (e.g. the FP model's, for an artifact).
#include <fmt/format.h>

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "commands.h"
#include "core/fs.h"
#include "eval/kld.h"
#include "eval/logprob_file.h"
#include "eval/perplexity.h"
#include "flatquant/error.h"
#include "io/tokenizer.h"
#include "model_source.h"

namespace fq::cli {

namespace {

struct Options {
  std::string model, data, save_logits, kld_base, quant, device = "cpu";
  int64_t seq_len = 2048, limit_windows = 0;
  bool seq_len_given = false;  // the default is capped at the model context; an explicit value must fit
  int threads = 0;
  bool json = false;
  bool head_int8 = false;
};

int run(const Options& o) {
  const std::string data =
      o.data.empty() ? path_join(data_dir(), "wikitext2_raw/wiki.test.hf_joined.txt") : o.data;
  FQ_CHECK(o.seq_len >= 2, "--seq-len must be at least 2 (found {})", o.seq_len);
  FQ_CHECK(o.limit_windows >= 0, "--limit-windows must not be negative (found {})", o.limit_windows);

  ModelSource src(o.model, o.quant, o.device);
  const ModelConfig& cfg = src.cfg();
  const auto tok = load_tokenizer(o.model);
  FQ_CHECK(tok->n_vocab() <= cfg.n_vocab, "{}: the tokenizer has {} tokens but the model vocabulary has {}",
           o.model, tok->n_vocab(), cfg.n_vocab);
  const std::string text = read_file(data);
  FQ_CHECK(!text.empty(), "{}: empty dataset (0 bytes)", data);
  const auto t_tok = std::chrono::steady_clock::now();
  const std::vector<int32_t> stream = tok->encode_with_bos(text);
  const double tok_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_tok).count();

  FQ_CHECK(!o.seq_len_given || o.seq_len <= cfg.n_ctx,
           "--seq-len {} is longer than the model context ({}/config.json max_position_embeddings {})", o.seq_len,
           o.model, cfg.n_ctx);
  const int64_t seq_len = std::min(o.seq_len, cfg.n_ctx);
  const eval::WindowPlan plan = eval::plan_windows((int64_t)stream.size(), seq_len, data);
  const int64_t windows = o.limit_windows > 0 ? std::min(plan.windows, o.limit_windows) : plan.windows;

  int n_threads = 0;
  const std::unique_ptr<eval::CausalLM> lm = src.causal_lm(seq_len, o.threads, &n_threads, o.head_int8);
  eval::PplOptions opt;
  opt.seq_len = seq_len;
  opt.limit_windows = windows;
  opt.progress = true;

  std::unique_ptr<eval::LogprobWriter> saver;
  std::unique_ptr<eval::LogprobReader> base;
  eval::KldAccumulator kld;
  std::vector<float> base_row;
  if (!o.save_logits.empty())
    saver = std::make_unique<eval::LogprobWriter>(o.save_logits, windows, seq_len, cfg.n_vocab, stream.data());
  if (!o.kld_base.empty()) {
    base = std::make_unique<eval::LogprobReader>(o.kld_base);
    base->check_same_tokens(stream.data(), windows, seq_len, cfg.n_vocab);
    base_row.resize(cfg.n_vocab);
  }
  if (saver || base) {
    opt.on_logprobs = [&](int64_t win, int64_t first, int64_t n, const float* lp) {
      if (saver) saver->add(win, first, n, lp);
      if (base)
        for (int64_t r = 0; r < n; ++r) {
          base->row(win, first + r, base_row.data());
          kld.add(base_row.data(), lp + r * cfg.n_vocab, cfg.n_vocab);
        }
    };
  }

  const eval::PplResult r = eval::perplexity(*lm, stream, opt, data);
  if (saver) saver->write();
  const eval::KldStats ks = kld.stats();

  if (o.json) {
    nlohmann::json j;
    j["ppl"] = r.ppl;
    j["tokens"] = r.tokens;
    j["windows"] = r.windows;
    j["seconds"] = r.seconds;
    j["seq_len"] = r.seq_len;
    if (o.head_int8) j["head_int8"] = true;
    src.add_json(j);
    if (base) {
      j["kld_mean"] = ks.mean;
      j["kld_p99"] = ks.p99;
      j["kld_max"] = ks.max;
      j["top1_agree_pct"] = ks.top1_agree_pct;
      j["kld_tokens"] = ks.n;
    }
    fmt::print("{}\n", j.dump());
    return 0;
  }
  fmt::print("model    {} ({}, {} layers, n_embd {}, vocab {}{})\n", o.model, cfg.architecture, cfg.n_layer,
             cfg.n_embd, cfg.n_vocab, src.describe());
  fmt::print("data     {}: {} tokens ({:.1f} s to tokenize), {} of {} windows of {} ({} trailing tokens dropped)\n",
             data, stream.size(), tok_seconds, r.windows, plan.windows, r.seq_len, plan.dropped);
  fmt::print("ppl      {:.4f} over {} predicted tokens\n", r.ppl, r.tokens);
  fmt::print("time     {:.1f} s ({:.0f} tokens/s, {})\n", r.seconds,
             (double)(r.windows * r.seq_len) / std::max(r.seconds, 1e-9), src.compute(n_threads));
  if (saver) fmt::print("saved    {} ({} log-probs)\n", o.save_logits, dtype_name(saver->dtype()));
  if (base)
    fmt::print("kld      mean {:.6f}, p99 {:.6f}, max {:.6f}, top-1 agreement {:.2f}% over {} tokens (base {})\n",
               ks.mean, ks.p99, ks.max, ks.top1_agree_pct, ks.n, o.kld_base);
  return 0;
}

}  // namespace

Runner register_ppl(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* sub = app.add_subcommand("ppl", "Perplexity (and KL divergence) of a model on a text file");
  sub->add_option("--model", o->model, "HF model directory or flatquant artifact directory")->required();
  add_quant_flag(sub, o->quant);
  add_device_flag(sub, o->device);
  sub->add_option("--data", o->data, "Text file (default <data_dir>/wikitext2_raw/wiki.test.hf_joined.txt)");
  sub->add_option("--seq-len", o->seq_len, "Window length in tokens (default: 2048 or the model context if shorter)")
      ->capture_default_str()
      ->each([o](const std::string&) { o->seq_len_given = true; });
  sub->add_option("--limit-windows", o->limit_windows, "Evaluate only the first N windows (0: all)");
  sub->add_option("--threads", o->threads, "CPU threads (0: all cores)");
  sub->add_flag("--head-int8", o->head_int8, "--device cuda: the LM head as per-row int8 (measures its ppl cost)");
  sub->add_flag("--json", o->json, "Print one JSON object line to stdout");
  sub->add_option("--save-logits", o->save_logits, "Save the log-probs of every position (for --kld-base)");
  sub->add_option("--kld-base", o->kld_base, "Compare with log-probs saved by --save-logits: KL divergence");
  return [o]() -> int { return run(*o); };
}

}  // namespace fq::cli
