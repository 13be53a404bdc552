// A tiny GGUF writer for tests: metadata of the common types and tensors with raw bytes.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/fs.h"

namespace fq::test {

class GgufBuilder {
 public:
  uint32_t version = 3;
  uint64_t alignment = 32;
  // Overrides for corrupt files.
  int64_t n_kv_override = -1, n_tensors_override = -1;

  void kv_u32(const std::string& k, uint32_t v) {
    key(k, 4);
    put(v);
    ++n_kv_;
  }
  void kv_i32(const std::string& k, int32_t v) {
    key(k, 5);
    put(v);
    ++n_kv_;
  }
  void kv_f32(const std::string& k, float v) {
    key(k, 6);
    put(v);
    ++n_kv_;
  }
  void kv_bool(const std::string& k, bool v) {
    key(k, 7);
    put((uint8_t)v);
    ++n_kv_;
  }
  void kv_str(const std::string& k, const std::string& v) {
    key(k, 8);
    str(kv_, v);
    ++n_kv_;
  }
  void kv_strs(const std::string& k, const std::vector<std::string>& v) {
    key(k, 9);
    put((uint32_t)8);
    put((uint64_t)v.size());
    for (const auto& s : v) str(kv_, s);
    ++n_kv_;
  }
  void kv_i32s(const std::string& k, const std::vector<int32_t>& v) {
    key(k, 9);
    put((uint32_t)5);
    put((uint64_t)v.size());
    for (int32_t x : v) put(x);
    ++n_kv_;
  }
  void kv_f32s(const std::string& k, const std::vector<float>& v) {
    key(k, 9);
    put((uint32_t)6);
    put((uint64_t)v.size());
    for (float x : v) put(x);
    ++n_kv_;
  }

  // Adds a tensor; its data goes at the next aligned offset unless `offset` is given.
  void tensor(const std::string& name, const std::vector<uint64_t>& ne, uint32_t type,
              const std::string& bytes, int64_t offset = -1) {
    const uint64_t off =
        offset >= 0 ? (uint64_t)offset : (data_.size() + alignment - 1) / alignment * alignment;
    if (offset < 0) {
      data_.resize(off, '\0');
      data_ += bytes;
    }
    str(ti_, name);
    append(ti_, (uint32_t)ne.size());
    for (uint64_t d : ne) append(ti_, d);
    append(ti_, type);
    append(ti_, off);
    ++n_tensors_;
  }
  void tensor_f32(const std::string& name, const std::vector<uint64_t>& ne, const std::vector<float>& v) {
    tensor(name, ne, 0, std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4));
  }

  std::string build() const {
    std::string out = "GGUF";
    append(out, version);
    append(out, n_tensors_override >= 0 ? (uint64_t)n_tensors_override : n_tensors_);
    append(out, n_kv_override >= 0 ? (uint64_t)n_kv_override : n_kv_);
    out += kv_;
    out += ti_;
    out.resize((out.size() + alignment - 1) / alignment * alignment, '\0');
    out += data_;
    return out;
  }
  void write(const std::string& path) const { write_file_atomic(path, build()); }

 private:
  template <typename T>
  static void append(std::string& s, T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    s.append(b, sizeof(T));
  }
  template <typename T>
  void put(T v) {
    append(kv_, v);
  }
  static void str(std::string& s, const std::string& v) {
    append(s, (uint64_t)v.size());
    s += v;
  }
  void key(const std::string& k, uint32_t type) {
    str(kv_, k);
    put(type);
  }
  std::string kv_, ti_, data_;
  uint64_t n_kv_ = 0, n_tensors_ = 0;
};

// Raw little-endian bytes of a list of u16 values (f16 / bf16 bit patterns).
inline std::string u16_bytes(const std::vector<uint16_t>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 2);
}

}  // namespace fq::test
