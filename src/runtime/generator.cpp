#include "runtime/generator.h"

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "core/json_guard.h"
#include "flatquant/error.h"
#include "io/utf8_stream.h"

namespace fq::runtime {

int32_t DecoderModel::append_sample(int32_t, const SamplerOptions&, uint64_t) {
  fail("this model does not sample on a device (samples_on_device() is false)");
}

void RefDecoderModel::append(const int32_t* tokens, int64_t n, float* last_logits) {
  FQ_ASSERT(n >= 1);
  // Only the last position's logits are needed: skip the LM head (n_vocab x n_embd per token) for the rest.
  if (n > 1) dec_.forward(tokens, n - 1, nullptr);
  dec_.forward(tokens + n - 1, 1, last_logits);
}

// ------------------------------------------------------------------------------------------------ stop

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

std::string StopMatcher::push(std::string_view text) {
  if (stopped_) return {};
  pending_ += text;
  // The earliest complete match wins (pending_ never held a complete one before this call).
  size_t cut = std::string::npos;
  for (const auto& s : stops_) cut = std::min(cut, pending_.find(s));
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, cut);
    pending_.clear();
    return out;
  }
  // Hold the longest suffix that is a proper prefix of some stop string: it may still complete.
  size_t hold = 0;
  for (const auto& s : stops_)
    for (size_t len = std::min(s.size() - 1, pending_.size()); len > hold; --len)
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopMatcher::flush() {
  std::string out;
  out.swap(pending_);
  return stopped_ ? std::string() : out;
}

// ------------------------------------------------------------------------------------------------ generate

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::kEos: return "eos";
    case StopReason::kMaxTokens: return "max_tokens";
    case StopReason::kStopString: return "stop_string";
    case StopReason::kContextFull: return "context_full";
  }
  return "?";
}

double GenerateResult::prefill_tok_s() const { return prefill_s > 0 ? (double)prefilled / prefill_s : 0.0; }
double GenerateResult::decode_tok_s() const { return decode_s > 0 ? (double)tokens.size() / decode_s : 0.0; }

Generator::Generator(DecoderModel& model, const Tokenizer& tok) : model_(model), tok_(tok) {
  logits_.resize(static_cast<size_t>(model.n_vocab()));
}

void Generator::reset() {
  model_.reset();
  cached_.clear();
}

GenerateResult Generator::generate(const std::vector<int32_t>& prompt, const GenerateOptions& opt, Sampler& sampler,
                                   const std::function<void(std::string_view)>& on_text) {
  using clock = std::chrono::steady_clock;
  FQ_CHECK(!prompt.empty(), "empty prompt: there is no token to condition on (give a prompt, or drop --no-bos)");
  const int64_t max_ctx = model_.max_ctx();
  FQ_CHECK((int64_t)prompt.size() < max_ctx,
           "the prompt has {} tokens but the context holds {} (no room to generate; shorten the prompt or raise --ctx)",
           prompt.size(), max_ctx);
  FQ_CHECK(opt.max_tokens >= 1, "--max-tokens must be at least 1 (found {})", opt.max_tokens);
  for (int32_t id : prompt)
    FQ_CHECK(id >= 0 && id < model_.n_vocab(), "prompt token id {} is outside the model vocabulary [0, {})", id,
             model_.n_vocab());

  GenerateResult r;
  r.prompt_tokens = (int64_t)prompt.size();
  // Reuse the cache when what it holds is a strict prefix of the new prompt (at least one new token is
  // needed to get logits); otherwise start over.
  const bool reuse = cached_.size() < prompt.size() && std::equal(cached_.begin(), cached_.end(), prompt.begin());
  if (!reuse) reset();
  const size_t start = cached_.size();
  const auto t0 = clock::now();
  model_.append(prompt.data() + start, (int64_t)(prompt.size() - start), logits_.data());
  cached_.assign(prompt.begin(), prompt.end());
  r.prefilled = (int64_t)(prompt.size() - start);
  const auto t1 = clock::now();
  r.prefill_s = std::chrono::duration<double>(t1 - t0).count();

  Utf8TokenStream stream(tok_, prompt);
  StopMatcher stops(opt.stop);
  std::vector<int32_t> history = prompt;  // what the repetition penalty sees
  auto emit = [&](const std::string& s) {
    if (s.empty()) return;
    r.text += s;
    if (on_text) on_text(s);
  };
  // Device sampling when the model has it and no repetition penalty (which needs the history) is asked for.
  const bool on_device = model_.samples_on_device() && sampler.options().repetition_penalty == 1.0;
  bool done = false;
  int32_t id = sampler.sample(logits_.data(), model_.n_vocab(), history);
  while (!done) {
    r.tokens.push_back(id);
    history.push_back(id);
    if (std::find(opt.eos_ids.begin(), opt.eos_ids.end(), id) != opt.eos_ids.end()) {
      r.reason = StopReason::kEos;
      break;
    }
    emit(stops.push(stream.push(id)));
    if (stops.stopped()) {
      r.reason = StopReason::kStopString;
      break;
    }
    if ((int64_t)r.tokens.size() >= opt.max_tokens) {
      r.reason = StopReason::kMaxTokens;
      done = true;
    } else if ((int64_t)cached_.size() >= max_ctx) {
      r.reason = StopReason::kContextFull;
      done = true;
    } else {
      int32_t next = -1;
      if (on_device)
        next = model_.append_sample(id, sampler.options(), rng_step_++);
      else
        model_.append(&id, 1, logits_.data());
      cached_.push_back(id);
      id = on_device ? next : sampler.sample(logits_.data(), model_.n_vocab(), history);
    }
  }
  if (!stops.stopped()) {
    emit(stops.push(stream.finish()));
    if (stops.stopped()) r.reason = StopReason::kStopString;
    emit(stops.flush());
  }
  r.decode_s = std::chrono::duration<double>(clock::now() - t1).count();
  return r;
}

// ------------------------------------------------------------------------------------------------ eos

std::vector<int32_t> collect_eos_ids(const std::string& model_dir, const ModelConfig& cfg, const Tokenizer& tok) {
  std::vector<int32_t> ids;
  for (int64_t e : cfg.eos_ids) ids.push_back(static_cast<int32_t>(e));
  if (tok.eos_id() >= 0) ids.push_back(tok.eos_id());
  const std::string gen = path_join(model_dir, "generation_config.json");
  if (file_exists(gen)) {
    nlohmann::json j;
    try {
      const std::string text = read_file(gen);
      check_json_depth(text, gen);
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not valid JSON ({})", gen, e.what());
    }
    if (j.is_object() && j.contains("eos_token_id")) {
      const auto& e = j["eos_token_id"];
      if (e.is_number_integer()) {
        ids.push_back(e.get<int32_t>());
      } else if (e.is_array()) {
        for (const auto& x : e) {
          FQ_CHECK(x.is_number_integer(), "{}: eos_token_id: expected integers, found {}", gen, json_excerpt(x));
          ids.push_back(x.get<int32_t>());
        }
      } else {
        FQ_CHECK(e.is_null(), "{}: eos_token_id: expected an integer or a list, found {}", gen, json_excerpt(e));
      }
    }
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

}  // namespace fq::runtime
