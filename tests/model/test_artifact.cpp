// The quantized artifact: sha256, write/load round trip, and every load error (API and CLI).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <tuple>

#include "../ref/fold_model.h"
#include "../ref/random_model.h"
#include "core/sha256.h"
#include "flatquant/error.h"
#include "io/safetensors.h"
#include "model/artifact.h"
#include "test_util.h"

namespace fq {
namespace {

using nlohmann::json;

// ---- sha256 (FIPS 180-2 appendix / NIST CSRC example vectors)

TEST(Sha256, StandardVectors) {
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // One million 'a', fed in uneven pieces so that the buffering across block boundaries is exercised.
  Sha256 h;
  const std::string chunk(997, 'a');
  size_t left = 1000000;
  while (left > 0) {
    const size_t n = std::min(left, chunk.size());
    h.update(chunk.data(), n);
    left -= n;
  }
  EXPECT_EQ(h.finish_hex(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, PaddingBoundaries) {
  // Lengths around the 55/56/64-byte padding edges: streamed in single bytes equals one update.
  for (size_t len : {55, 56, 57, 63, 64, 65, 119, 120, 128}) {
    const std::string s(len, 'x');
    Sha256 h;
    for (char c : s) h.update(&c, 1);
    EXPECT_EQ(h.finish_hex(), sha256_hex(s)) << len;
  }
  EXPECT_NE(sha256_hex(std::string(55, 'x')), sha256_hex(std::string(56, 'x')));
}

TEST(Sha256, File) {
  test::TempDir d;
  write_file_atomic(d.file("f"), "abc");
  EXPECT_EQ(sha256_file(d.file("f")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

// ---- round trip

Artifact sample_artifact(int w_bits, int a_bits, int kv_bits, bool bias, bool tied, uint64_t seed) {
  const ModelConfig c = test::tiny_config_for_artifact(4, 2, 8, bias, tied);
  const ModelWeights w = test::random_model(c, seed);
  Artifact a = test::make_artifact(w, test::random_transforms(c, seed + 1),
                                   test::test_recipe("t" + std::to_string(w_bits), w_bits, a_bits, kv_bits));
  // Distinct clip values so that a swapped field shows.
  int k = 0;
  for (ArtifactLayer& l : a.layers) {
    for (QLinear* q : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) {
      q->act_clip_max = 0.9f - 0.01f * (float)k++;
      q->act_clip_min = 0.8f - 0.01f * (float)k++;
    }
    l.k_clip_max = 0.71f;
    l.k_clip_min = 0.72f;
    l.v_clip_max = 0.73f;
    l.v_clip_min = 0.74f;
  }
  a.info = {{"calibration", {{"epochs", 3}, {"nsamples", 8}}}, {"losses", {0.5, 0.25}}};
  return a;
}

void expect_linear_eq(const QLinear& x, const QLinear& y) {
  EXPECT_EQ(x.bits, y.bits);
  EXPECT_EQ(x.out, y.out);
  EXPECT_EQ(x.in, y.in);
  EXPECT_EQ(x.qweight, y.qweight);
  EXPECT_EQ(x.scales, y.scales);
  EXPECT_EQ(x.weight, y.weight);
  EXPECT_EQ(x.bias, y.bias);
  EXPECT_EQ(x.act_clip_max, y.act_clip_max);
  EXPECT_EQ(x.act_clip_min, y.act_clip_min);
}

void expect_kron_eq(const KronPair& x, const KronPair& y) {
  EXPECT_EQ(x.L, y.L);
  EXPECT_EQ(x.R, y.R);
  EXPECT_EQ(x.left, y.left);
  EXPECT_EQ(x.right, y.right);
}

void expect_artifact_eq(const Artifact& a, const Artifact& b) {
  EXPECT_EQ(a.cfg.to_json(), b.cfg.to_json());
  EXPECT_EQ(a.recipe.to_json(), b.recipe.to_json());
  EXPECT_EQ(a.method, b.method);
  EXPECT_EQ(a.info, b.info);
  EXPECT_EQ(a.tok_embd, b.tok_embd);
  EXPECT_EQ(a.norm, b.norm);
  EXPECT_EQ(a.lm_head, b.lm_head);
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t i = 0; i < a.layers.size(); ++i) {
    const ArtifactLayer &x = a.layers[i], &y = b.layers[i];
    EXPECT_EQ(x.attn_norm, y.attn_norm);
    EXPECT_EQ(x.ffn_norm, y.ffn_norm);
    expect_linear_eq(x.q, y.q);
    expect_linear_eq(x.k, y.k);
    expect_linear_eq(x.v, y.v);
    expect_linear_eq(x.o, y.o);
    expect_linear_eq(x.gate, y.gate);
    expect_linear_eq(x.up, y.up);
    expect_linear_eq(x.down, y.down);
    expect_kron_eq(x.ln_trans, y.ln_trans);
    expect_kron_eq(x.up_gate_trans, y.up_gate_trans);
    expect_kron_eq(x.down_trans, y.down_trans);
    EXPECT_EQ(x.o_trans, y.o_trans);
    EXPECT_EQ(x.kcache_trans, y.kcache_trans);
    EXPECT_EQ(x.kcache_inv_t, y.kcache_inv_t);
    EXPECT_EQ(x.k_clip_max, y.k_clip_max);
    EXPECT_EQ(x.k_clip_min, y.k_clip_min);
    EXPECT_EQ(x.v_clip_max, y.v_clip_max);
    EXPECT_EQ(x.v_clip_min, y.v_clip_min);
  }
}

// A source model directory with a few tokenizer files (contents are opaque to the writer).
std::string make_source_dir(const test::TempDir& d) {
  const std::string src = d.file("src");
  std::filesystem::create_directories(src);
  write_file_atomic(path_join(src, "tokenizer.json"), "{\"model\": {}}");
  write_file_atomic(path_join(src, "generation_config.json"), "{\"eos_token_id\": 2}");
  write_file_atomic(path_join(src, "unrelated.txt"), "not copied");
  return src;
}

TEST(Artifact, RoundTripEveryField) {
  struct Case {
    int w, a, kv;
    bool bias, tied;
  };
  for (const Case& c : {Case{4, 4, 4, false, false}, Case{8, 8, 8, true, true}, Case{16, 16, 4, true, false},
                        Case{4, 16, 16, false, true}}) {
    SCOPED_TRACE(::testing::Message() << "w" << c.w << "a" << c.a << "kv" << c.kv);
    test::TempDir d;
    const Artifact a = sample_artifact(c.w, c.a, c.kv, c.bias, c.tied, 7);
    write_file_atomic(d.file("log.csv"), "step,loss\n0,1.0\n");
    const std::string dir = d.file("art");
    write_artifact(a, dir, make_source_dir(d), {{"calib_log.csv", d.file("log.csv")}});
    EXPECT_TRUE(is_artifact_dir(dir));
    const Artifact b = load_artifact(dir);
    expect_artifact_eq(a, b);

    const json man = json::parse(read_file(path_join(dir, "manifest.json")));
    EXPECT_EQ(man["format"], "flatquant-artifact");
    EXPECT_EQ(man["format_version"], kArtifactFormatVersion);
    EXPECT_EQ(man["method"], "flatquant");
    EXPECT_EQ(man["recipe"], a.recipe.to_json());
    EXPECT_EQ(man["model_config"], a.cfg.to_json());
    EXPECT_EQ(man["calibration"]["epochs"], 3);
    EXPECT_EQ(man["tokenizer_files"], json({"tokenizer.json", "generation_config.json"}));
    for (const char* f :
         {"model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "calib_log.csv"}) {
      ASSERT_TRUE(man["files"].contains(f)) << f;
      EXPECT_EQ(man["files"][f]["sha256"], sha256_file(path_join(dir, f))) << f;
      EXPECT_EQ(man["files"][f]["bytes"], std::filesystem::file_size(path_join(dir, f))) << f;
    }
    EXPECT_FALSE(file_exists(path_join(dir, "unrelated.txt")));
    EXPECT_EQ(read_file(path_join(dir, "calib_log.csv")), "step,loss\n0,1.0\n");
    EXPECT_EQ(ModelConfig::load(path_join(dir, "config.json")).to_json(), a.cfg.to_json());
  }
}

TEST(Artifact, DequantizeMatchesCodesTimesScales) {
  const Artifact a = sample_artifact(4, 4, 4, false, false, 3);
  const QLinear& q = a.layers[0].down;
  const std::vector<float> w = q.dequantize();
  ASSERT_EQ((int64_t)w.size(), q.out * q.in);
  for (int64_t o = 0; o < q.out; ++o)
    for (int64_t i = 0; i < q.in; ++i) {
      const uint8_t b = q.qweight[(o * q.in + i) / 2];
      int code = (i % 2 == 0) ? (b & 0xF) : (b >> 4);
      if (code >= 8) code -= 16;
      ASSERT_EQ(w[o * q.in + i], (float)code * q.scales[o]);
    }
  const Artifact a8 = sample_artifact(8, 8, 8, false, false, 3);
  const QLinear& q8 = a8.layers[1].q;
  const std::vector<float> w8 = q8.dequantize();
  for (int64_t k = 0; k < q8.out * q8.in; ++k)
    ASSERT_EQ(w8[k], (float)(int8_t)q8.qweight[k] * q8.scales[k / q8.in]);
  const Artifact a16 = sample_artifact(16, 16, 16, false, false, 3);
  EXPECT_EQ(a16.layers[0].v.dequantize(), a16.layers[0].v.weight);
}

TEST(Artifact, ReplacesOnlyArtifacts) {
  test::TempDir d;
  const Artifact a = sample_artifact(4, 4, 4, false, false, 1);
  const std::string dir = d.file("art");
  write_artifact(a, dir, "");
  Artifact b = a;
  b.method = "rtn";
  write_artifact(b, dir, "");  // an artifact is replaced
  EXPECT_EQ(load_artifact(dir).method, "rtn");
  EXPECT_EQ(json::parse(read_file(path_join(dir, "manifest.json")))["tokenizer_files"], json::array());

  const std::string other = d.file("other");
  std::filesystem::create_directories(other);
  write_file_atomic(path_join(other, "keep.txt"), "x");
  try {
    write_artifact(a, other, "");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a flatquant artifact"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(path_join(other, "keep.txt")), "x");
}

TEST(Artifact, WriterRejectsInconsistentInput) {
  test::TempDir d;
  Artifact a = sample_artifact(4, 4, 4, false, false, 1);
  a.layers[1].up.scales.pop_back();
  EXPECT_THROW(write_artifact(a, d.file("x"), ""), Error);
  a = sample_artifact(4, 4, 4, false, false, 1);
  a.layers[0].kcache_inv_t.clear();
  EXPECT_THROW(write_artifact(a, d.file("x"), ""), Error);
  a = sample_artifact(4, 4, 4, false, false, 1);
  a.info["format"] = "mine";
  EXPECT_THROW(write_artifact(a, d.file("x"), ""), Error);
  EXPECT_FALSE(file_exists(d.file("x")));
}

// ---- load errors

// A written artifact plus tools to damage it.
class ArtifactErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.file("art");
    write_artifact(sample_artifact(4, 4, 4, false, false, 5), dir_, make_source_dir(tmp_));
  }
  std::string file(const std::string& n) const { return path_join(dir_, n); }
  json manifest() const { return json::parse(read_file(file("manifest.json"))); }
  void set_manifest(const json& j) { write_file_atomic(file("manifest.json"), j.dump(2)); }
  // Re-records a file's size and sha256 in the manifest (so that the checks behind the checksum are reached).
  void reseal(const std::string& name) {
    json m = manifest();
    m["files"][name] = {{"bytes", std::filesystem::file_size(file(name))},
                        {"sha256", sha256_file(file(name))}};
    set_manifest(m);
  }
  // Rewrites model.safetensors through `edit` (name, dtype, shape, bytes; return false to drop the tensor).
  using Edit = std::function<bool(std::string&, DType&, std::vector<int64_t>&, std::vector<uint8_t>&)>;
  void rewrite(const Edit& edit,
               const std::vector<std::tuple<std::string, DType, std::vector<int64_t>, std::vector<uint8_t>>>&
                   extra = {}) {
    SafeTensorsWriter w;
    {
      const SafeTensors st(file("model.safetensors"));
      for (const TensorInfo& t : st.tensors()) {
        std::string name = t.name;
        DType dt = t.dtype;
        std::vector<int64_t> shape = t.shape;
        std::vector<uint8_t> bytes(st.data(t), st.data(t) + t.nbytes());
        if (edit(name, dt, shape, bytes)) w.add(name, dt, shape, bytes.data(), bytes.size());
      }
    }
    for (const auto& [n, dt, s, b] : extra) w.add(n, dt, s, b.data(), b.size());
    w.write(file("model.safetensors"));
    reseal("model.safetensors");
  }
  // load_artifact's message, which must be one line containing every piece of `want`.
  std::string load_error() {
    try {
      load_artifact(dir_);
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
      return m;
    }
    ADD_FAILURE() << "load_artifact succeeded";
    return "";
  }
  void expect_error(std::initializer_list<std::string> want) {
    const std::string m = load_error();
    for (const std::string& w : want)
      EXPECT_NE(m.find(w), std::string::npos) << "'" << w << "' not in: " << m;
    // The CLI reports the same error as one line and exit code 1.
    const test::CliResult r = test::run_cli("inspect '" + dir_ + "'");
    EXPECT_EQ(r.exit_code, 1) << r.out;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    for (const std::string& w : want) EXPECT_NE(r.err.find(w), std::string::npos) << r.err;
  }
  test::TempDir tmp_;
  std::string dir_;
};

TEST_F(ArtifactErrors, LoadsWhenIntact) {
  EXPECT_NO_THROW(load_artifact(dir_));
}

TEST_F(ArtifactErrors, BadFormat) {
  json m = manifest();
  m["format"] = "something-else";
  set_manifest(m);
  EXPECT_FALSE(is_artifact_dir(dir_));
  const std::string e = load_error();
  EXPECT_NE(
      e.find("manifest.json: field 'format': expected \"flatquant-artifact\", found \"something-else\""),
      std::string::npos)
      << e;
}

TEST_F(ArtifactErrors, NewerVersion) {
  json m = manifest();
  m["format_version"] = kArtifactFormatVersion + 1;
  set_manifest(m);
  expect_error({"manifest.json", "written by a newer flatquant"});
}

TEST_F(ArtifactErrors, ChecksumMismatchAfterFlippingAByte) {
  std::string bytes = read_file(file("model.safetensors"));
  bytes[bytes.size() - 5] = (char)(bytes[bytes.size() - 5] ^ 0x10);
  write_file_atomic(file("model.safetensors"), bytes);
  expect_error(
      {dir_ + "/model.safetensors: sha256 mismatch (expected ", "the file was modified or is corrupt"});
}

TEST_F(ArtifactErrors, SizeMismatch) {
  write_file_atomic(file("tokenizer.json"), "{}");
  expect_error({"tokenizer.json: size mismatch"});
}

TEST_F(ArtifactErrors, MissingFile) {
  std::filesystem::remove(file("generation_config.json"));
  expect_error({"generation_config.json: missing (listed in manifest.json)"});
}

TEST_F(ArtifactErrors, MissingTensor) {
  rewrite([](std::string& n, DType&, std::vector<int64_t>&, std::vector<uint8_t>&) {
    return n != "model.layers.1.mlp.up_proj.scales";
  });
  expect_error({"model.safetensors", "missing tensor 'model.layers.1.mlp.up_proj.scales'"});
}

TEST_F(ArtifactErrors, WrongShape) {
  rewrite([](std::string& n, DType&, std::vector<int64_t>& s, std::vector<uint8_t>&) {
    if (n == "model.layers.0.self_attn.k_proj.qweight") s = {s[1], s[0]};
    return true;
  });
  expect_error({"model.safetensors", "tensor 'model.layers.0.self_attn.k_proj.qweight' has shape [12,16]",
                "expected [16,12]"});
}

TEST_F(ArtifactErrors, WrongDtype) {
  rewrite([](std::string& n, DType& dt, std::vector<int64_t>&, std::vector<uint8_t>&) {
    if (n == "model.layers.0.mlp.down_proj.qweight") dt = DType::I8;
    return true;
  });
  expect_error({"tensor 'model.layers.0.mlp.down_proj.qweight' has dtype I8 (expected U8)"});
}

TEST_F(ArtifactErrors, NanWeight) {
  rewrite([](std::string& n, DType&, std::vector<int64_t>&, std::vector<uint8_t>& b) {
    if (n == "model.layers.1.self_attn.o_proj.scales") {
      const float nan = std::numeric_limits<float>::quiet_NaN();
      std::memcpy(b.data() + 3 * sizeof(float), &nan, sizeof(float));
    }
    return true;
  });
  expect_error({"model.safetensors", "tensor 'model.layers.1.self_attn.o_proj.scales' has a non-finite value",
                "index 3"});
}

TEST_F(ArtifactErrors, InfInTransform) {
  rewrite([](std::string& n, DType&, std::vector<int64_t>&, std::vector<uint8_t>& b) {
    if (n == "model.layers.0.mlp.down_trans.right") {
      const float inf = std::numeric_limits<float>::infinity();
      std::memcpy(b.data(), &inf, sizeof(float));
    }
    return true;
  });
  expect_error({"tensor 'model.layers.0.mlp.down_trans.right' has a non-finite value"});
}

TEST_F(ArtifactErrors, UnknownTensor) {
  const std::vector<uint8_t> four(16, 0);
  rewrite([](std::string&, DType&, std::vector<int64_t>&, std::vector<uint8_t>&) { return true; },
          {{"model.layers.0.self_attn.q_proj.zeros", DType::F32, {4}, four}});
  expect_error({"model.safetensors", "unknown tensor 'model.layers.0.self_attn.q_proj.zeros'"});
}

TEST_F(ArtifactErrors, HalfAKronPair) {
  rewrite([](std::string& n, DType&, std::vector<int64_t>&, std::vector<uint8_t>&) {
    return n != "model.layers.1.self_attn.ln_trans.right";
  });
  expect_error(
      {"'model.layers.1.self_attn.ln_trans.left' without 'model.layers.1.self_attn.ln_trans.right'"});
}

TEST_F(ArtifactErrors, ConfigDisagreesWithManifest) {
  json c = json::parse(read_file(file("config.json")));
  c["rms_norm_eps"] = 1e-6;
  write_file_atomic(file("config.json"), c.dump(2));
  reseal("config.json");
  expect_error({"config.json: differs from manifest.json model_config (field 'rms_norm_eps')"});
}

TEST_F(ArtifactErrors, BadRecipe) {
  json m = manifest();
  m["recipe"]["a_bits"] = 3;
  set_manifest(m);
  expect_error({"manifest.json recipe", "a_bits"});
}

TEST_F(ArtifactErrors, TensorsDisagreeWithRecipe) {
  // The recipe says 8-bit weights: the packed 4-bit qweight is then the wrong dtype and shape.
  json m = manifest();
  m["recipe"]["w_bits"] = 8;
  set_manifest(m);
  expect_error(
      {"model.safetensors", "tensor 'model.layers.0.self_attn.q_proj.qweight' has dtype U8 (expected I8)"});
}

TEST_F(ArtifactErrors, NotAnArtifact) {
  std::filesystem::remove(file("manifest.json"));
  EXPECT_FALSE(is_artifact_dir(dir_));
  EXPECT_NE(load_error().find("manifest.json: missing"), std::string::npos);
}

}  // namespace
}  // namespace fq
