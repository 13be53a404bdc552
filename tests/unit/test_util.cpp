#include "test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>

namespace fq::test {

TempDir::TempDir() {
  static std::atomic<int> counter{0};  // test-local uniqueness only
  auto base = std::filesystem::temp_directory_path() / "flatquant-tests";
  std::filesystem::create_directories(base);
  path_ = (base / ("t" + std::to_string(::getpid()) + "_" + std::to_string(counter++))).string();
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

CliResult run_cli(const std::string& args) {
  TempDir t;
  const std::string out = t.file("stdout"), err = t.file("stderr");
  const std::string cmd = std::string(FQ_BINARY) + " " + args + " >" + out + " 2>" + err;
  const int st = std::system(cmd.c_str());
  CliResult r;
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.out = file_exists(out) ? read_file(out) : "";
  r.err = file_exists(err) ? read_file(err) : "";
  return r;
}

}  // namespace fq::test
