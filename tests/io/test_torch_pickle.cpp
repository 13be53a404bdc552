// torch.save reader: the committed flat_matrices.pth fixture (PyTorch 2.11) against its safetensors twin,
// then hand-built archives and pickles for what the fixture lacks (other dtypes, views, protocol 4, ZIP64)
// and one test per malformed-input class, each checking the one-line error.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "flatquant/error.h"
#include "io/safetensors.h"
#include "io/torch_pickle.h"
#include "test_util.h"

namespace fq {
namespace {

// ------------------------------------------------------------------------------------ builders

void put(std::string& s, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) s += static_cast<char>((v >> (8 * i)) & 0xFF);
}

// Pickle bytes, opcode by opcode (the subset torch.save writes).
struct Pickle {
  std::string b;
  explicit Pickle(int proto = 2) {
    b += '\x80';
    b += static_cast<char>(proto);
  }
  Pickle& op(char c) {
    b += c;
    return *this;
  }
  Pickle& op(int c) { return op(static_cast<char>(c)); }
  Pickle& mark() { return op('('); }
  Pickle& str(const std::string& s) {
    op('X');
    put(b, s.size(), 4);
    b += s;
    return *this;
  }
  Pickle& integer(int64_t v) {
    if (v >= 0 && v < 256) {
      op('K');
      put(b, static_cast<uint64_t>(v), 1);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      put(b, static_cast<uint64_t>(v), 4);
    } else {
      op(0x8a);
      put(b, 8, 1);
      put(b, static_cast<uint64_t>(v), 8);
    }
    return *this;
  }
  Pickle& real(double d) {
    uint64_t bits;
    std::memcpy(&bits, &d, 8);
    op('G');
    for (int i = 7; i >= 0; --i) b += static_cast<char>((bits >> (8 * i)) & 0xFF);
    return *this;
  }
  Pickle& global(const std::string& module, const std::string& name) {
    op('c');
    b += module + "\n" + name + "\n";
    return *this;
  }
  Pickle& ints(const std::vector<int64_t>& v) {  // a tuple of ints
    mark();
    for (int64_t x : v) integer(x);
    return op('t');
  }
  Pickle& ordered_dict() { return global("collections", "OrderedDict").op(')').op('R'); }
  // _rebuild_tensor_v2(storage('storage', torch.<type>, key, 'cpu', numel), offset, size, stride, False, {}).
  Pickle& tensor(const std::string& type, const std::string& key, int64_t numel, int64_t offset,
                 const std::vector<int64_t>& shape, const std::vector<int64_t>& stride) {
    global("torch._utils", "_rebuild_tensor_v2").mark();
    mark().str("storage").global("torch", type).str(key).str("cpu").integer(numel).op('t').op('Q');
    integer(offset).ints(shape).ints(stride).op(0x89).ordered_dict();
    return op('t').op('R');
  }
  // nn.Parameter around the tensor that is on the stack: _rebuild_parameter(t, False, OrderedDict()).
  Pickle& parameter_of_next() { return global("torch._utils", "_rebuild_parameter"); }
  Pickle& finish_parameter() { return op(0x89).ordered_dict().op(0x87).op('R'); }
  std::string stop() { return b + "."; }
};

struct ZipEntrySpec {
  std::string name, data;
  uint16_t method = 0;
};

// A STORED zip as torch.save writes it (optionally in ZIP64 form: 0xFFFFFFFF fields, 64-bit extra fields,
// ZIP64 end record and locator).
std::string make_zip(const std::vector<ZipEntrySpec>& entries, bool zip64 = false) {
  std::string out, cd;
  for (const auto& e : entries) {
    const uint64_t local = out.size();
    const uint32_t crc = zip_crc32(e.data.data(), e.data.size());
    std::string x64;  // zip64 extra: usize, csize, local offset
    if (zip64) {
      put(x64, 1, 2);
      put(x64, 24, 2);
      put(x64, e.data.size(), 8);
      put(x64, e.data.size(), 8);
      put(x64, local, 8);
    }
    const uint64_t size32 = zip64 ? 0xFFFFFFFF : e.data.size();
    put(out, 0x04034b50, 4);
    put(out, 20, 2);
    put(out, 0, 2);
    put(out, e.method, 2);
    put(out, 0, 4);
    put(out, crc, 4);
    put(out, size32, 4);
    put(out, size32, 4);
    put(out, e.name.size(), 2);
    put(out, 0, 2);
    out += e.name + e.data;
    put(cd, 0x02014b50, 4);
    put(cd, 20, 2);
    put(cd, 20, 2);
    put(cd, 0, 2);
    put(cd, e.method, 2);
    put(cd, 0, 4);
    put(cd, crc, 4);
    put(cd, size32, 4);
    put(cd, size32, 4);
    put(cd, e.name.size(), 2);
    put(cd, x64.size(), 2);
    put(cd, 0, 2);
    put(cd, 0, 2);
    put(cd, 0, 2);
    put(cd, 0, 4);
    put(cd, zip64 ? 0xFFFFFFFF : local, 4);
    cd += e.name + x64;
  }
  const uint64_t cd_off = out.size();
  out += cd;
  if (zip64) {
    const uint64_t z = out.size();
    put(out, 0x06064b50, 4);
    put(out, 44, 8);
    put(out, 45, 2);
    put(out, 45, 2);
    put(out, 0, 4);
    put(out, 0, 4);
    put(out, entries.size(), 8);
    put(out, entries.size(), 8);
    put(out, cd.size(), 8);
    put(out, cd_off, 8);
    put(out, 0x07064b50, 4);
    put(out, 0, 4);
    put(out, z, 8);
    put(out, 1, 4);
  }
  put(out, 0x06054b50, 4);
  put(out, 0, 4);
  put(out, zip64 ? 0xFFFF : entries.size(), 2);
  put(out, zip64 ? 0xFFFF : entries.size(), 2);
  put(out, zip64 ? 0xFFFFFFFF : cd.size(), 4);
  put(out, zip64 ? 0xFFFFFFFF : cd_off, 4);
  put(out, 0, 2);
  return out;
}

std::string f32_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

// An archive "a/" with data.pkl, byteorder and the given storages.
std::string torch_zip(const std::string& pkl,
                      const std::vector<std::pair<std::string, std::string>>& storages = {},
                      bool zip64 = false) {
  std::vector<ZipEntrySpec> e = {{"a/data.pkl", pkl}, {"a/byteorder", "little"}};
  for (const auto& [k, d] : storages) e.push_back({"a/data/" + k, d});
  e.push_back({"a/version", "3\n"});
  return make_zip(e, zip64);
}

TorchValue load(const std::string& bytes, bool crc = true) {
  TorchLoadOptions o;
  o.verify_crc = crc;
  return load_torch_bytes(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "t.pth", o);
}

// The fq::Error message of f(); fails when nothing or something else is thrown. Checks one line, path first.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    EXPECT_EQ(m.rfind("t.pth: ", 0), 0u) << m;
    return m;
  }
  ADD_FAILURE() << "no error";
  return "";
}
#define EXPECT_LOAD_ERROR(bytes, what) EXPECT_NE(error_of([&] { load(bytes); }).find(what), std::string::npos)

// A small valid file: {"w": Parameter(2x3 f32), "b": tensor(3 f16)}.
std::string small_file() {
  Pickle p;
  p.op('}').mark();
  p.str("w").parameter_of_next().tensor("FloatStorage", "0", 6, 0, {2, 3}, {3, 1}).finish_parameter();
  p.str("b").tensor("HalfStorage", "1", 3, 0, {3}, {1});
  p.op('u');
  std::string h;
  for (uint16_t v : {0x3c00, 0xc000, 0x3800}) put(h, v, 2);  // 1, -2, 0.5
  return torch_zip(p.stop(), {{"0", f32_bytes({1, 2, 3, 4, 5, 6})}, {"1", h}});
}

// ------------------------------------------------------------------------------------ the fixture

// The twin's name of a flat_matrices.pth key (scripts/gen_flat_matrices.py); "" for the stored inverses.
std::string twin_name(int layer, const std::string& key) {
  const std::string pre = "model.layers." + std::to_string(layer) + ".";
  auto ends = [&](const std::string& s) {
    return key.size() >= s.size() && key.compare(key.size() - s.size(), s.size(), s) == 0;
  };
  auto head = [&](const std::string& s) { return key.substr(0, key.size() - s.size()); };
  if (ends("_inv") || ends("_inv_t")) return "";
  if (ends(".matrix_left")) return pre + head(".matrix_left") + ".left.matrix";
  if (ends(".matrix_right")) return pre + head(".matrix_right") + ".right.matrix";
  if (ends(".matrix")) return pre + head(".matrix") + ".f.matrix";
  if (ends(".diag_scale")) return pre + key;
  const auto dot = key.find('.');
  const std::string block = key.substr(0, dot), rest = key.substr(dot + 1);
  const auto p = rest.find("_proj.");
  if (p != std::string::npos) {
    const std::string lin = rest.substr(0, p), leaf = rest.substr(p + 6);
    if (leaf.rfind("act_quantizer.", 0) == 0) return pre + block + ".aq_" + lin + "." + leaf.substr(14);
    return pre + block + ".wq_" + lin + "." + leaf;
  }
  const auto q = rest.find("_cache_quantizer.");
  if (q != std::string::npos) return pre + block + "." + rest.substr(0, q) + "_quant." + rest.substr(q + 17);
  ADD_FAILURE() << "unexpected key " << key;
  return "";
}

TEST(TorchPickle, FlatMatricesFixtureEqualsTwin) {
  const std::string pth = test::source_path("tests/data/flat_matrices/stories260K.pth");
  const std::string twin_path = test::source_path("tests/data/flat_matrices/stories260K_twin.safetensors");
  const TorchValue root = load_torch_file(pth);
  const SafeTensors twin(twin_path);
  ASSERT_TRUE(root.is(TorchValue::Kind::Dict));
  ASSERT_EQ(root.entries().size(), 5u);  // stories260K has 5 layers
  size_t compared = 0, inverses = 0;
  for (size_t li = 0; li < root.entries().size(); ++li) {
    const auto& [k, layer] = root.entries()[li];
    ASSERT_EQ(k.as_int(), static_cast<int64_t>(li));
    ASSERT_EQ(root.find(k.as_int()), &layer);
    for (const auto& [name, value] : layer.entries()) {
      const TorchTensor& t = value.as_tensor();
      ASSERT_EQ(t.dtype, DType::F32);
      ASSERT_EQ(static_cast<int64_t>(t.f32.size()), t.numel());
      const std::string tn = twin_name(static_cast<int>(li), name.as_string());
      if (tn.empty()) {
        // matrix_*_inv / matrix_inv_t = inv(M)^T: M^T x it is the identity.
        const std::string& key = name.as_string();
        const std::string base =
            key.substr(0, key.rfind(key.find("_inv_t") != std::string::npos ? "_inv_t" : "_inv"));
        const TorchValue* m = layer.find(base);
        ASSERT_NE(m, nullptr) << key;
        const TorchTensor& M = m->as_tensor();
        ASSERT_EQ(M.shape, t.shape);
        const int64_t n = t.shape[0];
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < n; ++j) {
            double s = 0;
            for (int64_t r = 0; r < n; ++r) s += double(M.f32[r * n + i]) * t.f32[r * n + j];
            ASSERT_NEAR(s, i == j ? 1.0 : 0.0, 1e-4) << key << " " << i << "," << j;
          }
        ++inverses;
        continue;
      }
      const TensorInfo& ti = twin.get(tn);
      EXPECT_EQ(t.shape, ti.shape) << name.as_string();
      const std::vector<float> want = twin.to_f32(ti);
      ASSERT_EQ(want.size(), t.f32.size()) << name.as_string();
      EXPECT_EQ(std::memcmp(want.data(), t.f32.data(), want.size() * 4), 0) << name.as_string();
      ++compared;
    }
  }
  EXPECT_EQ(compared, twin.tensors().size());  // every twin tensor was met exactly once (names are unique)
  EXPECT_EQ(inverses, 5u * 9u);                // per layer: 3 Kronecker transforms x 2, 3 single matrices
}

// ------------------------------------------------------------------------------------ values

TEST(TorchPickle, SmallFileAndDtypes) {
  const TorchValue v = load(small_file());
  const TorchTensor& w = v.find("w")->as_tensor();
  EXPECT_EQ(w.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(w.f32, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(w.storage_key, "a/data/0");
  const TorchTensor& b = v.find("b")->as_tensor();
  EXPECT_EQ(b.dtype, DType::F16);
  EXPECT_EQ(b.f32, (std::vector<float>{1, -2, 0.5f}));
  EXPECT_EQ(v.find("x"), nullptr);

  // bf16, f64, i64, i32 storages.
  Pickle p;
  p.mark();
  p.tensor("BFloat16Storage", "bf", 2, 0, {2}, {1});
  p.tensor("DoubleStorage", "d", 2, 0, {2}, {1});
  p.tensor("LongStorage", "l", 2, 0, {2}, {1});
  p.tensor("IntStorage", "i", 2, 0, {2}, {1});
  p.op('t');
  std::string bf, d, l, i;
  put(bf, 0x3fc0, 2);  // 1.5
  put(bf, 0xc080, 2);  // -4
  const double dv[2] = {0.1, -1e300};
  d.assign(reinterpret_cast<const char*>(dv), 16);
  put(l, static_cast<uint64_t>(-5), 8);
  put(l, uint64_t(1) << 40, 8);
  put(i, static_cast<uint32_t>(-7), 4);
  put(i, 9, 4);
  const TorchValue t = load(torch_zip(p.stop(), {{"bf", bf}, {"d", d}, {"l", l}, {"i", i}}));
  ASSERT_EQ(t.items().size(), 4u);
  EXPECT_EQ(t.items()[0].as_tensor().f32, (std::vector<float>{1.5f, -4.f}));
  EXPECT_EQ(t.items()[1].as_tensor().f32[0], 0.1f);
  EXPECT_TRUE(std::isinf(t.items()[1].as_tensor().f32[1]));
  EXPECT_EQ(t.items()[2].as_tensor().i64, (std::vector<int64_t>{-5, int64_t(1) << 40}));
  EXPECT_TRUE(t.items()[2].as_tensor().f32.empty());
  EXPECT_EQ(t.items()[3].as_tensor().i64, (std::vector<int64_t>{-7, 9}));
  EXPECT_EQ(t.items()[3].as_tensor().dtype, DType::I32);
}

TEST(TorchPickle, ViewsOffsetsAndSharedStorage) {
  // Storage 0..11; views: transpose of a 3x4 (stride 1,4), offset 5 with [2] stride 3, a size-1 dimension
  // with an arbitrary stride, a 0-d scalar, an empty tensor, and a stride-0 broadcast.
  std::vector<float> s(12);
  for (int k = 0; k < 12; ++k) s[k] = static_cast<float>(k);
  Pickle p;
  p.mark();
  p.tensor("FloatStorage", "s", 12, 0, {4, 3}, {1, 4});
  p.tensor("FloatStorage", "s", 12, 5, {2}, {3});
  p.tensor("FloatStorage", "s", 12, 2, {1, 2}, {1000000, 1});
  p.tensor("FloatStorage", "s", 12, 11, {}, {});
  p.tensor("FloatStorage", "s", 12, 12, {0, 5}, {5, 1});
  p.tensor("FloatStorage", "s", 12, 1, {2, 3}, {0, 2});
  p.op('t');
  const TorchValue v = load(torch_zip(p.stop(), {{"s", f32_bytes(s)}}));
  const auto& it = v.items();
  ASSERT_EQ(it.size(), 6u);
  EXPECT_EQ(it[0].as_tensor().f32, (std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
  EXPECT_EQ(it[0].as_tensor().strides, (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(it[1].as_tensor().f32, (std::vector<float>{5, 8}));
  EXPECT_EQ(it[1].as_tensor().storage_offset, 5);
  EXPECT_EQ(it[2].as_tensor().f32, (std::vector<float>{2, 3}));
  EXPECT_EQ(it[3].as_tensor().f32, (std::vector<float>{11}));
  EXPECT_TRUE(it[3].as_tensor().shape.empty());
  EXPECT_TRUE(it[4].as_tensor().f32.empty());
  EXPECT_EQ(it[5].as_tensor().f32, (std::vector<float>{1, 3, 5, 1, 3, 5}));
}

TEST(TorchPickle, ScalarsContainersAndMemo) {
  Pickle p;
  p.op('}').op('q').op(0).mark();
  p.str("none").op('N');
  p.str("t").op(0x88);
  p.str("f").op(0x89);
  p.str("neg").integer(-123456);
  p.str("k2").op('M').op(0x34).op(0x12);  // BININT2 0x1234
  p.str("big").integer(int64_t(1) << 40);
  p.str("long1neg").op(0x8a).op(2).op(0x00).op(0x80);  // LONG1 2 bytes: -32768
  p.str("long0").op(0x8a).op(0);                       // LONG1 0 bytes: 0
  p.str("pi").real(3.25);
  p.str("utf8").str("\xc3\xa9t\xc3\xa9");
  p.str("list").op(']').op('r');
  put(p.b, 70000, 4);  // LONG_BINPUT 70000
  p.mark().integer(1).integer(2).op('e').integer(3).op('a');
  p.str("again").op('j');
  put(p.b, 70000, 4);  // LONG_BINGET: the same list
  p.str("empty").op(')');
  p.str("tuples")
      .integer(1)
      .op(0x85)
      .integer(1)
      .integer(2)
      .op(0x86)
      .integer(1)
      .integer(2)
      .integer(3)
      .op(0x87)
      .op(0x87);
  p.op('u');
  p.integer(7).str("seven").op('s');  // int key through SETITEM
  const TorchValue v = load(torch_zip(p.stop()));
  EXPECT_TRUE(v.find("none")->is(TorchValue::Kind::None));
  EXPECT_TRUE(v.find("t")->as_bool());
  EXPECT_FALSE(v.find("f")->as_bool());
  EXPECT_EQ(v.find("neg")->as_int(), -123456);
  EXPECT_EQ(v.find("k2")->as_int(), 0x1234);
  EXPECT_EQ(v.find("big")->as_int(), int64_t(1) << 40);
  EXPECT_EQ(v.find("long1neg")->as_int(), -32768);
  EXPECT_EQ(v.find("long0")->as_int(), 0);
  EXPECT_EQ(v.find("pi")->as_float(), 3.25);
  EXPECT_EQ(v.find("utf8")->as_string(), "\xc3\xa9t\xc3\xa9");
  ASSERT_EQ(v.find("list")->items().size(), 3u);
  EXPECT_EQ(v.find("list")->items()[2].as_int(), 3);
  EXPECT_EQ(v.find("again")->items().size(), 3u);  // shared reference, seen after the appends
  const auto& tu = v.find("tuples")->items();
  ASSERT_EQ(tu.size(), 3u);
  EXPECT_TRUE(tu[0].is(TorchValue::Kind::Tuple));
  EXPECT_EQ(tu[0].items().size(), 1u);
  EXPECT_TRUE(v.find("empty")->items().empty());
  EXPECT_EQ(tu[2].items().size(), 3u);
  EXPECT_EQ(v.find(7)->as_string(), "seven");
  EXPECT_THROW((void)v.find("pi")->as_int(), Error);
  EXPECT_THROW((void)v.find("list")->entries(), Error);
}

TEST(TorchPickle, Protocol4Opcodes) {
  // FRAME, SHORT_BINUNICODE, BINUNICODE8, MEMOIZE, STACK_GLOBAL, as pickle protocol 4 writes them.
  Pickle p(4);
  p.op(0x95);
  put(p.b, 0, 8);
  auto sstr = [&](const std::string& s) {
    p.op(0x8c).op(static_cast<int>(s.size()));
    p.b += s;
    p.op(0x94);
  };
  p.op('}').op(0x94).mark();
  sstr("w");
  sstr("torch._utils");
  sstr("_rebuild_tensor_v2");
  p.op(0x93).op(0x94).mark().mark();
  sstr("storage");
  sstr("torch");
  sstr("FloatStorage");
  p.op(0x93);
  p.op(0x8d);
  put(p.b, 1, 8);
  p.b += "0";
  sstr("cpu");
  p.integer(2).op('t').op('Q').integer(0).ints({2}).ints({1}).op(0x89);
  sstr("collections");
  sstr("OrderedDict");
  p.op(0x93).op(')').op('R').op('t').op('R').op('u');
  const TorchValue v = load(torch_zip(p.stop(), {{"0", f32_bytes({7, 8})}}));
  EXPECT_EQ(v.find("w")->as_tensor().f32, (std::vector<float>{7, 8}));
}

TEST(TorchPickle, StateDictWithMetadataAndParameterState) {
  // model.state_dict(): an OrderedDict with a `_metadata` attribute (BUILD, dropped); a Parameter with extra
  // state goes through _rebuild_parameter_with_state (the state is dropped).
  Pickle p;
  p.ordered_dict().mark();
  p.str("w").global("torch._utils", "_rebuild_parameter_with_state").mark();
  p.tensor("FloatStorage", "0", 2, 0, {2}, {1}).op(0x88).ordered_dict().op('}').op('t').op('R');
  p.op('u');
  p.op('}').str("_metadata").ordered_dict().op('s').op('b');
  const TorchValue v = load(torch_zip(p.stop(), {{"0", f32_bytes({5, 6})}}));
  ASSERT_EQ(v.entries().size(), 1u);
  EXPECT_EQ(v.find("w")->as_tensor().f32, (std::vector<float>{5, 6}));
}

TEST(TorchPickle, Zip64ArchiveAndFile) {
  const std::string a = small_file();
  const TorchValue v = load(torch_zip(Pickle().op('}').stop(), {}, true));
  EXPECT_TRUE(v.entries().empty());
  // The small file in ZIP64 form reads the same.
  Pickle q;
  q.op('}').str("w").tensor("FloatStorage", "0", 2, 0, {2}, {1}).op('s');
  const TorchValue z = load(torch_zip(q.stop(), {{"0", f32_bytes({3, 4})}}, true));
  EXPECT_EQ(z.find("w")->as_tensor().f32, (std::vector<float>{3, 4}));
  // And through a real file.
  test::TempDir d;
  write_file_atomic(d.file("x.pth"), a);
  EXPECT_EQ(load_torch_file(d.file("x.pth")).find("w")->as_tensor().f32.size(), 6u);
}

// ------------------------------------------------------------------------------------ malformed input

TEST(TorchPickle, EveryTruncationIsAnError) {
  const std::string a = small_file();
  for (size_t n = 0; n < a.size(); ++n) error_of([&] { load(a.substr(0, n)); });
  EXPECT_LOAD_ERROR(a.substr(0, a.size() - 1), "end-of-central-directory record not found");
  EXPECT_LOAD_ERROR(std::string(), "not a zip archive");
  EXPECT_LOAD_ERROR(std::string("\x80\x02}q\x00.", 6), "legacy torch.save format");
}

TEST(TorchPickle, ZipErrors) {
  const std::string pkl = Pickle().op('}').stop();
  EXPECT_LOAD_ERROR(make_zip({{"a/data.pkl", pkl, 8}}), "'a/data.pkl' is compressed (method 8)");
  std::string bad_crc = torch_zip(pkl);
  bad_crc[30 + 10 + 1] ^= 1;  // data.pkl's PROTO 2 -> 3 (local header 30 bytes + "a/data.pkl"): still valid,
  EXPECT_LOAD_ERROR(bad_crc, "CRC-32 mismatch");  // so only the CRC tells
  EXPECT_NO_THROW(load(bad_crc, false));
  EXPECT_LOAD_ERROR(make_zip({{"a/data.pkl", pkl}, {"a/data.pkl", pkl}}), "appears twice");
  EXPECT_LOAD_ERROR(make_zip({{"a/data.pkl", pkl}, {"b/x", ""}}), "outside the archive directory");
  EXPECT_LOAD_ERROR(make_zip({{"a/version", "3"}}), "no 'a/data.pkl'");
  EXPECT_LOAD_ERROR(make_zip({{"a/data.pkl", pkl}, {"a/byteorder", "big"}}), "only little-endian");
  EXPECT_LOAD_ERROR(make_zip({{"a/data.pkl", pkl}, {"a/version", "x\n"}}), "version record 'x'");
}

TEST(TorchPickle, PickleErrors) {
  auto run = [](const std::string& pkl) { return torch_zip(pkl, {{"0", f32_bytes({1, 2})}}); };
  EXPECT_LOAD_ERROR(run(Pickle().op('I').b + "1\n."),
                    "unknown or unsupported pickle opcode (opcode 0x49 at offset 2)");
  EXPECT_LOAD_ERROR(run(Pickle().global("os", "system").stop()), "global 'os.system' is not allowed");
  EXPECT_LOAD_ERROR(run(Pickle().global("builtins", "eval\x01").stop()), "global 'builtins.eval\\x01'");
  EXPECT_LOAD_ERROR(run(Pickle().op('s').stop()), "stack underflow");
  EXPECT_LOAD_ERROR(run(Pickle().op('}').mark().op('s').stop()), "stack underflow");  // MARK bounds the stack
  EXPECT_LOAD_ERROR(run(Pickle().op('t').stop()), "no MARK");
  EXPECT_LOAD_ERROR(run(Pickle().op('h').op(3).stop()), "memo key 3 not defined");
  EXPECT_LOAD_ERROR(run(Pickle().op('}').b), "pickle ends without STOP");
  EXPECT_LOAD_ERROR(run(Pickle().op('}').stop() + "x"), "1 bytes after STOP");
  EXPECT_LOAD_ERROR(run(Pickle().op('}').op('N').stop()), "STOP with 1 objects");
  EXPECT_LOAD_ERROR(run(Pickle(5).op('}').stop()), "pickle protocol 5 not supported");
  EXPECT_LOAD_ERROR(run("}."), "does not start with PROTO");
  EXPECT_LOAD_ERROR(run(Pickle().op('X').op(9).op(0).op(0).op(0).b + "ab"), "truncated pickle");
  EXPECT_LOAD_ERROR(run(Pickle().str("\xff").stop()), "not valid UTF-8");
  EXPECT_LOAD_ERROR(run(Pickle().op(0x8a).op(9).b + std::string(9, '\0') + "."), "does not fit in 64 bits");
  EXPECT_LOAD_ERROR(run(Pickle().op('}').real(1.0).integer(1).op('s').stop()), "dict key of type float");
  EXPECT_LOAD_ERROR(run(Pickle().op('}').mark().str("k").op('N').str("k").op('N').op('u').stop()),
                    "duplicate dict key 'k'");
  EXPECT_LOAD_ERROR(run(Pickle().op(']').str("k").integer(1).op('s').stop()),
                    "SETITEM target: expected dict, found list");
  EXPECT_LOAD_ERROR(run(Pickle().global("torch", "FloatStorage").op(')').op('R').stop()), "cannot be called");
  EXPECT_LOAD_ERROR(run(Pickle().global("collections", "OrderedDict").integer(1).op(0x85).op('R').stop()),
                    "OrderedDict called with arguments");
  EXPECT_LOAD_ERROR(run(Pickle().integer(1).op(')').op('R').stop()), "REDUCE on a int");
  EXPECT_LOAD_ERROR(run(Pickle().op(']').op('}').op('b').stop()), "BUILD on a list");
  EXPECT_LOAD_ERROR(run(Pickle().global("torch", "FloatStorage").stop()),
                    "holds the global 'torch.FloatStorage'");
  // A list that contains itself; a deep nest; a tree that doubles at every level.
  EXPECT_LOAD_ERROR(run(Pickle().op(']').op('q').op(0).op('h').op(0).op('a').stop()), "recursive object");
  Pickle deep;
  for (int k = 0; k < 300; ++k) deep.op(']');
  for (int k = 0; k < 299; ++k) deep.op('a');
  EXPECT_LOAD_ERROR(run(deep.stop()), "nested deeper than");
  Pickle wide;
  wide.integer(0);
  for (int k = 0; k < 40; ++k) wide.op('q').op(0).op('h').op(0).op(0x86);
  EXPECT_LOAD_ERROR(run(wide.stop()), "shared references expand");
}

TEST(TorchPickle, TensorErrors) {
  auto one = [](const std::string& type, int64_t numel, int64_t off, std::vector<int64_t> shape,
                std::vector<int64_t> stride, const std::string& data) {
    return torch_zip(Pickle().tensor(type, "0", numel, off, shape, stride).stop(), {{"0", data}});
  };
  const std::string d8 = f32_bytes({1, 2, 3, 4, 5, 6, 7, 8});
  EXPECT_NO_THROW(load(one("FloatStorage", 8, 0, {2, 4}, {4, 1}, d8)));
  EXPECT_LOAD_ERROR(one("FloatStorage", 8, 1, {2, 4}, {4, 1}, d8),
                    "reaches element 8 of storage 'a/data/0' with 8");
  EXPECT_LOAD_ERROR(one("FloatStorage", 8, 0, {3, 3}, {3, 1}, d8), "reaches element 8");
  EXPECT_LOAD_ERROR(one("FloatStorage", 8, 0, {2, 2}, {1, 7}, d8), "reaches element 8");
  EXPECT_LOAD_ERROR(one("FloatStorage", 8, 9, {0}, {1}, d8), "reaches element");
  EXPECT_LOAD_ERROR(one("FloatStorage", 8, 0, {int64_t(1) << 62, 8}, {1, 1}, d8), "tensor size overflows");
  EXPECT_LOAD_ERROR(one("FloatStorage", 8, 0, {3}, {int64_t(1) << 62}, d8), "tensor extent overflows");
  EXPECT_LOAD_ERROR(one("FloatStorage", 8, 0, {2}, {1, 1}, d8), "1 sizes but 2 strides");
  EXPECT_LOAD_ERROR(one("FloatStorage", 8, 0, {-1}, {1}, d8), "negative value -1");
  EXPECT_LOAD_ERROR(one("FloatStorage", 9, 0, {2}, {1}, d8),
                    "9 elements of 4 bytes do not match its 32-byte");
  EXPECT_LOAD_ERROR(one("DoubleStorage", 8, 0, {2}, {1}, d8), "8 elements of 8 bytes");
  EXPECT_LOAD_ERROR(one("FloatStorage", -1, 0, {2}, {1}, d8), "do not match");
  EXPECT_LOAD_ERROR(one("ByteStorage", 8, 0, {2}, {1}, d8), "global 'torch.ByteStorage' is not allowed");
  EXPECT_LOAD_ERROR(torch_zip(Pickle().tensor("FloatStorage", "9", 2, 0, {2}, {1}).stop()),
                    "storage '9' has no zip entry 'a/data/9'");
  // A stride-0 view may not expand a tiny storage into a huge tensor.
  EXPECT_LOAD_ERROR(one("FloatStorage", 8, 0, {int64_t(1) << 40}, {0}, d8),
                    "tensors expand to more elements");
  // Two references to one key with different sizes; a persistent id that is not a storage.
  Pickle two;
  two.mark().tensor("FloatStorage", "0", 8, 0, {2}, {1}).tensor("DoubleStorage", "0", 4, 0, {2}, {1}).op('t');
  EXPECT_LOAD_ERROR(torch_zip(two.stop(), {{"0", d8}}), "two different types or sizes");
  EXPECT_LOAD_ERROR(torch_zip(Pickle().mark().str("module").op('t').op('Q').stop()), "expected a 5-tuple");
  EXPECT_LOAD_ERROR(torch_zip(Pickle().str("x").op('Q').stop()), "persistent id: expected tuple, found str");
  Pickle badparam;
  badparam.parameter_of_next().integer(1).op(0x89).ordered_dict().op(0x87).op('R');
  EXPECT_LOAD_ERROR(torch_zip(badparam.stop()), "parameter data: expected tensor, found int");
}

// Every single-byte change of a small file (CRC off, so the changes reach the pickle VM) loads or gives
// one fq::Error line: nothing else escapes, nothing crashes.
TEST(TorchPickle, ByteFlipsNeverCrash) {
  const std::string a = small_file();
  size_t accepted = 0, rejected = 0;
  for (size_t i = 0; i < a.size(); ++i)
    for (int delta : {1, 0x80, 0xff}) {
      std::string m = a;
      m[i] = static_cast<char>(static_cast<uint8_t>(m[i]) ^ delta);
      try {
        load(m, false);
        ++accepted;
      } catch (const Error& e) {
        ASSERT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
        ++rejected;
      }
    }
  EXPECT_GT(rejected, 0u);
  EXPECT_GT(accepted, 0u);  // e.g. flips inside tensor data
}

}  // namespace
}  // namespace fq
