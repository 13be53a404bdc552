// GGUF reader (llama.cpp's model file), versions 2 and 3, little-endian, with strict validation.
//
// Layout: "GGUF" u32 version, u64 n_tensors, u64 n_kv; n_kv x {string key, u32 type, value};
// n_tensors x {string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset}; padding to
// general.alignment (default 32); the data section. Strings are u64 length + bytes (no NUL). Offsets are
// relative to the data section and multiples of the alignment. ne[0] is the fastest-varying dimension
// (the row length), so an HF matrix [out, in] is stored with ne = [in, out].
//
// Every count and offset is checked against the file size before use; errors are one line naming the
// file and the key or tensor ("m.gguf: tensor 'blk.0.attn_q.weight': data [a, b) beyond the end of the
// file").
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/fs.h"

namespace fq {

// Metadata value types (gguf_type).
enum class GgufType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};
const char* gguf_type_name(GgufType t);

// One metadata value. Scalars: integers and bools in `i` (u64 beyond INT64_MAX is rejected), floats in
// `f`, strings in `s`. Arrays: elements in `arr_i`, `arr_f` or `arr_s` by element type (`arr_type`);
// arrays of arrays are validated and skipped (only `arr_len` is kept).
struct GgufValue {
  GgufType type = GgufType::U8;
  GgufType arr_type = GgufType::U8;
  int64_t i = 0;
  double f = 0.0;
  std::string s;
  uint64_t arr_len = 0;
  std::vector<int64_t> arr_i;
  std::vector<double> arr_f;
  std::vector<std::string> arr_s;
  bool is_int() const;    // integer or bool scalar
  bool is_float() const;  // F32 / F64 scalar
};

// ggml tensor element types we know the storage size of. Only some can be dequantized (see
// ggml_type_dequantizable).
struct GgmlTypeInfo {
  const char* name;
  uint32_t block;      // elements per block
  uint32_t type_size;  // bytes per block
};
// nullptr for ids that are not ggml types (or were removed from ggml).
const GgmlTypeInfo* ggml_type_info(uint32_t type);
bool ggml_type_dequantizable(uint32_t type);

struct GgufTensor {
  std::string name;
  std::vector<int64_t> ne;  // fastest-first, 1..4 dims
  uint32_t type = 0;        // ggml_type
  uint64_t offset = 0;      // relative to the data section
  uint64_t nbytes = 0;
  int64_t numel() const;
  // HF order (slowest-first): ne reversed.
  std::vector<int64_t> hf_shape() const;
  std::string type_name() const;
};

class GgufFile {
 public:
  // Maps and validates the whole header; tensor data is not touched until read.
  explicit GgufFile(const std::string& path);

  const std::string& path() const { return file_.path(); }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }

  const GgufValue* find(const std::string& key) const;
  // Typed getters: throw "<file>: metadata 'key': missing" / "expected an integer, found string".
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t def) const;
  double get_float(const std::string& key) const;  // accepts integer values too
  double get_float(const std::string& key, double def) const;
  std::string get_string(const std::string& key) const;
  std::string get_string(const std::string& key, const std::string& def) const;
  bool get_bool(const std::string& key, bool def) const;
  const std::vector<std::string>& get_string_array(const std::string& key) const;

  const GgufTensor* find_tensor(const std::string& name) const;
  const GgufTensor& get_tensor(const std::string& name) const;  // throws "missing tensor"
  const uint8_t* tensor_data(const GgufTensor& t) const { return file_.data() + data_offset_ + t.offset; }
  // Dequantizes to fp32 in ggml element order (ne[0] fastest == HF row-major of hf_shape()).
  // Throws naming the tensor and its type for types we cannot dequantize.
  std::vector<float> read_f32(const GgufTensor& t) const;

 private:
  MappedFile file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> index_;
};

// Dequantizes `n` elements (a multiple of the type's block size) of ggml type `type` from `src` into
// `dst`. Exact ggml semantics (block 32, fp16 scales):
//   Q4_0: {f16 d; u8 qs[16]}         x[j] = d*((qs[j] & 15) - 8), x[j+16] = d*((qs[j] >> 4) - 8)
//   Q4_1: {f16 d; f16 m; u8 qs[16]}  x[j] = d*(qs[j] & 15) + m,   x[j+16] = d*(qs[j] >> 4) + m
//   Q8_0: {f16 d; i8 qs[32]}         x[j] = d*qs[j]
// F32, F16, BF16 are converted exactly. Returns false for types it does not handle.
bool ggml_dequantize(uint32_t type, const uint8_t* src, int64_t n, float* dst);

}  // namespace fq
