// GGUF reader: metadata, dequantization against hand-computed values, and one error per malformed input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "convert/gguf_builder.h"
#include "flatquant/error.h"
#include "io/gguf.h"
#include "test_util.h"

namespace fq {
namespace {

using test::GgufBuilder;
using test::u16_bytes;

// Expects constructing / reading to throw fq::Error whose message contains every needle.
template <typename F>
void expect_error(F&& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "expected fq::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const auto& n : needles)
      EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

GgufBuilder dequant_file() {
  GgufBuilder b;
  b.kv_str("general.architecture", "llama");
  b.kv_u32("llama.block_count", 7);
  b.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  b.kv_bool("tokenizer.ggml.add_bos_token", true);
  b.kv_strs("tokenizer.ggml.tokens", {"a", "b\xc3\xa9", ""});
  b.kv_i32s("tokenizer.ggml.token_type", {1, 3, 4});
  b.kv_f32s("tokenizer.ggml.scores", {0.5f, -1.f, -2.f});
  b.tensor_f32("f32", {4}, {1.5f, -2.f, 0.f, 3.25f});
  // 1.0, -2.0, 0.333251953125 (0x3555), smallest subnormal 2^-24, -inf
  b.tensor("f16", {5}, 1, u16_bytes({0x3c00, 0xc000, 0x3555, 0x0001, 0xfc00}));
  b.tensor("bf16", {2}, 30, u16_bytes({0x3f80, 0xc0a0}));  // 1.0, -5.0
  {                                                        // Q8_0: d = 0.5 (0x3800), qs[j] = j - 16
    std::string blk = u16_bytes({0x3800});
    for (int j = 0; j < 32; ++j) blk += (char)(int8_t)(j - 16);
    b.tensor("q8_0", {32}, 8, blk);
  }
  {  // Q4_0, two rows (ne = [32, 2]): d = 2.0 / 0.5; byte j = lo (j) | hi (15 - j) << 4
    std::string data;
    for (uint16_t d : {0x4000, 0x3800}) {
      data += u16_bytes({d});
      for (int j = 0; j < 16; ++j) data += (char)(uint8_t)(j | ((15 - j) << 4));
    }
    b.tensor("q4_0", {32, 2}, 2, data);
  }
  {  // Q4_1: d = 0.25 (0x3400), m = -1.0 (0xbc00); byte j = lo (j) | hi (15 - j) << 4
    std::string blk = u16_bytes({0x3400, 0xbc00});
    for (int j = 0; j < 16; ++j) blk += (char)(uint8_t)(j | ((15 - j) << 4));
    b.tensor("q4_1", {32}, 3, blk);
  }
  b.tensor("q4_k", {256}, 12, std::string(144, '\0'));
  return b;
}

TEST(Gguf, MetadataAndTensorInfos) {
  test::TempDir dir;
  const std::string p = dir.file("m.gguf");
  dequant_file().write(p);
  GgufFile g(p);
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.get_string("general.architecture"), "llama");
  EXPECT_EQ(g.get_int("llama.block_count"), 7);
  EXPECT_FLOAT_EQ((float)g.get_float("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
  EXPECT_TRUE(g.get_bool("tokenizer.ggml.add_bos_token", false));
  EXPECT_EQ(g.get_string_array("tokenizer.ggml.tokens"), (std::vector<std::string>{"a", "b\xc3\xa9", ""}));
  EXPECT_EQ(g.find("tokenizer.ggml.token_type")->arr_i, (std::vector<int64_t>{1, 3, 4}));
  EXPECT_EQ(g.find("tokenizer.ggml.scores")->arr_f, (std::vector<double>{0.5, -1.0, -2.0}));
  EXPECT_EQ(g.get_int("missing", 42), 42);
  expect_error([&] { g.get_int("general.architecture"); },
               {p, "general.architecture", "expected an integer"});
  expect_error([&] { g.get_string("nope"); }, {p, "'nope'", "missing"});

  const GgufTensor& q4 = g.get_tensor("q4_0");
  EXPECT_EQ(q4.ne, (std::vector<int64_t>{32, 2}));
  EXPECT_EQ(q4.hf_shape(), (std::vector<int64_t>{2, 32}));
  EXPECT_EQ(q4.nbytes, 36u);
  EXPECT_EQ(q4.type_name(), "Q4_0");
  for (const GgufTensor& t : g.tensors()) EXPECT_EQ(t.offset % 32, 0u) << t.name;
  EXPECT_EQ(g.data_offset() % 32, 0u);
}

TEST(Gguf, DequantizeExact) {
  test::TempDir dir;
  const std::string p = dir.file("m.gguf");
  dequant_file().write(p);
  GgufFile g(p);
  EXPECT_EQ(g.read_f32(g.get_tensor("f32")), (std::vector<float>{1.5f, -2.f, 0.f, 3.25f}));
  const auto f16 = g.read_f32(g.get_tensor("f16"));
  ASSERT_EQ(f16.size(), 5u);
  EXPECT_EQ(f16[0], 1.0f);
  EXPECT_EQ(f16[1], -2.0f);
  EXPECT_EQ(f16[2], 0.333251953125f);
  EXPECT_EQ(f16[3], 5.9604644775390625e-08f);
  EXPECT_TRUE(std::isinf(f16[4]) && f16[4] < 0);
  EXPECT_EQ(g.read_f32(g.get_tensor("bf16")), (std::vector<float>{1.0f, -5.0f}));

  const auto q8 = g.read_f32(g.get_tensor("q8_0"));
  ASSERT_EQ(q8.size(), 32u);
  EXPECT_EQ(q8[0], -8.0f);  // 0.5 * -16
  EXPECT_EQ(q8[16], 0.0f);
  EXPECT_EQ(q8[31], 7.5f);  // 0.5 * 15

  // Q4_0: low nibbles are elements 0..15, high nibbles 16..31; x = d * (q - 8).
  const auto q4 = g.read_f32(g.get_tensor("q4_0"));
  ASSERT_EQ(q4.size(), 64u);
  EXPECT_EQ(q4[0], -16.0f);   // 2 * (0 - 8)
  EXPECT_EQ(q4[1], -14.0f);   // 2 * (1 - 8)
  EXPECT_EQ(q4[15], 14.0f);   // 2 * (15 - 8)
  EXPECT_EQ(q4[16], 14.0f);   // 2 * (15 - 8), high nibble of byte 0
  EXPECT_EQ(q4[17], 12.0f);   // 2 * (14 - 8)
  EXPECT_EQ(q4[31], -16.0f);  // 2 * (0 - 8)
  EXPECT_EQ(q4[32], -4.0f);   // second block, d = 0.5: 0.5 * (0 - 8)
  EXPECT_EQ(q4[48], 3.5f);    // 0.5 * (15 - 8)
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(q4[32 + j], 0.5f * (float)(j - 8)) << j;
    EXPECT_EQ(q4[48 + j], 0.5f * (float)(7 - j)) << j;
  }

  // Q4_1: x = d * q + m.
  const auto q41 = g.read_f32(g.get_tensor("q4_1"));
  ASSERT_EQ(q41.size(), 32u);
  EXPECT_EQ(q41[0], -1.0f);   // 0.25 * 0 - 1
  EXPECT_EQ(q41[5], 0.25f);   // 0.25 * 5 - 1
  EXPECT_EQ(q41[15], 2.75f);  // 0.25 * 15 - 1
  EXPECT_EQ(q41[16], 2.75f);  // high nibble of byte 0 is 15
  EXPECT_EQ(q41[31], -1.0f);

  expect_error([&] { g.read_f32(g.get_tensor("q4_k")); }, {p, "'q4_k'", "Q4_K"});
}

TEST(Gguf, Version2) {
  test::TempDir dir;
  GgufBuilder b;
  b.version = 2;
  b.kv_str("general.architecture", "llama");
  b.tensor_f32("x", {2}, {1.f, 2.f});
  b.write(dir.file("v2.gguf"));
  GgufFile g(dir.file("v2.gguf"));
  EXPECT_EQ(g.version(), 2u);
  EXPECT_EQ(g.read_f32(g.get_tensor("x")), (std::vector<float>{1.f, 2.f}));
}

TEST(Gguf, CustomAlignment) {
  test::TempDir dir;
  GgufBuilder b;
  b.alignment = 64;
  b.kv_u32("general.alignment", 64);
  b.tensor_f32("a", {3}, {1.f, 2.f, 3.f});
  b.tensor_f32("b", {1}, {4.f});
  b.write(dir.file("a.gguf"));
  GgufFile g(dir.file("a.gguf"));
  EXPECT_EQ(g.alignment(), 64u);
  EXPECT_EQ(g.data_offset() % 64, 0u);
  EXPECT_EQ(g.get_tensor("b").offset, 64u);
  EXPECT_EQ(g.read_f32(g.get_tensor("b")), (std::vector<float>{4.f}));
}

TEST(Gguf, BadMagic) {
  test::TempDir dir;
  std::string bytes = dequant_file().build();
  bytes[3] = 'X';
  const std::string p = dir.file("bad.gguf");
  write_file_atomic(p, bytes);
  expect_error([&] { GgufFile g(p); }, {p, "bad magic"});
}

TEST(Gguf, BadVersion) {
  test::TempDir dir;
  GgufBuilder b;
  b.version = 1;
  const std::string p = dir.file("v1.gguf");
  b.write(p);
  expect_error([&] { GgufFile g(p); }, {p, "version 1"});
}

TEST(Gguf, Truncated) {
  test::TempDir dir;
  const std::string bytes = dequant_file().build();
  const std::string p = dir.file("trunc.gguf");
  // Cut inside the metadata, inside the tensor infos, and inside the data.
  for (size_t cut : {(size_t)30, (size_t)200, bytes.size() - 10}) {
    write_file_atomic(p, bytes.substr(0, cut));
    expect_error([&] { GgufFile g(p); }, {p});
  }
  write_file_atomic(p, bytes.substr(0, 30));
  expect_error([&] { GgufFile g(p); }, {p, "absurd", "truncated"});
  write_file_atomic(p, bytes.substr(0, 120));  // inside the third key
  expect_error([&] { GgufFile g(p); }, {p, "truncated", "metadata key #2"});
  write_file_atomic(p, bytes.substr(0, bytes.size() - 10));
  expect_error([&] { GgufFile g(p); }, {p, "tensor 'q4_k'", "beyond the end"});
}

TEST(Gguf, TensorOffsetBeyondFile) {
  test::TempDir dir;
  GgufBuilder b;
  b.tensor_f32("ok", {2}, {1.f, 2.f});
  b.tensor("far", {8}, 0, "", 1 << 20);
  const std::string p = dir.file("far.gguf");
  b.write(p);
  expect_error([&] { GgufFile g(p); }, {p, "tensor 'far'", "beyond the end"});
}

TEST(Gguf, UnknownType) {
  test::TempDir dir;
  GgufBuilder b;
  b.tensor("odd", {4}, 99, std::string(16, '\0'));
  const std::string p = dir.file("type.gguf");
  b.write(p);
  expect_error([&] { GgufFile g(p); }, {p, "tensor 'odd'", "unknown ggml type 99"});
}

TEST(Gguf, DimsOverflow) {
  test::TempDir dir;
  GgufBuilder b;
  b.tensor("huge", {1ull << 40, 1ull << 40}, 0, "");
  const std::string p = dir.file("huge.gguf");
  b.write(p);
  expect_error([&] { GgufFile g(p); }, {p, "tensor 'huge'", "overflows"});
}

TEST(Gguf, AbsurdCounts) {
  test::TempDir dir;
  const std::string p = dir.file("count.gguf");
  GgufBuilder b;
  b.kv_u32("a", 1);
  b.n_kv_override = 1ll << 40;
  b.write(p);
  expect_error([&] { GgufFile g(p); }, {p, "metadata count", "absurd"});
  GgufBuilder c;
  c.n_tensors_override = 1ll << 40;
  c.write(p);
  expect_error([&] { GgufFile g(p); }, {p, "tensor count", "absurd"});
  GgufBuilder d;  // a string array claiming more elements than bytes left
  d.kv_strs("tokenizer.ggml.tokens", {"x"});
  std::string bytes = d.build();
  const size_t len_at = 4 + 4 + 8 + 8 + 8 + std::string("tokenizer.ggml.tokens").size() + 4 + 4;
  const uint64_t big = 1ull << 50;
  std::memcpy(&bytes[len_at], &big, 8);
  write_file_atomic(p, bytes);
  expect_error([&] { GgufFile g(p); }, {p, "tokenizer.ggml.tokens", "array length"});
}

TEST(Gguf, RowNotMultipleOfBlock) {
  test::TempDir dir;
  GgufBuilder b;
  b.tensor("q", {16}, 8, std::string(34, '\0'));
  const std::string p = dir.file("blk.gguf");
  b.write(p);
  expect_error([&] { GgufFile g(p); }, {p, "tensor 'q'", "block size 32"});
}

TEST(Gguf, MisalignedOffset) {
  test::TempDir dir;
  GgufBuilder b;
  b.tensor("m", {1}, 0, "", 4);
  const std::string p = dir.file("mis.gguf");
  b.write(p);
  expect_error([&] { GgufFile g(p); }, {p, "tensor 'm'", "alignment"});
}

}  // namespace
}  // namespace fq

namespace fq {
namespace {

// Random byte flips and truncations of a valid file: the reader either accepts the file (and every
// tensor then reads or fails cleanly) or throws fq::Error; it never crashes or reads out of bounds.
TEST(Gguf, MutationsNeverCrash) {
  test::TempDir dir;
  const std::string good = dequant_file().build();
  const std::string p = dir.file("mut.gguf");
  std::mt19937 rng(1234);
  int accepted = 0, rejected = 0;
  for (int it = 0; it < 1500; ++it) {
    std::string bytes = good;
    if (it % 5 == 0) {
      bytes.resize(rng() % bytes.size());
    } else {
      const int flips = 1 + (int)(rng() % 4);
      for (int f = 0; f < flips; ++f) {
        // Bias the flips towards the header, where the structure is.
        const size_t at = rng() % (it % 2 ? bytes.size() : std::min<size_t>(bytes.size(), 700));
        bytes[at] = (char)(rng() & 0xff);
      }
    }
    write_file_atomic(p, bytes);
    try {
      GgufFile g(p);
      for (const GgufTensor& t : g.tensors()) {
        try {
          g.read_f32(t);
        } catch (const Error&) {
        }
      }
      ++accepted;
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 100);
  EXPECT_GT(accepted, 10);
}

}  // namespace
}  // namespace fq
