// Log-likelihood of a continuation given a context, computed the way lm-evaluation-harness's HFLM does:
//   encode_pair: trailing spaces of the context move to the front of the continuation; whole = enc(ctx + cont),
//                ctx_enc = enc(ctx), cont_enc = whole[len(ctx_enc):]; enc adds no special tokens unless
//                add_bos (lm-eval's add_bos_token=True: the tokenizer's own BOS rule); an empty context is
//                [BOS] (or [EOS] when there is no BOS), cont_enc = enc(cont).
//   input:       (ctx_enc + cont_enc)[-(max_length + 1):][:-1], i.e. truncated from the left;
//   loglik:      sum over the continuation tokens of log_softmax(logits)[token], computed in double;
//   is_greedy:   every continuation token is the argmax (first index on ties) of its row.
#pragma once
#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include "ref/decoder.h"

namespace fq {
class Tokenizer;
}

namespace fq::eval {

struct TokenRequest {
  std::vector<int32_t> context, continuation;
};

struct LoglikResult {
  double loglik = 0.0;
  bool greedy = false;
};

TokenRequest encode_pair(const Tokenizer& tok, std::string_view context, std::string_view continuation,
                         bool add_bos);

// The model input of a request (tokens the model runs over) and where its continuation starts in it:
// rows first .. first + n_cont - 1 of the input's logits predict the continuation tokens. Throws fq::Error when
// the continuation alone does not fit in max_length.
struct ModelInput {
  std::vector<int32_t> tokens;
  int64_t first = 0;
};
ModelInput model_input(const TokenRequest& r, int64_t max_length);

// Scores log-likelihood requests: the seam between the evaluator and a model backend (the CPU reference now,
// the CUDA engine later). Implementations may reorder work internally but return results in request order.
class LogLikelihood {
 public:
  virtual ~LogLikelihood() = default;
  // HFLM's max_length: the longest input the model is run over.
  virtual int64_t max_length() const = 0;
  virtual std::vector<LoglikResult> score(const std::vector<TokenRequest>& reqs) = 0;
};

// A decoder whose KV cache can be cut back to a position (RefDecoder; the CUDA engine later).
class PrefixLM {
 public:
  virtual ~PrefixLM() = default;
  virtual int64_t n_vocab() const = 0;
  virtual int64_t max_ctx() const = 0;
  virtual int64_t pos() const = 0;
  virtual void rewind(int64_t p) = 0;
  // Appends n tokens at pos(); logits: [n, n_vocab], or nullptr when no logits are needed.
  virtual void forward(const int32_t* tokens, int64_t n, float* logits) = 0;
};

class RefPrefixLM : public PrefixLM {
 public:
  // `w` must outlive this object.
  RefPrefixLM(const ModelWeights& w, int64_t max_ctx, int n_threads) : dec_(w, max_ctx, n_threads) {}
  int64_t n_vocab() const override { return dec_.config().n_vocab; }
  int64_t max_ctx() const override { return dec_.max_ctx(); }
  int64_t pos() const override { return dec_.pos(); }
  void rewind(int64_t p) override { dec_.rewind(p); }
  void forward(const int32_t* tokens, int64_t n, float* logits) override { dec_.forward(tokens, n, logits); }
  ref::RefDecoder& decoder() { return dec_; }

 private:
  ref::RefDecoder dec_;
};

// Scores requests one after another on a PrefixLM, reusing the cached prefix the request shares with the
// previous one (hand it requests sorted by tokens — sort_for_prefix_reuse — so that the choices of one
// document, which share their context, run the context once). Results equal a fresh forward per request up
// to fp32 summation order (the same positions, the same keys/values).
class CachedLogLikelihood : public LogLikelihood {
 public:
  // max_length: HFLM's max_length (the model's max_position_embeddings); lm.max_ctx() may be smaller when no
  // request needs more.
  CachedLogLikelihood(PrefixLM& lm, int64_t max_length) : lm_(lm), max_length_(max_length) {}
  int64_t max_length() const override { return max_length_; }
  std::vector<LoglikResult> score(const std::vector<TokenRequest>& reqs) override;
  // Token positions run through the model so far (for speed reports).
  int64_t tokens_run() const { return tokens_run_; }

 private:
  PrefixLM& lm_;
  int64_t max_length_;
  std::vector<int32_t> cached_;  // the tokens in lm_'s cache, positions 0 .. pos()-1
  std::vector<float> logits_;
  int64_t tokens_run_ = 0;
};

// Request indices ordered lexicographically by model input, so that requests sharing a prefix are adjacent.
std::vector<size_t> sort_for_prefix_reuse(const std::vector<TokenRequest>& reqs, int64_t max_length);

// log_softmax(row)[token] in double, and whether token is the row's first argmax.
double log_softmax_at(const float* row, int64_t n_vocab, int32_t token, bool* is_argmax);

}  // namespace fq::eval
