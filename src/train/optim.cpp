#include "train/optim.h"

#include <cmath>
#include <cstring>
#include <numbers>

#include "core/threads.h"
#include "train/train_ops.h"

namespace hwaga::train {

void AdamW::ensure(const ParamSet& ps) {
  if (m_.size() == ps.all().size()) return;
  m_.clear();
  v_.clear();
  TrainOps& ops = ps.ops();
  for (auto& p : ps.all()) {
    bool trainable = p->kind != ParamKind::buffer;
    m_.push_back(trainable ? ops.zeros(p->value.shape()) : Tensor());
    v_.push_back(trainable ? ops.zeros(p->value.shape()) : Tensor());
  }
}

void AdamW::step(ParamSet& ps, float lr) {
  ensure(ps);
  HWAGA_CHECK(m_.empty() || !m_[0].defined() || m_[0].device() == ps.device(),
              "AdamW: the moments live on another device than the parameters");
  TrainOps& ops = ps.ops();
  t_++;
  const float b1 = opt_.beta1, b2 = opt_.beta2, eps = opt_.eps;
  const double bc1 = 1.0 - std::pow(double(b1), double(t_));
  const double bc2 = 1.0 - std::pow(double(b2), double(t_));
  const float step_size = float(lr / bc1);
  const float inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
  auto& all = ps.all();
  for (size_t i = 0; i < all.size(); i++) {
    Param& p = *all[i];
    if (p.kind == ParamKind::buffer) continue;
    const float decay = p.kind == ParamKind::weight ? 1.0f - lr * opt_.weight_decay : 1.0f;
    ops.adamw(p.v(), p.g(), m_[i].f32(), v_[i].f32(), p.numel(), decay, b1, b2, step_size, inv_sqrt_bc2, eps);
  }
}

void AdamW::save_state(const ParamSet& ps, TensorMap& out) const {
  if (m_.size() != ps.all().size()) return;  // no step taken yet: no moments
  for (size_t i = 0; i < ps.all().size(); i++) {
    if (!m_[i].defined()) continue;
    const bool host = m_[i].device() == Device::CPU;
    out["optim.m." + ps.all()[i]->name] = host ? m_[i] : ps.ops().download(m_[i]);
    out["optim.v." + ps.all()[i]->name] = host ? v_[i] : ps.ops().download(v_[i]);
  }
}

void AdamW::load_state(ParamSet& ps, const TensorMap& in, int64_t steps, const std::string& source) {
  m_.clear();
  v_.clear();
  t_ = steps;
  if (steps == 0) return;
  ensure(ps);
  for (size_t i = 0; i < ps.all().size(); i++) {
    if (!m_[i].defined()) continue;
    const std::string& n = ps.all()[i]->name;
    for (auto [dst, key] : {std::pair{&m_[i], "optim.m." + n}, std::pair{&v_[i], "optim.v." + n}}) {
      const Tensor& t = get_tensor(in, key, source);
      t.expect(dst->shape(), source + ": " + key);
      t.expect(DType::F32, source + ": " + key);
      ps.ops().write(dst->data(), t.data(), dst->nbytes());
    }
  }
}

float LrSchedule::at(int64_t step) const {
  if (warmup > 0 && step < warmup) return lr * float(step + 1) / float(warmup);
  if (kind == "constant" || total <= warmup) return lr;
  if (step >= total) return min_lr;
  double progress = double(step - warmup) / double(total - warmup);
  return float(min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(std::numbers::pi * progress)));
}

}  // namespace hwaga::train
