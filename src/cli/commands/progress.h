// Progress on stderr for the long-running commands (generate, gallery, bench), and Ctrl-C that
// ends a run cleanly.
//
//   ProgressBar bar("candidates 1-4", total_steps);
//   ... bar.update(done) after each step ...      (cheap: redraws at most ~10 times a second)
//   bar.finish();                                 (final line with the total time)
//
// On a terminal the bar redraws one line in place:
//   "hwaga generate: [########........] 128/256 steps  41.3 it/s  ETA 0:03"
// When stderr is not a terminal (a log file, a test), it prints plain lines instead, one each
// time another tenth of the steps is done (at most one a second), so logs stay short.
//
// Interrupts: InterruptGuard turns the first SIGINT/SIGTERM into a flag (a second one kills at
// once, as usual); throw_if_interrupted() then throws hwaga::Error("interrupted"), so the
// command unwinds through its destructors and its temporary outputs are removed (OutputSet).
#pragma once
#include <chrono>
#include <cstdio>
#include <string>

namespace hwaga::cli {

class ProgressBar {
 public:
  // `prefix` starts every line (e.g. "hwaga generate: "), `label` names what runs, `unit` what
  // is counted ("steps", "pictures").
  ProgressBar(std::string prefix, std::string label, int total, std::string unit = "steps", std::FILE* out = stderr);
  // Force the TTY or plain style (tests); by default isatty(fileno(out)) decides.
  void set_tty(bool tty) { tty_ = tty; }
  void update(int done);
  // Ends the line (TTY) or prints the last plain line: "... 256/256 steps in 6.2 s (41.3 it/s)".
  void finish();

  double seconds() const;  // since construction
  int done() const { return done_; }

 private:
  void draw(bool final);
  std::string prefix_, label_, unit_;
  int total_ = 0, done_ = 0;
  int last_tenth_ = 0;
  bool tty_ = false, finished_ = false;
  std::FILE* out_;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// "0:07", "12:34", "1:02:03".
std::string format_duration(double seconds);

// Blocks SIGINT and SIGTERM in the calling thread (and so in every thread started after it) and
// starts the one thread that receives them with sigwait(). main() calls it before anything else;
// without a live InterruptGuard a signal ends the process as its default action does.
void start_signal_thread();

// While one lives, SIGINT and SIGTERM set a flag instead of killing the process (the first one
// only; a second Ctrl-C kills). Not nestable.
class InterruptGuard {
 public:
  InterruptGuard();
  ~InterruptGuard();
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;
};
bool interrupted();
// Throws hwaga::Error("interrupted (signal N); ...") when a signal was caught.
void throw_if_interrupted();
// The signal that interrupted the run (0 when none): exit with 128 + it.
int interrupt_signal();

}  // namespace hwaga::cli
