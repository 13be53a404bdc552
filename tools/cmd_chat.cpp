// `flatquant chat --model DIR [--quant fake|real] [--template llama2|llama3|chatml|none] [--system S] [sampling flags]
//                 [--max-tokens N]`
// Interactive chat on stdin/stdout: one line per user turn, the assistant's reply streamed. The conversation
// and the KV cache persist between turns: the whole conversation is re-rendered each turn, and when the
// tokens already in the cache are a prefix of the new rendering only the suffix is prefilled (otherwise the
// cache is rebuilt). Commands: /reset (new conversation), /exit (or end of input).
#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "commands.h"
#include "gen_common.h"
#include "runtime/chat_template.h"

namespace fq::cli {

namespace {

struct Options {
  std::string model, tmpl, system;
  SamplingFlags s;
};

int run(const Options& o) {
  ModelSession ms(o.model, o.s);
  const runtime::ChatTemplate ct =
      o.tmpl.empty() ? runtime::load_chat_template(o.model) : runtime::chat_template_by_name(o.tmpl);
  const runtime::SamplerOptions so = o.s.sampler();
  runtime::Sampler sampler(so);
  runtime::GenerateOptions go;
  go.max_tokens = o.s.max_tokens;
  go.eos_ids = ms.eos_ids;
  const std::string eot = ct.end_of_turn();
  if (!eot.empty()) {
    const int32_t id = ms.tok->token_to_id(eot);
    if (id >= 0) go.eos_ids.push_back(id);
    else go.stop.push_back(eot);  // not a single token in this vocabulary: stop on its text
  }
  runtime::Generator gen(*ms.model, *ms.tok);
  std::vector<runtime::ChatMessage> conv;
  auto start_conversation = [&] {
    conv.clear();
    if (!o.system.empty()) conv.push_back({"system", o.system});
  };
  start_conversation();

  const bool tty = isatty(STDIN_FILENO) != 0;
  std::string line;
  while (true) {
    if (tty) {
      fmt::print(stderr, "> ");
      std::fflush(stderr);
    }
    if (!std::getline(std::cin, line)) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line == "/exit") break;
    if (line == "/reset") {
      start_conversation();
      gen.reset();
      fmt::print(stderr, "[conversation reset]\n");
      continue;
    }
    if (line.empty()) continue;
    conv.push_back({"user", line});
    const std::string text = ct.render(conv);
    // Templates that write BOS themselves are encoded as is; plain text gets the tokenizer's BOS.
    std::vector<int32_t> ids = ct.renders_bos() ? ms.tok->encode(text) : ms.tok->encode_with_bos(text);
    if ((int64_t)ids.size() >= ms.model->max_ctx()) {
      fmt::print(stderr, "flatquant: the conversation ({} tokens) no longer fits in the context ({} tokens, --ctx); "
                         "use /reset\n", ids.size(), ms.model->max_ctx());
      conv.pop_back();
      continue;
    }
    const runtime::GenerateResult r = gen.generate(ids, go, sampler, [](std::string_view t) {
      std::fwrite(t.data(), 1, t.size(), stdout);
      std::fflush(stdout);
    });
    fmt::print("\n");
    std::fflush(stdout);
    conv.push_back({"assistant", r.text});
    if (r.reason == runtime::StopReason::kContextFull)
      fmt::print(stderr, "flatquant: context full ({} tokens, --ctx): reply cut; use /reset\n", ms.model->max_ctx());
    fmt::print(stderr, "[prefill {} of {} tokens ({} reused from the cache), {:.1f} tok/s; decode {} tokens, "
                       "{:.1f} tok/s; stop: {}]\n",
               r.prefilled, r.prompt_tokens, r.prompt_tokens - r.prefilled, r.prefill_tok_s(), r.tokens.size(),
               r.decode_tok_s(), runtime::stop_reason_name(r.reason));
  }
  return 0;
}

}  // namespace

Runner register_chat(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* sub = app.add_subcommand("chat", "Interactive chat (stdin/stdout) with the model's chat template");
  sub->add_option("--model", o->model, "HF model directory or flatquant artifact directory")->required();
  sub->add_option("--template", o->tmpl, "Chat template: llama2|llama3|chatml|none (default: tokenizer_config.json)");
  sub->add_option("--system", o->system, "System prompt");
  o->s.add(sub);
  return [o]() -> int { return run(*o); };
}

}  // namespace fq::cli
