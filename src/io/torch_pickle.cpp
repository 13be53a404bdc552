// torch.save zip reader: ZIP container (stored entries only, ZIP64 aware), then data.pkl on a subset pickle
// VM. The VM keeps every object in an arena addressed by index, so shared references and even cycles a
// hostile file builds cost nothing to free; the result tree is built at the end by a depth-first walk that
// refuses cycles, caps nesting depth, node count and the elements materialized (a shared reference or a
// stride-0 view can otherwise expand a few bytes of input into gigabytes).
#include "io/torch_pickle.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <array>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <unordered_map>

#include "core/fs.h"
#include "flatquant/error.h"

namespace fq {

// ------------------------------------------------------------------------------------------- TorchValue

int64_t TorchTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

TorchValue TorchValue::boolean(bool b) {
  TorchValue v;
  v.kind_ = Kind::Bool;
  v.b_ = b;
  return v;
}
TorchValue TorchValue::integer(int64_t i) {
  TorchValue v;
  v.kind_ = Kind::Int;
  v.i_ = i;
  return v;
}
TorchValue TorchValue::real(double f) {
  TorchValue v;
  v.kind_ = Kind::Float;
  v.f_ = f;
  return v;
}
TorchValue TorchValue::string(std::string s) {
  TorchValue v;
  v.kind_ = Kind::String;
  v.s_ = std::move(s);
  return v;
}
TorchValue TorchValue::list(std::vector<TorchValue> items) {
  TorchValue v;
  v.kind_ = Kind::List;
  v.items_ = std::move(items);
  return v;
}
TorchValue TorchValue::tuple(std::vector<TorchValue> items) {
  TorchValue v;
  v.kind_ = Kind::Tuple;
  v.items_ = std::move(items);
  return v;
}
TorchValue TorchValue::dict(std::vector<Entry> entries) {
  TorchValue v;
  v.kind_ = Kind::Dict;
  v.entries_ = std::move(entries);
  return v;
}
TorchValue TorchValue::tensor(std::shared_ptr<const TorchTensor> t) {
  TorchValue v;
  v.kind_ = Kind::Tensor;
  v.t_ = std::move(t);
  return v;
}

const char* TorchValue::kind_name(Kind k) {
  switch (k) {
    case Kind::None:
      return "None";
    case Kind::Bool:
      return "bool";
    case Kind::Int:
      return "int";
    case Kind::Float:
      return "float";
    case Kind::String:
      return "str";
    case Kind::List:
      return "list";
    case Kind::Tuple:
      return "tuple";
    case Kind::Dict:
      return "dict";
    case Kind::Tensor:
      return "tensor";
  }
  return "?";
}

namespace {
void expect_kind(const TorchValue& v, bool ok, const char* want) {
  FQ_CHECK(ok, "torch value: expected {}, found {}", want, v.kind_name());
}
}  // namespace

bool TorchValue::as_bool() const {
  expect_kind(*this, kind_ == Kind::Bool, "bool");
  return b_;
}
int64_t TorchValue::as_int() const {
  expect_kind(*this, kind_ == Kind::Int, "int");
  return i_;
}
double TorchValue::as_float() const {
  expect_kind(*this, kind_ == Kind::Float, "float");
  return f_;
}
const std::string& TorchValue::as_string() const {
  expect_kind(*this, kind_ == Kind::String, "str");
  return s_;
}
const std::vector<TorchValue>& TorchValue::items() const {
  expect_kind(*this, kind_ == Kind::List || kind_ == Kind::Tuple, "list or tuple");
  return items_;
}
const std::vector<TorchValue::Entry>& TorchValue::entries() const {
  expect_kind(*this, kind_ == Kind::Dict, "dict");
  return entries_;
}
const TorchTensor& TorchValue::as_tensor() const {
  expect_kind(*this, kind_ == Kind::Tensor, "tensor");
  return *t_;
}
const TorchValue* TorchValue::find(std::string_view key) const {
  for (const auto& e : entries_)
    if (e.first.kind_ == Kind::String && e.first.s_ == key) return &e.second;
  return nullptr;
}
const TorchValue* TorchValue::find(int64_t key) const {
  for (const auto& e : entries_)
    if (e.first.kind_ == Kind::Int && e.first.i_ == key) return &e.second;
  return nullptr;
}

// ---------------------------------------------------------------------------------------------- helpers

uint32_t zip_crc32(const void* data, size_t size) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xFFFFFFFFu;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < size; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

namespace {

constexpr size_t kMaxDims = 64;
constexpr int kMaxDepth = 200;                        // nesting of the result tree
constexpr uint64_t kNodeSlack = uint64_t(1) << 16;    // result tree nodes beyond 4 per pickled object
constexpr uint64_t kExpandSlack = uint64_t(1) << 24;  // elements materialized beyond 2 x the stored data

uint64_t rd(const uint8_t* p, int n) {  // little-endian
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// A name or key from the file, made safe for a one-line message: printable ASCII, escapes, at most 80 chars.
std::string printable(std::string_view s) {
  std::string r;
  for (size_t i = 0; i < s.size(); ++i) {
    if (r.size() >= 80) return r + "...";
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\')
      r += static_cast<char>(c);
    else
      r += fmt::format("\\x{:02x}", c);
  }
  return r;
}

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;  // continuation bytes missing
    for (int k = 1; k <= n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    static const uint32_t min_cp[4] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

// ------------------------------------------------------------------------------------------------ ZIP

struct ZipEntry {
  std::string name;
  uint64_t data = 0;  // offset of the entry's bytes in the file
  uint64_t size = 0;
};

class Zip {
 public:
  Zip(const uint8_t* p, size_t n, const std::string& path, bool verify_crc) : p_(p), n_(n), path_(path) {
    parse(verify_crc);
  }
  const ZipEntry* find(const std::string& name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &entries_[it->second];
  }
  const std::vector<ZipEntry>& entries() const { return entries_; }
  const uint8_t* bytes(const ZipEntry& e) const { return p_ + e.data; }

 private:
  template <typename... Args>
  [[noreturn]] void bad(fmt::format_string<Args...> f, Args&&... args) const {
    fail("{}: {}", path_, fmt::format(f, std::forward<Args>(args)...));
  }
  // [off, off + len) inside the file (overflow-safe).
  bool inside(uint64_t off, uint64_t len) const { return off <= n_ && len <= n_ - off; }

  void parse(bool verify_crc) {
    if (n_ >= 2 && p_[0] == 0x80 && p_[1] <= 5)
      bad("legacy torch.save format (a bare pickle, PyTorch < 1.6 or _use_new_zipfile_serialization=False) "
          "is "
          "not supported (re-save it with a current PyTorch)");
    if (n_ < 22 || rd(p_, 4) != 0x04034b50)
      bad("not a zip archive (torch.save files are zip archives since PyTorch 1.6; {} bytes)", n_);
    // End of central directory: the last 22-byte record with its signature, followed by its comment.
    uint64_t eocd = UINT64_MAX;
    const uint64_t lowest = n_ >= 22 + 65535 ? n_ - 22 - 65535 : 0;
    for (uint64_t i = n_ - 22 + 1; i-- > lowest;) {
      if (rd(p_ + i, 4) == 0x06054b50 && i + 22 + rd(p_ + i + 20, 2) == n_) {
        eocd = i;
        break;
      }
    }
    if (eocd == UINT64_MAX) bad("zip end-of-central-directory record not found (truncated file?)");
    const uint8_t* e = p_ + eocd;
    if (rd(e + 4, 2) != 0 || rd(e + 6, 2) != 0) bad("multi-disk zip archives are not supported");
    uint64_t count = rd(e + 10, 2), cd_size = rd(e + 12, 4), cd_off = rd(e + 16, 4);
    uint64_t cd_end_limit = eocd;
    // ZIP64: a locator right before the EOCD points at the ZIP64 EOCD record with 64-bit fields.
    if (eocd >= 20 && rd(p_ + eocd - 20, 4) == 0x07064b50) {
      const uint8_t* loc = p_ + eocd - 20;
      const uint64_t z = rd(loc + 8, 8);
      if (rd(loc + 4, 4) != 0 || rd(loc + 16, 4) > 1) bad("multi-disk zip archives are not supported");
      if (!inside(z, 56) || z + 56 > eocd - 20 || rd(p_ + z, 4) != 0x06064b50)
        bad("zip64 end-of-central-directory record not found at offset {}", z);
      const uint8_t* r = p_ + z;
      if (rd(r + 16, 4) != 0 || rd(r + 20, 4) != 0) bad("multi-disk zip archives are not supported");
      count = rd(r + 32, 8);
      cd_size = rd(r + 40, 8);
      cd_off = rd(r + 48, 8);
      cd_end_limit = z;
    } else if (count == 0xFFFF || cd_size == 0xFFFFFFFF || cd_off == 0xFFFFFFFF) {
      bad("zip64 archive without its end-of-central-directory locator");
    }
    if (!inside(cd_off, cd_size) || cd_off + cd_size > cd_end_limit)
      bad("zip central directory (offset {}, {} bytes) lies outside the file", cd_off, cd_size);
    if (count > cd_size / 46)
      bad("zip central directory too small for {} entries ({} bytes)", count, cd_size);
    entries_.reserve(count);
    uint64_t pos = cd_off;
    const uint64_t cd_end = cd_off + cd_size;
    for (uint64_t k = 0; k < count; ++k) {
      if (cd_end - pos < 46 || rd(p_ + pos, 4) != 0x02014b50)
        bad("zip central directory entry {} is corrupt", k);
      const uint8_t* c = p_ + pos;
      const uint64_t flags = rd(c + 8, 2), method = rd(c + 10, 2), crc = rd(c + 16, 4);
      uint64_t csize = rd(c + 20, 4), usize = rd(c + 24, 4), local = rd(c + 42, 4);
      const uint64_t nlen = rd(c + 28, 2), xlen = rd(c + 30, 2), clen = rd(c + 32, 2);
      if (cd_end - pos - 46 < nlen + xlen + clen) bad("zip central directory entry {} is corrupt", k);
      const std::string name(reinterpret_cast<const char*>(c + 46), nlen);
      const std::string shown = printable(name);
      if (rd(c + 34, 2) != 0) bad("zip entry '{}': multi-disk archives are not supported", shown);
      // ZIP64 extended information: the 64-bit values of the fields saturated at 0xFFFFFFFF, in this order.
      const uint8_t* x = c + 46 + nlen;
      for (uint64_t xo = 0; xo + 4 <= xlen;) {
        const uint64_t id = rd(x + xo, 2), len = rd(x + xo + 2, 2);
        if (xo + 4 + len > xlen) bad("zip entry '{}': corrupt extra field", shown);
        if (id == 0x0001) {
          uint64_t f = xo + 4;
          auto take = [&](uint64_t& v) {
            if (v != 0xFFFFFFFF) return;
            if (f + 8 > xo + 4 + len) bad("zip entry '{}': zip64 extra field too short", shown);
            v = rd(x + f, 8);
            f += 8;
          };
          take(usize);
          take(csize);
          take(local);
        }
        xo += 4 + len;
      }
      if (flags & 1) bad("zip entry '{}' is encrypted", shown);
      if (method != 0)
        bad("zip entry '{}' is compressed (method {}); only stored entries are supported (torch.save writes "
            "them uncompressed: re-save the file with torch.save instead of re-zipping it)",
            shown, method);
      if (csize != usize)
        bad("zip entry '{}': stored entry with compressed size {} != size {}", shown, csize, usize);
      if (!inside(local, 30) || rd(p_ + local, 4) != 0x04034b50)
        bad("zip entry '{}': local header at offset {} not found", shown, local);
      const uint8_t* l = p_ + local;
      const uint64_t lnlen = rd(l + 26, 2), lxlen = rd(l + 28, 2);
      if (rd(l + 8, 2) != method || lnlen != nlen || !inside(local + 30, lnlen) ||
          std::memcmp(l + 30, name.data(), nlen) != 0)
        bad("zip entry '{}': local header does not match the central directory", shown);
      const uint64_t data = local + 30 + lnlen + lxlen;
      if (!inside(data, usize) || data + usize > cd_off)
        bad("zip entry '{}': data ({} bytes at offset {}) lies outside the file", shown, usize, data);
      if (verify_crc && zip_crc32(p_ + data, usize) != crc)
        bad("zip entry '{}': CRC-32 mismatch (corrupt file)", shown);
      if (!index_.emplace(name, entries_.size()).second) bad("zip entry '{}' appears twice", shown);
      entries_.push_back({name, data, usize});
      pos += 46 + nlen + xlen + clen;
    }
  }

  const uint8_t* p_;
  size_t n_;
  const std::string& path_;
  std::vector<ZipEntry> entries_;
  std::map<std::string, size_t> index_;
};

// ------------------------------------------------------------------------------------------- pickle VM

enum class Global { OrderedDict, RebuildTensorV2, RebuildParameter, RebuildParameterWithState, Storage };

struct StorageType {
  const char* name;
  DType dtype;
};
constexpr StorageType kStorageTypes[] = {{"FloatStorage", DType::F32}, {"DoubleStorage", DType::F64},
                                         {"HalfStorage", DType::F16},  {"BFloat16Storage", DType::BF16},
                                         {"LongStorage", DType::I64},  {"IntStorage", DType::I32}};
constexpr const char* kAllowedGlobals =
    "collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter, "
    "torch._utils._rebuild_parameter_with_state, torch.{Float,Double,Half,BFloat16,Long,Int}Storage";

struct Obj {
  enum class Kind { None, Bool, Int, Float, Str, Tuple, List, Dict, Global, Storage, Tensor };
  Kind kind = Kind::None;
  bool b = false;
  int64_t i = 0;  // Int value; Storage: numel; Tensor: storage offset
  double f = 0;
  std::string s;                // Str; Global: "module.name"; Storage: zip entry name
  std::vector<uint32_t> refs;   // Tuple/List items; Dict: key, value, key, value...; Tensor: {storage}
  std::set<std::string> skeys;  // Dict: keys present, to refuse duplicates
  std::set<int64_t> ikeys;
  Global g = Global::OrderedDict;
  DType dtype = DType::F32;             // Global (storage type), Storage
  const uint8_t* bytes = nullptr;       // Storage
  std::vector<int64_t> shape, strides;  // Tensor
};

const char* obj_kind_name(Obj::Kind k) {
  switch (k) {
    case Obj::Kind::None:
      return "None";
    case Obj::Kind::Bool:
      return "bool";
    case Obj::Kind::Int:
      return "int";
    case Obj::Kind::Float:
      return "float";
    case Obj::Kind::Str:
      return "str";
    case Obj::Kind::Tuple:
      return "tuple";
    case Obj::Kind::List:
      return "list";
    case Obj::Kind::Dict:
      return "dict";
    case Obj::Kind::Global:
      return "global";
    case Obj::Kind::Storage:
      return "storage";
    case Obj::Kind::Tensor:
      return "tensor";
  }
  return "?";
}

class Unpickler {
 public:
  Unpickler(const uint8_t* p, size_t n, const Zip& zip, std::string archive, const std::string& path)
      : p_(p), n_(n), zip_(zip), archive_(std::move(archive)), path_(path) {}

  TorchValue run() {
    const uint32_t root = execute();
    std::vector<uint8_t> on_path(arena_.size(), 0);
    std::unordered_map<uint32_t, std::shared_ptr<const TorchTensor>> tensors;
    for (const auto& z : zip_.entries()) budget_ += 2 * z.size;  // elements, generously
    budget_ += kExpandSlack;
    max_nodes_ = 4 * static_cast<uint64_t>(arena_.size()) + kNodeSlack;
    return convert(root, 0, on_path, tensors);
  }

 private:
  // ---- errors
  template <typename... Args>
  [[noreturn]] void bad(fmt::format_string<Args...> f, Args&&... args) const {
    fail("{}: {}/data.pkl: {} (opcode 0x{:02x} at offset {})", path_, printable(archive_),
         fmt::format(f, std::forward<Args>(args)...), op_, op_pos_);
  }
  template <typename... Args>
  [[noreturn]] void bad_result(fmt::format_string<Args...> f, Args&&... args) const {
    fail("{}: {}/data.pkl: {}", path_, printable(archive_), fmt::format(f, std::forward<Args>(args)...));
  }

  // ---- input
  const uint8_t* need(uint64_t k) {
    if (k > n_ - pos_) bad("truncated pickle (needs {} more bytes, {} left)", k, n_ - pos_);
    const uint8_t* r = p_ + pos_;
    pos_ += k;
    return r;
  }
  uint64_t u(int k) { return rd(need(k), k); }
  std::string line() {  // GLOBAL's "module\n" / "name\n"
    const uint8_t* s = p_ + pos_;
    const void* nl = std::memchr(s, '\n', n_ - pos_);
    if (!nl) bad("truncated GLOBAL (no newline)");
    const size_t len = static_cast<const uint8_t*>(nl) - s;
    pos_ += len + 1;
    return std::string(reinterpret_cast<const char*>(s), len);
  }
  std::string utf8(uint64_t len) {
    const uint8_t* s = need(len);
    std::string r(reinterpret_cast<const char*>(s), len);
    if (!valid_utf8(r)) bad("string is not valid UTF-8");
    return r;
  }

  // ---- arena and stack
  uint32_t add(Obj o) {
    arena_.push_back(std::move(o));
    return static_cast<uint32_t>(arena_.size() - 1);
  }
  uint32_t add(Obj::Kind k) {
    Obj o;
    o.kind = k;
    return add(std::move(o));
  }
  Obj& at(uint32_t r) { return arena_[r]; }
  void push(uint32_t r) { stack_.push_back(r); }
  size_t base() const { return marks_.empty() ? 0 : marks_.back(); }
  uint32_t pop() {
    if (stack_.size() <= base()) bad("stack underflow");
    const uint32_t r = stack_.back();
    stack_.pop_back();
    return r;
  }
  uint32_t top() {
    if (stack_.size() <= base()) bad("stack underflow");
    return stack_.back();
  }
  std::vector<uint32_t> pop_mark() {
    if (marks_.empty()) bad("no MARK on the stack");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<uint32_t> r(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return r;
  }
  uint32_t make_tuple(std::vector<uint32_t> items) {
    Obj o;
    o.kind = Obj::Kind::Tuple;
    o.refs = std::move(items);
    return add(std::move(o));
  }
  Obj& expect(uint32_t r, Obj::Kind k, const char* what) {
    if (at(r).kind != k) bad("{}: expected {}, found {}", what, obj_kind_name(k), obj_kind_name(at(r).kind));
    return at(r);
  }
  void set_item(uint32_t d, uint32_t k, uint32_t v) {
    Obj& dict = expect(d, Obj::Kind::Dict, "SETITEM target");
    const Obj& key = at(k);
    bool fresh;
    if (key.kind == Obj::Kind::Str)
      fresh = dict.skeys.insert(key.s).second;
    else if (key.kind == Obj::Kind::Int)
      fresh = dict.ikeys.insert(key.i).second;
    else
      bad("dict key of type {} is not supported (only int and str)", obj_kind_name(key.kind));
    if (!fresh)
      bad("duplicate dict key '{}'", key.kind == Obj::Kind::Str ? printable(key.s) : std::to_string(key.i));
    dict.refs.push_back(k);
    dict.refs.push_back(v);
  }
  void append(uint32_t l, uint32_t v) { expect(l, Obj::Kind::List, "APPEND target").refs.push_back(v); }
  void memo_put(uint64_t idx) {
    if (stack_.empty()) bad("memoize with an empty stack");
    memo_[idx] = stack_.back();
  }
  void memo_get(uint64_t idx) {
    const auto it = memo_.find(idx);
    if (it == memo_.end()) bad("memo key {} not defined", idx);
    push(it->second);
  }

  // ---- globals, persistent ids, REDUCE
  uint32_t make_global(const std::string& module, const std::string& name) {
    Obj o;
    o.kind = Obj::Kind::Global;
    o.s = module + "." + name;
    if (module == "collections" && name == "OrderedDict") {
      o.g = Global::OrderedDict;
    } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
      o.g = Global::RebuildTensorV2;
    } else if (module == "torch._utils" && name == "_rebuild_parameter") {
      o.g = Global::RebuildParameter;
    } else if (module == "torch._utils" && name == "_rebuild_parameter_with_state") {
      o.g = Global::RebuildParameterWithState;
    } else {
      bool found = false;
      for (const auto& st : kStorageTypes)
        if (module == "torch" && name == st.name) {
          o.g = Global::Storage;
          o.dtype = st.dtype;
          found = true;
        }
      if (!found) bad("global '{}' is not allowed (allowed: {})", printable(o.s), kAllowedGlobals);
    }
    return add(std::move(o));
  }

  // ('storage', <storage type>, key, location, numel) -> a view of "<archive>/data/<key>".
  uint32_t persistent_load(uint32_t pid) {
    const Obj& t = expect(pid, Obj::Kind::Tuple, "persistent id");
    if (t.refs.size() != 5)
      bad("persistent id: expected a 5-tuple ('storage', type, key, location, numel), found {} items",
          t.refs.size());
    const Obj& tag = at(t.refs[0]);
    if (tag.kind != Obj::Kind::Str || tag.s != "storage") bad("persistent id: first item is not 'storage'");
    const Obj& type = at(t.refs[1]);
    if (type.kind != Obj::Kind::Global || type.g != Global::Storage)
      bad("persistent id: second item is not a storage type (found {})",
          type.kind == Obj::Kind::Global ? printable(type.s) : obj_kind_name(type.kind));
    const Obj& key = expect(t.refs[2], Obj::Kind::Str, "persistent id key");
    expect(t.refs[3], Obj::Kind::Str, "persistent id location");
    const Obj& numel = expect(t.refs[4], Obj::Kind::Int, "persistent id numel");
    const std::string entry = archive_ + "/data/" + key.s;
    const ZipEntry* z = zip_.find(entry);
    if (!z) bad("storage '{}' has no zip entry '{}'", printable(key.s), printable(entry));
    const uint64_t esize = dtype_size(type.dtype);
    if (numel.i < 0 || static_cast<uint64_t>(numel.i) > z->size / esize ||
        static_cast<uint64_t>(numel.i) * esize != z->size)
      bad("storage '{}': {} elements of {} bytes do not match its {}-byte zip entry", printable(key.s),
          numel.i, esize, z->size);
    // torch loads a key once; a second reference must describe the same storage.
    const auto seen = storages_.emplace(key.s, std::make_pair(type.dtype, numel.i));
    if (!seen.second && (seen.first->second.first != type.dtype || seen.first->second.second != numel.i))
      bad("storage '{}' is referenced with two different types or sizes", printable(key.s));
    Obj o;
    o.kind = Obj::Kind::Storage;
    o.dtype = type.dtype;
    o.i = numel.i;
    o.s = entry;
    o.bytes = zip_.bytes(*z);
    return add(std::move(o));
  }

  std::vector<int64_t> int_tuple(uint32_t r, const char* what) {
    const Obj& t = expect(r, Obj::Kind::Tuple, what);
    if (t.refs.size() > kMaxDims)
      bad("{}: {} dimensions, at most {} supported", what, t.refs.size(), kMaxDims);
    std::vector<int64_t> v;
    for (uint32_t e : t.refs) {
      const Obj& o = expect(e, Obj::Kind::Int, what);
      if (o.i < 0) bad("{}: negative value {}", what, o.i);
      v.push_back(o.i);
    }
    return v;
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  uint32_t rebuild_tensor(const Obj& args) {
    if (args.refs.size() != 6 && args.refs.size() != 7)
      bad("_rebuild_tensor_v2: expected 6 or 7 arguments, found {}", args.refs.size());
    const uint32_t storage = args.refs[0];
    const Obj& st = expect(storage, Obj::Kind::Storage, "_rebuild_tensor_v2 storage");
    const Obj& off = expect(args.refs[1], Obj::Kind::Int, "_rebuild_tensor_v2 storage_offset");
    std::vector<int64_t> shape = int_tuple(args.refs[2], "_rebuild_tensor_v2 size");
    std::vector<int64_t> strides = int_tuple(args.refs[3], "_rebuild_tensor_v2 stride");
    expect(args.refs[4], Obj::Kind::Bool, "_rebuild_tensor_v2 requires_grad");
    expect(args.refs[5], Obj::Kind::Dict, "_rebuild_tensor_v2 backward_hooks");
    if (args.refs.size() == 7 && at(args.refs[6]).kind != Obj::Kind::Dict &&
        at(args.refs[6]).kind != Obj::Kind::None)
      bad("_rebuild_tensor_v2 metadata: expected dict, found {}", obj_kind_name(at(args.refs[6]).kind));
    if (shape.size() != strides.size())
      bad("tensor has {} sizes but {} strides", shape.size(), strides.size());
    if (off.i < 0) bad("negative storage offset {}", off.i);
    // The last element addressed, offset + sum((size - 1) * stride), must lie inside the storage.
    int64_t numel = 1, last = off.i;
    for (size_t d = 0; d < shape.size(); ++d) {
      if (__builtin_mul_overflow(numel, shape[d], &numel)) bad("tensor size overflows");
      int64_t reach = 0;
      if (shape[d] > 0 && (__builtin_mul_overflow(shape[d] - 1, strides[d], &reach) ||
                           __builtin_add_overflow(last, reach, &last)))
        bad("tensor extent overflows");
    }
    const uint64_t have = static_cast<uint64_t>(st.i);
    if (numel > 0 ? static_cast<uint64_t>(last) >= have : static_cast<uint64_t>(off.i) > have)
      bad("tensor (storage offset {}, size [{}], stride [{}]) reaches element {} of storage '{}' with {} "
          "elements",
          off.i, fmt::join(shape, ","), fmt::join(strides, ","), last, printable(st.s), have);
    Obj o;
    o.kind = Obj::Kind::Tensor;
    o.refs = {storage};
    o.i = off.i;
    o.shape = std::move(shape);
    o.strides = std::move(strides);
    o.dtype = st.dtype;
    return add(std::move(o));
  }

  uint32_t reduce(uint32_t callable, uint32_t args_ref) {
    const Obj& fn = at(callable);
    if (fn.kind != Obj::Kind::Global) bad("REDUCE on a {} (not a callable)", obj_kind_name(fn.kind));
    const Obj& args = expect(args_ref, Obj::Kind::Tuple, "REDUCE arguments");
    switch (fn.g) {
      case Global::OrderedDict:
        if (!args.refs.empty()) bad("collections.OrderedDict called with arguments");
        return add(Obj::Kind::Dict);
      case Global::RebuildTensorV2:
        return rebuild_tensor(args);
      case Global::RebuildParameter:
      case Global::RebuildParameterWithState: {
        // (data, requires_grad, backward_hooks[, state]): the parameter is its data for us.
        const size_t want = fn.g == Global::RebuildParameter ? 3 : 4;
        if (args.refs.size() != want)
          bad("{}: expected {} arguments, found {}", fn.s, want, args.refs.size());
        expect(args.refs[0], Obj::Kind::Tensor, "parameter data");
        expect(args.refs[1], Obj::Kind::Bool, "parameter requires_grad");
        return args.refs[0];
      }
      case Global::Storage:
        break;
    }
    bad("{} cannot be called (storages come from persistent ids only)", printable(fn.s));
  }

  // ---- the VM loop
  uint32_t execute() {
    bool first = true;
    while (true) {
      op_pos_ = pos_;
      op_ = 0;
      if (pos_ == n_) bad("pickle ends without STOP");
      op_ = static_cast<uint8_t>(u(1));
      if (first && op_ != 0x80) bad("pickle does not start with PROTO");
      first = false;
      switch (op_) {
        case 0x80: {  // PROTO
          if (pos_ != 1) bad("PROTO after the start");
          proto_ = static_cast<int>(u(1));
          if (proto_ < 2 || proto_ > 4) bad("pickle protocol {} not supported (2 to 4)", proto_);
          break;
        }
        case 0x95: {  // FRAME (protocol 4): a length prefix we do not need
          const uint64_t len = u(8);
          if (proto_ < 4 || len > n_ - pos_) bad("bad FRAME of {} bytes", len);
          break;
        }
        case '.': {  // STOP
          const uint32_t r = pop();
          if (!stack_.empty() || !marks_.empty())
            bad("STOP with {} objects and {} marks left", stack_.size(), marks_.size());
          if (pos_ != n_) bad("{} bytes after STOP", n_ - pos_);
          return r;
        }
        case 'N':
          push(add(Obj::Kind::None));
          break;
        case 0x88:
        case 0x89: {
          Obj o;
          o.kind = Obj::Kind::Bool;
          o.b = op_ == 0x88;
          push(add(std::move(o)));
          break;
        }
        case 'J':
        case 'K':
        case 'M':
        case 0x8a: {  // BININT (i32), BININT1 (u8), BININT2 (u16), LONG1 (n-byte two's complement)
          Obj o;
          o.kind = Obj::Kind::Int;
          if (op_ == 'J') {
            o.i = static_cast<int32_t>(static_cast<uint32_t>(u(4)));
          } else if (op_ == 'K') {
            o.i = static_cast<int64_t>(u(1));
          } else if (op_ == 'M') {
            o.i = static_cast<int64_t>(u(2));
          } else {
            const int len = static_cast<int>(u(1));
            if (len > 8) bad("integer of {} bytes does not fit in 64 bits", len);
            uint64_t v = len ? rd(need(len), len) : 0;
            if (len && len < 8 && (v >> (8 * len - 1)) & 1) v |= ~uint64_t(0) << (8 * len);  // sign-extend
            o.i = static_cast<int64_t>(v);
          }
          push(add(std::move(o)));
          break;
        }
        case 'G': {  // BINFLOAT: big-endian double
          const uint8_t* b = need(8);
          uint64_t bits = 0;
          for (int k = 0; k < 8; ++k) bits = (bits << 8) | b[k];
          Obj o;
          o.kind = Obj::Kind::Float;
          std::memcpy(&o.f, &bits, 8);
          push(add(std::move(o)));
          break;
        }
        case 'X':
        case 0x8c:
        case 0x8d: {  // BINUNICODE (u32 length), SHORT_BINUNICODE (u8), BINUNICODE8 (u64)
          const uint64_t len = u(op_ == 'X' ? 4 : op_ == 0x8c ? 1 : 8);
          Obj o;
          o.kind = Obj::Kind::Str;
          o.s = utf8(len);
          push(add(std::move(o)));
          break;
        }
        case '}':
          push(add(Obj::Kind::Dict));
          break;
        case ']':
          push(add(Obj::Kind::List));
          break;
        case ')':
          push(make_tuple({}));
          break;
        case '(':
          marks_.push_back(stack_.size());
          break;
        case 't':
          push(make_tuple(pop_mark()));
          break;
        case 0x85:
        case 0x86:
        case 0x87: {  // TUPLE1..3
          std::vector<uint32_t> items(op_ - 0x84);
          for (size_t k = items.size(); k-- > 0;) items[k] = pop();
          push(make_tuple(std::move(items)));
          break;
        }
        case 's': {  // SETITEM
          const uint32_t v = pop(), k = pop();
          set_item(top(), k, v);
          break;
        }
        case 'u': {  // SETITEMS
          const std::vector<uint32_t> kv = pop_mark();
          if (kv.size() % 2) bad("SETITEMS with an odd number of items");
          const uint32_t d = top();
          for (size_t k = 0; k < kv.size(); k += 2) set_item(d, kv[k], kv[k + 1]);
          break;
        }
        case 'a': {  // APPEND
          const uint32_t v = pop();
          append(top(), v);
          break;
        }
        case 'e': {  // APPENDS
          const std::vector<uint32_t> items = pop_mark();
          const uint32_t l = top();
          for (uint32_t v : items) append(l, v);
          break;
        }
        case 'q':
          memo_put(u(1));
          break;
        case 'r':
          memo_put(u(4));
          break;
        case 0x94:
          memo_put(memo_.size());
          break;
        case 'h':
          memo_get(u(1));
          break;
        case 'j':
          memo_get(u(4));
          break;
        case 'c': {  // GLOBAL "module\nname\n"
          const std::string module = line();
          const std::string name = line();
          push(make_global(module, name));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          const uint32_t name = pop(), module = pop();
          push(make_global(expect(module, Obj::Kind::Str, "STACK_GLOBAL module").s,
                           expect(name, Obj::Kind::Str, "STACK_GLOBAL name").s));
          break;
        }
        case 'R': {  // REDUCE
          const uint32_t args = pop(), fn = pop();
          push(reduce(fn, args));
          break;
        }
        case 'b': {  // BUILD: only OrderedDict's instance attributes (a state_dict's _metadata), dropped
          const uint32_t state = pop();
          const Obj& target = at(top());
          if (target.kind != Obj::Kind::Dict)
            bad("BUILD on a {} is not supported", obj_kind_name(target.kind));
          if (at(state).kind != Obj::Kind::Dict && at(state).kind != Obj::Kind::None)
            bad("BUILD state: expected dict or None, found {}", obj_kind_name(at(state).kind));
          break;
        }
        case 'Q':  // BINPERSID
          push(persistent_load(pop()));
          break;
        default:
          bad("unknown or unsupported pickle opcode");
      }
    }
  }

  // ---- result tree
  std::shared_ptr<const TorchTensor> materialize(const Obj& o) {
    const Obj& st = arena_[o.refs[0]];
    auto t = std::make_shared<TorchTensor>();
    t->dtype = o.dtype;
    t->shape = o.shape;
    t->strides = o.strides;
    t->storage_offset = o.i;
    t->storage_key = st.s;
    const uint64_t n = static_cast<uint64_t>(t->numel());
    if (n > budget_)
      bad_result(
          "tensors expand to more elements than the file stores (views with stride 0 or shared "
          "references; limit {} elements)",
          budget_);
    budget_ -= n;
    const size_t es = dtype_size(o.dtype);
    const bool fl = t->is_floating();
    if (fl)
      t->f32.resize(n);
    else
      t->i64.resize(n);
    // Walk the indices in row-major order, keeping the storage element index incrementally.
    const size_t nd = o.shape.size();
    std::vector<int64_t> idx(nd, 0), step(nd);
    // A dimension of size 1 may carry any stride (it is never stepped): use 0 so the walk cannot overflow.
    for (size_t d = 0; d < nd; ++d) step[d] = o.shape[d] > 1 ? o.strides[d] : 0;
    int64_t at_el = o.i;
    for (uint64_t k = 0; k < n; ++k) {
      const uint8_t* src = st.bytes + static_cast<uint64_t>(at_el) * es;
      switch (o.dtype) {
        case DType::F32: {
          float v;
          std::memcpy(&v, src, 4);
          t->f32[k] = v;
          break;
        }
        case DType::F64: {
          double v;
          std::memcpy(&v, src, 8);
          t->f32[k] = static_cast<float>(v);
          break;
        }
        case DType::F16:
          t->f32[k] = f16_to_f32(static_cast<uint16_t>(rd(src, 2)));
          break;
        case DType::BF16:
          t->f32[k] = bf16_to_f32(static_cast<uint16_t>(rd(src, 2)));
          break;
        case DType::I64:
          t->i64[k] = static_cast<int64_t>(rd(src, 8));
          break;
        case DType::I32:
          t->i64[k] = static_cast<int32_t>(static_cast<uint32_t>(rd(src, 4)));
          break;
        default:
          FQ_ASSERT(false);
      }
      for (size_t d = nd; d-- > 0;) {
        at_el += step[d];
        if (++idx[d] < o.shape[d]) break;
        at_el -= step[d] * o.shape[d];
        idx[d] = 0;
      }
    }
    return t;
  }

  TorchValue convert(uint32_t r, int depth, std::vector<uint8_t>& on_path,
                     std::unordered_map<uint32_t, std::shared_ptr<const TorchTensor>>& tensors) {
    if (depth > kMaxDepth) bad_result("objects nested deeper than {} levels", kMaxDepth);
    if (on_path[r]) bad_result("recursive object (a container contains itself)");
    if (++nodes_ > max_nodes_) bad_result("more than {} objects (shared references expand)", max_nodes_);
    const Obj& o = arena_[r];
    auto children = [&](auto&& fn) {
      on_path[r] = 1;
      fn();
      on_path[r] = 0;
    };
    switch (o.kind) {
      case Obj::Kind::None:
        return TorchValue::none();
      case Obj::Kind::Bool:
        return TorchValue::boolean(o.b);
      case Obj::Kind::Int:
        return TorchValue::integer(o.i);
      case Obj::Kind::Float:
        return TorchValue::real(o.f);
      case Obj::Kind::Str:
        return TorchValue::string(o.s);
      case Obj::Kind::Tuple:
      case Obj::Kind::List: {
        std::vector<TorchValue> items;
        children([&] {
          for (uint32_t e : o.refs) items.push_back(convert(e, depth + 1, on_path, tensors));
        });
        return o.kind == Obj::Kind::Tuple ? TorchValue::tuple(std::move(items))
                                          : TorchValue::list(std::move(items));
      }
      case Obj::Kind::Dict: {
        std::vector<TorchValue::Entry> entries;
        children([&] {
          for (size_t k = 0; k < o.refs.size(); k += 2)
            entries.emplace_back(convert(o.refs[k], depth + 1, on_path, tensors),
                                 convert(o.refs[k + 1], depth + 1, on_path, tensors));
        });
        return TorchValue::dict(std::move(entries));
      }
      case Obj::Kind::Tensor: {
        auto& t = tensors[r];
        if (!t) t = materialize(o);
        return TorchValue::tensor(t);
      }
      case Obj::Kind::Global:
        bad_result("the result holds the global '{}' itself (not supported)", printable(o.s));
      case Obj::Kind::Storage:
        bad_result("the result holds a bare storage (not supported)");
    }
    FQ_ASSERT(false);
    return {};
  }

  const uint8_t* p_;
  uint64_t n_;
  uint64_t pos_ = 0;
  const Zip& zip_;
  std::string archive_;
  const std::string& path_;
  uint8_t op_ = 0;
  uint64_t op_pos_ = 0;
  int proto_ = 0;
  std::vector<Obj> arena_;
  std::vector<uint32_t> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, uint32_t> memo_;
  std::map<std::string, std::pair<DType, int64_t>> storages_;
  uint64_t nodes_ = 0, max_nodes_ = 0;
  uint64_t budget_ = 0;
};

}  // namespace

// -------------------------------------------------------------------------------------------------- API

TorchValue load_torch_bytes(const uint8_t* data, size_t size, const std::string& name,
                            const TorchLoadOptions& opts) {
  const Zip zip(data, size, name, opts.verify_crc);
  // Every entry lives under one top-level directory, the archive name (the file's stem when torch.save wrote
  // it).
  FQ_CHECK(!zip.entries().empty(), "{}: empty zip archive (not a torch.save file)", name);
  const std::string& first = zip.entries().front().name;
  const auto slash = first.find('/');
  FQ_CHECK(slash != std::string::npos && slash > 0, "{}: zip entry '{}' is not under an archive directory",
           name, printable(first));
  const std::string archive = first.substr(0, slash);
  for (const auto& e : zip.entries())
    FQ_CHECK(e.name.size() > slash + 1 && e.name.compare(0, slash + 1, archive + "/") == 0,
             "{}: zip entry '{}' is outside the archive directory '{}'", name, printable(e.name),
             printable(archive));
  if (const ZipEntry* b = zip.find(archive + "/byteorder")) {
    const std::string order(reinterpret_cast<const char*>(zip.bytes(*b)), b->size);
    FQ_CHECK(order == "little", "{}: byteorder is '{}'; only little-endian files are supported", name,
             printable(order));
  }
  if (const ZipEntry* v = zip.find(archive + "/version")) {
    std::string s(reinterpret_cast<const char*>(zip.bytes(*v)), v->size);
    if (!s.empty() && s.back() == '\n') s.pop_back();
    FQ_CHECK(!s.empty() && s.size() <= 6 && s.find_first_not_of("0123456789") == std::string::npos,
             "{}: version record '{}' is not a number", name, printable(s));
  }
  const ZipEntry* pkl = zip.find(archive + "/data.pkl");
  FQ_CHECK(pkl, "{}: no '{}/data.pkl' in the archive (not a torch.save file)", name, printable(archive));
  Unpickler vm(zip.bytes(*pkl), pkl->size, zip, archive, name);
  return vm.run();
}

TorchValue load_torch_file(const std::string& path, const TorchLoadOptions& opts) {
  const MappedFile f(path);
  return load_torch_bytes(f.data(), f.size(), path, opts);
}

}  // namespace fq
