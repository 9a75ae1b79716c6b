// What a training run reports: a JSONL file with one object per step (and events: "start",
// "resume", "checkpoint", "sample", "end"), and a live line on stderr with step, loss, learning
// rate, throughput and ETA.
//
//   TrainLog log(path, resume_step);   // resume: lines with "step" > resume_step are dropped
//   log.step({{"step", s}, {"loss", l}, {"lr", lr}, {"items_per_s", ips}});
//   log.event("checkpoint", {{"path", p}});
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

namespace hwaga::train {

class TrainLog {
 public:
  // path "" = no JSONL file. When resume_step >= 0 the existing file is kept up to and including
  // step resume_step (later lines, from a run killed after its last checkpoint, are dropped, so
  // the curve continues without duplicates); else the file is started afresh.
  TrainLog(const std::string& path, int64_t resume_step);
  ~TrainLog();
  TrainLog(const TrainLog&) = delete;
  TrainLog& operator=(const TrainLog&) = delete;

  void step(const nlohmann::json& record);  // must hold "step"; one line, flushed
  void event(const std::string& kind, nlohmann::json record);

 private:
  void write_line(const nlohmann::json& j);
  std::FILE* f_ = nullptr;
  std::string path_;
};

// The live line: "step 1200/20000 loss 3.412 lr 4.8e-04 312 img/s ETA 1:02:11" redrawn in place on
// a terminal, or printed every `every` steps (and at the last) when stderr is not one.
class TrainProgress {
 public:
  TrainProgress(std::string prefix, int64_t first_step, int64_t total_steps, std::string unit, int every = 50);
  // items: how many images/tokens this step processed (for the rate).
  void update(int64_t step, double loss, float lr, double items, const std::string& extra = "");
  void finish();

 private:
  std::string prefix_, unit_;
  int64_t first_, total_;
  int every_;
  bool tty_;
  double items_ = 0;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace hwaga::train
