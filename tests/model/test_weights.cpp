// load_hf_weights on tiny generated HF directories: values and shapes for Llama and Qwen2 (tied, biases),
// and one test per loader error, each naming the file or directory and the tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "flatquant/error.h"
#include "io/tiny_model_dir.h"
#include "model/weights.h"
#include "test_util.h"

namespace fq {
namespace {

using test::TempDir;

#define EXPECT_HAS(msg, sub) EXPECT_NE((msg).find(sub), std::string::npos) << "message: " << (msg)

std::string load_error(const std::string& dir) {
  try {
    load_hf_weights(dir);
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    return m;
  }
  ADD_FAILURE() << "expected fq::Error";
  return "";
}

TEST(Weights, LoadsLlama) {
  TempDir d;
  EXPECT_EQ(test::write_tiny_model(d.path(), test::tiny_config_json()), 2u * 9 + 3);
  const ModelWeights w = load_hf_weights(d.path());
  EXPECT_EQ(w.cfg.n_layer, 2);
  ASSERT_EQ(w.layers.size(), 2u);
  EXPECT_EQ(w.tok_embd.size(), 32u * 16);
  EXPECT_EQ(w.norm.size(), 16u);
  EXPECT_EQ(w.lm_head.size(), 32u * 16);
  EXPECT_EQ(&w.head(), &w.lm_head);
  // Values follow the generator: tensor #1 is the embedding, element k = 0.5 sin(0.37 k + 1.3).
  EXPECT_FLOAT_EQ(w.tok_embd[5], 0.5f * std::sin(0.37f * 5 + 1.3f));
  const LayerWeights& L = w.layers[1];
  EXPECT_EQ(L.wq.size(), 16u * 16);
  EXPECT_EQ(L.wk.size(), 8u * 16);
  EXPECT_EQ(L.wv.size(), 8u * 16);
  EXPECT_EQ(L.wo.size(), 16u * 16);
  EXPECT_EQ(L.w_gate.size(), 24u * 16);
  EXPECT_EQ(L.w_down.size(), 16u * 24);
  EXPECT_TRUE(L.bq.empty());
  EXPECT_NE(w.layers[0].wq, w.layers[1].wq);
}

TEST(Weights, LoadsQwen2TiedWithBiasesFromBf16) {
  TempDir d;
  auto j = test::tiny_config_json("qwen2");
  j["tie_word_embeddings"] = true;
  test::write_tiny_model(d.path(), j, DType::BF16);
  const ModelWeights w = load_hf_weights(d.path());
  EXPECT_TRUE(w.lm_head.empty());
  EXPECT_EQ(&w.head(), &w.tok_embd);
  EXPECT_EQ(w.layers[0].bq.size(), 16u);
  EXPECT_EQ(w.layers[0].bk.size(), 8u);
  EXPECT_EQ(w.layers[0].bv.size(), 8u);
  // bf16 keeps 8 mantissa bits.
  EXPECT_NEAR(w.tok_embd[5], 0.5f * std::sin(0.37f * 5 + 1.3f), 1.0 / 256);
}

TEST(Weights, MissingTensor) {
  TempDir d;
  test::write_tiny_model(
      d.path(), test::tiny_config_json(), DType::F32,
      [](std::string& n, std::vector<int64_t>&) { return n != "model.layers.1.mlp.up_proj.weight"; });
  const auto m = load_error(d.path());
  EXPECT_HAS(m, d.path());
  EXPECT_HAS(m, "missing tensor 'model.layers.1.mlp.up_proj.weight'");
}

TEST(Weights, MissingQwenBias) {
  TempDir d;
  test::write_tiny_model(
      d.path(), test::tiny_config_json("qwen2"), DType::F32,
      [](std::string& n, std::vector<int64_t>&) { return n != "model.layers.0.self_attn.k_proj.bias"; });
  EXPECT_HAS(load_error(d.path()), "missing tensor 'model.layers.0.self_attn.k_proj.bias'");
}

TEST(Weights, ShapeDoesNotMatchConfig) {
  TempDir d;
  test::write_tiny_model(d.path(), test::tiny_config_json(), DType::F32,
                         [](std::string& n, std::vector<int64_t>& s) {
                           if (n == "model.layers.0.self_attn.q_proj.weight") s = {16, 8};
                           return true;
                         });
  const auto m = load_error(d.path());
  EXPECT_HAS(m,
             d.file("model.safetensors") +
                 ": tensor 'model.layers.0.self_attn.q_proj.weight': shape [16,8] does not match config.json "
                 "(expected [16,16])");
}

TEST(Weights, UntiedButNoLmHead) {
  TempDir d;
  test::write_tiny_model(d.path(), test::tiny_config_json(), DType::F32,
                         [](std::string& n, std::vector<int64_t>&) { return n != "lm_head.weight"; });
  const auto m = load_error(d.path());
  EXPECT_HAS(m, d.path());
  EXPECT_HAS(m, "missing tensor 'lm_head.weight' (config.json has tie_word_embeddings false)");
}

TEST(Weights, NonFiniteWeight) {
  TempDir d;
  test::write_tiny_model(d.path(), test::tiny_config_json(), DType::F32, nullptr,
                         [](const std::string& n, std::vector<float>& v) {
                           if (n == "model.layers.1.self_attn.v_proj.weight")
                             v[7] = std::numeric_limits<float>::infinity();
                         });
  const auto m = load_error(d.path());
  EXPECT_HAS(m, "tensor 'model.layers.1.self_attn.v_proj.weight': element 7 is not finite (inf)");
}

TEST(Weights, UnexpectedTensor) {
  TempDir d;
  test::write_tiny_model(d.path(), test::tiny_config_json());
  auto one = test::tiny_config_json();
  one["num_hidden_layers"] = 1;  // layer 1's tensors are now left over
  write_file_atomic(d.file("config.json"), one.dump());
  const auto m = load_error(d.path());
  EXPECT_HAS(m, "tensor 'model.layers.1.");
  EXPECT_HAS(m, "unexpected tensor");
}

TEST(Weights, IntegerDtypeRejected) {
  TempDir d;
  test::write_tiny_model(d.path(), test::tiny_config_json());
  // Replace the weights with an I8 embedding only.
  SafeTensorsWriter w;
  std::vector<int8_t> x(32 * 16, 1);
  w.add("model.embed_tokens.weight", DType::I8, {32, 16}, x.data(), x.size());
  w.write(d.file("model.safetensors"));
  EXPECT_HAS(load_error(d.path()), "tensor 'model.embed_tokens.weight': dtype I8 is not a float type");
}

TEST(Weights, MissingConfig) {
  TempDir d;
  test::write_tiny_model(d.path(), test::tiny_config_json());
  std::remove(d.file("config.json").c_str());
  const auto m = load_error(d.path());
  EXPECT_HAS(m, d.file("config.json"));
  EXPECT_HAS(m, "cannot open");
}

TEST(Weights, UnsupportedArchitectureInDirectory) {
  TempDir d;
  test::write_tiny_model(d.path(), test::tiny_config_json());
  auto j = test::tiny_config_json();
  j["architectures"] = {"GemmaForCausalLM"};
  write_file_atomic(d.file("config.json"), j.dump());
  const auto m = load_error(d.path());
  EXPECT_HAS(m, d.file("config.json") + ": architectures: unsupported 'GemmaForCausalLM'");
}

TEST(Weights, TensorNamesLayer) {
  EXPECT_EQ(TensorNames::layer(3, "mlp.up_proj.weight"), "model.layers.3.mlp.up_proj.weight");
}

}  // namespace
}  // namespace fq
