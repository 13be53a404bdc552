// A progress bar with rate and ETA on stderr. On a terminal it redraws one line; otherwise it prints a
// line at most every few seconds so that logs stay readable, and nothing for a task done within a second.
// Destroyed while an exception unwinds, it draws nothing more: the error line that follows is the last word.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace fq {

class Progress {
 public:
  Progress(std::string label, int64_t total, bool enabled = true);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  // Sets the number of finished units; `extra` is shown after the bar (e.g. a running ppl).
  void update(int64_t done, const std::string& extra = "");
  void finish(const std::string& extra = "");

 private:
  void draw(bool final_line, const std::string& extra);
  std::string label_, drawn_extra_;
  int64_t total_, done_ = 0, drawn_done_ = -1;
  bool enabled_, tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

std::string format_duration(double seconds);

}  // namespace fq
