// Inputs found by the fuzz targets (fuzz/, docs/hardening.md), kept as regression tests: each must now be
// refused with a one-line fq::Error naming the file and the field, within the memory a normal run needs.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "core/sha256.h"
#include "flatquant/error.h"
#include "io/convert.h"
#include "io/tiny_model_dir.h"
#include "model/artifact.h"
#include "model/config.h"
#include "model/weights.h"
#include "test_util.h"

namespace fq {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// fuzz_gguf, out-of-memory: llama.block_count 16384001 in a file of 11 tensors made import_gguf build a
// per-layer list of 180M entries (> 2 GB) before looking for the tensors.
TEST(FuzzRegression, GgufHugeBlockCount) {
  const std::string p = test::source_path("tests/data/fuzz/gguf/oom_block_count.gguf");
  const std::string e = error_of([&] { import_gguf(p); });
  EXPECT_NE(
      e.find(
          "oom_block_count.gguf: metadata 'llama.block_count' is 16384001 but the file has only 11 tensors"),
      std::string::npos)
      << e;
}

// The same class of bug in config.json: num_hidden_layers is checked against the tensors before the layer
// array is allocated, and sizes beyond int32 are refused.
TEST(FuzzRegression, ConfigHugeLayerCount) {
  test::TempDir t;
  auto cfg = test::tiny_config_json();
  test::write_tiny_model(t.path(), cfg);
  cfg["num_hidden_layers"] = 1000000000;
  write_file_atomic(t.file("config.json"), cfg.dump());
  EXPECT_NE(error_of([&] { load_hf_weights(t.path()); })
                .find("missing tensor 'model.layers.999999999.input_layernorm.weight' (config.json has "
                      "num_hidden_layers 1000000000)"),
            std::string::npos);
  cfg["num_hidden_layers"] = 1LL << 40;
  write_file_atomic(t.file("config.json"), cfg.dump());
  EXPECT_NE(error_of([&] {
              load_hf_weights(t.path());
            }).find("field 'num_hidden_layers': 1099511627776 is too large"),
            std::string::npos);
}

// fuzz_artifact, UBSan "null pointer passed as argument 2" (memcpy): the sha256 of an empty
// std::string_view (data() == nullptr) -- what the harness computes for an empty model.safetensors -- called
// memcpy(buf, nullptr, 0). Sha256::update now returns early on 0 bytes. (The sanitized test build reports
// it as a failure; the plain build checks the value.)
TEST(FuzzRegression, Sha256OfEmptyView) {
  const std::string empty_hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  EXPECT_EQ(sha256_hex(std::string_view()), empty_hash);
  Sha256 h;
  h.update(nullptr, 0);
  h.update(std::string_view("abc"));
  h.update(nullptr, 0);
  EXPECT_EQ(h.finish_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

// Found by reading load_artifact while fuzz_artifact ran (the inputs are directories: manifest.json,
// model.safetensors, config.json with valid checksums; made with fuzz/make_seeds.py's artifact helpers).
// num_hidden_layers 2000000000 in model_config and config.json, 27 tensors: the layer array (~2.4 TB) was
// allocated before any layer tensor was looked up.
TEST(FuzzRegression, ArtifactHugeLayerCount) {
  const std::string d = test::source_path("tests/data/fuzz/artifact/huge_layer_count");
  const std::string e = error_of([&] { load_artifact(d); });
  EXPECT_NE(e.find("model.safetensors: 27 tensors cannot hold num_hidden_layers 2000000000 of manifest.json "
                   "model_config (each layer has at least 18)"),
            std::string::npos)
      << e;
}

// UBSan signed overflow: ln_trans.left of shape [2^62, 0] (a valid empty tensor) made the factor check
// compute 2^62 * 4. Each factor is now checked against the dimension first.
TEST(FuzzRegression, ArtifactKronFactorOverflow) {
  const std::string d = test::source_path("tests/data/fuzz/artifact/kron_factor_overflow");
  const std::string e = error_of([&] { load_artifact(d); });
  EXPECT_NE(e.find("tensors 'model.layers.0.self_attn.ln_trans.left' [4611686018427387904,0] and '.right' "
                   "[4,4]: factor sizes 4611686018427387904 x 4 != dimension 8"),
            std::string::npos)
      << e;
}

}  // namespace
}  // namespace fq
