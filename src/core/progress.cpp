#include "core/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>
#include <exception>

namespace fq {

std::string format_duration(double s) {
  if (s < 0) s = 0;
  const auto t = (int64_t)(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (int)(t % 3600 / 60));
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, (int)(t % 60));
  return fmt::format("{:.1f}s", s);
}

Progress::Progress(std::string label, int64_t total, bool enabled)
    : label_(std::move(label)), total_(total), enabled_(enabled), tty_(::isatty(2) != 0) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

Progress::~Progress() {
  // Unwinding from an error: the error line follows, so draw no final state (end a half-drawn terminal
  // line so that the error starts on its own line).
  if (std::uncaught_exceptions() > 0) {
    if (tty_ && drawn_done_ >= 0 && !finished_) std::fprintf(stderr, "\n");
    return;
  }
  if (!finished_ && done_ > 0) finish();
}

void Progress::update(int64_t done, const std::string& extra) {
  done_ = done;
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  if (since < (tty_ ? 0.1 : 5.0) && done < total_) return;
  if (!tty_ && done >= total_ && drawn_done_ < 0 && extra.empty() &&
      std::chrono::duration<double>(now - start_).count() < 1.0)
    return;  // a sub-second task gets no log line
  last_draw_ = now;
  draw(false, extra);
}

void Progress::finish(const std::string& extra) {
  if (finished_) return;
  finished_ = true;
  // A log (not a terminal) already has the last state when update() drew it at the total.
  if (!tty_ && drawn_done_ == done_ && extra == drawn_extra_) return;
  if (!tty_ && drawn_done_ < 0 && extra.empty() &&
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count() < 1.0)
    return;
  if (enabled_) draw(true, extra);
}

void Progress::draw(bool final_line, const std::string& extra) {
  drawn_done_ = done_;
  drawn_extra_ = extra;
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double frac = total_ > 0 ? (double)done_ / (double)total_ : 1.0;
  const int width = 30;
  const int fill = (int)(frac * width + 0.5);
  std::string bar(fill, '#');
  bar.resize(width, '.');
  const double eta = done_ > 0 ? el * (double)(total_ - done_) / (double)done_ : 0.0;
  std::string line = fmt::format("{} [{}] {}/{} {:3.0f}% {} elapsed, ETA {}", label_, bar, done_, total_,
                                 frac * 100, format_duration(el), final_line ? "0.0s" : format_duration(eta));
  if (!extra.empty()) line += " " + extra;
  if (tty_) {
    std::fprintf(stderr, "\r%s\033[K%s", line.c_str(), final_line ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

}  // namespace fq
