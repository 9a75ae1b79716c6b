#include "progress.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>

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
//
// No signal handler runs on a computing thread: start_signal_thread() blocks SIGINT and SIGTERM
// in main before any other thread exists (so every thread inherits the block), and one thread
// takes them with sigwait(). An asynchronous handler used to run on whichever thread the kernel
// picked, in the middle of oneDNN's JIT kernels; about one SIGTERM in 40 during training then
// corrupted the heap ("corrupted size vs. prev_size" in dnnl_sgemm's free), with or without the
// changes of the day (reproduced with older builds).

namespace {

std::atomic<int> g_signal{0};
std::atomic<bool> g_guarded{false};
std::atomic<bool> g_thread_started{false};

sigset_t interrupt_set() {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGINT);
  sigaddset(&s, SIGTERM);
  return s;
}

// The default action for `sig` (terminate), taken from the signal thread.
[[noreturn]] void die_of(int sig) {
  ::signal(sig, SIG_DFL);
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, sig);
  ::pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
  ::raise(sig);
  ::_exit(128 + sig);  // (not reached)
}

void signal_loop() {
  const sigset_t set = interrupt_set();
  for (;;) {
    int sig = 0;
    if (::sigwait(&set, &sig) != 0) continue;
    int expected = 0;
    // Guarded: the first signal becomes the flag; the next one (or any without a guard) ends
    // the process as the default action would.
    if (!g_guarded.load() || !g_signal.compare_exchange_strong(expected, sig)) die_of(sig);
  }
}

}  // namespace

void start_signal_thread() {
  if (g_thread_started.exchange(true)) return;
  const sigset_t set = interrupt_set();
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread(signal_loop).detach();
}

InterruptGuard::InterruptGuard() {
  start_signal_thread();  // (main calls it first; this keeps other entry points, like tests, safe)
  g_signal = 0;
  g_guarded = true;
}

InterruptGuard::~InterruptGuard() { g_guarded = false; }

bool interrupted() { return g_signal.load() != 0; }
int interrupt_signal() { return g_signal.load(); }

void throw_if_interrupted() {
  if (int s = g_signal.load())
    fail("interrupted (", s == SIGINT ? "SIGINT" : s == SIGTERM ? "SIGTERM" : "signal",
         "); nothing of the unfinished work was kept");
}

}  // namespace hwaga::cli
