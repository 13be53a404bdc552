// Helpers shared by the tests: where the data is, temporary directories, and running the CLI.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "core/fs.h"

namespace fq::test {

// ../shared/data (FLATQUANT_DATA overrides); tests that need it skip when it is absent.
inline std::string data_path(const std::string& rel) { return path_join(data_dir(), rel); }
inline std::string source_path(const std::string& rel) { return path_join(FQ_SOURCE_DIR, rel); }

#define FQ_REQUIRE_FILE(p)                                         \
  do {                                                             \
    if (!::fq::file_exists(p)) GTEST_SKIP() << "missing " << (p); \
  } while (0)

// A fresh directory under the build tree's temp area, removed at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_join(path_, name); }

 private:
  std::string path_;
};

struct CliResult {
  int exit_code = -1;
  std::string out, err;
};
// Runs the flatquant binary with `args` (shell-quoted by the caller), capturing stdout and stderr.
CliResult run_cli(const std::string& args);

}  // namespace fq::test
