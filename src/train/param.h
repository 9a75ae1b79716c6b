// Trainable parameters: an f32 value and an f32 gradient of the same shape, named with the key
// the released checkpoints (and hwaga's model file) use, e.g. "stage1.encoder.conv_in.weight".
//
//   ParamSet ps;
//   Param& w = ps.add("stage2.head.weight", {K, C}, ParamKind::weight);  // zero-filled
//   ... forward, backward: w.grad[...] += ... ...
//   float norm = ps.clip_grad_norm(1.0f);   // global L2 norm before clipping
//   opt.step(ps, lr); ps.zero_grad();
//
// Buffers that are trained but not by gradients (the EMA codebook) are Params with
// kind = buffer: they travel in checkpoints and exports, the optimizer skips them.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "core/tensor_map.h"

namespace hwaga::train {

class TrainOps;

// How the optimizer treats a parameter. AdamW decays `weight` only (Linear/Conv weights), as
// the minGPT-style recipes do; biases, norm gains and embeddings are not decayed.
enum class ParamKind { weight, no_decay, buffer };

struct Param {
  std::string name;
  Tensor value;  // f32
  Tensor grad;   // f32, same shape (undefined for buffers)
  ParamKind kind = ParamKind::weight;
  // Stays in host memory when its ParamSet moves to a device (ParamSet::to_device): a buffer the
  // host updates itself (the RQ-VAE's EMA codebook, whose quantizer runs on the host).
  bool host_only = false;

  float* v() { return value.f32(); }
  float* g() { return grad.f32(); }
  int64_t numel() const { return value.numel(); }
};

class ParamSet {
 public:
  // A new zero-filled parameter (and zero gradient). Names must be unique (throws otherwise).
  Param& add(const std::string& name, const Shape& shape, ParamKind kind = ParamKind::weight);
  Param& get(const std::string& name);  // throws naming the parameter when missing
  const Param* find(const std::string& name) const;

  std::vector<std::unique_ptr<Param>>& all() { return params_; }
  const std::vector<std::unique_ptr<Param>>& all() const { return params_; }
  int64_t num_trainable() const;  // elements of non-buffer params

  // Moves every value and gradient onto the device of `ops` (which ParamSet and AdamW then use
  // for zero_grad, clip_grad_norm, the update), except host_only params. Parameters start on the CPU.
  void to_device(TrainOps& ops);
  TrainOps& ops() const;
  Device device() const;

  void zero_grad();
  // Global L2 norm of all gradients (in double); if max_norm > 0 and the norm exceeds it, every
  // gradient is scaled by max_norm / (norm + 1e-6) (torch.nn.utils.clip_grad_norm_). Returns the
  // norm before clipping. A non-finite norm throws ("gradient is NaN/inf at step ...").
  double clip_grad_norm(float max_norm);

  // Values by name (views, no copy) of parameters on the CPU (throws for device parameters).
  TensorMap values() const;
  // Values by name on the host: views of host parameters, copies of device ones.
  TensorMap host_values() const;
  // Copies values from `m` (every param must be present with its shape; f32/bf16/f16 accepted).
  // Errors name `source` and the tensor.
  void load_values(const TensorMap& m, const std::string& source);

 private:
  std::vector<std::unique_ptr<Param>> params_;
  TrainOps* ops_ = nullptr;  // null: the CPU ops
};

}  // namespace hwaga::train
