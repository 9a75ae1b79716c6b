#include "train/param.h"

#include <cmath>
#include <cstring>

#include "core/threads.h"

namespace hwaga::train {

Param& ParamSet::add(const std::string& name, const Shape& shape, ParamKind kind) {
  if (find(name)) throw Error("parameter " + name + " is defined twice");
  auto p = std::make_unique<Param>();
  p->name = name;
  p->value = Tensor::zeros(shape);
  if (kind != ParamKind::buffer) p->grad = Tensor::zeros(shape);
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

void ParamSet::zero_grad() {
  for (auto& p : params_)
    if (p->grad.defined()) std::memset(p->grad.data(), 0, p->grad.nbytes());
}

double ParamSet::clip_grad_norm(float max_norm) {
  double sum = 0;
  for (auto& p : params_) {
    if (!p->grad.defined()) continue;
    const float* g = p->grad.f32();
    double s = 0;
    for (int64_t i = 0, n = p->grad.numel(); i < n; i++) s += double(g[i]) * g[i];
    sum += s;
  }
  double norm = std::sqrt(sum);
  if (!std::isfinite(norm)) throw Error("the gradient norm is not finite (NaN or inf): the loss diverged; lower the learning rate");
  if (max_norm > 0 && norm > max_norm) {
    float scale = float(max_norm / (norm + 1e-6));
    for (auto& p : params_) {
      if (!p->grad.defined()) continue;
      float* g = p->grad.f32();
      for (int64_t i = 0, n = p->grad.numel(); i < n; i++) g[i] *= scale;
    }
  }
  return norm;
}

TensorMap ParamSet::values() const {
  TensorMap m;
  for (auto& p : params_) m[p->name] = p->value;
  return m;
}

void ParamSet::load_values(const TensorMap& m, const std::string& source) {
  for (auto& p : params_) {
    const Tensor& t = get_tensor(m, p->name, source);
    if (t.shape() != p->value.shape())
      throw Error(source + ": tensor " + p->name + " has shape " + shape_str(t.shape()) + ", expected " +
                  shape_str(p->value.shape()));
    Tensor f = t.dtype() == DType::F32 ? t : t.to(DType::F32);
    std::memcpy(p->value.data(), f.data(), p->value.nbytes());
  }
}

}  // namespace hwaga::train
