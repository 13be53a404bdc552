// Prompt -> streamed tokens over a small model interface (the CPU reference decoder now; the CUDA engine
// plugs in by implementing DecoderModel). The generator owns the token history that is in the model's KV
// cache, so a chat can feed only the new turn when the old tokens are a prefix of the new prompt.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "io/tokenizer.h"
#include "model/weights.h"
#include "ref/decoder.h"
#include "runtime/sampler.h"

namespace fq::runtime {

// A causal LM with an append-only KV cache.
class DecoderModel {
 public:
  virtual ~DecoderModel() = default;
  virtual int64_t n_vocab() const = 0;
  // The most tokens the cache holds.
  virtual int64_t max_ctx() const = 0;
  // Empties the cache.
  virtual void reset() = 0;
  // Appends n >= 1 tokens to the cache and writes the logits of the last one to last_logits[n_vocab].
  virtual void append(const int32_t* tokens, int64_t n, float* last_logits) = 0;
  // Models that draw the next token on their own device (the CUDA engine: inside the captured decode graph,
  // so only the token id reaches the host) return true, and append_sample() appends `token` and returns the
  // next token drawn with o's temperature / top-k / top-p / seed at RNG step `step` (no repetition penalty:
  // the generator keeps host sampling when one is asked for).
  virtual bool samples_on_device() const { return false; }
  virtual int32_t append_sample(int32_t token, const SamplerOptions& o, uint64_t step);
};

// The fp32 CPU reference decoder (src/ref/decoder.h) as a DecoderModel.
class RefDecoderModel : public DecoderModel {
 public:
  // `w` must outlive this object.
  RefDecoderModel(const ModelWeights& w, int64_t max_ctx, int n_threads) : dec_(w, max_ctx, n_threads) {}
  int64_t n_vocab() const override { return dec_.config().n_vocab; }
  int64_t max_ctx() const override { return dec_.max_ctx(); }
  void reset() override { dec_.reset(); }
  void append(const int32_t* tokens, int64_t n, float* last_logits) override;
  int n_threads() const { return dec_.n_threads(); }

 private:
  ref::RefDecoder dec_;
};

// Holds back text that could still become a stop string, and cuts the text at the first complete one.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  // Adds generated text; returns the part that is now safe to print. After a match, stopped() is true and
  // the returned text ends right before the stop string.
  std::string push(std::string_view text);
  // The held-back text (call at the end when no stop string matched).
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;  // text not yet returned: always shorter than the longest stop string unless stopped
  bool stopped_ = false;
};

enum class StopReason { kEos, kMaxTokens, kStopString, kContextFull };
const char* stop_reason_name(StopReason r);

struct GenerateOptions {
  int64_t max_tokens = 256;               // generated tokens at most (the EOS token included)
  std::vector<std::string> stop;          // stop strings (not printed)
  std::vector<int32_t> eos_ids;           // any of these ends the reply (not printed)
};

struct GenerateResult {
  std::string text;                // everything streamed
  std::vector<int32_t> tokens;     // the generated ids (a final EOS included)
  int64_t prompt_tokens = 0;       // the prompt's length
  int64_t prefilled = 0;           // how many prompt tokens were actually run (the rest came from the cache)
  double prefill_s = 0, decode_s = 0;
  StopReason reason = StopReason::kMaxTokens;
  double prefill_tok_s() const;
  double decode_tok_s() const;  // tokens after the first one / time spent producing them
};

class Generator {
 public:
  // `model` and `tok` must outlive the generator.
  Generator(DecoderModel& model, const Tokenizer& tok);

  // Runs `prompt` (reusing the cached tokens when they are a prefix of it, re-prefilling otherwise), then
  // samples until EOS, max_tokens, a stop string or a full context. `on_text` receives the text as it
  // becomes final (complete UTF-8, no partial stop string). Throws fq::Error when the prompt is empty or
  // does not fit in the context (leaving room for one generated token).
  GenerateResult generate(const std::vector<int32_t>& prompt, const GenerateOptions& opt, Sampler& sampler,
                          const std::function<void(std::string_view)>& on_text);

  // The ids whose keys/values are in the model's cache, in order.
  const std::vector<int32_t>& cached() const { return cached_; }
  void reset();

 private:
  DecoderModel& model_;
  const Tokenizer& tok_;
  std::vector<int32_t> cached_;
  std::vector<float> logits_;
  // Device sampling's RNG step: it keeps counting across generate() calls (chat turns), so no two draws of one
  // seed share a key.
  uint64_t rng_step_ = 0;
};

// The end-of-sequence ids of a model directory: config.json eos_token_id, generation_config.json
// eos_token_id (int or list) and the tokenizer's EOS, deduplicated.
std::vector<int32_t> collect_eos_ids(const std::string& model_dir, const ModelConfig& cfg, const Tokenizer& tok);

}  // namespace fq::runtime
