// HFLM-style request encoding and scoring: encode_pair's space handling, left truncation, the prefix-reusing
// scorer against a fresh forward per request (tiny_llama3, committed), and the acc / acc_norm / stderr
// arithmetic on fabricated log-likelihoods.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "eval/loglik.h"
#include "eval/qa_metrics.h"
#include "flatquant/error.h"
#include "io/tokenizer.h"
#include "model/weights.h"
#include "ref/decoder.h"
#include "test_util.h"

namespace fq::eval {
namespace {

// One token per byte (id = byte value), BOS 1, EOS 2.
class ByteTokenizer : public Tokenizer {
 public:
  explicit ByteTokenizer(bool add_bos) {
    bos_id_ = 1;
    eos_id_ = 2;
    add_bos_ = add_bos;
  }
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> out;
    for (char c : text) out.push_back((uint8_t)c);
    return out;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t i : ids) s += (char)i;
    return s;
  }
  std::string piece(int32_t id) const override { return std::string(1, (char)id); }
  int32_t n_vocab() const override { return 256; }
};

std::vector<int32_t> bytes(const std::string& s) { return ByteTokenizer(false).encode(s); }

TEST(QaLoglik, EncodePairMovesTrailingSpaces) {
  const ByteTokenizer tok(true);
  TokenRequest r = encode_pair(tok, "ab \n", "c", false);
  EXPECT_EQ(r.context, bytes("ab"));
  EXPECT_EQ(r.continuation, bytes(" \nc"));
  r = encode_pair(tok, "ab", " c", true);  // add_bos: the tokenizer's BOS on both encodings
  EXPECT_EQ(r.context, (std::vector<int32_t>{1, 'a', 'b'}));
  EXPECT_EQ(r.continuation, bytes(" c"));
  r = encode_pair(tok, "", " hello", false);  // empty context: BOS stands in
  EXPECT_EQ(r.context, std::vector<int32_t>{1});
  EXPECT_EQ(r.continuation, bytes(" hello"));
}

TEST(QaLoglik, EncodePairRealTokenizer) {
  const char* env = std::getenv("FLATQUANT_MODELS");
  const std::string dir = path_join(env && *env ? std::string(env) : test::source_path(".cache/models"), "stories260K");
  FQ_REQUIRE_FILE(dir + "/tokenizer.json");
  const auto tok = load_tokenizer(dir);
  const TokenRequest r = encode_pair(*tok, "Question: Is it red?\nAnswer: ", "yes", false);
  EXPECT_EQ(r.context, tok->encode("Question: Is it red?\nAnswer:"));
  std::vector<int32_t> all = r.context;
  all.insert(all.end(), r.continuation.begin(), r.continuation.end());
  EXPECT_EQ(all, tok->encode("Question: Is it red?\nAnswer: yes"));
  EXPECT_FALSE(r.continuation.empty());
}

TEST(QaLoglik, ModelInputTruncatesFromTheLeft) {
  TokenRequest r{{10, 11, 12, 13, 14}, {20, 21}};
  ModelInput mi = model_input(r, 100);
  EXPECT_EQ(mi.tokens, (std::vector<int32_t>{10, 11, 12, 13, 14, 20}));
  EXPECT_EQ(mi.first, 4);  // row 4 (token 14) predicts 20, row 5 predicts 21
  mi = model_input(r, 4);  // keep the last max_length + 1 = 5 tokens, drop the final one
  EXPECT_EQ(mi.tokens, (std::vector<int32_t>{12, 13, 14, 20}));
  EXPECT_EQ(mi.first, 2);
  EXPECT_THROW(model_input(TokenRequest{{1}, {5, 6, 7}}, 2), Error);
}

TEST(QaLoglik, LogSoftmax) {
  const float row[3] = {1.0f, 3.0f, 3.0f};
  bool top = false;
  const double lse = 3.0 + std::log(2.0 + std::exp(-2.0));
  EXPECT_NEAR(log_softmax_at(row, 3, 0, &top), 1.0 - lse, 1e-12);
  EXPECT_FALSE(top);
  log_softmax_at(row, 3, 1, &top);
  EXPECT_TRUE(top);  // ties: the first index is the argmax
  log_softmax_at(row, 3, 2, &top);
  EXPECT_FALSE(top);
}

// A fresh forward over the whole model input of one request.
LoglikResult fresh(const ModelWeights& w, const TokenRequest& r, int64_t max_length) {
  const ModelInput mi = model_input(r, max_length);
  ref::RefDecoder dec(w, (int64_t)mi.tokens.size(), 1);
  const int64_t V = w.cfg.n_vocab, L = (int64_t)mi.tokens.size();
  std::vector<float> logits(L * V);
  dec.forward(mi.tokens.data(), L, logits.data());
  LoglikResult res;
  res.greedy = true;
  for (size_t j = 0; j < r.continuation.size(); ++j) {
    bool top = false;
    res.loglik += log_softmax_at(logits.data() + (mi.first + j) * V, V, r.continuation[j], &top);
    res.greedy = res.greedy && top;
  }
  return res;
}

TEST(QaLoglik, CachedScoringMatchesFreshForward) {
  const std::string dir = test::source_path("tests/data/models/tiny_llama3");
  FQ_REQUIRE_FILE(dir + "/model.safetensors");
  const ModelWeights w = load_hf_weights(dir);
  const ByteTokenizer tok(false);
  std::vector<TokenRequest> reqs;
  for (const char* c : {" red ball.", " blue car", " red bus", "!"}) reqs.push_back(encode_pair(tok, "Tim has a", c, false));
  reqs.push_back(encode_pair(tok, "Sam", " ran", false));
  reqs.push_back(encode_pair(tok, "Tim has a dog", " too", false));
  // A continuation that is the model's own greedy choice, to see is_greedy true.
  {
    ref::RefDecoder dec(w, 8, 1);
    const std::vector<int32_t> ctx = bytes("Tim");
    std::vector<float> logits(3 * w.cfg.n_vocab);
    dec.forward(ctx.data(), 3, logits.data());
    int32_t best = 0;
    for (int32_t v = 1; v < w.cfg.n_vocab; ++v)
      if (logits[2 * w.cfg.n_vocab + v] > logits[2 * w.cfg.n_vocab + best]) best = v;
    reqs.push_back(TokenRequest{ctx, {best}});
  }
  for (int64_t max_length : {int64_t{512}, int64_t{11}}) {  // 11: long requests are truncated from the left
    RefPrefixLM lm(w, 32, 2);
    CachedLogLikelihood ll(lm, max_length);
    const std::vector<size_t> order = sort_for_prefix_reuse(reqs, max_length);
    std::vector<TokenRequest> sorted;
    for (size_t i : order) sorted.push_back(reqs[i]);
    const std::vector<LoglikResult> got = ll.score(sorted);
    int64_t full_tokens = 0;
    for (size_t k = 0; k < order.size(); ++k) {
      const LoglikResult want = fresh(w, reqs[order[k]], max_length);
      EXPECT_NEAR(got[k].loglik, want.loglik, 1e-4) << "request " << order[k] << " max_length " << max_length;
      EXPECT_EQ(got[k].greedy, want.greedy) << "request " << order[k];
      full_tokens += (int64_t)model_input(reqs[order[k]], max_length).tokens.size();
      EXPECT_LT(got[k].loglik, 0.0);
    }
    if (max_length == 512) {
      EXPECT_LT(ll.tokens_run(), full_tokens);  // shared contexts ran once
    }
  }
  RefPrefixLM lm(w, 32, 1);
  CachedLogLikelihood ll(lm, 512);
  EXPECT_TRUE(ll.score({reqs.back()})[0].greedy);
}

TEST(QaMetrics, AccAndAccNorm) {
  QaDoc d;
  d.gold = 1;
  d.requests.resize(3);
  d.choice_len = {2, 10, 4};
  // acc: argmax ll = 0 (-3); acc_norm: ll / len = -1.5, -0.5, -1.25 -> 1.
  DocScore s = score_doc(d, {{-3.0, false}, {-5.0, false}, {-5.0, false}});
  EXPECT_EQ(s.pred, 0);
  EXPECT_EQ(s.acc, 0.0);
  EXPECT_EQ(s.pred_norm, 1);
  EXPECT_EQ(s.acc_norm, 1.0);
  // Ties go to the first choice (numpy.argmax).
  s = score_doc(d, {{-2.0, false}, {-2.0, false}, {-9.0, false}});
  EXPECT_EQ(s.pred, 0);
  QaDoc lam;
  lam.requests.resize(1);
  EXPECT_EQ(score_doc(lam, {{-4.0, true}}).acc, 1.0);
  EXPECT_EQ(score_doc(lam, {{-0.1, false}}).acc, 0.0);
}

TEST(QaMetrics, StderrAndAverage) {
  // p = 0.75, n = 4: sqrt(p (1 - p) / (n - 1)) = 0.25.
  EXPECT_NEAR(mean_stderr({1, 0, 1, 1}), 0.25, 1e-12);
  EXPECT_NEAR(mean_stderr({1, 0}), 0.5, 1e-12);
  EXPECT_TRUE(std::isnan(mean_stderr({1})));
  std::vector<DocScore> docs(4);
  docs[0].acc = docs[1].acc = 1.0;
  docs[0].acc_norm = 1.0;
  TaskResult piqa = aggregate(QaTask::piqa, docs, {});
  EXPECT_DOUBLE_EQ(piqa.acc, 0.5);
  EXPECT_DOUBLE_EQ(piqa.acc_norm, 0.25);
  EXPECT_NEAR(piqa.acc_norm_stderr, std::sqrt(0.25 * 0.75 / 3.0), 1e-12);
  TaskResult wino = aggregate(QaTask::winogrande, docs, {});
  EXPECT_FALSE(wino.has_acc_norm);
  TaskResult lam = aggregate(QaTask::lambada_openai, docs, {-1.0, -3.0});
  EXPECT_NEAR(lam.perplexity, std::exp(2.0), 1e-9);
  // Paper average: acc_norm of piqa (0.25), acc of winogrande (0.5), acc of lambada (0.5), x100.
  EXPECT_NEAR(paper_average({piqa, wino, lam}), 100.0 * (0.25 + 0.5 + 0.5) / 3.0, 1e-9);
}

}  // namespace
}  // namespace fq::eval
