// The patch-GAN discriminator and the adversarial loss of stage-1 training (see patch_gan.h).
// Legend: B batch, C channels, H/W size, L logits per picture.
#include "train/patch_gan.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "train/conv_ops.h"

namespace hwaga::train {

namespace {

constexpr float kSlope = 0.2f;       // LeakyReLU
constexpr float kBnEps = 1e-5f;      // nn.BatchNorm2d defaults
constexpr float kBnMomentum = 0.1f;
constexpr int kK = 4, kPad = 1;      // every conv: 4x4, padding 1

cpu::Conv2dShape shape_of(const Tensor& x, int cin, int cout, int k, int stride, int pt, int pl, int pb, int pr) {
  HWAGA_CHECK(x.ndim() == 4 && x.dim(1) == cin, "conv: expected input [B,", cin, ",H,W], found ", shape_str(x.shape()));
  return {x.dim(0), cin, x.dim(2), x.dim(3), cout, k, k, stride, pt, pl, pb, pr};
}

double l2_norm(const float* v, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(v[i]) * v[i];
  return std::sqrt(s);
}

double mean_of(const Tensor& t) {
  double s = 0;
  for (int64_t i = 0; i < t.numel(); ++i) s += t.f32()[i];
  return s / double(t.numel());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// PatchDiscriminator

PatchDiscriminator::PatchDiscriminator(int in_channels, int ndf, int layers) : in_channels_(in_channels) {
  if (in_channels < 1 || ndf < 1 || layers < 1)
    fail("discriminator: channels, ndf and layers must be positive, got ", in_channels, ", ", ndf, ", ", layers);
  auto add_layer = [&](int cin, int cout, int stride, bool bias, bool bn, bool act) {
    Layer l;
    l.cin = cin, l.cout = cout, l.stride = stride, l.act = act;
    // index in nn.Sequential: conv, [BatchNorm], [LeakyReLU] in order
    int idx = 0;
    for (const Layer& p : layers_) idx += 1 + (p.bn_w ? 1 : 0) + (p.act ? 1 : 0);
    const std::string conv = "discriminator.main." + std::to_string(idx);
    l.w = &ps_.add(conv + ".weight", {cout, cin, kK, kK}, ParamKind::weight);
    if (bias) l.b = &ps_.add(conv + ".bias", {cout}, ParamKind::no_decay);
    if (bn) {
      const std::string n = "discriminator.main." + std::to_string(idx + 1);
      l.bn_w = &ps_.add(n + ".weight", {cout}, ParamKind::no_decay);
      l.bn_b = &ps_.add(n + ".bias", {cout}, ParamKind::no_decay);
      l.bn_mean = &ps_.add(n + ".running_mean", {cout}, ParamKind::buffer);
      l.bn_var = &ps_.add(n + ".running_var", {cout}, ParamKind::buffer);
    }
    layers_.push_back(l);
  };
  add_layer(in_channels, ndf, 2, true, false, true);
  int mult = 1;
  for (int n = 1; n < layers; ++n) {
    const int prev = mult;
    mult = std::min(1 << std::min(n, 3), 8);
    add_layer(ndf * prev, ndf * mult, 2, false, true, true);
  }
  const int prev = mult;
  mult = std::min(1 << std::min(layers, 3), 8);
  add_layer(ndf * prev, ndf * mult, 1, false, true, true);
  add_layer(ndf * mult, 1, 1, true, false, false);
}

int64_t PatchDiscriminator::logits_size(int64_t size, int layers) {
  int64_t s = size;
  for (int i = 0; i < layers && s >= 2; ++i) s = (s + 2 * kPad - kK) / 2 + 1;  // the stride-2 convs
  if (s < 2) return 0;
  return s - 2;  // two stride-1 convs, each one position smaller
}

void PatchDiscriminator::init_weights(uint64_t seed) {
  for (Layer& l : layers_) {
    TrainRng rw(mix_seed(seed, l.w->name));
    for (int64_t i = 0; i < l.w->numel(); ++i) l.w->v()[i] = 0.02f * rw.normal();
    if (l.b) {
      const float bound = 1.0f / std::sqrt(float(l.cin * kK * kK));
      TrainRng rb(mix_seed(seed, l.b->name));
      for (int64_t i = 0; i < l.b->numel(); ++i) l.b->v()[i] = rb.uniform(-bound, bound);
    }
    if (l.bn_w) {
      TrainRng rn(mix_seed(seed, l.bn_w->name));
      for (int64_t i = 0; i < l.cout; ++i) {
        l.bn_w->v()[i] = 1.0f + 0.02f * rn.normal();
        l.bn_b->v()[i] = 0.0f;
        l.bn_mean->v()[i] = 0.0f;
        l.bn_var->v()[i] = 1.0f;
      }
    }
  }
}

Tensor PatchDiscriminator::forward(const Tensor& in) {
  Tensor x = in;
  for (Layer& l : layers_) {
    const cpu::Conv2dShape s = shape_of(x, l.cin, l.cout, kK, l.stride, kPad, kPad, kPad, kPad);
    if (s.Ho() < 1 || s.Wo() < 1)
      fail("discriminator: a ", x.dim(2), "x", x.dim(3), " input is too small for its ", layers_.size(), " convolutions");
    Tensor y = Tensor::empty({s.B, l.cout, s.Ho(), s.Wo()});
    train::conv2d_forward(s, x.f32(), l.w->v(), l.b ? l.b->v() : nullptr, y.f32());
    l.x = x;
    const int64_t N = s.Ho() * s.Wo();
    if (l.bn_w) {
      l.pre = y;
      l.mean = Tensor::empty({l.cout});
      l.rstd = Tensor::empty({l.cout});
      Tensor var = Tensor::empty({l.cout});
      y = Tensor::empty(l.pre.shape());
      batch_norm_train_forward(l.pre.f32(), l.bn_w->v(), l.bn_b->v(), y.f32(), l.mean.f32(), l.rstd.f32(), var.f32(),
                               s.B, l.cout, N, kBnEps);
      for (int c = 0; c < l.cout; ++c) {
        float& rm = l.bn_mean->v()[c];
        float& rv = l.bn_var->v()[c];
        rm = (1.0f - kBnMomentum) * rm + kBnMomentum * l.mean.f32()[c];
        rv = (1.0f - kBnMomentum) * rv + kBnMomentum * var.f32()[c];
      }
    }
    if (l.act) leaky_relu_forward(y.f32(), y.f32(), y.numel(), kSlope);
    l.out = y;
    x = y;
  }
  return x;
}

Tensor PatchDiscriminator::backward(const Tensor& dlogits, bool need_dx) {
  Tensor dy = dlogits.clone();
  for (size_t i = layers_.size(); i-- > 0;) {
    Layer& l = layers_[i];
    HWAGA_CHECK(l.x.defined() && dy.shape() == l.out.shape(), "discriminator backward without a matching forward");
    if (l.act) leaky_relu_backward(l.out.f32(), dy.f32(), dy.f32(), dy.numel(), kSlope);
    const cpu::Conv2dShape s = shape_of(l.x, l.cin, l.cout, kK, l.stride, kPad, kPad, kPad, kPad);
    if (l.bn_w)
      batch_norm_train_backward(l.pre.f32(), l.bn_w->v(), l.mean.f32(), l.rstd.f32(), dy.f32(), dy.f32(), l.bn_w->g(),
                                l.bn_b->g(), s.B, l.cout, s.Ho() * s.Wo());
    const bool dx_needed = i > 0 || need_dx;
    Tensor dx = dx_needed ? Tensor::empty(l.x.shape()) : Tensor();
    train::conv2d_backward(s, l.x.f32(), l.w->v(), dy.f32(), dx_needed ? dx.f32() : nullptr, l.w->g(),
                    l.b ? l.b->g() : nullptr);
    l.x = l.pre = l.out = Tensor();
    dy = dx;
  }
  return dy;
}

// ---------------------------------------------------------------------------------------------
// AdversarialLoss

AdversarialLoss::AdversarialLoss(const PatchGanOptions& o, int in_channels, uint64_t seed, AdamWOptions adam)
    : opt_(o), d_(in_channels, o.ndf, o.layers), adam_(adam) {
  if (!(o.disc_weight >= 0) || !std::isfinite(o.disc_weight))
    fail("discriminator weight must be a finite number >= 0, got ", o.disc_weight);
  d_.init_weights(seed);
}

void AdversarialLoss::generator(const Tensor& xr, Tensor& drec, const TrainConv2d& last, GanStepStats& st) {
  HWAGA_CHECK(drec.shape() == xr.shape(), "generator GAN term: gradient ", shape_str(drec.shape()), " for ",
              shape_str(xr.shape()));
  HWAGA_CHECK(last.x.defined(), "generator GAN term: the decoder's last conv has no saved input");
  const Tensor logits = d_.forward(xr);
  st.active = true;
  st.loss_gen = -mean_of(logits);
  Tensor dl = Tensor::empty(logits.shape());
  std::fill(dl.f32(), dl.f32() + dl.numel(), -1.0f / float(logits.numel()));
  Tensor dgen = d_.backward(dl, true);  // dloss_gen/dxr (D's own gradients are dropped before its step)

  // the adaptive weight from the last layer's weight gradients of both losses
  const cpu::Conv2dShape s = shape_of(last.x, last.cin, last.cout, last.k, last.stride, last.pad_top, last.pad_left,
                                      last.pad_bottom, last.pad_right);
  const int64_t nw = last.weight->numel();
  std::vector<float> gw_rec(size_t(nw), 0.0f), gw_gen(size_t(nw), 0.0f);
  train::conv2d_backward(s, last.x.f32(), last.weight->value.f32(), drec.f32(), nullptr, gw_rec.data(), nullptr);
  train::conv2d_backward(s, last.x.f32(), last.weight->value.f32(), dgen.f32(), nullptr, gw_gen.data(), nullptr);
  const double w = l2_norm(gw_rec.data(), nw) / (l2_norm(gw_gen.data(), nw) + 1e-4);
  st.g_weight = std::clamp(w, 0.0, 1e4);
  const float k = float(st.g_weight) * opt_.disc_weight;
  float* d = drec.f32();
  const float* g = dgen.f32();
  for (int64_t i = 0; i < drec.numel(); ++i) d[i] += k * g[i];
}

void AdversarialLoss::discriminator_step(const Tensor& real, const Tensor& fake, float lr, GanStepStats& st,
                                         TensorMap* dump) {
  HWAGA_CHECK(real.shape() == fake.shape(), "discriminator step: real ", shape_str(real.shape()), " vs fake ",
              shape_str(fake.shape()));
  ParamSet& ps = d_.params();
  ps.zero_grad();
  // hinge: 0.5 (mean relu(1 - D(real)) + mean relu(1 + D(fake))), times disc_weight
  auto half = [&](const Tensor& x, float sign, double& mean_logit) {
    const Tensor logits = d_.forward(x);
    mean_logit = mean_of(logits);
    Tensor dl = Tensor::empty(logits.shape());
    const float* l = logits.f32();
    const float scale = 0.5f * opt_.disc_weight / float(logits.numel());
    double loss = 0;
    for (int64_t i = 0; i < logits.numel(); ++i) {
      const float m = 1.0f + sign * l[i];  // relu(1 - l) for real (sign -1), relu(1 + l) for fake
      loss += m > 0 ? m : 0.0;
      dl.f32()[i] = m > 0 ? sign * scale : 0.0f;
    }
    d_.backward(dl, false);
    return 0.5 * loss / double(logits.numel());
  };
  // the reference's order: D(fake) then D(real) (the running statistics see them in that order)
  const double lf = half(fake, 1.0f, st.logits_fake);
  const double lr_ = half(real, -1.0f, st.logits_real);
  st.loss_disc = lf + lr_;
  const bool dist = dp_ && dp_->world() > 1;
  if (dist) dp_->all_reduce_grads(ps, 1.0f / float(dp_->world()));
  ps.clip_grad_norm(0.0f);  // the NaN/inf check
  if (dump)
    for (auto& p : ps.all())
      if (p->grad.defined()) (*dump)["disc.grad." + p->name] = p->grad.clone();
  adam_.step(ps, lr);
  if (dist)
    for (auto& p : ps.all())
      if (p->kind == ParamKind::buffer) dp_->broadcast(p->v(), p->numel());
  if (dump)
    for (auto& p : ps.all()) (*dump)["disc.after." + p->name] = p->value.clone();
}

void AdversarialLoss::save(TensorMap& out) const {
  for (const auto& [name, t] : d_.params().values()) out[name] = t;
  adam_.save_state(d_.params(), out);
}

void AdversarialLoss::load(const TensorMap& in, int64_t optimizer_steps, const std::string& source) {
  d_.params().load_values(in, source);
  adam_.load_state(d_.params(), in, optimizer_steps, source);
}

}  // namespace hwaga::train
