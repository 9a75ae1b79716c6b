// Optimizers and the learning-rate schedule of hwaga's training loops.
//
// AdamW exactly as torch.optim.AdamW (decoupled weight decay; bias-corrected moments):
//   p -= lr*wd*p   (only ParamKind::weight)
//   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g²
//   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
// Adam (stage 1, betas 0.5/0.9, wd 0) is the same with weight_decay = 0.
// Moments are f32, one pair per non-buffer Param, saved in checkpoints as
// "optim.m.<name>" / "optim.v.<name>" with the step count in the checkpoint's metadata.
#pragma once
#include <cstdint>
#include <string>

#include "core/tensor_map.h"
#include "train/param.h"

namespace hwaga::train {

struct AdamWOptions {
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 1e-4f;
};

class AdamW {
 public:
  AdamW() = default;
  explicit AdamW(AdamWOptions o) : opt_(o) {}
  const AdamWOptions& options() const { return opt_; }

  // One update of every trainable param with its current gradient. Threaded over params.
  void step(ParamSet& ps, float lr);
  int64_t steps() const { return t_; }

  // Checkpoint state: moments by "optim.m.<name>"/"optim.v.<name>" (views) and the step count.
  void save_state(const ParamSet& ps, TensorMap& out) const;
  // Restores moments for every param (missing ones -> error naming `source`) and the step count.
  void load_state(ParamSet& ps, const TensorMap& in, int64_t steps, const std::string& source);

 private:
  void ensure(const ParamSet& ps);
  AdamWOptions opt_;
  int64_t t_ = 0;
  std::vector<Tensor> m_, v_;  // parallel to ps.all()
};

// Linear warm-up from 0 over `warmup` steps to `lr`, then cosine from `lr` down to `min_lr` at
// `total` steps (constant min_lr after). total <= warmup means constant lr after warm-up.
// kind "constant" keeps lr after the warm-up.
struct LrSchedule {
  float lr = 1e-3f;
  float min_lr = 0.0f;
  int64_t warmup = 0;
  int64_t total = 0;
  std::string kind = "cosine";  // "cosine" | "constant"
  // The learning rate for (0-based) step `step`.
  float at(int64_t step) const;
};

}  // namespace hwaga::train
