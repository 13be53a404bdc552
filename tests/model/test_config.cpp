// ModelConfig: parsing of the three supported architectures, transformers 4.x and 5.x rope fields, defaults,
// validation errors naming the file and field, and the to_json round trip.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "flatquant/error.h"
#include "io/tiny_model_dir.h"
#include "model/config.h"
#include "test_util.h"

namespace fq {
namespace {

using nlohmann::json;

std::string config_error(const json& j) {
  try {
    ModelConfig::from_json(j, "/m/config.json");
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    EXPECT_NE(m.find("/m/config.json"), std::string::npos) << m;
    return m;
  }
  ADD_FAILURE() << "expected fq::Error for " << j.dump();
  return "";
}

#define EXPECT_HAS(msg, sub) EXPECT_NE((msg).find(sub), std::string::npos) << "message: " << (msg)

TEST(ModelConfig, ParsesLlama) {
  const auto c = ModelConfig::from_json(test::tiny_config_json(), "config.json");
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.n_vocab, 32);
  EXPECT_EQ(c.n_embd, 16);
  EXPECT_EQ(c.n_layer, 2);
  EXPECT_EQ(c.n_head, 4);
  EXPECT_EQ(c.n_head_kv, 2);
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_EQ(c.n_ff, 24);
  EXPECT_EQ(c.n_ctx, 64);
  EXPECT_DOUBLE_EQ(c.rms_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_FALSE(c.tie_embeddings);
  EXPECT_FALSE(c.attn_bias);
  EXPECT_EQ(c.bos_id, 1);
  EXPECT_EQ(c.eos_ids, std::vector<int64_t>{2});
}

TEST(ModelConfig, DefaultsForOptionalFields) {
  json j = test::tiny_config_json();
  for (const char* k : {"num_key_value_heads", "rms_norm_eps", "rope_theta", "hidden_act",
                        "tie_word_embeddings", "torch_dtype", "bos_token_id", "eos_token_id", "model_type"})
    j.erase(k);
  j["head_dim"] = nullptr;
  const auto c = ModelConfig::from_json(j, "config.json");
  EXPECT_EQ(c.n_head_kv, 4);
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_DOUBLE_EQ(c.rms_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.torch_dtype, "float32");
  EXPECT_EQ(c.bos_id, -1);
  EXPECT_TRUE(c.eos_ids.empty());
  EXPECT_EQ(c.model_type, "llama");
}

TEST(ModelConfig, ExplicitHeadDimMayDifferFromHiddenOverHeads) {
  json j = test::tiny_config_json();
  j["head_dim"] = 8;
  EXPECT_EQ(ModelConfig::from_json(j, "config.json").head_dim, 8);
}

TEST(ModelConfig, Qwen2AlwaysHasQkvBiasAndTies) {
  json j = test::tiny_config_json("qwen2");
  j["tie_word_embeddings"] = true;
  j["eos_token_id"] = json::array({2, 3});
  j["dtype"] = "bfloat16";
  j.erase("torch_dtype");
  const auto c = ModelConfig::from_json(j, "config.json");
  EXPECT_EQ(c.architecture, "Qwen2ForCausalLM");
  EXPECT_TRUE(c.attn_bias);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_EQ(c.eos_ids, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(ModelConfig, Mistral) {
  auto j = test::tiny_config_json("mistral");
  auto c = ModelConfig::from_json(j, "config.json");
  EXPECT_EQ(c.model_type, "mistral");
  EXPECT_FALSE(c.attn_bias);
  EXPECT_EQ(c.n_ctx, 64);
  EXPECT_TRUE(c.to_json()["sliding_window"].is_null());
  // A sliding window shorter than the context caps the context (full attention is exact up to the window).
  j["sliding_window"] = 32;
  c = ModelConfig::from_json(j, "config.json");
  EXPECT_EQ(c.n_ctx, 32);
  j["sliding_window"] = nullptr;
  EXPECT_EQ(ModelConfig::from_json(j, "config.json").n_ctx, 64);
}

TEST(ModelConfig, Llama3RopeScaling) {
  json j = test::tiny_config_json();
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 32.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  const auto c = ModelConfig::from_json(j, "config.json");
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
}

TEST(ModelConfig, LinearRopeScalingWithOldTypeKey) {
  json j = test::tiny_config_json();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  const auto c = ModelConfig::from_json(j, "config.json");
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);
}

TEST(ModelConfig, Transformers5RopeParameters) {
  json j = test::tiny_config_json();
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_theta", 1e6}, {"rope_type", "default"}};
  auto c = ModelConfig::from_json(j, "config.json");
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_scaling.type, "default");
  j["rope_parameters"] = {{"rope_theta", 5e5}, {"rope_type", "linear"}, {"factor", 4.0}};
  c = ModelConfig::from_json(j, "config.json");
  EXPECT_DOUBLE_EQ(c.rope_theta, 5e5);
  EXPECT_EQ(c.rope_scaling.type, "linear");
}

TEST(ModelConfig, UnsupportedArchitecture) {
  json j = test::tiny_config_json();
  j["architectures"] = {"GPT2LMHeadModel"};
  const auto m = config_error(j);
  EXPECT_HAS(m,
             "architectures: unsupported 'GPT2LMHeadModel' (supported: LlamaForCausalLM, MistralForCausalLM, "
             "Qwen2ForCausalLM)");
}

TEST(ModelConfig, MissingField) {
  json j = test::tiny_config_json();
  j.erase("hidden_size");
  EXPECT_HAS(config_error(j), "missing field 'hidden_size'");
}

TEST(ModelConfig, MissingArchitectures) {
  json j = test::tiny_config_json();
  j.erase("architectures");
  EXPECT_HAS(config_error(j), "missing field 'architectures'");
}

TEST(ModelConfig, ModelTypeMismatch) {
  json j = test::tiny_config_json();
  j["model_type"] = "qwen2";
  EXPECT_HAS(config_error(j), "field 'model_type': 'qwen2' does not match architecture LlamaForCausalLM");
}

TEST(ModelConfig, WrongFieldType) {
  json j = test::tiny_config_json();
  j["vocab_size"] = "32";
  EXPECT_HAS(config_error(j), "field 'vocab_size': expected an integer (found \"32\")");
}

TEST(ModelConfig, NonPositiveSize) {
  json j = test::tiny_config_json();
  j["intermediate_size"] = 0;
  EXPECT_HAS(config_error(j), "field 'intermediate_size': must be positive (found 0)");
}

TEST(ModelConfig, KvHeadsMustDivideHeads) {
  json j = test::tiny_config_json();
  j["num_key_value_heads"] = 3;
  EXPECT_HAS(config_error(j), "field 'num_key_value_heads': 3 does not divide num_attention_heads 4");
}

TEST(ModelConfig, HeadsMustDivideHidden) {
  json j = test::tiny_config_json();
  j["num_attention_heads"] = 3;
  j["num_key_value_heads"] = 3;
  EXPECT_HAS(config_error(j), "field 'num_attention_heads': 3 does not divide hidden_size 16");
}

TEST(ModelConfig, OddHeadDim) {
  json j = test::tiny_config_json();
  j["head_dim"] = 5;
  EXPECT_HAS(config_error(j), "field 'head_dim': must be even");
}

TEST(ModelConfig, UnsupportedActivation) {
  json j = test::tiny_config_json();
  j["hidden_act"] = "gelu";
  EXPECT_HAS(config_error(j), "field 'hidden_act': unsupported 'gelu'");
}

TEST(ModelConfig, UnsupportedRopeScaling) {
  json j = test::tiny_config_json();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_HAS(config_error(j), "field 'rope_scaling': unsupported rope_type 'yarn'");
  j["rope_scaling"] = "linear";
  EXPECT_HAS(config_error(j), "field 'rope_scaling': expected an object or null");
}

TEST(ModelConfig, Llama3RopeNeedsAllFactors) {
  json j = test::tiny_config_json();
  j["rope_scaling"] = {
      {"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0}};
  EXPECT_HAS(config_error(j), "missing field 'rope_scaling.original_max_position_embeddings'");
}

TEST(ModelConfig, LlamaAttentionBiasRejected) {
  json j = test::tiny_config_json();
  j["attention_bias"] = true;
  EXPECT_HAS(config_error(j), "field 'attention_bias'");
}

TEST(ModelConfig, BadEosToken) {
  json j = test::tiny_config_json();
  j["eos_token_id"] = json::array({2, "x"});
  EXPECT_HAS(config_error(j), "field 'eos_token_id'");
  j["eos_token_id"] = 99;
  EXPECT_HAS(config_error(j), "field 'eos_token_id': 99 is outside the vocabulary [0, 32)");
}

TEST(ModelConfig, LoadNamesFileForInvalidJson) {
  test::TempDir d;
  write_file_atomic(d.file("config.json"), "{\"vocab_size\": ");
  try {
    ModelConfig::load(d.file("config.json"));
    FAIL() << "expected error";
  } catch (const Error& e) {
    EXPECT_HAS(std::string(e.what()), d.file("config.json") + ": not valid JSON");
  }
}

TEST(ModelConfig, ToJsonRoundTrip) {
  json j = test::tiny_config_json("qwen2");
  j["tie_word_embeddings"] = true;
  j["eos_token_id"] = json::array({2, 3});
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 32}};
  const auto a = ModelConfig::from_json(j, "a");
  const json out = a.to_json();
  EXPECT_EQ(out["architectures"], json::array({"Qwen2ForCausalLM"}));
  EXPECT_EQ(out["torch_dtype"], "float32");
  EXPECT_EQ(out["rope_scaling"]["rope_type"], "llama3");
  const auto b = ModelConfig::from_json(out, "b");
  EXPECT_EQ(b.to_json(), out);
  EXPECT_EQ(b.n_head_kv, a.n_head_kv);
  EXPECT_EQ(b.eos_ids, a.eos_ids);
  EXPECT_EQ(b.rope_scaling.original_max_position_embeddings, 32);
  EXPECT_TRUE(b.tie_embeddings);

  const json plain = ModelConfig::from_json(test::tiny_config_json(), "c").to_json();
  EXPECT_TRUE(plain["rope_scaling"].is_null());
  EXPECT_EQ(plain["eos_token_id"], 2);
  EXPECT_EQ(plain["attention_bias"], false);
}

TEST(ModelConfig, SummaryMentionsShape) {
  const std::string s = ModelConfig::from_json(test::tiny_config_json(), "c").summary();
  EXPECT_HAS(s, "LlamaForCausalLM (llama): 2 layers, n_embd 16, n_head 4 (kv 2, head_dim 4)");
}

}  // namespace
}  // namespace fq
