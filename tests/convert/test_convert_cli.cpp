// `flatquant convert` end to end: the written directory loads with fq::load_hf_weights with the same
// values as the in-memory import, refuses to overwrite without --force, and stores f16 on request.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "convert/gguf_builder.h"
#include "core/dtype.h"
#include "io/convert.h"
#include "io/safetensors.h"
#include "model/weights.h"
#include "test_util.h"

namespace fq {
namespace {

TEST(ConvertCli, Stories260KRoundTrip) {
  const std::string model = test::data_path("stories260K/stories260K.bin");
  const std::string tok = test::data_path("stories260K/tok512.bin");
  FQ_REQUIRE_FILE(model);
  FQ_REQUIRE_FILE(tok);
  test::TempDir dir;
  const std::string out = dir.file("st");
  const auto r =
      test::run_cli("convert --from llama2c --model " + model + " --tokenizer " + tok + " --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("converted"), std::string::npos) << r.out;
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                        "generation_config.json", "tokenizer.bin"})
    EXPECT_TRUE(file_exists(path_join(out, f))) << f;
  EXPECT_EQ(read_file(path_join(out, "tokenizer.bin")), read_file(tok));

  const ModelWeights w = load_hf_weights(out);
  EXPECT_EQ(w.cfg.n_embd, 64);
  EXPECT_EQ(w.cfg.n_layer, 5);
  EXPECT_EQ(w.cfg.n_head_kv, 4);
  EXPECT_EQ(w.cfg.n_ctx, 512);
  EXPECT_TRUE(w.cfg.tie_embeddings);
  EXPECT_TRUE(w.lm_head.empty());
  EXPECT_EQ(w.cfg.rms_eps, 1e-5);
  EXPECT_EQ(w.cfg.bos_id, 1);
  ASSERT_EQ(w.layers.size(), 5u);
  EXPECT_EQ(w.layers[4].w_down.size(), 64u * 172u);

  // Bit-exact against the in-memory import (which the permutation tests check against the raw file).
  HfModel m = import_llama2c(model, tok);
  for (const HfTensor& t : m.tensors) {
    if (t.name == "model.layers.3.self_attn.k_proj.weight") {
      EXPECT_EQ(w.layers[3].wk, t.data);
    } else if (t.name == "model.layers.2.mlp.up_proj.weight") {
      EXPECT_EQ(w.layers[2].w_up, t.data);
    } else if (t.name == "model.embed_tokens.weight") {
      EXPECT_EQ(w.tok_embd, t.data);
    }
  }

  const auto again = test::run_cli("convert --from llama2c --model " + model + " --out " + out);
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("--force"), std::string::npos) << again.err;
  const auto forced = test::run_cli("convert --from llama2c --model " + model + " --out " + out + " --force");
  EXPECT_EQ(forced.exit_code, 0) << forced.err;  // and finds tok512.bin beside the checkpoint
}

TEST(ConvertCli, F16AndErrors) {
  test::TempDir dir;
  test::GgufBuilder b;  // a GGUF that is not a model: the CLI must fail with one line naming it
  b.kv_str("general.architecture", "bert");
  const std::string p = dir.file("bert.gguf");
  b.write(p);
  const auto r = test::run_cli("convert --from gguf --model " + p + " --out " + dir.file("o"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("flatquant: error: " + p), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("bert"), std::string::npos) << r.err;
  EXPECT_FALSE(file_exists(dir.file("o")));

  const std::string model = test::data_path("stories260K/stories260K.bin");
  FQ_REQUIRE_FILE(model);
  const std::string out = dir.file("h");
  const auto h = test::run_cli("convert --from llama2c --model " + model + " --out " + out + " --dtype f16");
  ASSERT_EQ(h.exit_code, 0) << h.err;
  SafeTensors st(path_join(out, "model.safetensors"));
  EXPECT_EQ(st.get("model.norm.weight").dtype, DType::F16);
  EXPECT_FALSE(st.find("lm_head.weight"));
  const auto cfg = nlohmann::json::parse(read_file(path_join(out, "config.json")));
  EXPECT_EQ(cfg["torch_dtype"], "float16");
}

}  // namespace
}  // namespace fq
