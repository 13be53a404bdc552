// Files: read-only memory maps, whole-file reads, and crash-safe writes. Nothing the tool writes is ever
// visible half-written: files go to a temporary name in the same directory and are renamed into place
// after fsync; directories are built under a temporary name and renamed as a whole.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace fq {

// Read-only mmap of a whole file (RAII). Empty files map to data() == nullptr, size() == 0.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

std::string read_file(const std::string& path);
bool file_exists(const std::string& path);
bool is_directory(const std::string& path);
std::string path_join(const std::string& a, const std::string& b);

// A file written under "<path>.tmp.<pid>" and renamed to <path> by commit(). Destroyed without commit(),
// the temporary is removed and <path> is untouched. Temporaries of <path> left by killed processes (their
// pid no longer exists) are removed when the next AtomicFile / AtomicDir of the same <path> is created.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

void write_file_atomic(const std::string& path, std::string_view content);

// A directory assembled under "<path>.tmp.<pid>" and moved to <path> by commit() (replacing an existing
// directory only when allowed, by an atomic exchange on Linux: <path> is never absent or half-replaced).
// Destroyed without commit(), the temporary tree is removed.
class AtomicDir {
 public:
  AtomicDir(std::string path, bool replace_existing);
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;
  // Where to write files now.
  const std::string& tmp_path() const { return tmp_; }
  std::string file(const std::string& name) const { return path_join(tmp_, name); }
  void commit();

 private:
  std::string path_, tmp_;
  bool replace_;
  bool committed_ = false;
};

void remove_tree(const std::string& path);

// Directory with the shared test data: $FLATQUANT_DATA, else "../shared/data".
std::string data_dir();

}  // namespace fq
