#include "core/fs.h"

#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "flatquant/error.h"

namespace fq {

MappedFile::MappedFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", path);
  }
  size_ = (size_t)st.st_size;
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      fail("{}: mmap failed: {}", path, std::strerror(errno));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot open: {}", path, std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string path_join(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (a.back() == '/') return a + b;
  return a + "/" + b;
}

namespace {

// "<path>.tmp.<pid>" and "<path>.old.<pid>" of a process that was killed before it could clean up (SIGKILL,
// power loss). They are removed once that process is gone; a live one may still be writing its own.
void remove_stale_temporaries(const std::string& path) {
  namespace sfs = std::filesystem;
  const sfs::path p(path);
  const sfs::path dir = p.parent_path().empty() ? sfs::path(".") : p.parent_path();
  const std::string base = p.filename().string();
  std::vector<sfs::path> stale;
  std::error_code ec;
  for (sfs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string n = it->path().filename().string();
    for (const char* tag : {".tmp.", ".old."}) {
      const std::string pre = base + tag;
      if (n.size() <= pre.size() || n.compare(0, pre.size(), pre) != 0) continue;
      const std::string digits = n.substr(pre.size());
      if (digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
      const pid_t pid = (pid_t)std::stol(digits);
      if (pid == ::getpid()) continue;                         // our own: handled by the caller
      if (::kill(pid, 0) == 0 || errno == EPERM) continue;     // that process still exists
      stale.push_back(it->path());
    }
  }
  for (const sfs::path& s : stale) remove_tree(s.string());
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  remove_stale_temporaries(path_);
  tmp_ = path_ + ".tmp." + std::to_string(::getpid());
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("{}: cannot create: {}", path_, std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) {
  FQ_ASSERT(fd_ >= 0);
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("{}: write failed: {}", path_, std::strerror(errno));
    }
    p += w;
    n -= (size_t)w;
  }
}

void AtomicFile::commit() {
  FQ_ASSERT(fd_ >= 0);
  if (::fsync(fd_) != 0) fail("{}: fsync failed: {}", path_, std::strerror(errno));
  ::close(fd_);
  fd_ = -1;
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp_.c_str());
    fail("{}: rename failed: {}", path_, std::strerror(e));
  }
}

void write_file_atomic(const std::string& path, std::string_view content) {
  AtomicFile f(path);
  f.write(content);
  f.commit();
}

namespace {
int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
  ::remove(path);
  return 0;  // keep going: best effort
}
}  // namespace

// POSIX nftw rather than std::filesystem::remove_all: linked with PyTorch's LibTorch (built by another GCC),
// remove_all crashed on the GPU machine, apparently through std::filesystem symbols the LibTorch libraries
// export. Depth-first, no symlink following; errors are ignored as before (best effort).
void remove_tree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return;
  if (!S_ISDIR(st.st_mode)) {
    ::unlink(path.c_str());
    return;
  }
  ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

AtomicDir::AtomicDir(std::string path, bool replace_existing) : path_(std::move(path)), replace_(replace_existing) {
  while (path_.size() > 1 && path_.back() == '/') path_.pop_back();
  if (!replace_ && std::filesystem::exists(path_) && !std::filesystem::is_empty(path_))
    fail("{}: output directory exists and is not empty (pass --force to replace it)", path_);
  remove_stale_temporaries(path_);
  tmp_ = path_ + ".tmp." + std::to_string(::getpid());
  remove_tree(tmp_);
  std::error_code ec;
  std::filesystem::create_directories(tmp_, ec);
  if (ec) fail("{}: cannot create directory: {}", tmp_, ec.message());
}

AtomicDir::~AtomicDir() {
  if (!committed_) remove_tree(tmp_);
}

void AtomicDir::commit() {
  std::error_code ec;
  std::string old;
  // Replacing: swap the two directories in one step (Linux renameat2), so that <path> is never missing;
  // the old tree, now under the temporary name, is removed after. Other systems: move aside, then rename.
#ifdef RENAME_EXCHANGE
  if (std::filesystem::exists(path_) &&
      ::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, path_.c_str(), RENAME_EXCHANGE) == 0) {
    committed_ = true;
    remove_tree(tmp_);
    return;
  }
#endif
  if (std::filesystem::exists(path_)) {
    old = path_ + ".old." + std::to_string(::getpid());
    remove_tree(old);
    std::filesystem::rename(path_, old, ec);
    if (ec) fail("{}: cannot move the existing directory aside: {}", path_, ec.message());
  }
  std::filesystem::rename(tmp_, path_, ec);
  if (ec) fail("{}: cannot rename {} into place: {}", path_, tmp_, ec.message());
  committed_ = true;
  if (!old.empty()) remove_tree(old);
}

std::string data_dir() {
  const char* e = std::getenv("FLATQUANT_DATA");
  if (e && *e) return e;
  return "../shared/data";
}

}  // namespace fq
