// The optional stage-1 terms (train/patch_gan.h, train/lpips.h) on the CPU: shapes, running
// statistics, the discriminator learning to tell two fixed batches apart, LPIPS's value and
// gradient against a directional finite difference, and weight files that are incomplete. The
// exact values of both against PyTorch are in tests/parity/test_train_stage1_terms.py; these run
// under the sanitizers too.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "train/lpips.h"
#include "train/patch_gan.h"

using namespace hwaga;
using namespace hwaga::train;

namespace {

Tensor randn(Shape s, uint32_t seed, float scale = 1.0f) {
  Tensor t = Tensor::empty(std::move(s));
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = scale * d(g);
  return t;
}

// Random LPIPS weights in torchvision's / taming's names: convs N(0, 2/fan_in), heads |N(0, 0.1)|.
TensorMap lpips_weights(uint32_t seed) {
  TensorMap m;
  const int plan[] = {64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512};
  const int idx[] = {0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28};
  int64_t cin = 3;
  for (int i = 0; i < 13; ++i) {
    const std::string n = "features." + std::to_string(idx[i]);
    m[n + ".weight"] = randn({plan[i], cin, 3, 3}, seed + uint32_t(i), std::sqrt(2.0f / float(cin * 9)));
    m[n + ".bias"] = randn({plan[i]}, seed + 100 + uint32_t(i), 0.05f);
    cin = plan[i];
  }
  const int ch[] = {64, 128, 256, 512, 512};
  for (int k = 0; k < 5; ++k) {
    Tensor h = randn({1, ch[k], 1, 1}, seed + 200 + uint32_t(k), 0.1f);
    for (int64_t i = 0; i < h.numel(); ++i) h.f32()[i] = std::fabs(h.f32()[i]);
    m["lin" + std::to_string(k) + ".model.1.weight"] = h;
  }
  return m;
}

double dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += double(a.f32()[i]) * b.f32()[i];
  return s;
}

}  // namespace

TEST(PatchGan, ShapesAndRunningStatistics) {
  EXPECT_EQ(PatchDiscriminator::logits_size(64, 2), 14);  // 64 -> 32 -> 16 -> 15 -> 14
  EXPECT_EQ(PatchDiscriminator::logits_size(16, 1), 6);
  EXPECT_EQ(PatchDiscriminator::logits_size(16, 3), 0);  // 16 -> 8 -> 4 -> 2, then two 4x4 convs: nothing left
  PatchDiscriminator d(3, 4, 2);
  d.init_weights(1);
  const Param& rm = d.params().get("discriminator.main.3.running_mean");
  const Param& rv = d.params().get("discriminator.main.3.running_var");
  EXPECT_EQ(rm.value.shape(), Shape({8}));
  EXPECT_EQ(rv.value.f32()[0], 1.0f);
  EXPECT_EQ(d.params().find("discriminator.main.2.bias"), nullptr);  // convs before a BatchNorm have no bias
  const Tensor x = randn({2, 3, 16, 16}, 3);
  const Tensor y = d.forward(x);
  EXPECT_EQ(y.shape(), Shape({2, 1, 2, 2}));
  // one training-mode call moved the statistics a tenth of the way
  bool moved = false;
  for (int c = 0; c < 8; ++c) moved |= rm.value.f32()[c] != 0.0f && rv.value.f32()[c] != 1.0f;
  EXPECT_TRUE(moved);
  Tensor dl = Tensor::empty(y.shape());
  for (int64_t i = 0; i < dl.numel(); ++i) dl.f32()[i] = 1.0f;
  const Tensor dx = d.backward(dl, true);
  EXPECT_EQ(dx.shape(), x.shape());
  EXPECT_GT(dot(dx, dx), 0.0);
}

TEST(PatchGan, DiscriminatorLearnsToTellTwoBatchesApart) {
  AdversarialLoss gan(PatchGanOptions{1, 8, 1.0f, 0}, 3, 5, AdamWOptions{0.5f, 0.9f, 1e-8f, 0.0f});
  const Tensor real = randn({4, 3, 16, 16}, 6, 0.5f);
  Tensor fake = randn({4, 3, 16, 16}, 7, 0.5f);
  for (int64_t i = 0; i < fake.numel(); ++i) fake.f32()[i] += 0.5f;  // a shifted distribution
  GanStepStats first, last;
  for (int s = 0; s < 30; ++s) {
    GanStepStats st;
    gan.discriminator_step(real, fake, 2e-3f, st);
    ASSERT_TRUE(std::isfinite(st.loss_disc));
    if (s == 0) first = st;
    last = st;
  }
  EXPECT_NEAR(first.loss_disc, 1.0, 0.3);  // logits near 0 at the start: 0.5 (1 + 1)
  EXPECT_LT(last.loss_disc, 0.5 * first.loss_disc);
  EXPECT_GT(last.logits_real, last.logits_fake);
}

TEST(PatchGan, GeneratorTermAddsTheWeightedGradient) {
  AdversarialLoss gan(PatchGanOptions{1, 4, 0.5f, 0}, 3, 8, AdamWOptions{});
  TrainConv2d last;
  ParamSet ps;
  last.build(ps, "conv_out", 4, 3, 3, 1);
  for (auto& p : ps.all())
    for (int64_t i = 0; i < p->numel(); ++i) p->v()[i] = 0.1f * float((i * 7) % 11) - 0.5f;
  const Tensor h = randn({2, 4, 16, 16}, 9);
  const Tensor xr = last.forward(h);  // saves h
  Tensor drec = randn(xr.shape(), 10, 1e-3f);
  const Tensor before = drec.clone();
  GanStepStats st;
  gan.generator(xr, drec, last, st);
  EXPECT_TRUE(st.active);
  EXPECT_GT(st.g_weight, 0.0);
  EXPECT_LE(st.g_weight, 1e4);
  double change = 0;
  for (int64_t i = 0; i < drec.numel(); ++i) change += std::fabs(drec.f32()[i] - before.f32()[i]);
  EXPECT_GT(change, 0.0);
}

TEST(Lpips, ZeroForTheSamePictureAndGradientAgreesWithADirectionalDifference) {
  const Lpips lp(lpips_weights(20), "random weights");
  const Tensor x = randn({2, 3, 16, 16}, 21, 0.5f), y = randn({2, 3, 16, 16}, 22, 0.5f);
  Tensor g0 = Tensor::zeros(x.shape());
  EXPECT_EQ(lp.forward_backward(x, x, &g0, 1.0f), 0.0);
  EXPECT_EQ(dot(g0, g0), 0.0);
  Tensor g = Tensor::zeros(x.shape());
  const double l = lp.forward_backward(x, y, &g, 1.0f);
  EXPECT_GT(l, 0.0);
  EXPECT_DOUBLE_EQ(lp.forward_backward(x, y, nullptr, 1.0f), l);
  // (L(x + e d) - L(x - e d)) / 2e against g . d, d a random direction of unit length
  Tensor d = randn(x.shape(), 23);
  const double nd = std::sqrt(dot(d, d));
  for (int64_t i = 0; i < d.numel(); ++i) d.f32()[i] = float(d.f32()[i] / nd);
  const float e = 1e-2f;
  Tensor xp = x.clone(), xm = x.clone();
  for (int64_t i = 0; i < x.numel(); ++i) {
    xp.f32()[i] += e * d.f32()[i];
    xm.f32()[i] -= e * d.f32()[i];
  }
  const double fd = (lp.forward_backward(xp, y, nullptr, 1.0f) - lp.forward_backward(xm, y, nullptr, 1.0f)) / (2 * e);
  const double gd = dot(g, d);
  EXPECT_NEAR(fd, gd, 0.02 * std::sqrt(dot(g, g))) << "directional derivative " << fd << " vs g.d " << gd;
  // the scale multiplies the gradient and accumulates into dx
  Tensor g2 = g.clone();
  lp.forward_backward(x, y, &g2, 2.0f);
  for (int64_t i = 0; i < g.numel(); i += 97) EXPECT_NEAR(g2.f32()[i], 3.0f * g.f32()[i], 1e-5f * (1 + std::fabs(g.f32()[i])));
}

TEST(Lpips, IncompleteWeightsAreNamed) {
  TensorMap m = lpips_weights(30);
  m.erase("lin3.model.1.weight");
  try {
    Lpips lp(m, "heads.pth");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("heads.pth"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("lin3.model.1.weight"), std::string::npos) << e.what();
  }
  m = lpips_weights(30);
  m["features.5.weight"] = randn({128, 64, 1, 1}, 31);
  try {
    Lpips lp(m, "vgg16.pth");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("features.5.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[128, 64, 3, 3]"), std::string::npos) << e.what();
  }
  // a saved LPIPS module's names are read too
  m = lpips_weights(30);
  TensorMap renamed;
  for (auto& [k, v] : m) {
    if (k.rfind("features.", 0) == 0) {
      const int i = std::stoi(k.substr(9));
      const int slice = i < 4 ? 1 : i < 9 ? 2 : i < 16 ? 3 : i < 23 ? 4 : 5;
      renamed["net.slice" + std::to_string(slice) + "." + k.substr(9)] = v;
    } else {
      renamed[k] = v;
    }
  }
  const Tensor x = randn({1, 3, 16, 16}, 32), y = randn({1, 3, 16, 16}, 33);
  EXPECT_EQ(Lpips(renamed, "lpips.pth").forward_backward(x, y, nullptr, 1.0f),
            Lpips(m, "vgg16.pth").forward_backward(x, y, nullptr, 1.0f));
}
