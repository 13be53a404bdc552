// safetensors reader (mmap + strict header validation), multi-file TensorStore, and atomic writer.
// Validation follows the format's rules (see docs/safetensors.md): the header must be a JSON object of
// {name: {dtype, shape, data_offsets}} plus an optional "__metadata__" str->str map; every tensor's byte
// range must lie inside the data section, ranges must not overlap, and shape x dtype size must equal the
// range length. Gaps between ranges are tolerated (some writers leave them) although the spec forbids them.
#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/json_guard.h"
#include "flatquant/error.h"

namespace fq {

using nlohmann::json;

namespace {

// Strips nlohmann's "[json.exception.parse_error.101] " prefix so the message reads as one plain line.
std::string json_error_text(const std::exception& e) {
  std::string s = e.what();
  const auto p = s.find("] ");
  if (!s.empty() && s[0] == '[' && p != std::string::npos) s = s.substr(p + 2);
  return s;
}

// numel of `shape` or false on overflow of int64 (a corrupt header can hold any integer).
bool checked_numel(const std::vector<int64_t>& shape, int64_t* out) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) return false;
    n *= d;
  }
  *out = n;
  return true;
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

TensorInfo parse_tensor_entry(const std::string& path, const std::string& name, const json& e,
                              uint64_t data_size) {
  auto bad = [&](const std::string& what) -> Error {
    return Error(fmt::format("{}: tensor '{}': {}", path, name, what));
  };
  if (!e.is_object()) throw bad(fmt::format("header entry is not an object (found {})", e.type_name()));
  TensorInfo t;
  t.name = name;

  const auto dt = e.find("dtype");
  if (dt == e.end()) throw bad("missing 'dtype'");
  if (!dt->is_string()) throw bad(fmt::format("'dtype' must be a string (found {})", dt->type_name()));
  const std::string dts = dt->get<std::string>();
  if (!parse_dtype(dts, &t.dtype))
    throw bad(fmt::format("unknown dtype '{}' (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)", dts));

  const auto sh = e.find("shape");
  if (sh == e.end()) throw bad("missing 'shape'");
  if (!sh->is_array()) throw bad(fmt::format("'shape' must be an array (found {})", sh->type_name()));
  for (size_t i = 0; i < sh->size(); ++i) {
    const json& d = (*sh)[i];
    if (d.is_number_unsigned()) {
      const uint64_t u = d.get<uint64_t>();
      if (u > (uint64_t)std::numeric_limits<int64_t>::max())
        throw bad(fmt::format("shape[{}] = {} is too large", i, u));
      t.shape.push_back((int64_t)u);
    } else if (d.is_number_integer()) {
      throw bad(fmt::format("shape[{}] = {} is negative", i, d.get<int64_t>()));
    } else {
      throw bad(fmt::format("shape[{}] must be a non-negative integer (found {})", i, json_excerpt(d)));
    }
  }

  const auto off = e.find("data_offsets");
  if (off == e.end()) throw bad("missing 'data_offsets'");
  if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
      !(*off)[1].is_number_unsigned())
    throw bad(
        fmt::format("'data_offsets' must be two non-negative integers [begin, end] (found {})", json_excerpt(*off)));
  t.begin = (*off)[0].get<uint64_t>();
  t.end = (*off)[1].get<uint64_t>();
  if (t.begin > t.end) throw bad(fmt::format("data_offsets [{}, {}]: begin is after end", t.begin, t.end));
  if (t.end > data_size)
    throw bad(fmt::format("data_offsets [{}, {}] lie outside the data section ({} bytes)", t.begin, t.end,
                          data_size));

  int64_t n = 0;
  const size_t es = dtype_size(t.dtype);
  if (!checked_numel(t.shape, &n) || (uint64_t)n > std::numeric_limits<uint64_t>::max() / es)
    throw bad(fmt::format("shape {} is too large", shape_str(t.shape)));
  if ((uint64_t)n * es != t.nbytes())
    throw bad(fmt::format("shape {} x {} ({} bytes) does not match data_offsets [{}, {}] ({} bytes)",
                          shape_str(t.shape), dts, (uint64_t)n * es, t.begin, t.end, t.nbytes()));
  return t;
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// ---------------------------------------------------------------------------------------------- reader

SafeTensors::SafeTensors(const std::string& path) : file_(path) {
  const size_t size = file_.size();
  if (size < 8) fail("{}: file too short for a safetensors header ({} bytes, need at least 8)", path, size);
  const uint64_t n = read_u64_le(file_.data());
  if (n > size - 8)
    fail("{}: header length {} exceeds the file size ({} bytes after the 8-byte length)", path, n, size - 8);
  if (n < 2) fail("{}: header length {} is too small for a JSON object", path, n);
  const char* hdr = reinterpret_cast<const char*>(file_.data() + 8);
  data_ = file_.data() + 8 + n;
  const uint64_t data_size = size - 8 - n;

  // nlohmann keeps the last of duplicate keys silently; a parser callback sees every top-level key.
  std::set<std::string> seen;
  std::string duplicate;
  check_json_depth(std::string_view(hdr, n), path + ": header");
  json j;
  try {
    j = json::parse(
        hdr, hdr + n,
        [&](int depth, json::parse_event_t ev, json& parsed) {
          if (ev == json::parse_event_t::key && depth == 1 && duplicate.empty()) {
            const std::string k = parsed.get<std::string>();
            if (!seen.insert(k).second) duplicate = k;
          }
          return true;
        },
        /*allow_exceptions=*/true);
  } catch (const json::exception& e) {
    fail("{}: header is not valid JSON: {}", path, json_error_text(e));
  }
  if (!j.is_object()) fail("{}: header is not a JSON object (found {})", path, j.type_name());
  if (!duplicate.empty()) fail("{}: tensor '{}': duplicate name in header", path, duplicate);

  for (const auto& [name, e] : j.items()) {
    if (name == "__metadata__") {
      if (!e.is_object())
        fail("{}: __metadata__ must be an object of strings (found {})", path, e.type_name());
      for (const auto& [k, v] : e.items()) {
        if (!v.is_string())
          fail("{}: __metadata__ '{}': value must be a string (found {})", path, k, v.type_name());
        metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    tensors_.push_back(parse_tensor_entry(path, name, e, data_size));
  }

  // Overlap check on ranges sorted by begin; empty tensors occupy no bytes and cannot overlap.
  std::vector<const TensorInfo*> order;
  for (const auto& t : tensors_)
    if (t.nbytes() > 0) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < order.size(); ++i) {
    const TensorInfo& a = *order[i - 1];
    const TensorInfo& b = *order[i];
    if (b.begin < a.end)
      fail("{}: tensor '{}': data_offsets [{}, {}] overlap tensor '{}' [{}, {}]", path, b.name, b.begin,
           b.end, a.name, a.begin, a.end);
  }

  // Keep header order sorted by offset so that iteration follows the file layout.
  std::stable_sort(tensors_.begin(), tensors_.end(),
                   [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

const TensorInfo* SafeTensors::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafeTensors::get(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) fail("{}: missing tensor '{}'", path(), name);
  return *t;
}

std::vector<float> SafeTensors::to_f32(const TensorInfo& t) const {
  const int64_t n = t.numel();
  std::vector<float> out((size_t)n);
  const uint8_t* p = data(t);
  // The data section need not be aligned (header length is not always a multiple of 8): memcpy each element.
  auto conv = [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < n; ++i) {
      T v;
      std::memcpy(&v, p + i * (int64_t)sizeof(T), sizeof(T));
      out[(size_t)i] = (float)v;
    }
  };
  switch (t.dtype) {
    case DType::F64:
      conv(double{});
      break;
    case DType::F32:
      conv(float{});
      break;
    case DType::I64:
      conv(int64_t{});
      break;
    case DType::I32:
      conv(int32_t{});
      break;
    case DType::I16:
      conv(int16_t{});
      break;
    case DType::I8:
      conv(int8_t{});
      break;
    case DType::U8:
      conv(uint8_t{});
      break;
    case DType::BOOL:
      for (int64_t i = 0; i < n; ++i) out[(size_t)i] = p[i] ? 1.0f : 0.0f;
      break;
    case DType::F16:
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[(size_t)i] = t.dtype == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
      break;
  }
  return out;
}

// ----------------------------------------------------------------------------------------- TensorStore

namespace {

// Shard names from an index file are relative to the model directory; refuse anything that escapes it.
bool safe_relative_name(const std::string& f) {
  if (f.empty() || f[0] == '/') return false;
  for (const auto& part : std::filesystem::path(f))
    if (part == "..") return false;
  return true;
}

}  // namespace

TensorStore TensorStore::open_dir(const std::string& dir) {
  if (!is_directory(dir)) fail("{}: not a directory", dir);
  TensorStore s;
  s.dir_ = dir;
  std::vector<std::string> files;
  std::vector<std::pair<std::string, std::string>> mapped;  // (tensor, shard) from the index
  const std::string single = path_join(dir, "model.safetensors");
  const std::string index = path_join(dir, "model.safetensors.index.json");
  if (file_exists(single)) {
    files.push_back(single);
  } else if (file_exists(index)) {
    json j;
    try {
      const std::string text = read_file(index);
      check_json_depth(text, index);
      j = json::parse(text);
    } catch (const json::exception& e) {
      fail("{}: not valid JSON: {}", index, json_error_text(e));
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      fail("{}: missing 'weight_map' object", index);
    std::set<std::string> shards;
    for (const auto& [name, f] : j["weight_map"].items()) {
      if (!f.is_string())
        fail("{}: weight_map '{}': value must be a file name (found {})", index, name, f.type_name());
      const std::string fn = f.get<std::string>();
      if (!safe_relative_name(fn))
        fail("{}: weight_map '{}': file name '{}' is not inside the directory", index, name, fn);
      const std::string full = path_join(dir, fn);
      if (!file_exists(full)) fail("{}: weight_map '{}': shard '{}' does not exist", index, name, fn);
      shards.insert(fn);
      mapped.emplace_back(name, full);
    }
    if (shards.empty()) fail("{}: weight_map is empty", index);
    for (const auto& fn : shards) files.push_back(path_join(dir, fn));
  } else {
    std::error_code ec;
    for (const auto& de : std::filesystem::directory_iterator(dir, ec)) {
      const std::string p = de.path().string();
      if (de.is_regular_file() && de.path().extension() == ".safetensors") files.push_back(p);
    }
    if (ec) fail("{}: cannot list directory: {}", dir, ec.message());
    std::sort(files.begin(), files.end());
    if (files.empty())
      fail("{}: no model.safetensors, model.safetensors.index.json or *.safetensors file found", dir);
  }

  for (const auto& f : files) {
    const size_t fi = s.files_.size();
    s.files_.push_back(std::make_unique<SafeTensors>(f));
    const auto& ts = s.files_.back()->tensors();
    for (size_t ti = 0; ti < ts.size(); ++ti) {
      const auto [it, inserted] = s.index_.emplace(ts[ti].name, std::make_pair(fi, ti));
      if (!inserted)
        fail("{}: tensor '{}': also present in {}", f, ts[ti].name, s.files_[it->second.first]->path());
    }
  }
  for (const auto& [name, full] : mapped) {
    const SafeTensors* file = nullptr;
    if (!s.find(name, &file) || file->path() != full)
      fail("{}: weight_map '{}': tensor is not in {}", index, name, full);
  }
  return s;
}

const TensorInfo* TensorStore::find(const std::string& name, const SafeTensors** file) const {
  const auto it = index_.find(name);
  if (it == index_.end()) return nullptr;
  const SafeTensors& f = *files_[it->second.first];
  if (file) *file = &f;
  return &f.tensors()[it->second.second];
}

std::vector<float> TensorStore::read_f32(const std::string& name,
                                         const std::vector<int64_t>& expected_shape) const {
  const SafeTensors* f = nullptr;
  const TensorInfo* t = find(name, &f);
  if (!t) fail("{}: missing tensor '{}'", dir_, name);
  if (t->shape != expected_shape)
    fail("{}: tensor '{}': shape {} does not match the expected shape {}", f->path(), name,
         shape_str(t->shape), shape_str(expected_shape));
  return f->to_f32(*t);
}

std::vector<std::pair<const SafeTensors*, const TensorInfo*>> TensorStore::all() const {
  std::vector<std::pair<const SafeTensors*, const TensorInfo*>> out;
  for (const auto& f : files_)
    for (const auto& t : f->tensors()) out.emplace_back(f.get(), &t);
  return out;
}

// ---------------------------------------------------------------------------------------------- writer

void SafeTensorsWriter::add(const std::string& name, DType dtype, std::vector<int64_t> shape,
                            const void* data, size_t nbytes) {
  if (name.empty() || name == "__metadata__") fail("safetensors writer: invalid tensor name '{}'", name);
  for (const auto& e : entries_)
    if (e.name == name) fail("safetensors writer: tensor '{}' added twice", name);
  int64_t n = 0;
  if (!checked_numel(shape, &n) || (uint64_t)n * dtype_size(dtype) != nbytes)
    fail("safetensors writer: tensor '{}': shape {} x {} does not match {} bytes of data", name,
         shape_str(shape), dtype_name(dtype), nbytes);
  Entry e{name, dtype, std::move(shape), {}};
  const auto* p = static_cast<const uint8_t*>(data);
  if (nbytes) e.bytes.assign(p, p + nbytes);
  entries_.push_back(std::move(e));
}

void SafeTensorsWriter::add_f32(const std::string& name, std::vector<int64_t> shape, const float* data) {
  int64_t n = 0;
  if (!checked_numel(shape, &n))
    fail("safetensors writer: tensor '{}': invalid shape {}", name, shape_str(shape));
  add(name, DType::F32, std::move(shape), data, (size_t)n * 4);
}

void SafeTensorsWriter::add_from_f32(const std::string& name, DType dtype, std::vector<int64_t> shape,
                                     const float* data) {
  if (dtype == DType::F32) return add_f32(name, std::move(shape), data);
  if (dtype != DType::F16 && dtype != DType::BF16)
    fail("safetensors writer: tensor '{}': cannot convert fp32 to {}", name, dtype_name(dtype));
  int64_t n = 0;
  if (!checked_numel(shape, &n))
    fail("safetensors writer: tensor '{}': invalid shape {}", name, shape_str(shape));
  std::vector<uint16_t> h((size_t)n);
  for (int64_t i = 0; i < n; ++i)
    h[(size_t)i] = dtype == DType::F16 ? f32_to_f16(data[i]) : f32_to_bf16(data[i]);
  add(name, dtype, std::move(shape), h.data(), h.size() * 2);
}

void SafeTensorsWriter::write(const std::string& path) const {
  // ordered_json keeps the header in insertion order, which matches the data layout.
  nlohmann::ordered_json hdr = nlohmann::ordered_json::object();
  auto meta = metadata_;
  // transformers refuses to load a safetensors checkpoint whose metadata lacks format=pt.
  if (!meta.count("format")) meta["format"] = "pt";
  hdr["__metadata__"] = meta;
  uint64_t off = 0;
  for (const auto& e : entries_) {
    hdr[e.name] = {
        {"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {off, off + e.bytes.size()}}};
    off += e.bytes.size();
  }
  std::string h = hdr.dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  h.append((8 - h.size() % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = (uint8_t)((uint64_t)h.size() >> (8 * i));
  AtomicFile f(path);
  f.write(len, 8);
  f.write(h);
  for (const auto& e : entries_)
    if (!e.bytes.empty()) f.write(e.bytes.data(), e.bytes.size());
  f.commit();
}

}  // namespace fq
