// safetensors: mmap reader with strict validation and an atomic writer.
// Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets:[b,e]},
// "__metadata__": {str: str}}, then the data section; offsets are relative to the data section.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/fs.h"

namespace fq {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets within the data section
  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

std::string shape_str(const std::vector<int64_t>& shape);

class SafeTensors {
 public:
  // Opens and validates: header length within the file, valid JSON, known dtypes, offsets inside the data
  // section, sorted and non-overlapping, and shape x dtype size == byte length. Throws fq::Error naming the
  // file and the tensor.
  explicit SafeTensors(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const;
  const TensorInfo& get(const std::string& name) const;  // throws "missing tensor"
  const uint8_t* data(const TensorInfo& t) const { return data_ + t.begin; }
  // Converts any float or integer dtype to fp32.
  std::vector<float> to_f32(const TensorInfo& t) const;

 private:
  MappedFile file_;
  const uint8_t* data_ = nullptr;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// One or several safetensors files seen as one name space: model.safetensors, or the shards named by
// model.safetensors.index.json (weight_map), or every *.safetensors in a directory.
class TensorStore {
 public:
  static TensorStore open_dir(const std::string& dir);
  const TensorInfo* find(const std::string& name, const SafeTensors** file = nullptr) const;
  // Reads a tensor as fp32 after checking its shape; errors name the file and tensor.
  std::vector<float> read_f32(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  bool has(const std::string& name) const { return find(name) != nullptr; }
  std::vector<std::pair<const SafeTensors*, const TensorInfo*>> all() const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafeTensors>> files_;
  std::map<std::string, std::pair<size_t, size_t>> index_;  // name -> (file, tensor)
};

// Collects tensors (copied) and writes one safetensors file atomically. Tensors are written in insertion
// order, 8-byte aligned header as the reference implementation does.
class SafeTensorsWriter {
 public:
  void add(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data, size_t nbytes);
  void add_f32(const std::string& name, std::vector<int64_t> shape, const float* data);
  // Stores fp32 data converted to dtype (F32, F16 or BF16).
  void add_from_f32(const std::string& name, DType dtype, std::vector<int64_t> shape, const float* data);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  void write(const std::string& path) const;
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace fq
