// The bad-input suite (issue 6): one table of broken inputs across every reader, each run through the real
// binary. Every case must exit 1 with exactly one stderr line "flatquant: error: ..." that names the file (or
// the command-line option) and the field at fault, and must leave nothing behind where a command writes
// (convert --out, ppl --save-logits, eval --log-items): neither the output nor a temporary beside it.
// Cases that need ../shared/data or the converted stories260K skip when those are absent.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../ref/fold_model.h"
#include "convert/gguf_builder.h"
#include "core/fs.h"
#include "flatquant/error.h"
#include "io/tiny_model_dir.h"
#include "model/artifact.h"
#include "model/recipe.h"
#include "model/weights.h"
#include "test_util.h"

namespace fq {
namespace {

using json = nlohmann::json;

std::string q(const std::string& p) { return "'" + p + "'"; }

std::string stories_bin() { return test::data_path("stories260K/stories260K.bin"); }
std::string stories_tok() { return test::data_path("stories260K/tok512.bin"); }
// The converted HF directory (scripts/test.sh converts it before the tests run).
std::string stories_dir() { return test::source_path(".cache/models/stories260K"); }
// Skips a case whose data is absent.
bool have(const std::string& p) { return file_exists(p); }
std::string wiki() { return test::data_path("wikitext2_raw/wiki.valid.nonempty.first100KB.txt"); }

// ---- input builders ----

// A safetensors file from a raw JSON header and a data section (no validation: the point is to break it).
std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(&out[0], &n, 8);
  return out + header + data;
}

// A tiny valid HF model directory (no tokenizer); `data_hook` may poison values.
std::string tiny_model(const test::TempDir& t, const json& cfg = test::tiny_config_json(),
                       const test::TensorHook& hook = nullptr, const test::DataHook& data_hook = nullptr,
                       DType dtype = DType::F32) {
  const std::string dir = t.file("model");
  std::filesystem::create_directories(dir);
  test::write_tiny_model(dir, cfg, dtype, hook, data_hook);
  return dir;
}

// A BPE tokenizer.json over the tiny model's 32-token vocabulary.
json tiny_tokenizer_json() {
  json vocab = json::object();
  const std::string letters = "abcdefghijklmnopqrstuvwxyz .,!?";
  vocab["<unk>"] = 0;
  for (size_t i = 0; i < letters.size(); ++i) vocab[std::string(1, letters[i])] = (int)i + 1;
  return {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}, {"unk_token", "<unk>"}}}};
}

// The 1-layer llama GGUF of tests/convert (F32 tensors); `poison` may change one tensor's values.
std::string tiny_gguf(const std::function<void(const std::string&, std::vector<float>&)>& poison = nullptr,
                      const std::string& ffn_down_type_bytes = "") {
  test::GgufBuilder b;
  b.kv_str("general.architecture", "llama");
  b.kv_u32("llama.context_length", 64);
  b.kv_u32("llama.embedding_length", 8);
  b.kv_u32("llama.block_count", 1);
  b.kv_u32("llama.feed_forward_length", 16);
  b.kv_u32("llama.attention.head_count", 2);
  b.kv_u32("llama.attention.head_count_kv", 1);
  b.kv_str("tokenizer.ggml.model", "gpt2");
  b.kv_str("tokenizer.ggml.pre", "smollm");
  b.kv_strs("tokenizer.ggml.tokens", {"<|endoftext|>", "a", "b", "ab", "c", "d", "e"});
  b.kv_strs("tokenizer.ggml.merges", {"a b"});
  b.kv_u32("tokenizer.ggml.eos_token_id", 0);
  auto add = [&](const std::string& name, std::vector<uint64_t> ne) {
    size_t n = 1;
    for (uint64_t d : ne) n *= d;
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = 0.01f * (float)(i % 13) - 0.05f;
    if (poison) poison(name, v);
    b.tensor_f32(name, ne, v);
  };
  add("token_embd.weight", {8, 7});
  add("blk.0.attn_norm.weight", {8});
  add("blk.0.attn_q.weight", {8, 8});
  add("blk.0.attn_k.weight", {8, 4});
  add("blk.0.attn_v.weight", {8, 4});
  add("blk.0.attn_output.weight", {8, 8});
  add("blk.0.ffn_norm.weight", {8});
  add("blk.0.ffn_gate.weight", {8, 16});
  add("blk.0.ffn_up.weight", {8, 16});
  if (ffn_down_type_bytes.empty())
    add("blk.0.ffn_down.weight", {16, 8});
  else  // I32 (ggml type 26): a known type that a weight cannot be converted from
    b.tensor("blk.0.ffn_down.weight", {16, 8}, 26, ffn_down_type_bytes);
  add("output_norm.weight", {8});
  return b.build();
}

// A W4A4KV4 artifact of stories260K with random transforms (tests/ref/fold_model.h), made once per process;
// "" when stories260K is missing. Cases copy it and break the copy.
std::string shared_artifact() {
  static test::TempDir* dir = nullptr;  // lives until exit: the cases only read it
  static std::string art;
  if (dir || !have(stories_bin())) return art;
  dir = new test::TempDir();
  if (test::run_cli("convert --from llama2c --model " + q(stories_bin()) + " --out " + q(dir->file("fp"))).exit_code != 0)
    return art;
  const ModelWeights w = load_hf_weights(dir->file("fp"));
  const Artifact a = test::make_artifact(w, test::random_transforms(w.cfg, 5), test::test_recipe("w4a4kv4", 4, 4, 4),
                                         test::ArtifactOptions());
  write_artifact(a, dir->file("art"), dir->file("fp"));
  art = dir->file("art");
  return art;
}

// A copy of the shared artifact in the case's directory, or "" (skip).
std::string artifact_copy(const test::TempDir& t) {
  const std::string src = shared_artifact();
  if (src.empty()) return "";
  const std::string dst = t.file("art");
  std::filesystem::copy(src, dst, std::filesystem::copy_options::recursive);
  return dst;
}

// ---- the table ----

struct Case {
  Case(std::string n, std::function<std::string(const test::TempDir&)> s, std::vector<std::string> nm,
       std::vector<std::string> out = {})
      : name(std::move(n)), setup(std::move(s)), names(std::move(nm)), outputs(std::move(out)) {}
  std::string name;
  // Writes the inputs under the case's directory; returns the arguments after `flatquant`, or "" to skip
  // (missing data).
  std::function<std::string(const test::TempDir&)> setup;
  // Substrings the error line must contain: the file (or option) and the field.
  std::vector<std::string> names;
  // Outputs (relative to the case's directory) that must not exist afterwards, nor any temporary of them.
  std::vector<std::string> outputs;
};

// gtest prints parameters in test names and failures; the case name is enough.
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }


std::vector<Case> cases() {
  std::vector<Case> c;

  // --- safetensors (inspect, and ppl through load_hf_weights) ---
  c.push_back({"SafetensorsHeaderBeyondFile", [](const test::TempDir& t) {
                 std::string b(8, '\0');
                 b[0] = '\xff', b[1] = '\xff';  // header length 65535 in an 8-byte file
                 write_file_atomic(t.file("bad.safetensors"), b);
                 return "inspect " + q(t.file("bad.safetensors"));
               },
               {"bad.safetensors", "header"}});
  c.push_back({"SafetensorsOffsetsBeyondData", [](const test::TempDir& t) {
                 write_file_atomic(t.file("bad.safetensors"),
                                   safetensors_bytes(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                                                     std::string(8, '\0')));
                 return "inspect " + q(t.file("bad.safetensors"));
               },
               {"bad.safetensors", "'w'", "data_offsets"}});
  c.push_back({"SafetensorsUnknownDtype", [](const test::TempDir& t) {
                 write_file_atomic(t.file("bad.safetensors"),
                                   safetensors_bytes(R"({"w":{"dtype":"Q4","shape":[4],"data_offsets":[0,2]}})",
                                                     std::string(2, '\0')));
                 return "inspect " + q(t.file("bad.safetensors"));
               },
               {"bad.safetensors", "'w'", "Q4"}});
  c.push_back({"SafetensorsShapeDisagreesWithBytes", [](const test::TempDir& t) {
                 write_file_atomic(t.file("bad.safetensors"),
                                   safetensors_bytes(R"({"w":{"dtype":"F32","shape":[3,3],"data_offsets":[0,16]}})",
                                                     std::string(16, '\0')));
                 return "inspect " + q(t.file("bad.safetensors"));
               },
               {"bad.safetensors", "'w'", "[3,3]"}});
  c.push_back({"SafetensorsOverlappingTensors", [](const test::TempDir& t) {
                 write_file_atomic(
                     t.file("bad.safetensors"),
                     safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                       std::string(12, '\0')));
                 return "inspect " + q(t.file("bad.safetensors"));
               },
               {"bad.safetensors", "overlap"}});
  c.push_back({"SafetensorsHeaderNotJson", [](const test::TempDir& t) {
                 write_file_atomic(t.file("bad.safetensors"), safetensors_bytes("{\"w\": [1, 2", ""));
                 return "inspect " + q(t.file("bad.safetensors"));
               },
               {"bad.safetensors", "JSON"}});
  c.push_back({"SafetensorsEmptyFile", [](const test::TempDir& t) {
                 write_file_atomic(t.file("empty.safetensors"), "");
                 return "inspect " + q(t.file("empty.safetensors"));
               },
               {"empty.safetensors", "header"}});
  c.push_back({"WeightsShapeMismatch", [](const test::TempDir& t) {
                 const std::string dir =
                     tiny_model(t, test::tiny_config_json(), [](std::string& name, std::vector<int64_t>& shape) {
                       if (name == "model.layers.1.self_attn.q_proj.weight") shape = {16, 12};
                       return true;
                     });
                 return "ppl --model " + q(dir);
               },
               {"model.safetensors", "model.layers.1.self_attn.q_proj.weight", "[16,12]"}});
  c.push_back({"WeightsNaN", [](const test::TempDir& t) {
                 const std::string dir = tiny_model(t, test::tiny_config_json(), nullptr,
                                                    [](const std::string& name, std::vector<float>& v) {
                                                      if (name == "model.layers.0.mlp.up_proj.weight") v[5] = NAN;
                                                    });
                 return "ppl --model " + q(dir);
               },
               {"model.safetensors", "model.layers.0.mlp.up_proj.weight", "not finite"}});
  c.push_back({"WeightsInfF16", [](const test::TempDir& t) {
                 const std::string dir = tiny_model(
                     t, test::tiny_config_json(), nullptr,
                     [](const std::string& name, std::vector<float>& v) {
                       if (name == "model.norm.weight") v[0] = std::numeric_limits<float>::infinity();
                     },
                     DType::F16);
                 return "ppl --model " + q(dir);
               },
               {"model.safetensors", "model.norm.weight", "not finite"}});
  c.push_back({"WeightsMissingTensor", [](const test::TempDir& t) {
                 const std::string dir =
                     tiny_model(t, test::tiny_config_json(), [](std::string& name, std::vector<int64_t>&) {
                       return name != "model.layers.1.mlp.down_proj.weight";
                     });
                 return "ppl --model " + q(dir);
               },
               {"model", "model.layers.1.mlp.down_proj.weight", "missing"}});

  // --- config.json ---
  c.push_back({"ConfigHiddenNotDivisibleByHeads", [](const test::TempDir& t) {
                 const std::string dir = tiny_model(t);
                 json cfg = test::tiny_config_json();
                 cfg["hidden_size"] = 18;  // 4 heads
                 write_file_atomic(path_join(dir, "config.json"), cfg.dump());
                 return "ppl --model " + q(dir);
               },
               {"config.json", "num_attention_heads", "hidden_size"}});
  c.push_back({"ConfigKvHeadsNotDividingHeads", [](const test::TempDir& t) {
                 const std::string dir = tiny_model(t);
                 json cfg = test::tiny_config_json();
                 cfg["num_key_value_heads"] = 3;
                 write_file_atomic(path_join(dir, "config.json"), cfg.dump());
                 return "ppl --model " + q(dir);
               },
               {"config.json", "num_key_value_heads"}});
  c.push_back({"ConfigTruncatedJson", [](const test::TempDir& t) {
                 const std::string dir = tiny_model(t);
                 const std::string full = test::tiny_config_json().dump();
                 write_file_atomic(path_join(dir, "config.json"), full.substr(0, full.size() / 2));
                 return "ppl --model " + q(dir);
               },
               {"config.json", "JSON"}});
  c.push_back({"ConfigEmpty", [](const test::TempDir& t) {
                 const std::string dir = tiny_model(t);
                 write_file_atomic(path_join(dir, "config.json"), "");
                 return "ppl --model " + q(dir);
               },
               {"config.json", "JSON"}});
  c.push_back({"ConfigUnsupportedArchitecture", [](const test::TempDir& t) {
                 const std::string dir = tiny_model(t);
                 json cfg = test::tiny_config_json();
                 cfg["architectures"] = {"GPTNeoXForCausalLM"};
                 write_file_atomic(path_join(dir, "config.json"), cfg.dump());
                 return "ppl --model " + q(dir);
               },
               {"config.json", "GPTNeoXForCausalLM"}});
  c.push_back({"ConfigDeeplyNested", [](const test::TempDir& t) {
                 const std::string dir = tiny_model(t);
                 // json::dump / copies recurse per level: this used to overflow the stack.
                 write_file_atomic(path_join(dir, "config.json"),
                                   "{\"architectures\": " + std::string(200000, '[') + std::string(200000, ']') + "}");
                 return "ppl --model " + q(dir);
               },
               {"config.json", "nested deeper"}});
  c.push_back({"ConfigWrongType", [](const test::TempDir& t) {
                 const std::string dir = tiny_model(t);
                 json cfg = test::tiny_config_json();
                 cfg["num_hidden_layers"] = "2";
                 write_file_atomic(path_join(dir, "config.json"), cfg.dump());
                 return "ppl --model " + q(dir);
               },
               {"config.json", "num_hidden_layers", "integer"}});

  // --- tokenizers ---
  c.push_back({"TokenizerMissing", [](const test::TempDir& t) {
                 const std::string dir = tiny_model(t);
                 write_file_atomic(t.file("text.txt"), "some text to score");
                 return "ppl --model " + q(dir) + " --data " + q(t.file("text.txt"));
               },
               {"model", "no tokenizer found"}});
  c.push_back({"TokenizerJsonTruncated", [](const test::TempDir& t) {
                 const std::string dir = tiny_model(t);
                 const std::string full = tiny_tokenizer_json().dump();
                 write_file_atomic(path_join(dir, "tokenizer.json"), full.substr(0, full.size() - 20));
                 return "ppl --model " + q(dir);
               },
               {"tokenizer.json", "JSON"}});
  c.push_back({"TokenizerJsonMergeOfUnknownToken", [](const test::TempDir& t) {
                 const std::string dir = tiny_model(t);
                 json tok = tiny_tokenizer_json();
                 tok["model"]["merges"] = {"x zz"};
                 write_file_atomic(path_join(dir, "tokenizer.json"), tok.dump());
                 return "ppl --model " + q(dir);
               },
               {"tokenizer.json", "merges", "zz"}});
  c.push_back({"TokenizerJsonVocabLargerThanModel", [](const test::TempDir& t) {
                 const std::string dir = tiny_model(t);
                 json tok = tiny_tokenizer_json();
                 tok["model"]["vocab"]["toolong"] = 40;  // the model has 32 rows
                 write_file_atomic(path_join(dir, "tokenizer.json"), tok.dump());
                 return "ppl --model " + q(dir);
               },
               {"model", "tokenizer", "32"}});
  c.push_back({"SentencePieceTruncated", [](const test::TempDir& t) {
                 const std::string src = test::data_path("llama2_tokenizer/tokenizer.model");
                 if (!have(src)) return std::string();
                 const std::string dir = tiny_model(t);
                 const std::string all = read_file(src);
                 write_file_atomic(path_join(dir, "tokenizer.model"), all.substr(0, 1001));
                 return "ppl --model " + q(dir);
               },
               {"tokenizer.model", "field 1"}});
  c.push_back({"Llama2cTokenizerWrongVocab", [](const test::TempDir& t) {
                 if (!have(stories_bin()) || !have(stories_tok())) return std::string();
                 const std::string tok = read_file(stories_tok());
                 write_file_atomic(t.file("tok.bin"), tok + tok.substr(4, 64));  // extra tokens at the end
                 return "convert --from llama2c --model " + q(stories_bin()) + " --tokenizer " + q(t.file("tok.bin")) +
                        " --out " + q(t.file("out"));
               },
               {"tok.bin", "trailing bytes"},
               {"out"}});

  // --- llama2.c checkpoints ---
  c.push_back({"Llama2cTruncated", [](const test::TempDir& t) {
                 if (!have(stories_bin()) || !have(stories_tok())) return std::string();
                 const std::string all = read_file(stories_bin());
                 write_file_atomic(t.file("cut.bin"), std::string_view(all).substr(0, all.size() / 2));
                 return "convert --from llama2c --model " + q(t.file("cut.bin")) + " --tokenizer " + q(stories_tok()) +
                        " --out " + q(t.file("out"));
               },
               {"cut.bin", "size"},
               {"out"}});
  c.push_back({"Llama2cDimNotDivisibleByHeads", [](const test::TempDir& t) {
                 const int32_t h[7] = {10, 16, 1, 4, 4, 8, 4};
                 write_file_atomic(t.file("bad.bin"),
                                   std::string(reinterpret_cast<const char*>(h), sizeof h) + std::string(4096, '\0'));
                 return "convert --from llama2c --model " + q(t.file("bad.bin")) + " --out " + q(t.file("out"));
               },
               {"bad.bin", "n_heads"},
               {"out"}});
  c.push_back({"Llama2cNaNWeight", [](const test::TempDir& t) {
                 if (!have(stories_bin()) || !have(stories_tok())) return std::string();
                 std::string all = read_file(stories_bin());
                 const float nan = NAN;
                 std::memcpy(&all[28 + 4 * 1000], &nan, 4);  // inside the token embedding
                 write_file_atomic(t.file("nan.bin"), all);
                 return "convert --from llama2c --model " + q(t.file("nan.bin")) + " --tokenizer " + q(stories_tok()) +
                        " --out " + q(t.file("out"));
               },
               {"nan.bin", "model.embed_tokens.weight", "not finite"},
               {"out"}});

  // --- GGUF ---
  c.push_back({"GgufTruncated", [](const test::TempDir& t) {
                 const std::string all = tiny_gguf();
                 write_file_atomic(t.file("cut.gguf"), all.substr(0, all.size() - 100));
                 return "convert --from gguf --model " + q(t.file("cut.gguf")) + " --out " + q(t.file("out"));
               },
               {"cut.gguf", "blk.0.ffn_down.weight", "beyond the end"},
               {"out"}});
  c.push_back({"GgufBadMagic", [](const test::TempDir& t) {
                 std::string all = tiny_gguf();
                 all[0] = 'X';
                 write_file_atomic(t.file("bad.gguf"), all);
                 return "convert --from gguf --model " + q(t.file("bad.gguf")) + " --out " + q(t.file("out"));
               },
               {"bad.gguf", "magic"},
               {"out"}});
  c.push_back({"GgufHugeCount", [](const test::TempDir& t) {
                 std::string all = tiny_gguf();
                 const uint64_t n = uint64_t(1) << 60;  // n_kv
                 std::memcpy(&all[16], &n, 8);
                 write_file_atomic(t.file("bad.gguf"), all);
                 return "convert --from gguf --model " + q(t.file("bad.gguf")) + " --out " + q(t.file("out"));
               },
               {"bad.gguf", "metadata count"},
               {"out"}});
  c.push_back({"GgufHugeBlockCount", [](const test::TempDir& t) {
                 // Found by fuzz_gguf: a block_count of 2^31-1 made the converter allocate per-layer tables.
                 std::string all = tiny_gguf();
                 const std::string key = "llama.block_count";
                 const size_t at = all.find(key) + key.size() + 4;  // after the key and its u32 type
                 const uint32_t huge = 0x7fffffff;
                 std::memcpy(&all[at], &huge, 4);
                 write_file_atomic(t.file("blocks.gguf"), all);
                 return "convert --from gguf --model " + q(t.file("blocks.gguf")) + " --out " + q(t.file("out"));
               },
               {"blocks.gguf", "llama.block_count", "2147483647"},
               {"out"}});
  c.push_back({"GgufUnsupportedTensorType", [](const test::TempDir& t) {
                 write_file_atomic(t.file("i32.gguf"), tiny_gguf(nullptr, std::string(16 * 8 * 4, '\0')));
                 return "convert --from gguf --model " + q(t.file("i32.gguf")) + " --out " + q(t.file("out"));
               },
               {"i32.gguf", "blk.0.ffn_down.weight", "I32"},
               {"out"}});
  c.push_back({"GgufInfWeight", [](const test::TempDir& t) {
                 write_file_atomic(t.file("inf.gguf"), tiny_gguf([](const std::string& name, std::vector<float>& v) {
                                     if (name == "blk.0.attn_v.weight") v[3] = -INFINITY;
                                   }));
                 return "convert --from gguf --model " + q(t.file("inf.gguf")) + " --out " + q(t.file("out"));
               },
               {"inf.gguf", "blk.0.attn_v.weight", "not finite"},
               {"out"}});
  c.push_back({"GgufOverflowsF16", [](const test::TempDir& t) {
                 write_file_atomic(t.file("big.gguf"), tiny_gguf([](const std::string& name, std::vector<float>& v) {
                                     if (name == "blk.0.ffn_up.weight") v[7] = 1e6f;
                                   }));
                 return "convert --from gguf --model " + q(t.file("big.gguf")) + " --dtype f16 --out " +
                        q(t.file("out"));
               },
               {"big.gguf", "up_proj", "F16"},
               {"out"}});

  // --- quantized artifacts (src/model/artifact.h) ---
  c.push_back({"ArtifactChecksumMismatch", [](const test::TempDir& t) {
                 const std::string art = artifact_copy(t);
                 if (art.empty()) return std::string();
                 std::string bytes = read_file(art + "/model.safetensors");
                 bytes[bytes.size() / 3] = (char)(bytes[bytes.size() / 3] ^ 0x10);
                 write_file_atomic(art + "/model.safetensors", bytes);
                 return "ppl --model " + q(art) + " --seq-len 32 --limit-windows 1";
               },
               {"model.safetensors", "sha256"}});
  c.push_back({"ArtifactFormatVersionTooNew", [](const test::TempDir& t) {
                 const std::string art = artifact_copy(t);
                 if (art.empty()) return std::string();
                 json man = json::parse(read_file(art + "/manifest.json"));
                 man["format_version"] = 99;
                 write_file_atomic(art + "/manifest.json", man.dump(2));
                 return "ppl --model " + q(art) + " --seq-len 32 --limit-windows 1";
               },
               {"manifest.json", "format_version", "99"}});
  c.push_back({"ArtifactManifestTruncated", [](const test::TempDir& t) {
                 const std::string art = artifact_copy(t);
                 if (art.empty()) return std::string();
                 const std::string m = read_file(art + "/manifest.json");
                 write_file_atomic(art + "/manifest.json", m.substr(0, m.size() / 2));
                 return "generate --model " + q(art) + " --prompt hi --max-tokens 2";
               },
               {"manifest.json", "JSON"}});
  c.push_back({"ArtifactConfigDiffersFromManifest", [](const test::TempDir& t) {
                 const std::string art = artifact_copy(t);
                 if (art.empty()) return std::string();
                 json cfg = json::parse(read_file(art + "/config.json"));
                 cfg["rms_norm_eps"] = 1e-3;
                 write_file_atomic(art + "/config.json", cfg.dump(2));
                 return "ppl --model " + q(art) + " --seq-len 32 --limit-windows 1";
               },
               {"config.json"}});

  // --- datasets and saved log-probs (ppl) ---
  c.push_back({"PplEmptyDataset", [](const test::TempDir& t) {
                 if (!have(stories_dir() + "/config.json")) return std::string();
                 write_file_atomic(t.file("empty.txt"), "");
                 return "ppl --model " + q(stories_dir()) + " --data " + q(t.file("empty.txt")) + " --save-logits " +
                        q(t.file("lp.bin"));
               },
               {"empty.txt", "empty"},
               {"lp.bin"}});
  c.push_back({"PplMissingDataset", [](const test::TempDir& t) {
                 if (!have(stories_dir() + "/config.json")) return std::string();
                 return "ppl --model " + q(stories_dir()) + " --data " + q(t.file("missing.txt"));
               },
               {"missing.txt"}});
  c.push_back({"PplDatasetShorterThanWindow", [](const test::TempDir& t) {
                 if (!have(stories_dir() + "/config.json")) return std::string();
                 write_file_atomic(t.file("short.txt"), "Once upon a time.");
                 return "ppl --model " + q(stories_dir()) + " --data " + q(t.file("short.txt")) +
                        " --seq-len 64 --save-logits " + q(t.file("lp.bin"));
               },
               {"short.txt", "seq_len 64"},
               {"lp.bin"}});
  c.push_back({"PplKldBaseCorrupt", [](const test::TempDir& t) {
                 if (!have(stories_dir() + "/config.json") || !have(wiki())) return std::string();
                 write_file_atomic(t.file("base.bin"), std::string(100, 'x'));
                 return "ppl --model " + q(stories_dir()) + " --data " + q(wiki()) +
                        " --seq-len 64 --limit-windows 1 --kld-base " + q(t.file("base.bin")) + " --save-logits " +
                        q(t.file("lp.bin"));
               },
               {"base.bin"},
               {"lp.bin"}});
  c.push_back({"PplSaveLogitsIntoMissingDir", [](const test::TempDir& t) {
                 if (!have(stories_dir() + "/config.json") || !have(wiki())) return std::string();
                 return "ppl --model " + q(stories_dir()) + " --data " + q(wiki()) +
                        " --seq-len 32 --limit-windows 1 --save-logits " + q(t.file("nodir/lp.bin"));
               },
               {"nodir/lp.bin"},
               {"nodir"}});

  // --- context overflow ---
  c.push_back({"PplSeqLenBeyondContext", [](const test::TempDir& t) {
                 if (!have(stories_dir() + "/config.json") || !have(wiki())) return std::string();
                 return "ppl --model " + q(stories_dir()) + " --data " + q(wiki()) + " --seq-len 4096 --save-logits " +
                        q(t.file("lp.bin"));
               },
               {"--seq-len 4096", "config.json", "max_position_embeddings 512"},
               {"lp.bin"}});
  c.push_back({"GeneratePromptBeyondContext", [](const test::TempDir& t) {
                 if (!have(stories_dir() + "/config.json")) return std::string();
                 return "generate --model " + q(stories_dir()) +
                        " --ctx 8 --max-tokens 4 --prompt 'Once upon a time there was a little girl named Lily who'";
               },
               {"prompt", "8"}});

  // --- QA task files (eval) ---
  c.push_back({"EvalRowNotJson", [](const test::TempDir& t) {
                 if (!have(stories_dir() + "/config.json")) return std::string();
                 std::filesystem::create_directories(t.file("qa"));
                 write_file_atomic(t.file("qa/piqa.jsonl"),
                                   "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": 0}\n{\"goal\": \n");
                 return "eval --model " + q(stories_dir()) + " --tasks piqa --data-dir " + q(t.file("qa")) +
                        " --log-items " + q(t.file("items.jsonl"));
               },
               {"piqa.jsonl:2", "JSON"},
               {"items.jsonl"}});
  c.push_back({"EvalRowMissingField", [](const test::TempDir& t) {
                 if (!have(stories_dir() + "/config.json")) return std::string();
                 std::filesystem::create_directories(t.file("qa"));
                 write_file_atomic(t.file("qa/arc_easy.jsonl"),
                                   R"({"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}})" "\n");
                 return "eval --model " + q(stories_dir()) + " --tasks arc_easy --data-dir " + q(t.file("qa"));
               },
               {"arc_easy.jsonl:1", "answerKey"}});
  c.push_back({"EvalEmptyTaskFile", [](const test::TempDir& t) {
                 if (!have(stories_dir() + "/config.json")) return std::string();
                 std::filesystem::create_directories(t.file("qa"));
                 write_file_atomic(t.file("qa/winogrande.jsonl"), "\n\n");
                 return "eval --model " + q(stories_dir()) + " --tasks winogrande --data-dir " + q(t.file("qa"));
               },
               {"winogrande.jsonl", "no rows"}});

  // --- command-line values ---
  c.push_back({"CliUnknownTask", [](const test::TempDir& t) {
                 return "eval --model " + q(t.path()) + " --tasks piqa,nosuchtask --data-dir " + q(t.path());
               },
               {"nosuchtask"}});
  c.push_back({"CliSeqLenTooSmall", [](const test::TempDir& t) {
                 return "ppl --model " + q(tiny_model(t)) + " --seq-len 1";
               },
               {"--seq-len", "1"}});
  c.push_back({"CliNotANumber", [](const test::TempDir& t) {
                 return "ppl --model " + q(t.path()) + " --threads many";
               },
               {"--threads", "many"}});
  c.push_back({"CliBadDtype", [](const test::TempDir& t) {
                 return "convert --from gguf --model x.gguf --out " + q(t.file("out")) + " --dtype q4";
               },
               {"--dtype", "q4"},
               {"out"}});
  c.push_back({"CliTopPOutOfRange", [](const test::TempDir& t) {
                 if (!have(stories_dir() + "/config.json")) return std::string();
                 return "generate --model " + q(stories_dir()) + " --prompt hi --top-p 1.5";
               },
               {"--top-p", "1.5"}});
  c.push_back({"CliMissingRequired", [](const test::TempDir& t) {
                 return "convert --from llama2c --out " + q(t.file("out"));
               },
               {"--model"},
               {"out"}});
  c.push_back({"ConvertOutExistsWithoutForce", [](const test::TempDir& t) {
                 std::filesystem::create_directories(t.file("out"));
                 write_file_atomic(t.file("out/keep.txt"), "mine");
                 write_file_atomic(t.file("m.gguf"), tiny_gguf());
                 return "convert --from gguf --model " + q(t.file("m.gguf")) + " --out " + q(t.file("out"));
               },
               {"out", "--force"}});
  c.push_back({"PplNotAModelDir", [](const test::TempDir& t) {
                 write_file_atomic(t.file("file.txt"), "x");
                 return "ppl --model " + q(t.file("file.txt"));
               },
               {"file.txt", "directory"}});
  return c;
}

class BadInput : public testing::TestWithParam<Case> {};

TEST_P(BadInput, OneLineErrorAndNothingLeft) {
  const Case& c = GetParam();
  test::TempDir t;
  const std::string args = c.setup(t);
  if (args.empty()) GTEST_SKIP() << "test data missing";
  // What the directory held before the run (inputs); afterwards only these may be there, plus nothing
  // named after an output.
  std::vector<std::string> before;
  for (const auto& e : std::filesystem::directory_iterator(t.path())) before.push_back(e.path().filename().string());

  const test::CliResult r = test::run_cli(args);
  EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.err;
  ASSERT_FALSE(r.err.empty()) << args;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "exactly one stderr line expected:\n" << r.err;
  EXPECT_EQ(r.err.rfind("flatquant: error: ", 0), 0u) << r.err;
  for (const std::string& s : c.names) EXPECT_NE(r.err.find(s), std::string::npos) << "'" << s << "' not in: " << r.err;

  for (const std::string& out : c.outputs) {
    EXPECT_FALSE(std::filesystem::exists(t.file(out))) << out << " was left behind";
    const std::filesystem::path p = t.file(out);
    const std::string stem = p.filename().string();
    if (!std::filesystem::is_directory(p.parent_path())) continue;
    for (const auto& e : std::filesystem::directory_iterator(p.parent_path())) {
      const std::string n = e.path().filename().string();
      EXPECT_FALSE(n.rfind(stem + ".", 0) == 0) << "temporary " << n << " was left behind";
    }
  }
}

// The existing output of ConvertOutExistsWithoutForce is untouched.
TEST(BadInputExtra, ConvertRefusalKeepsExistingOutput) {
  test::TempDir t;
  std::filesystem::create_directories(t.file("out"));
  write_file_atomic(t.file("out/keep.txt"), "mine");
  write_file_atomic(t.file("m.gguf"), tiny_gguf());
  const test::CliResult r =
      test::run_cli("convert --from gguf --model " + q(t.file("m.gguf")) + " --out " + q(t.file("out")));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(read_file(t.file("out/keep.txt")), "mine");
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(t.file("out"))) n += e.is_regular_file() ? 1 : 100;
  EXPECT_EQ(n, 1);
}

// Recipes: `calibrate --recipe` is not wired into the CLI yet, so the recipe files go through load_recipe (what
// it will call): one-line errors naming the file and the field.
TEST(BadInputExtra, RecipeFiles) {
  struct R {
    const char* json;
    std::vector<std::string> names;
  };
  const R rs[] = {
      {R"({"name": "x", "a_bits": 3})", {"a_bits", "3"}},
      {R"({"name": "x", "w_bits": "4"})", {"w_bits", "integer"}},
      {R"({"name": "x", "k_bitz": 4})", {"k_bitz"}},
      {R"({"a_bits": 4})", {"name"}},
      {R"({"name": "x", "diag_alpha": 1.5})", {"diag_alpha"}},
      {R"({"name": "x", "gptq": {"blocksize": 0}})", {"blocksize"}},
      {R"({"name": "x", "w_bits": 4)", {"JSON"}},
      {"", {"JSON"}},
      {"[4, 4]", {"object"}},
  };
  test::TempDir t;
  for (const R& r : rs) {
    const std::string path = t.file("bad_recipe.json");
    write_file_atomic(path, r.json);
    try {
      load_recipe(path);
      ADD_FAILURE() << "accepted: " << r.json;
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
      EXPECT_NE(m.find("bad_recipe.json"), std::string::npos) << m;
      for (const std::string& n : r.names) EXPECT_NE(m.find(n), std::string::npos) << "'" << n << "' not in: " << m;
    }
  }
  EXPECT_THROW(load_recipe(t.file("missing.json")), Error);
  EXPECT_THROW(load_recipe("w3a3"), Error);
}

INSTANTIATE_TEST_SUITE_P(Hardening, BadInput, testing::ValuesIn(cases()),
                         [](const testing::TestParamInfo<Case>& i) { return i.param.name; });

}  // namespace
}  // namespace fq
