#include "train/train_log.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "core/error.h"

namespace hwaga::train {

TrainLog::TrainLog(const std::string& path, int64_t resume_step) : path_(path) {
  if (path.empty()) return;
  std::vector<std::string> keep;
  if (resume_step >= 0) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      try {
        auto j = nlohmann::json::parse(line);
        if (j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() > resume_step) continue;
      } catch (const std::exception&) {
        continue;  // a torn last line from a kill
      }
      keep.push_back(line);
    }
  }
  f_ = std::fopen(path.c_str(), "w");
  if (!f_) throw Error("cannot write the training log " + path + ": " + std::strerror(errno));
  for (auto& l : keep) std::fprintf(f_, "%s\n", l.c_str());
  std::fflush(f_);
}

TrainLog::~TrainLog() {
  if (f_) std::fclose(f_);
}

void TrainLog::write_line(const nlohmann::json& j) {
  if (!f_) return;
  std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (std::fprintf(f_, "%s\n", s.c_str()) < 0 || std::fflush(f_) != 0)
    throw Error("cannot write the training log " + path_ + ": " + std::strerror(errno));
}

void TrainLog::step(const nlohmann::json& record) { write_line(record); }

void TrainLog::event(const std::string& kind, nlohmann::json record) {
  record["event"] = kind;
  write_line(record);
}

static std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int64_t t = int64_t(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)(t / 3600), (long long)(t / 60 % 60), (long long)(t % 60));
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld", (long long)(t / 60), (long long)(t % 60));
  return buf;
}

TrainProgress::TrainProgress(std::string prefix, int64_t first_step, int64_t total_steps, std::string unit, int every)
    : prefix_(std::move(prefix)), unit_(std::move(unit)), first_(first_step), total_(total_steps), every_(every),
      tty_(isatty(fileno(stderr))), start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

void TrainProgress::update(int64_t step, double loss, float lr, double items, const std::string& extra) {
  items_ += items;
  auto now = std::chrono::steady_clock::now();
  double el = std::chrono::duration<double>(now - start_).count();
  bool last = step + 1 >= total_;
  if (tty_) {
    if (!last && std::chrono::duration<double>(now - last_draw_).count() < 0.2) return;
  } else if (!last && (step + 1) % every_ != 0 && step != first_) {
    return;
  }
  last_draw_ = now;
  double done = double(step + 1 - first_);
  double eta = done > 0 ? el / done * double(total_ - step - 1) : NAN;
  std::fprintf(stderr, "%s%sstep %lld/%lld  loss %.4f  lr %.2e  %.1f %s/s  ETA %s%s%s%s", tty_ ? "\r\033[K" : "",
               prefix_.c_str(), (long long)(step + 1), (long long)total_, loss, lr, el > 0 ? items_ / el : 0.0,
               unit_.c_str(), fmt_duration(eta).c_str(), extra.empty() ? "" : "  ", extra.c_str(), tty_ ? "" : "\n");
  std::fflush(stderr);
}

void TrainProgress::finish() {
  if (tty_) std::fprintf(stderr, "\n");
}

}  // namespace hwaga::train
