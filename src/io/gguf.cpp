#include "io/gguf.h"

#include <cstring>
#include <limits>

#include "core/dtype.h"
#include "flatquant/error.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader assumes a little-endian host"
#endif

namespace fq {

namespace {

constexpr uint64_t kMaxDims = 4;  // GGML_MAX_DIMS

// ggml_type id -> {name, block, type_size}; ids 4, 5, 31..33, 36..38 were removed from ggml.
const GgmlTypeInfo kTypes[] = {
    {"F32", 1, 4},      {"F16", 1, 2},        {"Q4_0", 32, 18},    {"Q4_1", 32, 20},     {nullptr, 0, 0},
    {nullptr, 0, 0},    {"Q5_0", 32, 22},     {"Q5_1", 32, 24},    {"Q8_0", 32, 34},     {"Q8_1", 32, 36},
    {"Q2_K", 256, 84},  {"Q3_K", 256, 110},   {"Q4_K", 256, 144},  {"Q5_K", 256, 176},   {"Q6_K", 256, 210},
    {"Q8_K", 256, 292}, {"IQ2_XXS", 256, 66}, {"IQ2_XS", 256, 74}, {"IQ3_XXS", 256, 98}, {"IQ1_S", 256, 50},
    {"IQ4_NL", 32, 18}, {"IQ3_S", 256, 110},  {"IQ2_S", 256, 82},  {"IQ4_XS", 256, 136}, {"I8", 1, 1},
    {"I16", 1, 2},      {"I32", 1, 4},        {"I64", 1, 8},       {"F64", 1, 8},        {"IQ1_M", 256, 56},
    {"BF16", 1, 2},     {nullptr, 0, 0},      {nullptr, 0, 0},     {nullptr, 0, 0},      {"TQ1_0", 256, 54},
    {"TQ2_0", 256, 66}, {nullptr, 0, 0},      {nullptr, 0, 0},     {nullptr, 0, 0},      {"MXFP4", 32, 17},
};
constexpr uint32_t kTypeF32 = 0, kTypeF16 = 1, kTypeQ4_0 = 2, kTypeQ4_1 = 3, kTypeQ8_0 = 8, kTypeBF16 = 30;

// Bounds-checked little-endian cursor over the mapped header. Every read names what it was reading so
// that a truncated file says where it ended.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* data, size_t size) : path_(path), d_(data), n_(size) {}
  size_t pos() const { return p_; }
  size_t remaining() const { return n_ - p_; }
  void need(uint64_t k, const std::string& what) const {
    if (k > remaining())
      fail("{}: truncated GGUF file while reading {} (need {} bytes at offset {}, file has {})", path_, what,
           k, p_, n_);
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, d_ + p_, sizeof(T));
    p_ += sizeof(T);
    return v;
  }
  std::string str(const std::string& what) {
    const uint64_t len = read<uint64_t>(what);
    need(len, what);
    std::string s(reinterpret_cast<const char*>(d_ + p_), (size_t)len);
    p_ += (size_t)len;
    return s;
  }
  const std::string& path() const { return path_; }

 private:
  const std::string& path_;
  const uint8_t* d_;
  size_t n_, p_ = 0;
};

bool is_int_type(GgufType t) {
  switch (t) {
    case GgufType::U8:
    case GgufType::I8:
    case GgufType::U16:
    case GgufType::I16:
    case GgufType::U32:
    case GgufType::I32:
    case GgufType::U64:
    case GgufType::I64:
    case GgufType::BOOL:
      return true;
    default:
      return false;
  }
}

// Minimum bytes one element of type t occupies in the file (for "count absurd vs file size" checks).
uint64_t min_elem_size(GgufType t) {
  switch (t) {
    case GgufType::U8:
    case GgufType::I8:
    case GgufType::BOOL:
      return 1;
    case GgufType::U16:
    case GgufType::I16:
      return 2;
    case GgufType::U32:
    case GgufType::I32:
    case GgufType::F32:
      return 4;
    case GgufType::U64:
    case GgufType::I64:
    case GgufType::F64:
    case GgufType::STRING:
      return 8;
    case GgufType::ARRAY:
      return 12;
  }
  return 1;
}

bool valid_type(uint32_t t) {
  return t <= (uint32_t)GgufType::F64;
}

// Reads one scalar of type t; integers go to *i, floats to *f, strings to *s.
void read_scalar(Cursor& c, GgufType t, const std::string& what, int64_t* i, double* f, std::string* s) {
  switch (t) {
    case GgufType::U8:
      *i = c.read<uint8_t>(what);
      return;
    case GgufType::I8:
      *i = c.read<int8_t>(what);
      return;
    case GgufType::U16:
      *i = c.read<uint16_t>(what);
      return;
    case GgufType::I16:
      *i = c.read<int16_t>(what);
      return;
    case GgufType::U32:
      *i = c.read<uint32_t>(what);
      return;
    case GgufType::I32:
      *i = c.read<int32_t>(what);
      return;
    case GgufType::I64:
      *i = c.read<int64_t>(what);
      return;
    case GgufType::U64: {
      const uint64_t u = c.read<uint64_t>(what);
      if (u > (uint64_t)std::numeric_limits<int64_t>::max())
        fail("{}: {}: u64 value {} is out of range", c.path(), what, u);
      *i = (int64_t)u;
      return;
    }
    case GgufType::BOOL: {
      const uint8_t b = c.read<uint8_t>(what);
      if (b > 1) fail("{}: {}: bool value {} is neither 0 nor 1", c.path(), what, b);
      *i = b;
      return;
    }
    case GgufType::F32:
      *f = c.read<float>(what);
      return;
    case GgufType::F64:
      *f = c.read<double>(what);
      return;
    case GgufType::STRING:
      *s = c.str(what);
      return;
    case GgufType::ARRAY:
      break;
  }
  FQ_ASSERT(false);
}

// Reads (and validates) an array body; keeps elements of scalar arrays, skips nested arrays.
void read_array(Cursor& c, GgufValue& v, const std::string& what, int depth) {
  const uint32_t at = c.read<uint32_t>(what);
  if (!valid_type(at)) fail("{}: {}: unknown array element type {}", c.path(), what, at);
  v.arr_type = (GgufType)at;
  v.arr_len = c.read<uint64_t>(what);
  if (v.arr_len > c.remaining() / min_elem_size(v.arr_type))
    fail("{}: {}: array length {} cannot fit in the {} bytes left in the file", c.path(), what, v.arr_len,
         c.remaining());
  if (v.arr_type == GgufType::ARRAY) {
    if (depth > 4) fail("{}: {}: arrays nested too deeply", c.path(), what);
    for (uint64_t k = 0; k < v.arr_len; ++k) {
      GgufValue inner;
      read_array(c, inner, what, depth + 1);
    }
    return;
  }
  int64_t iv = 0;
  double fv = 0;
  std::string sv;
  if (v.arr_type == GgufType::STRING)
    v.arr_s.reserve(v.arr_len);
  else if (is_int_type(v.arr_type))
    v.arr_i.reserve(v.arr_len);
  else
    v.arr_f.reserve(v.arr_len);
  for (uint64_t k = 0; k < v.arr_len; ++k) {
    read_scalar(c, v.arr_type, what, &iv, &fv, &sv);
    if (v.arr_type == GgufType::STRING)
      v.arr_s.push_back(std::move(sv));
    else if (is_int_type(v.arr_type))
      v.arr_i.push_back(iv);
    else
      v.arr_f.push_back(fv);
  }
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  static const char* names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                "bool", "string", "array", "u64", "i64", "f64"};
  return valid_type((uint32_t)t) ? names[(uint32_t)t] : "?";
}

bool GgufValue::is_int() const {
  return is_int_type(type);
}
bool GgufValue::is_float() const {
  return type == GgufType::F32 || type == GgufType::F64;
}

const GgmlTypeInfo* ggml_type_info(uint32_t type) {
  if (type >= sizeof(kTypes) / sizeof(kTypes[0])) return nullptr;
  return kTypes[type].name ? &kTypes[type] : nullptr;
}

bool ggml_type_dequantizable(uint32_t t) {
  return t == kTypeF32 || t == kTypeF16 || t == kTypeBF16 || t == kTypeQ8_0 || t == kTypeQ4_0 ||
         t == kTypeQ4_1;
}

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // overflow excluded at parse time
  return n;
}

std::vector<int64_t> GgufTensor::hf_shape() const {
  return std::vector<int64_t>(ne.rbegin(), ne.rend());
}

std::string GgufTensor::type_name() const {
  const GgmlTypeInfo* ti = ggml_type_info(type);
  return ti ? ti->name : fmt::format("type {}", type);
}

GgufFile::GgufFile(const std::string& path) : file_(path) {
  const std::string& p = file_.path();
  Cursor c(p, file_.data(), file_.size());
  const uint32_t magic = c.read<uint32_t>("the magic");
  if (magic != 0x46554747u)  // "GGUF"
    fail("{}: not a GGUF file (bad magic 0x{:08x}, expected 0x46554747 \"GGUF\")", p, magic);
  version_ = c.read<uint32_t>("the version");
  if (version_ != 2 && version_ != 3) fail("{}: unsupported GGUF version {} (expected 2 or 3)", p, version_);
  const uint64_t n_tensors = c.read<uint64_t>("the tensor count");
  const uint64_t n_kv = c.read<uint64_t>("the metadata count");
  // A key-value pair takes >= 8 (key length) + 4 (type) + 1 bytes; a tensor info >= 8 + 4 + 8 + 4 + 8.
  if (n_kv > c.remaining() / 13)
    fail("{}: metadata count {} is absurd for a file of {} bytes (corrupt or truncated)", p, n_kv,
         file_.size());

  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.str(fmt::format("metadata key #{}", k));
    const std::string what = fmt::format("metadata '{}'", key);
    const uint32_t t = c.read<uint32_t>(what);
    if (!valid_type(t)) fail("{}: {}: unknown value type {}", p, what, t);
    GgufValue v;
    v.type = (GgufType)t;
    if (v.type == GgufType::ARRAY)
      read_array(c, v, what, 0);
    else
      read_scalar(c, v.type, what, &v.i, &v.f, &v.s);
    if (kv_.count(key)) fail("{}: {}: duplicate key", p, what);
    kv_.emplace(std::move(key), std::move(v));
  }
  if (const GgufValue* a = find("general.alignment")) {
    if (!a->is_int() || a->i <= 0 || (a->i & (a->i - 1)) != 0)
      fail("{}: metadata 'general.alignment': expected a positive power of two, found {}", p,
           a->is_int() ? std::to_string(a->i) : gguf_type_name(a->type));
    alignment_ = (uint64_t)a->i;
  }

  if (n_tensors > c.remaining() / 32)
    fail("{}: tensor count {} is absurd for a file of {} bytes (corrupt or truncated)", p, n_tensors,
         file_.size());
  tensors_.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    t.name = c.str(fmt::format("tensor info #{}", k));
    const std::string what = fmt::format("tensor '{}'", t.name);
    const uint32_t n_dims = c.read<uint32_t>(what);
    if (n_dims == 0 || n_dims > kMaxDims)
      fail("{}: {}: {} dimensions (expected 1..{})", p, what, n_dims, kMaxDims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = c.read<uint64_t>(what);
      if (ne == 0 || ne > (uint64_t)std::numeric_limits<int64_t>::max())
        fail("{}: {}: dimension {} is {} (expected >= 1)", p, what, d, ne);
      if (numel > (uint64_t)std::numeric_limits<int64_t>::max() / ne)
        fail("{}: {}: element count overflows (dimension {} = {})", p, what, d, ne);
      numel *= ne;
      t.ne.push_back((int64_t)ne);
    }
    t.type = c.read<uint32_t>(what);
    const GgmlTypeInfo* ti = ggml_type_info(t.type);
    if (!ti) fail("{}: {}: unknown ggml type {}", p, what, t.type);
    t.offset = c.read<uint64_t>(what);
    if ((uint64_t)t.ne[0] % ti->block != 0)
      fail("{}: {}: row length {} is not a multiple of the {} block size {}", p, what, t.ne[0], ti->name,
           ti->block);
    const uint64_t blocks = numel / ti->block;
    if (blocks > std::numeric_limits<uint64_t>::max() / ti->type_size)
      fail("{}: {}: byte size overflows", p, what);
    t.nbytes = blocks * ti->type_size;
    if (t.offset % alignment_ != 0)
      fail("{}: {}: data offset {} is not a multiple of the alignment {}", p, what, t.offset, alignment_);
    if (index_.count(t.name)) fail("{}: {}: duplicate tensor name", p, what);
    index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  data_offset_ = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  // A file with no tensors may end right after the header (without padding).
  const uint64_t data_size = data_offset_ <= file_.size() ? file_.size() - data_offset_ : 0;
  if (!tensors_.empty() && data_offset_ > file_.size())
    fail("{}: truncated GGUF file: the data section starts at {} but the file has {} bytes", p, data_offset_,
         file_.size());
  for (const GgufTensor& t : tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      fail("{}: tensor '{}': data [{}, {}) lies beyond the end of the file (data section has {} bytes)", p,
           t.name, t.offset, t.offset + t.nbytes, data_size);
  }
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

int64_t GgufFile::get_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("{}: metadata '{}': missing", path(), key);
  if (!v->is_int())
    fail("{}: metadata '{}': expected an integer, found {}", path(), key, gguf_type_name(v->type));
  return v->i;
}

int64_t GgufFile::get_int(const std::string& key, int64_t def) const {
  return find(key) ? get_int(key) : def;
}

double GgufFile::get_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("{}: metadata '{}': missing", path(), key);
  if (v->is_float()) return v->f;
  if (v->is_int() && v->type != GgufType::BOOL) return (double)v->i;
  fail("{}: metadata '{}': expected a number, found {}", path(), key, gguf_type_name(v->type));
}

double GgufFile::get_float(const std::string& key, double def) const {
  return find(key) ? get_float(key) : def;
}

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("{}: metadata '{}': missing", path(), key);
  if (v->type != GgufType::STRING)
    fail("{}: metadata '{}': expected a string, found {}", path(), key, gguf_type_name(v->type));
  return v->s;
}

std::string GgufFile::get_string(const std::string& key, const std::string& def) const {
  return find(key) ? get_string(key) : def;
}

bool GgufFile::get_bool(const std::string& key, bool def) const {
  const GgufValue* v = find(key);
  if (!v) return def;
  if (v->type != GgufType::BOOL)
    fail("{}: metadata '{}': expected a bool, found {}", path(), key, gguf_type_name(v->type));
  return v->i != 0;
}

const std::vector<std::string>& GgufFile::get_string_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("{}: metadata '{}': missing", path(), key);
  if (v->type != GgufType::ARRAY || v->arr_type != GgufType::STRING)
    fail("{}: metadata '{}': expected an array of strings, found {}{}", path(), key, gguf_type_name(v->type),
         v->type == GgufType::ARRAY ? fmt::format(" of {}", gguf_type_name(v->arr_type)) : "");
  return v->arr_s;
}

const GgufTensor* GgufFile::find_tensor(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::get_tensor(const std::string& name) const {
  const GgufTensor* t = find_tensor(name);
  if (!t) fail("{}: missing tensor '{}'", path(), name);
  return *t;
}

std::vector<float> GgufFile::read_f32(const GgufTensor& t) const {
  if (!ggml_type_dequantizable(t.type))
    fail("{}: tensor '{}': ggml type {} cannot be converted (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
         path(), t.name, t.type_name());
  std::vector<float> out((size_t)t.numel());
  const bool ok = ggml_dequantize(t.type, tensor_data(t), t.numel(), out.data());
  FQ_ASSERT(ok);
  return out;
}

bool ggml_dequantize(uint32_t type, const uint8_t* src, int64_t n, float* dst) {
  auto rd16 = [](const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return h;
  };
  switch (type) {
    case kTypeF32:
      std::memcpy(dst, src, (size_t)n * 4);
      return true;
    case kTypeF16:
      for (int64_t k = 0; k < n; ++k) dst[k] = f16_to_f32(rd16(src + 2 * k));
      return true;
    case kTypeBF16:
      for (int64_t k = 0; k < n; ++k) dst[k] = bf16_to_f32(rd16(src + 2 * k));
      return true;
    case kTypeQ8_0:
      for (int64_t b = 0; b < n / 32; ++b) {
        const uint8_t* blk = src + b * 34;
        const float d = f16_to_f32(rd16(blk));
        const int8_t* qs = reinterpret_cast<const int8_t*>(blk + 2);
        for (int j = 0; j < 32; ++j) dst[b * 32 + j] = (float)qs[j] * d;
      }
      return true;
    case kTypeQ4_0:
      for (int64_t b = 0; b < n / 32; ++b) {
        const uint8_t* blk = src + b * 18;
        const float d = f16_to_f32(rd16(blk));
        const uint8_t* qs = blk + 2;
        for (int j = 0; j < 16; ++j) {
          dst[b * 32 + j] = (float)((int)(qs[j] & 0x0f) - 8) * d;
          dst[b * 32 + j + 16] = (float)((int)(qs[j] >> 4) - 8) * d;
        }
      }
      return true;
    case kTypeQ4_1:
      for (int64_t b = 0; b < n / 32; ++b) {
        const uint8_t* blk = src + b * 20;
        const float d = f16_to_f32(rd16(blk));
        const float m = f16_to_f32(rd16(blk + 2));
        const uint8_t* qs = blk + 4;
        for (int j = 0; j < 16; ++j) {
          // Two roundings (product, then sum), as ggml's reference dequantize_row_q4_1 computes it.
          const float lo = (float)(qs[j] & 0x0f) * d;
          const float hi = (float)(qs[j] >> 4) * d;
          dst[b * 32 + j] = lo + m;
          dst[b * 32 + j + 16] = hi + m;
        }
      }
      return true;
    default:
      return false;
  }
}

}  // namespace fq
