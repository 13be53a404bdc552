// A strict, LibTorch-free reader for torch.save files in the zip format (PyTorch >= 1.6 default), enough
// for the original FlatQuant's flat_matrices.pth ({layer: {name: nn.Parameter}}) and plain state dicts.
// The zip must be uncompressed (torch.save writes STORED entries); data.pkl is run on a small pickle VM
// that knows only the opcodes torch.save emits and a fixed list of globals (docs/torch_pickle.md).
// Every error is one fq::Error line "<path>: <what> (...)"; malformed input never crashes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dtype.h"

namespace fq {

// A tensor as torch.save described it, materialized contiguous (row-major over `shape`).
struct TorchTensor {
  DType dtype = DType::F32;  // the storage's element type: F32, F64, F16, BF16, I64 or I32
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // as stored (elements), before materialization
  int64_t storage_offset = 0;    // elements
  std::string storage_key;       // "<archive>/data/<key>"
  // Floating dtypes fill `f32` (F64 rounded to nearest), integer dtypes fill `i64`; the other stays empty.
  std::vector<float> f32;
  std::vector<int64_t> i64;

  int64_t numel() const;
  bool is_floating() const {
    return dtype == DType::F32 || dtype == DType::F64 || dtype == DType::F16 || dtype == DType::BF16;
  }
};

// The unpickled object tree. OrderedDict reads as Dict; nn.Parameter as Tensor.
class TorchValue {
 public:
  enum class Kind { None, Bool, Int, Float, String, List, Tuple, Dict, Tensor };
  using Entry = std::pair<TorchValue, TorchValue>;

  TorchValue() = default;
  static TorchValue none() { return TorchValue(); }
  static TorchValue boolean(bool b);
  static TorchValue integer(int64_t i);
  static TorchValue real(double f);
  static TorchValue string(std::string s);
  static TorchValue list(std::vector<TorchValue> items);
  static TorchValue tuple(std::vector<TorchValue> items);
  static TorchValue dict(std::vector<Entry> entries);  // keys: Int or String, distinct
  static TorchValue tensor(std::shared_ptr<const TorchTensor> t);

  Kind kind() const { return kind_; }
  bool is(Kind k) const { return kind_ == k; }
  const char* kind_name() const { return kind_name(kind_); }
  static const char* kind_name(Kind k);

  // Accessors throw fq::Error (naming the kind found) on a kind mismatch.
  bool as_bool() const;
  int64_t as_int() const;
  double as_float() const;
  const std::string& as_string() const;
  const std::vector<TorchValue>& items() const;  // List or Tuple
  const std::vector<Entry>& entries() const;     // Dict, in file order
  const TorchTensor& as_tensor() const;
  // Dict lookups; nullptr when absent (or when this is not a Dict).
  const TorchValue* find(std::string_view key) const;
  const TorchValue* find(int64_t key) const;

 private:
  Kind kind_ = Kind::None;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;
  std::vector<TorchValue> items_;
  std::vector<Entry> entries_;
  std::shared_ptr<const TorchTensor> t_;
};

struct TorchLoadOptions {
  // Check each zip entry's CRC-32 (torch.save writes them). Fuzzers turn it off to reach the pickle VM.
  bool verify_crc = true;
};

// Reads a torch.save zip file. `name` (the path) prefixes every error.
TorchValue load_torch_file(const std::string& path, const TorchLoadOptions& opts = {});
TorchValue load_torch_bytes(const uint8_t* data, size_t size, const std::string& name,
                            const TorchLoadOptions& opts = {});

// CRC-32 (IEEE, as zip uses); exposed for tests that build archives.
uint32_t zip_crc32(const void* data, size_t size);

}  // namespace fq
