// `flatquant generate --model DIR [--quant fake|real] --prompt TEXT | --prompt-file F [--max-tokens N] [--temperature T]
//                     [--top-k K] [--top-p P] [--seed S] [--stop S ...] [--no-bos] [--threads N] [--json]`
// Continues a prompt on the CPU reference decoder, streaming the text to stdout as it is produced (the
// prompt itself is not echoed); prefill and decode tokens/s go to stderr, or everything into one JSON line.
#include <fmt/format.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "gen_common.h"

namespace fq::cli {

namespace {

struct Options {
  std::string model, prompt, prompt_file;
  std::vector<std::string> stop;
  bool no_bos = false, json = false;
  SamplingFlags s;
};

int run(const Options& o) {
  FQ_CHECK(o.prompt_file.empty() || file_exists(o.prompt_file), "{}: prompt file not found", o.prompt_file);
  const std::string prompt = o.prompt_file.empty() ? o.prompt : read_file(o.prompt_file);
  ModelSession ms(o.model, o.s);
  const runtime::SamplerOptions so = o.s.sampler();
  runtime::Sampler sampler(so);
  std::vector<int32_t> ids = o.no_bos ? ms.tok->encode(prompt) : ms.tok->encode_with_bos(prompt);
  // A model without add_bos still needs something to condition on when the prompt is empty.
  if (ids.empty() && !o.no_bos && ms.tok->bos_id() >= 0) ids.push_back(ms.tok->bos_id());

  runtime::GenerateOptions go;
  go.max_tokens = o.s.max_tokens;
  go.stop = o.stop;
  go.eos_ids = ms.eos_ids;
  runtime::Generator gen(*ms.model, *ms.tok);
  const runtime::GenerateResult r = gen.generate(ids, go, sampler, [&](std::string_view t) {
    if (o.json) return;
    std::fwrite(t.data(), 1, t.size(), stdout);
    std::fflush(stdout);
  });
  if (r.reason == runtime::StopReason::kContextFull)
    fmt::print(stderr, "flatquant: context full ({} tokens, --ctx): generation stopped after {} tokens\n",
               ms.model->max_ctx(), r.tokens.size());
  if (o.json) {
    nlohmann::json j;
    j["text"] = r.text;
    j["tokens"] = r.tokens.size();
    j["prompt_tokens"] = r.prompt_tokens;
    j["prefill_tok_s"] = r.prefill_tok_s();
    j["decode_tok_s"] = r.decode_tok_s();
    j["stop_reason"] = runtime::stop_reason_name(r.reason);
    j["seed"] = so.seed;
    ms.src->add_json(j);
    // The model's text may end inside a character only when generation stopped there; replace, never throw.
    fmt::print("{}\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    return 0;
  }
  fmt::print("\n");
  std::fflush(stdout);
  fmt::print(stderr, "prefill {} tokens in {:.3f} s ({:.1f} tok/s); decode {} tokens in {:.3f} s ({:.1f} tok/s); "
                     "stop: {}; seed {}; {}\n",
             r.prefilled, r.prefill_s, r.prefill_tok_s(), r.tokens.size(), r.decode_s, r.decode_tok_s(),
             runtime::stop_reason_name(r.reason), so.seed, ms.src->compute(ms.n_threads));
  return 0;
}

}  // namespace

Runner register_generate(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* sub = app.add_subcommand("generate", "Continue a prompt, streaming the generated text");
  sub->add_option("--model", o->model, "HF model directory or flatquant artifact directory")->required();
  auto* p = sub->add_option("--prompt", o->prompt, "Prompt text (may be empty: generate from BOS)");
  auto* pf = sub->add_option("--prompt-file", o->prompt_file, "Read the prompt from a file");
  p->excludes(pf);
  o->s.add(sub);
  sub->add_option("--stop", o->stop, "Stop before this string (repeatable; not printed)");
  sub->add_flag("--no-bos", o->no_bos, "Do not prepend BOS to the prompt");
  sub->add_flag("--json", o->json, "Print one JSON line {text, tokens, prefill_tok_s, decode_tok_s, ...}");
  return [o, p, pf]() -> int {
    FQ_CHECK(p->count() + pf->count() == 1, "generate: give --prompt TEXT or --prompt-file FILE");
    return run(*o);
  };
}

}  // namespace fq::cli
