// Regression tests for the hardening fixes that the CLI suite does not reach directly: the JSON nesting
// guard (deep nesting crashed json::dump / copies with a stack overflow), short excerpts in messages, and the
// clean-up of temporaries left by killed processes plus the atomic directory exchange (src/core/fs.h).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "core/fs.h"
#include "core/json_guard.h"
#include "eval/qa_tasks.h"
#include "flatquant/error.h"
#include "io/safetensors.h"
#include "io/tokenizer_loaders.h"
#include "model/config.h"
#include "model/recipe.h"
#include "test_util.h"

namespace fq {
namespace {

std::string nested(size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); }

void expect_error_containing(const std::function<void()>& f, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << what << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

TEST(JsonGuard, DepthLimit) {
  EXPECT_NO_THROW(check_json_depth(nested(kMaxJsonDepth), "x"));
  expect_error_containing([] { check_json_depth(nested(kMaxJsonDepth + 1), "f.json"); }, "f.json: JSON nested deeper");
  // Brackets inside strings, escaped quotes included, do not count.
  const std::string in_string = "{\"a\": \"" + std::string(200, '[') + "\\\"" + std::string(200, '{') + "\"}";
  EXPECT_NO_THROW(check_json_depth(in_string, "x"));
  EXPECT_NO_THROW(check_json_depth("", "x"));
  EXPECT_NO_THROW(check_json_depth("]]]}}}", "x"));  // unbalanced: left to the parser to refuse
}

TEST(JsonGuard, ExcerptIsShortAndOneLine) {
  const nlohmann::json big = nlohmann::json::array();
  nlohmann::json v = big;
  for (int i = 0; i < 1000; ++i) v.push_back("line\nbreak");
  const std::string e = json_excerpt(v);
  EXPECT_LE(e.size(), 80u);
  EXPECT_EQ(e.substr(e.size() - 3), "...");
  EXPECT_EQ(e.find('\n'), std::string::npos);
  EXPECT_EQ(json_excerpt(nlohmann::json(42)), "42");
}

// Each reader of JSON refuses a deeply nested file with an fq::Error (before: SIGSEGV in dump or copy).
TEST(JsonGuard, ReadersRefuseDeepNesting) {
  test::TempDir t;
  const std::string deep = nested(100000);

  const std::string cfg = t.file("config.json");
  write_file_atomic(cfg, "{\"architectures\": " + deep + "}");
  expect_error_containing([&] { ModelConfig::load(cfg); }, "config.json: JSON nested deeper");

  expect_error_containing([&] { tok::load_hf_json_text("{\"model\": " + deep + "}", "tokenizer.json"); },
                          "tokenizer.json: JSON nested deeper");

  const std::string rec = t.file("r.json");
  write_file_atomic(rec, "{\"name\": " + deep + "}");
  expect_error_containing([&] { load_recipe(rec); }, "r.json: JSON nested deeper");

  const std::string qa = t.file("piqa.jsonl");
  write_file_atomic(qa, "{\"goal\": " + deep + "}\n");
  expect_error_containing([&] { eval::load_task_file(eval::QaTask::piqa, qa, 0); }, "piqa.jsonl:1: JSON nested deeper");

  const std::string st = t.file("deep.safetensors");
  const std::string header = "{\"w\": " + deep + "}";
  std::string bytes(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(&bytes[0], &n, 8);
  write_file_atomic(st, bytes + header);
  expect_error_containing([&] { SafeTensors s(st); }, "deep.safetensors: header: JSON nested deeper");
}

// A pid that no longer exists: a child that has exited and been reaped.
pid_t dead_pid() {
  const pid_t p = fork();
  if (p == 0) _exit(0);
  int st = 0;
  waitpid(p, &st, 0);
  return p;
}

TEST(AtomicFiles, StaleTemporariesOfDeadProcessesAreRemoved) {
  test::TempDir t;
  const std::string out = t.file("out.bin");
  const std::string stale = out + ".tmp." + std::to_string(dead_pid());
  const std::string live = out + ".tmp.1";  // pid 1 always exists: a live writer's file stays
  const std::string other = t.file("other.bin.tmp.") + std::to_string(dead_pid());  // another path: not ours
  write_file_atomic(stale, "half");
  write_file_atomic(live, "busy");
  write_file_atomic(other, "x");
  write_file_atomic(out, "done");
  EXPECT_EQ(read_file(out), "done");
  EXPECT_FALSE(file_exists(stale));
  EXPECT_TRUE(file_exists(live));
  EXPECT_TRUE(file_exists(other));
}

TEST(AtomicFiles, DirReplaceIsAnExchangeAndCleansStaleTrees) {
  test::TempDir t;
  const std::string art = t.file("art");
  {
    AtomicDir d(art, false);
    write_file_atomic(d.file("a.txt"), "first");
    d.commit();
  }
  const std::string stale_tmp = art + ".tmp." + std::to_string(dead_pid());
  const std::string stale_old = art + ".old." + std::to_string(dead_pid());
  std::filesystem::create_directories(stale_tmp);
  std::filesystem::create_directories(stale_old);
  {
    AtomicDir d(art, true);
    EXPECT_FALSE(std::filesystem::exists(stale_tmp));
    EXPECT_FALSE(std::filesystem::exists(stale_old));
    write_file_atomic(d.file("b.txt"), "second");
    EXPECT_EQ(read_file(art + "/a.txt"), "first");  // the old one stays whole until commit
    d.commit();
  }
  EXPECT_EQ(read_file(art + "/b.txt"), "second");
  EXPECT_FALSE(file_exists(art + "/a.txt"));
  for (const auto& e : std::filesystem::directory_iterator(t.path()))
    EXPECT_EQ(e.path().filename().string(), "art") << "left behind: " << e.path();
}

}  // namespace
}  // namespace fq
