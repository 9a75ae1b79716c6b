#include "train/param.h"

#include <cmath>
#include <cstring>

#include "core/threads.h"
#include "train/train_ops.h"

namespace hwaga::train {

Param& ParamSet::add(const std::string& name, const Shape& shape, ParamKind kind) {
  if (find(name)) throw Error("parameter " + name + " is defined twice");
  auto p = std::make_unique<Param>();
  p->name = name;
  p->value = ops().zeros(shape);
  if (kind != ParamKind::buffer) p->grad = ops().zeros(shape);
  p->kind = kind;
  params_.push_back(std::move(p));
  return *params_.back();
}

Param& ParamSet::get(const std::string& name) {
  for (auto& p : params_)
    if (p->name == name) return *p;
  throw Error("no parameter named " + name);
}

const Param* ParamSet::find(const std::string& name) const {
  for (auto& p : params_)
    if (p->name == name) return p.get();
  return nullptr;
}

int64_t ParamSet::num_trainable() const {
  int64_t n = 0;
  for (auto& p : params_)
    if (p->kind != ParamKind::buffer) n += p->numel();
  return n;
}

TrainOps& ParamSet::ops() const { return ops_ ? *ops_ : cpu_train_ops(); }
Device ParamSet::device() const { return ops().device(); }

void ParamSet::to_device(TrainOps& ops) {
  if (&ops == &this->ops()) return;
  TrainOps& from = this->ops();
  for (auto& p : params_) {
    if (p->host_only) continue;
    Tensor host = from.download(p->value);
    p->value = ops.upload(host);
    if (p->grad.defined()) p->grad = ops.zeros(p->grad.shape());
  }
  ops_ = &ops;
}

void ParamSet::zero_grad() {
  TrainOps& o = ops();
  for (auto& p : params_)
    if (p->grad.defined()) o.fill(p->grad.f32(), p->grad.numel(), 0.0f);
}

double ParamSet::clip_grad_norm(float max_norm) {
  TrainOps& o = ops();
  double sum = 0;
  for (auto& p : params_) {
    if (!p->grad.defined()) continue;
    sum += o.sum_squares(p->grad.f32(), p->grad.numel());
  }
  double norm = std::sqrt(sum);
  if (!std::isfinite(norm)) throw Error("the gradient norm is not finite (NaN or inf): the loss diverged; lower the learning rate");
  if (max_norm > 0 && norm > max_norm) {
    float scale = float(max_norm / (norm + 1e-6));
    for (auto& p : params_)
      if (p->grad.defined()) o.scale(p->grad.f32(), scale, p->grad.numel());
  }
  return norm;
}

TensorMap ParamSet::values() const {
  HWAGA_CHECK(device() == Device::CPU, "ParamSet::values: the parameters live on ", device_name(device()),
              "; use host_values()");
  TensorMap m;
  for (auto& p : params_) m[p->name] = p->value;
  return m;
}

TensorMap ParamSet::host_values() const {
  if (device() == Device::CPU) return values();
  TensorMap m;
  for (auto& p : params_) m[p->name] = p->value.device() == Device::CPU ? p->value : ops().download(p->value);
  return m;
}

void ParamSet::load_values(const TensorMap& m, const std::string& source) {
  for (auto& p : params_) {
    const Tensor& t = get_tensor(m, p->name, source);
    if (t.shape() != p->value.shape())
      throw Error(source + ": tensor " + p->name + " has shape " + shape_str(t.shape()) + ", expected " +
                  shape_str(p->value.shape()));
    Tensor f = t.dtype() == DType::F32 ? t : t.to(DType::F32);
    if (p->value.device() == Device::CPU)
      std::memcpy(p->value.data(), f.data(), p->value.nbytes());
    else
      ops().write(p->value.data(), f.data(), p->value.nbytes());
  }
}

}  // namespace hwaga::train
