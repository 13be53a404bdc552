// Crash safety of `flatquant calibrate` (issue 6): the binary is SIGKILLed at seeded random moments of a tiny
// stories260K schedule and restarted until it finishes. After every kill ART_DIR is either absent or complete
// (manifest.json, transforms.safetensors and calib_log.csv all present and readable), every finished layer
// file in ART_DIR.partial is a valid safetensors file, and the final transforms.safetensors is byte-identical
// to an uninterrupted run. No temporary (`*.tmp.<pid>`, `*.old.<pid>`) may outlive the final run.
// Needs the LibTorch build (FQ_HAVE_CALIB); skipped otherwise.
#include <gtest/gtest.h>

#ifdef FQ_HAVE_CALIB
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/fs.h"
#include "io/safetensors.h"

extern char** environ;
#endif
#include "test_util.h"

namespace fq::test {
namespace {

#ifdef FQ_HAVE_CALIB
namespace fs = std::filesystem;

// The calibrate command line as argv (no shell, so that the pid we kill is the tool itself).
std::vector<std::string> calib_args(const std::string& model, const std::string& data, const std::string& out) {
  return {FQ_BINARY, "calibrate", "--threads", "1", "--model", model, "--calib-data", data, "--out", out,
          "--set", "calib.epochs=1", "--set", "calib.nsamples=4", "--set", "calib.seqlen=32", "--set",
          "calib.bsz=2"};
}

class Child {
 public:
  Child(const std::vector<std::string>& args, const std::string& log) {
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    const int rc = posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) pid_ = -1;
  }
  pid_t pid() const { return pid_; }
  // Waits up to `ms`; true (and the status) when the process ended by itself.
  bool wait_for(int64_t ms, int* status) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < end) {
      if (waitpid(pid_, status, WNOHANG) == pid_) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }
  void kill_and_reap() {
    ::kill(pid_, SIGKILL);
    int st = 0;
    waitpid(pid_, &st, 0);
  }

 private:
  pid_t pid_ = -1;
};

// ART_DIR is absent, or complete: every file of the artifact present and readable.
void expect_absent_or_complete(const std::string& art, const std::string& when) {
  if (!fs::exists(art)) return;
  ASSERT_TRUE(file_exists(art + "/manifest.json")) << when << ": " << art << " exists without manifest.json";
  EXPECT_NO_THROW(nlohmann::json::parse(read_file(art + "/manifest.json"))) << when;
  EXPECT_NO_THROW(SafeTensors(art + "/transforms.safetensors")) << when;
  EXPECT_TRUE(file_exists(art + "/calib_log.csv")) << when;
}

// Finished layer files of an interrupted run are whole (they are renamed into place only when complete).
void expect_partial_layers_valid(const std::string& partial, const std::string& when) {
  if (!fs::is_directory(partial)) return;
  for (const auto& e : fs::directory_iterator(partial)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("layer_", 0) == 0 && n.size() > 12 && n.substr(n.size() - 12) == ".safetensors") {
      EXPECT_NO_THROW(SafeTensors(e.path().string())) << when << ": " << n;
    }
  }
}

TEST(CalibrateKill, RandomSigkillsThenResumeMatchesUninterrupted) {
  const std::string model = source_path(".cache/models/stories260K");
  const std::string data = data_path("wikitext2_raw/wiki.valid.nonempty.first100KB.txt");
  FQ_REQUIRE_FILE(model + "/config.json");
  FQ_REQUIRE_FILE(data);
  TempDir t;
  const std::string log = t.file("log.txt");

  // The uninterrupted reference, timed: kill moments are drawn within its duration.
  const auto t0 = std::chrono::steady_clock::now();
  {
    Child ref(calib_args(model, data, t.file("ref")), log);
    ASSERT_GT(ref.pid(), 0);
    int st = 0;
    ASSERT_TRUE(ref.wait_for(120000, &st)) << "reference run did not finish";
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << read_file(log);
  }
  const int64_t ref_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();

  const std::string art = t.file("art"), partial = art + ".partial";
  std::mt19937 rng(20261123);
  // Early kills land in the start-up and the first layers, late ones in the last layer and the final
  // write; a restart skips finished layers, so later runs are shorter.
  std::uniform_int_distribution<int64_t> when(ref_ms / 20, ref_ms * 9 / 10);
  const int max_kills = 8;
  int kills = 0, runs = 0;
  bool finished = false;
  while (!finished && runs < max_kills + 1) {
    ++runs;
    Child c(calib_args(model, data, art), log);
    ASSERT_GT(c.pid(), 0);
    int st = 0;
    // After max_kills kills let it finish.
    const int64_t delay = kills < max_kills ? when(rng) : 120000;
    if (c.wait_for(delay, &st)) {
      ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "run " << runs << ":\n" << read_file(log);
      finished = true;
    } else {
      ASSERT_LT(kills, max_kills) << "the final run did not finish";
      c.kill_and_reap();
      ++kills;
    }
    const std::string what = "after run " + std::to_string(runs) + (finished ? " (finished)" : " (killed)");
    int layers = 0;
    if (fs::is_directory(partial))
      for (const auto& e : fs::directory_iterator(partial)) layers += e.path().filename().string().rfind("layer_", 0) == 0;
    std::printf("[ kill     ] run %d: %s; %s, %d finished layer file(s) in ART_DIR.partial\n", runs,
                finished ? "finished" : fmt::format("killed at {} ms (uninterrupted run: {} ms)", delay, ref_ms).c_str(),
                fs::exists(art) ? "ART_DIR complete" : "no ART_DIR", layers);
    expect_absent_or_complete(art, what);
    expect_partial_layers_valid(partial, what);
  }
  ASSERT_TRUE(finished);
  EXPECT_GE(kills, 1);
  EXPECT_EQ(read_file(art + "/transforms.safetensors"), read_file(t.file("ref/transforms.safetensors")))
      << "transforms after " << kills << " kills differ from the uninterrupted run";
  EXPECT_EQ(read_file(art + "/calib_log.csv"), read_file(t.file("ref/calib_log.csv")));
  EXPECT_FALSE(fs::exists(partial));
  // Temporaries of killed runs are cleaned up by the later ones.
  for (const auto& e : fs::directory_iterator(t.path())) {
    const std::string n = e.path().filename().string();
    EXPECT_EQ(n.find(".tmp."), std::string::npos) << n << " left behind";
    EXPECT_EQ(n.find(".old."), std::string::npos) << n << " left behind";
  }
}
#else
TEST(CalibrateKill, RandomSigkillsThenResumeMatchesUninterrupted) {
  GTEST_SKIP() << "built without LibTorch: calibrate is unavailable";
}
#endif

}  // namespace
}  // namespace fq::test
