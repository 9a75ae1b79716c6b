// The shared training pieces (src/train/param, optim, checkpoint, train_log): AdamW against a
// double-precision transcription of torch.optim.AdamW's update, the learning-rate schedule at
// its corners, gradient clipping, checkpoints that round-trip and refuse other files, and the
// JSONL log that drops the steps a killed run wrote after its last checkpoint.
#include <cmath>
#include <fstream>

#include "io/safetensors.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/optim.h"
#include "train/param.h"
#include "train/train_log.h"

using namespace hwaga;
using namespace hwaga::train;
using hwaga::test::TempDir;

namespace {

void fill(Param& p, float scale, int seed) {
  float* v = p.v();
  for (int64_t i = 0; i < p.numel(); i++) v[i] = scale * std::sin(0.37f * float(i + 1) * float(seed));
}

}  // namespace

TEST(TrainInfra, AdamWMatchesTorchUpdateRule) {
  ParamSet ps;
  Param& w = ps.add("w", {3, 5}, ParamKind::weight);
  Param& b = ps.add("b", {5}, ParamKind::no_decay);
  Param& buf = ps.add("ema", {4}, ParamKind::buffer);
  fill(w, 0.5f, 1);
  fill(b, 0.1f, 2);
  fill(buf, 1.0f, 3);
  const Tensor buf0 = buf.value.clone();
  AdamWOptions o{0.9f, 0.95f, 1e-8f, 0.1f};
  AdamW opt(o);
  // Reference in double: torch.optim.AdamW (decoupled decay before the moment update).
  std::vector<double> rw(w.v(), w.v() + w.numel()), rb(b.v(), b.v() + b.numel());
  std::vector<double> mw(rw.size()), vw(rw.size()), mb(rb.size()), vb(rb.size());
  const float lrs[3] = {1e-2f, 5e-3f, 2e-2f};
  for (int t = 1; t <= 3; t++) {
    for (int64_t i = 0; i < w.numel(); i++) w.g()[i] = std::cos(float(i * t));
    for (int64_t i = 0; i < b.numel(); i++) b.g()[i] = 0.3f * float(i) - float(t);
    auto ref = [&](std::vector<double>& p, std::vector<double>& m, std::vector<double>& v, const float* g, bool decay) {
      double lr = lrs[t - 1];
      for (size_t i = 0; i < p.size(); i++) {
        if (decay) p[i] *= 1 - lr * o.weight_decay;
        m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
        v[i] = o.beta2 * v[i] + (1 - o.beta2) * double(g[i]) * g[i];
        double mh = m[i] / (1 - std::pow(double(o.beta1), t));
        double vh = v[i] / (1 - std::pow(double(o.beta2), t));
        p[i] -= lr * mh / (std::sqrt(vh) + o.eps);
      }
    };
    ref(rw, mw, vw, w.g(), true);
    ref(rb, mb, vb, b.g(), false);
    opt.step(ps, lrs[t - 1]);
  }
  // Tolerance: three f32 updates of size ~lr; the f32 moments differ from double by ~1e-7
  // relative, so the parameters agree to a few ulp of 0.5 (~1e-7) plus lr * 1e-6.
  for (int64_t i = 0; i < w.numel(); i++) EXPECT_NEAR(w.v()[i], rw[i], 2e-6) << i;
  for (int64_t i = 0; i < b.numel(); i++) EXPECT_NEAR(b.v()[i], rb[i], 2e-6) << i;
  EXPECT_EQ(std::memcmp(buf.v(), buf0.data(), buf0.nbytes()), 0) << "buffers are not optimised";
  EXPECT_EQ(opt.steps(), 3);
}

TEST(TrainInfra, LrScheduleCorners) {
  LrSchedule s{1e-3f, 1e-4f, 10, 110, "cosine"};
  EXPECT_FLOAT_EQ(s.at(0), 1e-4f);    // warm-up: (step+1)/warmup
  EXPECT_FLOAT_EQ(s.at(9), 1e-3f);    // end of warm-up
  EXPECT_FLOAT_EQ(s.at(10), 1e-3f);   // cosine starts at lr
  EXPECT_NEAR(s.at(60), 0.55e-3f, 1e-9f);  // half-way: (lr + min_lr) / 2
  EXPECT_FLOAT_EQ(s.at(110), 1e-4f);  // the end and after
  EXPECT_FLOAT_EQ(s.at(500), 1e-4f);
  LrSchedule c{2e-4f, 0.0f, 0, 100, "constant"};
  EXPECT_FLOAT_EQ(c.at(0), 2e-4f);
  EXPECT_FLOAT_EQ(c.at(99), 2e-4f);
}

TEST(TrainInfra, ClipGradNorm) {
  ParamSet ps;
  Param& a = ps.add("a", {2});
  Param& b = ps.add("b", {1});
  a.g()[0] = 3;
  a.g()[1] = 0;
  b.g()[0] = 4;
  EXPECT_DOUBLE_EQ(ps.clip_grad_norm(10.0f), 5.0);  // below the limit: unchanged
  EXPECT_FLOAT_EQ(a.g()[0], 3.0f);
  EXPECT_NEAR(ps.clip_grad_norm(1.0f), 5.0, 1e-12);
  EXPECT_NEAR(a.g()[0], 0.6f, 1e-6f);
  EXPECT_NEAR(b.g()[0], 0.8f, 1e-6f);
  b.g()[0] = NAN;
  EXPECT_THROW(ps.clip_grad_norm(1.0f), Error);
}

TEST(TrainInfra, CheckpointRoundTripIsExact) {
  TempDir dir;
  const std::string path = (dir.path / "ck.safetensors").string();
  ParamSet ps;
  Param& w = ps.add("stage2.w", {4, 3});
  ps.add("stage2.ema", {2}, ParamKind::buffer).v()[1] = 7;
  fill(w, 1.0f, 5);
  for (int64_t i = 0; i < w.numel(); i++) w.g()[i] = float(i) - 5;
  AdamW opt;
  opt.step(ps, 1e-3f);
  opt.step(ps, 1e-3f);
  Tensor extra = Tensor::zeros({3});
  extra.f32()[2] = 42;
  save_checkpoint(path, ps, &opt, {{"data.order", extra}}, {{"step", 2}, {"stage", "test"}});

  ParamSet ps2;
  ps2.add("stage2.w", {4, 3});
  ps2.add("stage2.ema", {2}, ParamKind::buffer);
  AdamW opt2;
  Checkpoint ck = read_checkpoint(path);
  EXPECT_EQ(ck.meta["step"], 2);
  EXPECT_EQ(ck.meta["optimizer_steps"], 2);
  restore_checkpoint(ck, path, ps2, &opt2);
  EXPECT_EQ(std::memcmp(ps2.get("stage2.w").v(), w.v(), w.value.nbytes()), 0);
  EXPECT_EQ(ps2.get("stage2.ema").v()[1], 7.0f);
  EXPECT_EQ(ck.tensors.at("data.order").f32()[2], 42.0f);
  // The next step from the restored state equals the next step of the original.
  for (int64_t i = 0; i < w.numel(); i++) ps2.get("stage2.w").g()[i] = w.g()[i];
  opt.step(ps, 1e-3f);
  opt2.step(ps2, 1e-3f);
  EXPECT_EQ(std::memcmp(ps2.get("stage2.w").v(), w.v(), w.value.nbytes()), 0);

  // A wrong shape is named.
  ParamSet bad;
  bad.add("stage2.w", {3, 4});
  bad.add("stage2.ema", {2}, ParamKind::buffer);
  try {
    restore_checkpoint(ck, path, bad, nullptr);
    FAIL() << "shape mismatch accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stage2.w"), std::string::npos) << e.what();
  }
}

TEST(TrainInfra, CheckpointRefusesOtherFiles) {
  TempDir dir;
  const std::string model = (dir.path / "model.safetensors").string();
  write_safetensors(model, {{"stage1.x", Tensor::zeros({1})}}, {{"format", "hwaga"}, {"version", "1"}, {"config", "{}"}});
  try {
    read_checkpoint(model);
    FAIL() << "a model file was read as a checkpoint";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model file, not a training checkpoint"), std::string::npos) << e.what();
  }
  const std::string other = (dir.path / "other.safetensors").string();
  write_safetensors(other, {{"x", Tensor::zeros({1})}}, {{"format", "hwaga-train"}, {"version", "9"}, {"train", "{}"}});
  EXPECT_THROW(read_checkpoint(other), Error);
  write_safetensors(other, {{"x", Tensor::zeros({1})}}, {{"format", "hwaga-train"}, {"version", "1"}, {"train", "[1"}});
  EXPECT_THROW(read_checkpoint(other), Error);
}

TEST(TrainInfra, LogResumeDropsStepsAfterTheCheckpoint) {
  TempDir dir;
  const std::string path = (dir.path / "train.jsonl").string();
  {
    TrainLog log(path, -1);
    log.event("start", {});
    for (int s = 0; s < 6; s++) log.step({{"step", s}, {"loss", 1.0 / (s + 1)}});
  }
  {
    std::ofstream torn(path, std::ios::app);
    torn << "{\"step\": 6, \"lo";  // a kill in the middle of a line
  }
  {
    TrainLog log(path, 3);  // resumed from the checkpoint of step 3
    log.step({{"step", 4}, {"loss", 0.5}});
  }
  std::ifstream in(path);
  std::vector<int> steps;
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("step")) steps.push_back(j["step"]);
  }
  EXPECT_EQ(steps, (std::vector<int>{0, 1, 2, 3, 4}));
}
