#include "progress.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>

#include "core/error.h"

namespace hwaga::cli {

// ---- progress bar ----

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  long s = long(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

ProgressBar::ProgressBar(std::string prefix, std::string label, int total, std::string unit, std::FILE* out)
    : prefix_(std::move(prefix)), label_(std::move(label)), unit_(std::move(unit)), total_(std::max(total, 0)), out_(out) {
  tty_ = ::isatty(::fileno(out_)) == 1;
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

double ProgressBar::seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void ProgressBar::update(int done) {
  done_ = std::clamp(done, 0, total_);
  if (tty_) {
    auto now = std::chrono::steady_clock::now();
    if (done_ < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    draw(false);
    return;
  }
  // Plain lines: one per completed tenth, at most one a second (never the 10/10 one: finish()
  // prints that), so a quick run prints only its final line.
  int tenth = total_ > 0 ? int(int64_t(done_) * 10 / total_) : 10;
  if (tenth > last_tenth_ && done_ < total_) {
    auto now = std::chrono::steady_clock::now();
    if (now - last_draw_ < std::chrono::seconds(1)) return;
    last_tenth_ = tenth;
    last_draw_ = now;
    draw(false);
  }
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  done_ = total_;
  draw(true);
}

void ProgressBar::draw(bool final) {
  const double t = seconds();
  const double rate = t > 0 ? done_ / t : 0.0;
  const std::string per = unit_ == "steps" ? "it/s" : unit_ + "/s";
  char stats[200];
  if (final) {
    std::snprintf(stats, sizeof stats, "%d/%d %s in %.1f s (%.1f %s)", done_, total_, unit_.c_str(), t, rate,
                  per.c_str());
  } else {
    const double eta = rate > 0 ? (total_ - done_) / rate : -1.0;
    std::snprintf(stats, sizeof stats, "%d/%d %s  %.1f %s  ETA %s", done_, total_, unit_.c_str(), rate, per.c_str(),
                  format_duration(eta).c_str());
  }
  if (tty_) {
    constexpr int kWidth = 24;
    const int fill = total_ > 0 ? int(int64_t(done_) * kWidth / total_) : kWidth;
    std::string bar(size_t(fill), '#');
    bar.append(size_t(kWidth - fill), '.');
    // \r + clear to end of line, so a shorter line leaves no rest of the previous one
    std::fprintf(out_, "\r\033[K%s%s [%s] %s", prefix_.c_str(), label_.c_str(), bar.c_str(), stats);
    if (final) std::fputc('\n', out_);
  } else {
    std::fprintf(out_, "%s%s: %s\n", prefix_.c_str(), label_.c_str(), stats);
  }
  std::fflush(out_);
}

// ---- interrupts ----

namespace {

std::atomic<int> g_signal{0};
struct sigaction g_old_int, g_old_term;
bool g_installed = false;

extern "C" void on_signal(int sig) {
  int expected = 0;
  g_signal.compare_exchange_strong(expected, sig);
  // The next signal takes the previous action (normally: terminate).
  ::sigaction(SIGINT, &g_old_int, nullptr);
  ::sigaction(SIGTERM, &g_old_term, nullptr);
}

}  // namespace

InterruptGuard::InterruptGuard() {
  g_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  ::sigaction(SIGINT, &sa, &g_old_int);
  ::sigaction(SIGTERM, &sa, &g_old_term);
  g_installed = true;
}

InterruptGuard::~InterruptGuard() {
  if (!g_installed) return;
  ::sigaction(SIGINT, &g_old_int, nullptr);
  ::sigaction(SIGTERM, &g_old_term, nullptr);
  g_installed = false;
}

bool interrupted() { return g_signal.load() != 0; }
int interrupt_signal() { return g_signal.load(); }

void throw_if_interrupted() {
  if (int s = g_signal.load())
    fail("interrupted (", s == SIGINT ? "SIGINT" : s == SIGTERM ? "SIGTERM" : "signal",
         "); nothing of the unfinished work was kept");
}

}  // namespace hwaga::cli
