// GGUF -> HF import: a synthetic llama GGUF (names, shapes, q/k un-permutation, tokenizer.json) and the
// real SmolLM2-135M-Instruct Q4_1 file when present; SentencePiece merge derivation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "convert/gguf_builder.h"
#include "flatquant/error.h"
#include "io/convert.h"
#include "io/convert_tokenizer.h"
#include "test_util.h"

namespace fq {
namespace {

using test::GgufBuilder;

std::string models_dir() {
  const char* e = std::getenv("FLATQUANT_MODELS");
  return e && *e ? std::string(e) : test::source_path(".cache/models");
}

TEST(SpmMerges, OrderFollowsHfGenerateMerges) {
  // "ab" (score -3): a+b. "abb" (-4): a+bb and ab+b; equal score -> longer left first. "bb" (-5): b+b.
  const std::vector<std::string> pieces = {"<unk>", "<s>", "</s>", "a", "b", "ab", "abb", "bb"};
  const std::vector<float> scores = {0, 0, 0, -1, -2, -3, -4, -5};
  const auto m = spm_merges_from_scores(pieces, scores);
  const std::vector<std::pair<std::string, std::string>> want = {
      {"a", "b"}, {"ab", "b"}, {"a", "bb"}, {"b", "b"}};
  EXPECT_EQ(m, want);
}

TEST(SpmMerges, SplitsAtCodePoints) {
  const std::string sp = "\xe2\x96\x81";  // U+2581, three bytes
  const std::vector<std::string> pieces = {sp, "a", sp + "a", "\xe2\x96",
                                           "\x81"
                                           "a"};
  const auto m = spm_merges_from_scores(pieces, {0, -1, -2, -3, -4});
  ASSERT_EQ(m.size(), 1u);  // the byte split "\xe2\x96" + "\x81a" is not a code point boundary
  EXPECT_EQ(m[0], std::make_pair(sp, std::string("a")));
}

TEST(ByteLevelPre, KnownAndUnknownNames) {
  auto [norm, pre] = byte_level_pre_tokenizer("smollm", "x.gguf");
  EXPECT_TRUE(norm.is_null());
  EXPECT_EQ(pre["type"], "Sequence");
  EXPECT_EQ(pre["pretokenizers"][0]["type"], "Digits");
  EXPECT_TRUE(pre["pretokenizers"][0]["individual_digits"].get<bool>());
  EXPECT_EQ(pre["pretokenizers"][1]["type"], "ByteLevel");
  EXPECT_TRUE(pre["pretokenizers"][1]["use_regex"].get<bool>());
  EXPECT_EQ(byte_level_pre_tokenizer("qwen2", "x").first["type"], "NFC");
  EXPECT_EQ(byte_level_pre_tokenizer("llama-bpe", "x").second["pretokenizers"][0]["type"], "Split");
  try {
    byte_level_pre_tokenizer("falcon", "x.gguf");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x.gguf"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("falcon"), std::string::npos);
  }
}

// A 1-layer llama GGUF: n_embd 8, 2 heads of 4, 1 kv head, ff 16, vocab 7, all F32 with value = index.
GgufBuilder tiny_llama(bool with_output) {
  GgufBuilder b;
  b.kv_str("general.architecture", "llama");
  b.kv_u32("llama.context_length", 64);
  b.kv_u32("llama.embedding_length", 8);
  b.kv_u32("llama.block_count", 1);
  b.kv_u32("llama.feed_forward_length", 16);
  b.kv_u32("llama.attention.head_count", 2);
  b.kv_u32("llama.attention.head_count_kv", 1);
  b.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  b.kv_f32("llama.rope.freq_base", 100000.f);
  b.kv_str("tokenizer.ggml.model", "gpt2");
  b.kv_str("tokenizer.ggml.pre", "smollm");
  b.kv_strs("tokenizer.ggml.tokens", {"<|endoftext|>", "<|im_start|>", "a", "b", "ab", "\xc4\xa0",
                                      "\xc4\xa0"
                                      "a"});
  b.kv_i32s("tokenizer.ggml.token_type", {3, 3, 1, 1, 1, 1, 1});
  b.kv_strs("tokenizer.ggml.merges", {"a b", "\xc4\xa0 a"});
  b.kv_u32("tokenizer.ggml.bos_token_id", 1);
  b.kv_u32("tokenizer.ggml.eos_token_id", 0);
  b.kv_bool("tokenizer.ggml.add_bos_token", false);
  b.kv_str("tokenizer.chat_template", "{{ messages }}");
  auto seq = [](size_t n, float base) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = base + (float)i;
    return v;
  };
  b.tensor_f32("token_embd.weight", {8, 7}, seq(56, 0));
  b.tensor_f32("blk.0.attn_norm.weight", {8}, seq(8, 1000));
  b.tensor_f32("blk.0.attn_q.weight", {8, 8}, seq(64, 2000));
  b.tensor_f32("blk.0.attn_k.weight", {8, 4}, seq(32, 3000));
  b.tensor_f32("blk.0.attn_v.weight", {8, 4}, seq(32, 4000));
  b.tensor_f32("blk.0.attn_output.weight", {8, 8}, seq(64, 5000));
  b.tensor_f32("blk.0.ffn_norm.weight", {8}, seq(8, 6000));
  b.tensor_f32("blk.0.ffn_gate.weight", {8, 16}, seq(128, 7000));
  b.tensor_f32("blk.0.ffn_up.weight", {8, 16}, seq(128, 8000));
  b.tensor_f32("blk.0.ffn_down.weight", {16, 8}, seq(128, 9000));
  b.tensor_f32("output_norm.weight", {8}, seq(8, 10000));
  if (with_output) b.tensor_f32("output.weight", {8, 7}, seq(56, 11000));
  return b;
}

const HfTensor& find(const HfModel& m, const std::string& name) {
  for (const HfTensor& t : m.tensors)
    if (t.name == name) return t;
  throw std::runtime_error("no tensor " + name);
}

TEST(ConvertGguf, TinyLlama) {
  test::TempDir dir;
  const std::string p = dir.file("tiny.gguf");
  tiny_llama(false).write(p);
  HfModel m = import_gguf(p);
  const ModelConfig& c = m.cfg;
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.n_vocab, 7);
  EXPECT_EQ(c.n_embd, 8);
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_EQ(c.n_head_kv, 1);
  EXPECT_EQ(c.n_ctx, 64);
  EXPECT_EQ(c.rms_eps, 1e-5);  // shortest decimal of the fp32 value, not 9.99999974738e-06
  EXPECT_EQ(c.rope_theta, 100000.0);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_EQ(c.bos_id, 1);
  EXPECT_EQ(c.eos_ids, (std::vector<int64_t>{0}));
  EXPECT_EQ(m.tensors.size(), 1u + 9u + 1u);

  EXPECT_EQ(find(m, "model.embed_tokens.weight").shape, (std::vector<int64_t>{7, 8}));
  EXPECT_EQ(find(m, "model.layers.0.mlp.down_proj.weight").shape, (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(find(m, "model.layers.0.mlp.gate_proj.weight").data[17], 7017.f);  // no reordering
  // q: 2 heads of 4 rows; HF row order within a head is GGUF rows [0, 2, 1, 3].
  const HfTensor& q = find(m, "model.layers.0.self_attn.q_proj.weight");
  const int order[4] = {0, 2, 1, 3};
  for (int h = 0; h < 2; ++h)
    for (int r = 0; r < 4; ++r)
      EXPECT_EQ(q.data[(size_t)((h * 4 + r) * 8)], 2000.f + (float)((h * 4 + order[r]) * 8)) << h << " " << r;
  const HfTensor& k = find(m, "model.layers.0.self_attn.k_proj.weight");  // one kv head
  EXPECT_EQ(k.shape, (std::vector<int64_t>{4, 8}));
  for (int r = 0; r < 4; ++r) EXPECT_EQ(k.data[(size_t)(r * 8)], 3000.f + (float)(order[r] * 8));
  EXPECT_EQ(find(m, "model.layers.0.self_attn.v_proj.weight").data[8], 4008.f);  // v untouched

  const auto& tj = m.tokenizer.tokenizer;
  EXPECT_EQ(tj["model"]["merges"], nlohmann::ordered_json::array({"a b", "\xc4\xa0 a"}));
  EXPECT_EQ(tj["model"]["vocab"]["ab"], 4);
  EXPECT_EQ(tj["added_tokens"].size(), 2u);
  EXPECT_TRUE(tj["added_tokens"][1]["special"].get<bool>());
  EXPECT_EQ(tj["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
  EXPECT_EQ(tj["decoder"]["type"], "ByteLevel");
  EXPECT_EQ(tj["post_processor"]["type"], "ByteLevel");  // no BOS added
  EXPECT_EQ(m.tokenizer.config["chat_template"], "{{ messages }}");
  EXPECT_EQ(m.tokenizer.config["bos_token"], "<|im_start|>");
  EXPECT_FALSE(m.tokenizer.config["add_bos_token"].get<bool>());
}

TEST(ConvertGguf, UntiedOutputAndErrors) {
  test::TempDir dir;
  const std::string p = dir.file("tiny.gguf");
  tiny_llama(true).write(p);
  HfModel m = import_gguf(p);
  EXPECT_FALSE(m.cfg.tie_embeddings);
  EXPECT_EQ(find(m, "lm_head.weight").data[0], 11000.f);

  auto expect_err = [&](GgufBuilder b, const std::string& needle) {
    b.write(p);
    try {
      import_gguf(p);
      ADD_FAILURE() << "expected error with " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  GgufBuilder extra = tiny_llama(false);
  extra.tensor_f32("blk.0.attn_q.bias", {8}, std::vector<float>(8, 0.f));
  expect_err(extra, "blk.0.attn_q.bias");
  GgufBuilder wrong = tiny_llama(false);
  wrong.kv_u32("llama.attention.head_count_kv", 2);  // duplicate key
  expect_err(wrong, "duplicate");
  GgufBuilder arch;
  arch.kv_str("general.architecture", "gptneox");
  expect_err(arch, "gptneox");
}

TEST(ConvertGguf, SmolLM2) {
  const std::string p = models_dir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  FQ_REQUIRE_FILE(p);
  HfModel m = import_gguf(p);
  const ModelConfig& c = m.cfg;
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.n_embd, 576);
  EXPECT_EQ(c.n_layer, 30);
  EXPECT_EQ(c.n_head, 9);
  EXPECT_EQ(c.n_head_kv, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.n_ff, 1536);
  EXPECT_EQ(c.n_vocab, 49152);
  EXPECT_EQ(c.n_ctx, 8192);
  EXPECT_EQ(c.rms_eps, 1e-5);
  EXPECT_EQ(c.rope_theta, 100000.0);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_EQ(c.bos_id, 1);
  EXPECT_EQ(m.tensors.size(), 1u + 30u * 9u + 1u);
  const auto& tj = m.tokenizer.tokenizer;
  EXPECT_EQ(tj["model"]["vocab"].size(), 49152u);
  EXPECT_EQ(tj["model"]["merges"].size(), 48900u);
  EXPECT_EQ(tj["model"]["merges"][0], "\xc4\xa0 t");
  EXPECT_EQ(tj["added_tokens"].size(), 17u);
  EXPECT_EQ(tj["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
  EXPECT_EQ(m.tokenizer.config["eos_token"], "<|im_end|>");
  EXPECT_TRUE(m.tokenizer.config.contains("chat_template"));
  // Dequantized values are finite and not all zero (Q4_1 blocks with m != 0 everywhere).
  const HfTensor& q = m.tensors[2];
  EXPECT_EQ(q.name, "model.layers.0.self_attn.q_proj.weight");
  double s = 0;
  for (float v : q.data) {
    ASSERT_TRUE(std::isfinite(v));
    s += std::abs(v);
  }
  EXPECT_GT(s, 1.0);
}

}  // namespace
}  // namespace fq
