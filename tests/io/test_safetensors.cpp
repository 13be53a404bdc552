// safetensors reader/writer: round trips for every dtype, and one test per malformed-input case, each
// checking that the one-line error names the file and the problem.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "flatquant/error.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace fq {
namespace {

using test::TempDir;

// Writes a raw safetensors file: u64 header length, the header text as given, then `data_bytes` bytes.
std::string write_raw(const TempDir& d, const std::string& name, const std::string& header,
                      size_t data_bytes) {
  std::string s(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) s[(size_t)i] = (char)(n >> (8 * i));
  s += header;
  s.append(data_bytes, '\x01');
  const std::string p = d.file(name);
  write_file_atomic(p, s);
  return p;
}

// Runs `f` and returns the fq::Error message; fails the test when nothing is thrown.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << "error must be one line: " << m;
    return m;
  }
  ADD_FAILURE() << "expected fq::Error";
  return "";
}

std::string open_error(const std::string& path) {
  return error_of([&] { SafeTensors st(path); });
}

#define EXPECT_HAS(msg, sub) EXPECT_NE((msg).find(sub), std::string::npos) << "message: " << (msg)

TEST(SafeTensors, RoundTripEveryDtype) {
  TempDir d;
  SafeTensorsWriter w;
  const double f64[3] = {1.5, -2.25, 1e10};
  const float f32[4] = {0.f, -1.f, 3.5f, 65504.f};
  const int64_t i64[2] = {-5, 1LL << 40};
  const int32_t i32[2] = {-7, 123456};
  const int16_t i16[2] = {-32768, 32767};
  const int8_t i8[3] = {-128, 0, 127};
  const uint8_t u8[2] = {0, 255};
  const uint8_t b[3] = {0, 1, 1};
  w.add("f64", DType::F64, {3}, f64, sizeof f64);
  w.add_f32("f32", {2, 2}, f32);
  const float h[3] = {1.0f, -0.5f, 0.099975586f};  // exactly representable in f16
  w.add_from_f32("f16", DType::F16, {3}, h);
  const float bf[2] = {1.0f, -3.0e38f};
  w.add_from_f32("bf16", DType::BF16, {1, 2}, bf);
  w.add("i64", DType::I64, {2}, i64, sizeof i64);
  w.add("i32", DType::I32, {2}, i32, sizeof i32);
  w.add("i16", DType::I16, {2}, i16, sizeof i16);
  w.add("i8", DType::I8, {3}, i8, sizeof i8);
  w.add("u8", DType::U8, {2}, u8, sizeof u8);
  w.add("bool", DType::BOOL, {3}, b, sizeof b);
  w.add("scalar", DType::F32, {}, f32 + 2, 4);
  w.add("empty", DType::F32, {0, 4}, nullptr, 0);
  w.set_metadata("note", "hello");
  const std::string p = d.file("x.safetensors");
  w.write(p);
  EXPECT_FALSE(std::filesystem::exists(p + ".tmp." + std::to_string(::getpid())));

  SafeTensors st(p);
  EXPECT_EQ(st.tensors().size(), 12u);
  EXPECT_EQ(st.metadata().at("format"), "pt");
  EXPECT_EQ(st.metadata().at("note"), "hello");
  // Header length is padded to 8 bytes so the data section is aligned.
  MappedFile mf(p);
  uint64_t n = 0;
  std::memcpy(&n, mf.data(), 8);
  EXPECT_EQ(n % 8, 0u);

  auto vals = [&](const char* name) { return st.to_f32(st.get(name)); };
  EXPECT_EQ(vals("f64"), (std::vector<float>{1.5f, -2.25f, 1e10f}));
  EXPECT_EQ(vals("f32"), (std::vector<float>{0.f, -1.f, 3.5f, 65504.f}));
  EXPECT_EQ(st.get("f32").shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(vals("f16"), (std::vector<float>{1.0f, -0.5f, 0.099975586f}));
  const auto bfv = vals("bf16");
  EXPECT_EQ(bfv[0], 1.0f);
  EXPECT_NEAR(bfv[1], -3.0e38f, 3.0e38f / 128);
  EXPECT_EQ(st.get("bf16").dtype, DType::BF16);
  EXPECT_EQ(vals("i64"), (std::vector<float>{-5.f, (float)(1LL << 40)}));
  EXPECT_EQ(vals("i32"), (std::vector<float>{-7.f, 123456.f}));
  EXPECT_EQ(vals("i16"), (std::vector<float>{-32768.f, 32767.f}));
  EXPECT_EQ(vals("i8"), (std::vector<float>{-128.f, 0.f, 127.f}));
  EXPECT_EQ(vals("u8"), (std::vector<float>{0.f, 255.f}));
  EXPECT_EQ(vals("bool"), (std::vector<float>{0.f, 1.f, 1.f}));
  EXPECT_EQ(vals("scalar"), (std::vector<float>{3.5f}));
  EXPECT_EQ(st.get("scalar").numel(), 1);
  EXPECT_TRUE(vals("empty").empty());
  // Data is laid out in insertion order.
  EXPECT_EQ(st.tensors().front().name, "f64");
  EXPECT_EQ(st.get("f32").begin, 24u);
}

TEST(SafeTensors, GapsBetweenTensorsAreTolerated) {
  TempDir d;
  const auto p = write_raw(d, "gap.safetensors",
                           R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                           R"("b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})",
                           6);
  SafeTensors st(p);
  EXPECT_EQ(st.tensors().size(), 2u);
}

TEST(SafeTensors, MissingFile) {
  TempDir d;
  const auto m = open_error(d.file("nope.safetensors"));
  EXPECT_HAS(m, "nope.safetensors");
  EXPECT_HAS(m, "cannot open");
}

TEST(SafeTensors, TruncatedFile) {
  TempDir d;
  const std::string p = d.file("short.safetensors");
  write_file_atomic(p, "abc");
  const auto m = open_error(p);
  EXPECT_HAS(m, p);
  EXPECT_HAS(m, "too short");
}

TEST(SafeTensors, HeaderLengthBeyondFile) {
  TempDir d;
  std::string s(8, '\0');
  s[0] = (char)100;
  s += "{}";
  const std::string p = d.file("hl.safetensors");
  write_file_atomic(p, s);
  const auto m = open_error(p);
  EXPECT_HAS(m, p);
  EXPECT_HAS(m, "header length 100 exceeds the file size");
}

TEST(SafeTensors, HugeHeaderLengthDoesNotOverflow) {
  TempDir d;
  std::string s(8, '\xff');
  s += "{}";
  const std::string p = d.file("huge.safetensors");
  write_file_atomic(p, s);
  EXPECT_HAS(open_error(p), "exceeds the file size");
}

TEST(SafeTensors, InvalidJsonHeader) {
  TempDir d;
  const auto p = write_raw(d, "bad.safetensors", R"({"a": {"dtype": )", 0);
  const auto m = open_error(p);
  EXPECT_HAS(m, p);
  EXPECT_HAS(m, "header is not valid JSON");
}

TEST(SafeTensors, HeaderNotAnObject) {
  TempDir d;
  const auto p = write_raw(d, "arr.safetensors", "[1, 2]  ", 0);
  const auto m = open_error(p);
  EXPECT_HAS(m, p);
  EXPECT_HAS(m, "not a JSON object");
}

TEST(SafeTensors, UnknownDtype) {
  TempDir d;
  const auto p =
      write_raw(d, "dt.safetensors", R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2);
  const auto m = open_error(p);
  EXPECT_HAS(m, p);
  EXPECT_HAS(m, "tensor 'w'");
  EXPECT_HAS(m, "unknown dtype 'F8_E4M3'");
}

TEST(SafeTensors, NegativeShape) {
  TempDir d;
  const auto p =
      write_raw(d, "neg.safetensors", R"({"w":{"dtype":"U8","shape":[-2],"data_offsets":[0,2]}})", 2);
  const auto m = open_error(p);
  EXPECT_HAS(m, p);
  EXPECT_HAS(m, "tensor 'w': shape[0] = -2 is negative");
}

TEST(SafeTensors, NonIntegerShape) {
  TempDir d;
  const auto p =
      write_raw(d, "fl.safetensors", R"({"w":{"dtype":"U8","shape":[2.5],"data_offsets":[0,2]}})", 2);
  const auto m = open_error(p);
  EXPECT_HAS(m, p);
  EXPECT_HAS(m, "shape[0] must be a non-negative integer");
}

TEST(SafeTensors, DataOffsetsNotTwoInts) {
  TempDir d;
  const auto p =
      write_raw(d, "off3.safetensors", R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,1,2]}})", 2);
  const auto m = open_error(p);
  EXPECT_HAS(m, p);
  EXPECT_HAS(m, "'data_offsets' must be two non-negative integers");
}

TEST(SafeTensors, OffsetsOutOfRange) {
  TempDir d;
  const auto p =
      write_raw(d, "oob.safetensors", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8);
  const auto m = open_error(p);
  EXPECT_HAS(m, p);
  EXPECT_HAS(m, "tensor 'w': data_offsets [0, 16] lie outside the data section (8 bytes)");
}

TEST(SafeTensors, OffsetsBeginAfterEnd) {
  TempDir d;
  const auto p =
      write_raw(d, "rev.safetensors", R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[4,2]}})", 8);
  EXPECT_HAS(open_error(p), "begin is after end");
}

TEST(SafeTensors, OverlappingOffsets) {
  TempDir d;
  const auto p = write_raw(d, "ovl.safetensors",
                           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                           12);
  const auto m = open_error(p);
  EXPECT_HAS(m, p);
  EXPECT_HAS(m, "tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]");
}

TEST(SafeTensors, ShapeDtypeSizeMismatch) {
  TempDir d;
  const auto p =
      write_raw(d, "mm.safetensors", R"({"w":{"dtype":"F32","shape":[3,4],"data_offsets":[0,40]}})", 48);
  const auto m = open_error(p);
  EXPECT_HAS(m, p);
  EXPECT_HAS(m, "tensor 'w': shape [3,4] x F32 (48 bytes) does not match data_offsets [0, 40] (40 bytes)");
}

TEST(SafeTensors, ShapeProductOverflow) {
  TempDir d;
  const auto p =
      write_raw(d, "ovf.safetensors",
                R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}})", 0);
  EXPECT_HAS(open_error(p), "is too large");
}

TEST(SafeTensors, DuplicateNames) {
  TempDir d;
  const auto p = write_raw(d, "dup.safetensors",
                           R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                           R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                           2);
  const auto m = open_error(p);
  EXPECT_HAS(m, p);
  EXPECT_HAS(m, "tensor 'w': duplicate name");
}

TEST(SafeTensors, MetadataMustBeStrings) {
  TempDir d;
  const auto p = write_raw(d, "meta.safetensors", R"({"__metadata__":{"format":"pt","n":3}})", 0);
  const auto m = open_error(p);
  EXPECT_HAS(m, p);
  EXPECT_HAS(m, "__metadata__ 'n': value must be a string");
}

TEST(SafeTensors, EntryNotAnObject) {
  TempDir d;
  const auto p = write_raw(d, "ent.safetensors", R"({"w":[1,2]})", 0);
  EXPECT_HAS(open_error(p), "tensor 'w': header entry is not an object");
}

TEST(SafeTensors, GetMissingTensorNamesFile) {
  TempDir d;
  SafeTensorsWriter w;
  const float x = 1.f;
  w.add_f32("a", {1}, &x);
  const auto p = d.file("m.safetensors");
  w.write(p);
  SafeTensors st(p);
  EXPECT_EQ(st.find("b"), nullptr);
  const auto m = error_of([&] { st.get("b"); });
  EXPECT_HAS(m, p);
  EXPECT_HAS(m, "missing tensor 'b'");
}

TEST(SafeTensorsWriter, RejectsSizeMismatchAndDuplicates) {
  SafeTensorsWriter w;
  const float x[2] = {1.f, 2.f};
  EXPECT_HAS(error_of([&] { w.add("a", DType::F32, {3}, x, 8); }),
             "tensor 'a': shape [3] x F32 does not match 8 bytes");
  w.add_f32("a", {2}, x);
  EXPECT_HAS(error_of([&] { w.add_f32("a", {2}, x); }), "tensor 'a' added twice");
  EXPECT_HAS(error_of([&] { w.add_from_f32("b", DType::I8, {2}, x); }), "cannot convert fp32 to I8");
  EXPECT_EQ(w.size(), 1u);
}

// ------------------------------------------------------------------------------------------ TensorStore

void write_one(const std::string& path, const std::string& name, std::vector<int64_t> shape, float v) {
  SafeTensorsWriter w;
  int64_t n = 1;
  for (auto s : shape) n *= s;
  std::vector<float> x((size_t)n, v);
  w.add_f32(name, std::move(shape), x.data());
  w.write(path);
}

TEST(TensorStore, SingleFileAndReadF32) {
  TempDir d;
  write_one(d.file("model.safetensors"), "w", {2, 3}, 0.5f);
  write_one(d.file("other.safetensors"), "ignored", {1}, 0.f);  // model.safetensors wins
  auto s = TensorStore::open_dir(d.path());
  EXPECT_TRUE(s.has("w"));
  EXPECT_FALSE(s.has("ignored"));
  EXPECT_EQ(s.read_f32("w", {2, 3}), std::vector<float>(6, 0.5f));
  const auto m = error_of([&] { s.read_f32("w", {3, 2}); });
  EXPECT_HAS(m, d.file("model.safetensors"));
  EXPECT_HAS(m, "tensor 'w': shape [2,3] does not match the expected shape [3,2]");
  const auto m2 = error_of([&] { s.read_f32("nope", {1}); });
  EXPECT_HAS(m2, d.path());
  EXPECT_HAS(m2, "missing tensor 'nope'");
}

TEST(TensorStore, IndexedShards) {
  TempDir d;
  write_one(d.file("model-00001-of-00002.safetensors"), "a", {2}, 1.f);
  write_one(d.file("model-00002-of-00002.safetensors"), "b", {3}, 2.f);
  write_file_atomic(d.file("model.safetensors.index.json"),
                    R"({"metadata":{"total_size":20},"weight_map":{"a":"model-00001-of-00002.safetensors",)"
                    R"("b":"model-00002-of-00002.safetensors"}})");
  auto s = TensorStore::open_dir(d.path());
  EXPECT_EQ(s.read_f32("b", {3}), std::vector<float>(3, 2.f));
  EXPECT_EQ(s.all().size(), 2u);
  const SafeTensors* f = nullptr;
  ASSERT_NE(s.find("a", &f), nullptr);
  EXPECT_HAS(f->path(), "model-00001-of-00002.safetensors");
}

TEST(TensorStore, IndexNamesMissingShard) {
  TempDir d;
  write_one(d.file("s1.safetensors"), "a", {2}, 1.f);
  write_file_atomic(d.file("model.safetensors.index.json"),
                    R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
  const auto m = error_of([&] { TensorStore::open_dir(d.path()); });
  EXPECT_HAS(m, "model.safetensors.index.json");
  EXPECT_HAS(m, "weight_map 'b': shard 's2.safetensors' does not exist");
}

TEST(TensorStore, IndexNamesTensorAbsentFromShard) {
  TempDir d;
  write_one(d.file("s1.safetensors"), "a", {2}, 1.f);
  write_file_atomic(d.file("model.safetensors.index.json"),
                    R"({"weight_map":{"a":"s1.safetensors","c":"s1.safetensors"}})");
  const auto m = error_of([&] { TensorStore::open_dir(d.path()); });
  EXPECT_HAS(m, "model.safetensors.index.json");
  EXPECT_HAS(m, "weight_map 'c': tensor is not in");
}

TEST(TensorStore, IndexRejectsPathEscape) {
  TempDir d;
  write_file_atomic(d.file("model.safetensors.index.json"), R"({"weight_map":{"a":"../x.safetensors"}})");
  EXPECT_HAS(error_of([&] { TensorStore::open_dir(d.path()); }), "is not inside the directory");
}

TEST(TensorStore, GlobAllSafetensorsAndDuplicates) {
  TempDir d;
  write_one(d.file("a.safetensors"), "x", {1}, 1.f);
  write_one(d.file("b.safetensors"), "y", {1}, 2.f);
  EXPECT_EQ(TensorStore::open_dir(d.path()).all().size(), 2u);
  write_one(d.file("c.safetensors"), "x", {1}, 3.f);
  const auto m = error_of([&] { TensorStore::open_dir(d.path()); });
  EXPECT_HAS(m, "c.safetensors: tensor 'x': also present in");
}

TEST(TensorStore, EmptyDirectoryAndNotADirectory) {
  TempDir d;
  const auto m = error_of([&] { TensorStore::open_dir(d.path()); });
  EXPECT_HAS(m, d.path());
  EXPECT_HAS(m, "no model.safetensors");
  EXPECT_HAS(error_of([&] { TensorStore::open_dir(d.file("missing")); }), "not a directory");
}

}  // namespace
}  // namespace fq

namespace fq {
namespace {

// Robustness: every truncation and many seeded random byte edits of a valid file either open cleanly (and
// then convert without touching memory outside the map) or throw fq::Error; nothing else may happen.
TEST(SafeTensors, MutatedFilesNeverCrash) {
  TempDir d;
  SafeTensorsWriter w;
  const float x[6] = {1, 2, 3, 4, 5, 6};
  const uint16_t h[4] = {1, 2, 3, 4};
  w.add_f32("a", {2, 3}, x);
  w.add("b", DType::BF16, {4}, h, sizeof h);
  w.add("c", DType::I8, {0}, nullptr, 0);
  const std::string good = d.file("good.safetensors");
  w.write(good);
  const std::string orig = read_file(good);
  const std::string p = d.file("m.safetensors");
  int opened = 0, rejected = 0;
  auto attempt = [&](const std::string& bytes) {
    {  // plain write: an fsync per attempt would dominate the test's time
      std::ofstream f(p, std::ios::binary | std::ios::trunc);
      f.write(bytes.data(), (std::streamsize)bytes.size());
    }
    try {
      SafeTensors st(p);
      for (const auto& t : st.tensors()) (void)st.to_f32(t);
      ++opened;
    } catch (const Error&) {
      ++rejected;
    }
  };
  for (size_t n = 0; n < orig.size(); ++n) attempt(orig.substr(0, n));
  uint32_t s = 12345;  // fixed seed: the same edits every run
  auto rnd = [&] { return s = s * 1664525u + 1013904223u; };
  const std::string digits = "0123456789[]{},:\"-. e";
  for (int it = 0; it < 3000; ++it) {
    std::string m = orig;
    const int edits = 1 + (int)(rnd() % 3);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rnd() % m.size();
      // Mostly JSON-ish characters so that many edits still parse and reach the semantic checks.
      m[pos] = (rnd() % 4 == 0) ? (char)(rnd() & 0xff) : digits[rnd() % digits.size()];
    }
    attempt(m);
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(opened, 0);
}

}  // namespace
}  // namespace fq
