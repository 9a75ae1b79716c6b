// RqTransformerTrainer (src/train/rq_transformer_trainer.h) on a tiny text config:
//  - its forward equals the inference model's teacher-forced logits (rq/rq_transformer.h, the
//    same weights through the CPU backend) within 1e-5 relative: both are f32 with the same
//    operations, only summation orders differ;
//  - the gradient of the loss equals central finite differences for elements of every kind of
//    parameter (tolerance below);
//  - the loss is the weighted sum of the image and text CE with PAD text targets left out;
//  - dropout replays exactly for the same (seed, step) and changes with the step;
//  - init is deterministic in the seed and follows the GPT rules; decay kinds; bad batches.
#include <cmath>
#include <cstring>
#include <random>

#include "backend/backend.h"
#include "rq/rq_transformer.h"
#include "test_util.h"
#include "train/rq_transformer_trainer.h"

using namespace hwaga;
using namespace hwaga::train;

namespace {

RqTransformerConfig tiny_config() {
  RqTransformerConfig c;
  c.embed_dim = 16;
  c.n_layer_body = 2;
  c.n_layer_head = 2;
  c.n_head = 2;
  c.block_size = {2, 3, 3};
  c.vocab_size = 7;
  c.vocab_size_cond = 11;
  c.block_size_cond = 4;
  c.input_embed_dim = 5;
  return c;
}

Tensor tiny_codebook(const RqTransformerConfig& c, uint32_t seed) {
  return test::randn({c.vocab_size, c.input_embed_dim}, seed, 0.7f);
}

RqBatch tiny_batch(const RqTransformerConfig& c, int64_t B, uint32_t seed) {
  std::mt19937 g(seed);
  RqBatch b;
  b.text = Tensor::empty({B, c.block_size_cond}, DType::I32);
  b.codes = Tensor::empty({B, c.H(), c.W(), c.D()}, DType::I32);
  for (int64_t i = 0; i < b.codes.numel(); ++i) b.codes.ptr<int32_t>()[i] = int32_t(g() % uint32_t(c.vocab_size));
  for (int64_t r = 0; r < B; ++r)
    for (int t = 0; t < c.block_size_cond; ++t)  // a caption, then PADs (id 0)
      b.text.ptr<int32_t>()[r * c.block_size_cond + t] =
          t < 2 + r ? int32_t(1 + g() % uint32_t(c.vocab_size_cond - 1)) : 0;
  return b;
}

// Larger-than-init weights so that every path carries signal (init N(0,0.02) makes the
// gradients of deep parameters tiny next to the f32 noise of a finite difference).
void randomize(RqTransformerTrainer& tr, uint32_t seed) {
  std::mt19937 g(seed);
  for (auto& p : tr.params().all()) {
    const bool ln = p->name.find(".ln") != std::string::npos || p->name.find("layer_norm") != std::string::npos;
    const bool weight = p->name.size() > 7 && p->name.compare(p->name.size() - 7, 7, ".weight") == 0;
    std::normal_distribution<float> d(ln && weight ? 1.0f : 0.0f, ln ? 0.2f : 0.3f);
    for (int64_t i = 0; i < p->numel(); ++i) p->v()[i] = d(g);
  }
}

}  // namespace

TEST(RqTrainer, ForwardEqualsInferenceLogits) {
  const RqTransformerConfig cfg = tiny_config();
  const Tensor cb = tiny_codebook(cfg, 1);
  RqTransformerTrainer tr(cfg, cb);
  randomize(tr, 2);
  const RqBatch batch = tiny_batch(cfg, 3, 3);
  Tensor logits, text_logits;
  tr.evaluate(batch, &logits, &text_logits);
  ASSERT_EQ(logits.shape(), (Shape{3, 2, 3, 3, 7}));
  ASSERT_EQ(text_logits.shape(), (Shape{3, 3, 11}));

  auto be = make_cpu_backend();
  RqTransformer inf(cfg, tr.params().values(), "trainer weights", *be, cb);
  Tensor want = inf.logits_teacher_forced(batch.text, batch.codes);
  ASSERT_EQ(want.shape(), logits.shape());
  double max_err = 0, max_abs = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    max_err = std::max(max_err, double(std::abs(want.f32()[i] - logits.f32()[i])));
    max_abs = std::max(max_abs, double(std::abs(want.f32()[i])));
  }
  EXPECT_LE(max_err, 1e-5 * std::max(1.0, max_abs)) << "largest |logit| " << max_abs;
}

TEST(RqTrainer, LossIsWeightedImageAndTextCE) {
  const RqTransformerConfig cfg = tiny_config();
  RqTransformerTrainer tr(cfg, tiny_codebook(cfg, 1));
  randomize(tr, 4);
  const RqBatch batch = tiny_batch(cfg, 2, 5);
  Tensor logits, tl;
  RqLoss l = tr.evaluate(batch, &logits, &tl);
  const int64_t K = cfg.vocab_size, V = cfg.vocab_size_cond, L = cfg.block_size_cond;
  double img = 0;
  for (int64_t n = 0; n < batch.codes.numel(); ++n) {
    double s = 0;
    for (int64_t j = 0; j < K; ++j) s += std::exp(double(logits.f32()[n * K + j]));
    img += std::log(s) - logits.f32()[n * K + batch.codes.ptr<int32_t>()[n]];
  }
  img /= double(batch.codes.numel());
  double txt = 0;
  int64_t cnt = 0;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t + 1 < L; ++t) {
      const int32_t y = batch.text.ptr<int32_t>()[b * L + t + 1];
      if (y == 0) continue;  // PAD targets are left out
      const float* z = tl.f32() + (b * (L - 1) + t) * V;
      double s = 0;
      for (int64_t j = 0; j < V; ++j) s += std::exp(double(z[j]));
      txt += std::log(s) - z[y];
      ++cnt;
    }
  ASSERT_EQ(cnt, 1 + 2);  // row 0 has 2 text ids (1 target), row 1 has 3 (2 targets)
  EXPECT_EQ(l.text_targets, cnt);
  EXPECT_NEAR(l.image_loss, img, 1e-5);
  EXPECT_NEAR(l.text_loss, txt / double(cnt), 1e-5);
  EXPECT_NEAR(l.loss, 0.9 * img + 0.1 * txt / double(cnt), 1e-5);
}

// Finite differences of the f32 loss: step h = 1e-2 on parameters of size ~0.3; the loss is ~2
// and its f32 rounding (~1e-6 with double accumulation of row losses) over 2h gives ~5e-5, the
// truncation error O(h²) ~1e-4 · |f'''|. Tolerance 3e-4 + 3e-2·|fd|; a wrong factor or a
// missing path is off by O(|g|) (the checked elements have the largest |g| of their tensor,
// typically 1e-2 .. 1e-1).
TEST(RqTrainer, GradientMatchesFiniteDifferences) {
  const RqTransformerConfig cfg = tiny_config();
  RqTransformerTrainer tr(cfg, tiny_codebook(cfg, 1));
  tr.options().dropout = 0.0f;
  randomize(tr, 6);
  const RqBatch batch = tiny_batch(cfg, 2, 7);
  tr.params().zero_grad();
  tr.forward_backward(batch, 0, 0);
  int checked = 0;
  for (auto& p : tr.params().all()) {
    // the element with the largest |grad|, and one fixed element
    int64_t imax = 0;
    for (int64_t i = 0; i < p->numel(); ++i)
      if (std::abs(p->g()[i]) > std::abs(p->g()[imax])) imax = i;
    for (int64_t i : {imax, p->numel() / 2}) {
      const float g = p->g()[i];
      const float x0 = p->v()[i], h = 1e-2f;
      p->v()[i] = x0 + h;
      const double fp = tr.evaluate(batch).loss;
      p->v()[i] = x0 - h;
      const double fm = tr.evaluate(batch).loss;
      p->v()[i] = x0;
      const double fd = (fp - fm) / (2.0 * double(h));
      EXPECT_NEAR(g, fd, 3e-4 + 3e-2 * std::abs(fd)) << p->name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 60);
  // pos_emb_hw of the last position feeds nothing (it is dropped from the body input, §2.3)
  Param& hw = tr.params().get("stage2.pos_emb_hw");
  const int64_t C = cfg.embed_dim, P = cfg.H() * cfg.W();
  for (int64_t c = 0; c < C; ++c) EXPECT_EQ(hw.g()[(P - 1) * C + c], 0.0f);
}

TEST(RqTrainer, DropoutReplaysPerStep) {
  const RqTransformerConfig cfg = tiny_config();
  RqTransformerTrainer tr(cfg, tiny_codebook(cfg, 1));
  tr.init_weights(3);
  tr.options().dropout = 0.1f;
  const RqBatch batch = tiny_batch(cfg, 2, 8);
  auto grads = [&](int64_t step) {
    tr.params().zero_grad();
    double l = tr.forward_backward(batch, 99, step).loss;
    std::vector<float> g;
    for (auto& p : tr.params().all()) g.insert(g.end(), p->g(), p->g() + p->numel());
    g.push_back(float(l));
    return g;
  };
  auto a = grads(5), b = grads(5), c = grads(6);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  tr.options().dropout = 0.0f;
  EXPECT_NE(grads(5), a);
  EXPECT_NEAR(tr.evaluate(batch).loss, grads(7).back(), 1e-6);  // no dropout: train == eval
}

TEST(RqTrainer, InitIsDeterministicAndFollowsTheRules) {
  const RqTransformerConfig cfg = tiny_config();
  RqTransformerTrainer a(cfg, tiny_codebook(cfg, 1)), b(cfg, tiny_codebook(cfg, 1)), c(cfg, tiny_codebook(cfg, 1));
  a.init_weights(7);
  b.init_weights(7);
  c.init_weights(8);
  bool differs = false;
  for (size_t i = 0; i < a.params().all().size(); ++i) {
    Param& p = *a.params().all()[i];
    const Param& q = *b.params().all()[i];
    const Param& r = *c.params().all()[i];
    ASSERT_EQ(0, std::memcmp(p.value.data(), q.value.data(), p.value.nbytes())) << p.name;
    differs |= std::memcmp(p.value.data(), r.value.data(), p.value.nbytes()) != 0;
    const std::string& n = p.name;
    const bool ln = n.find(".ln") != std::string::npos || n.find("layer_norm") != std::string::npos;
    const bool bias = n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0;
    if (ln || bias) {
      const float want = ln && !bias ? 1.0f : 0.0f;
      for (int64_t j = 0; j < p.numel(); ++j) ASSERT_EQ(p.v()[j], want) << n;
    } else {
      double s = 0;
      for (int64_t j = 0; j < p.numel(); ++j) s += double(p.v()[j]) * p.v()[j];
      EXPECT_NEAR(std::sqrt(s / double(p.numel())), 0.02, 0.02 * (p.numel() >= 100 ? 0.3 : 0.8)) << n;
    }
  }
  EXPECT_TRUE(differs);
  EXPECT_EQ(stage2_param_kind("stage2.body_transformer.blocks.0.attn.key.weight"), ParamKind::weight);
  EXPECT_EQ(stage2_param_kind("stage2.classifier.linear.weight"), ParamKind::weight);
  EXPECT_EQ(stage2_param_kind("stage2.input_mlp.weight"), ParamKind::weight);
  EXPECT_EQ(stage2_param_kind("stage2.body_transformer.blocks.0.ln1.weight"), ParamKind::no_decay);
  EXPECT_EQ(stage2_param_kind("stage2.classifier.layer_norm.weight"), ParamKind::no_decay);
  EXPECT_EQ(stage2_param_kind("stage2.cond_emb.weight"), ParamKind::no_decay);
  EXPECT_EQ(stage2_param_kind("stage2.pos_emb_hw"), ParamKind::no_decay);
  EXPECT_EQ(stage2_param_kind("stage2.head_mlp.bias"), ParamKind::no_decay);
}

TEST(RqTrainer, BadBatchesAndCodebooksAreRefused) {
  const RqTransformerConfig cfg = tiny_config();
  RqTransformerTrainer tr(cfg, tiny_codebook(cfg, 1));
  RqBatch b = tiny_batch(cfg, 2, 9);
  b.codes.ptr<int32_t>()[3] = cfg.vocab_size;
  EXPECT_NE(test::error_of([&] { tr.evaluate(b); }).find("code 7 outside [0, 7)"), std::string::npos);
  b = tiny_batch(cfg, 2, 9);
  b.text.ptr<int32_t>()[0] = -1;
  EXPECT_NE(test::error_of([&] { tr.evaluate(b); }).find("text id -1"), std::string::npos);
  b = tiny_batch(cfg, 2, 9);
  b.text = Tensor::zeros({2, 3}, DType::I32);
  EXPECT_NE(test::error_of([&] { tr.evaluate(b); }).find("text ids must be int32 [2,4]"), std::string::npos);
  EXPECT_NE(test::error_of([&] { RqTransformerTrainer t2(cfg, Tensor::zeros({8, 5})); }).find("does not pair"),
            std::string::npos);
}

// Input codes (hwaga train --code-noise): they replace the codes in the embeddings only. Given
// as the codes themselves they change nothing; a changed input code at (position 0, depth 0)
// leaves the logits that cannot see it (position 0, depth 0: the text alone) and changes those
// after it, while the loss keeps predicting the true codes.
TEST(RqTrainer, InputCodesFeedTheEmbeddingsOnly) {
  const RqTransformerConfig cfg = tiny_config();
  RqTransformerTrainer tr(cfg, tiny_codebook(cfg, 1));
  randomize(tr, 4);
  const RqBatch b = tiny_batch(cfg, 2, 9);
  Tensor z0, z1, z2;
  const RqLoss l0 = tr.evaluate(b, &z0);
  RqBatch same = b;
  same.input_codes = b.codes.clone();
  const RqLoss l1 = tr.evaluate(same, &z1);
  EXPECT_EQ(l0.loss, l1.loss);
  ASSERT_EQ(z0.numel(), z1.numel());
  EXPECT_EQ(std::memcmp(z0.data(), z1.data(), size_t(z0.nbytes())), 0);

  RqBatch noisy = same;
  noisy.input_codes = b.codes.clone();
  int32_t& c00 = noisy.input_codes.ptr<int32_t>()[0];  // row 0, position 0, depth 0
  c00 = (c00 + 3) % cfg.vocab_size;
  const RqLoss l2 = tr.evaluate(noisy, &z2);
  const int64_t K = cfg.vocab_size, D = cfg.D();
  auto max_diff = [&](int64_t first, int64_t count) {
    float m = 0;
    for (int64_t i = first; i < first + count; ++i) m = std::max(m, std::fabs(z0.f32()[i] - z2.f32()[i]));
    return m;
  };
  EXPECT_EQ(max_diff(0, K), 0.0f) << "position 0, depth 0 reads the text only";
  EXPECT_GT(max_diff(K, (D - 1) * K), 1e-4f) << "depths 1.. of position 0 read the changed input";
  EXPECT_GT(max_diff(D * K, D * K), 1e-4f) << "position 1 reads position 0's inputs";
  // the loss is the CE of the new logits against the TRUE codes
  const int64_t NI = b.codes.numel();
  double ce = 0;
  for (int64_t i = 0; i < NI; ++i) {
    const float* row = z2.f32() + i * K;
    double mx = row[0], se = 0;
    for (int64_t k = 1; k < K; ++k) mx = std::max(mx, double(row[k]));
    for (int64_t k = 0; k < K; ++k) se += std::exp(double(row[k]) - mx);
    ce += mx + std::log(se) - double(row[b.codes.ptr<int32_t>()[i]]);
  }
  EXPECT_NEAR(l2.image_loss, ce / double(NI), 1e-5);

  RqBatch bad = b;
  bad.input_codes = Tensor::zeros({2, 1}, DType::I32);
  EXPECT_NE(test::error_of([&] { tr.evaluate(bad); }).find("input codes must be int32"), std::string::npos);
  bad.input_codes = b.codes.clone();
  bad.input_codes.ptr<int32_t>()[5] = cfg.vocab_size;
  EXPECT_NE(test::error_of([&] { tr.evaluate(bad); }).find("input code 7 outside [0, 7)"), std::string::npos);
}

// Data parallel (train/data_parallel.h): the gradients of the two halves of a batch, each with
// the whole batch's target counts as LossNorm, add up to the whole batch's gradient, and their
// losses to its losses (f32 summation orders differ: 1e-5 of each tensor's scale). The batch's
// PAD counts differ between the halves (tiny_batch), so a per-half mean would not add up.
TEST(RqTrainer, HalvesWithGlobalLossNormAddUpToTheBatch) {
  const RqTransformerConfig cfg = tiny_config();
  RqTransformerTrainer tr(cfg, tiny_codebook(cfg, 1), RqTrainerOptions{0.0f});
  randomize(tr, 2);
  const RqBatch full = tiny_batch(cfg, 4, 3);
  tr.params().zero_grad();
  const RqLoss lf = tr.forward_backward(full, 0, 0);
  std::vector<Tensor> gf;
  for (auto& p : tr.params().all()) gf.push_back(p->grad.defined() ? p->grad.clone() : Tensor());

  const LossNorm norm{full.codes.numel(), count_text_targets(full.text, 0)};
  EXPECT_EQ(norm.text_targets, lf.text_targets);
  tr.params().zero_grad();  // both halves add into the same gradients
  double loss = 0, image = 0, text = 0;
  for (int h = 0; h < 2; ++h) {
    const RqBatch half{full.text.slice0(2 * h, 2 * h + 2).clone(), full.codes.slice0(2 * h, 2 * h + 2).clone()};
    const RqLoss l = tr.forward_backward(half, 0, 0, norm);
    loss += l.loss, image += l.image_loss, text += l.text_loss;
  }
  EXPECT_NEAR(loss, lf.loss, 1e-5 * lf.loss);
  EXPECT_NEAR(image, lf.image_loss, 1e-5 * lf.image_loss);
  EXPECT_NEAR(text, lf.text_loss, 1e-5 * lf.text_loss);
  // each tensor's scale: its largest gradient, at least 1e-3 of the largest of all (the
  // attention key biases' gradients are exactly zero up to rounding)
  float top = 0;
  for (const Tensor& g : gf)
    for (int64_t k = 0; g.defined() && k < g.numel(); ++k) top = std::max(top, std::fabs(g.f32()[k]));
  size_t i = 0;
  for (auto& p : tr.params().all()) {
    const Tensor& want = gf[i++];
    if (!want.defined()) continue;
    float scale = 1e-3f * top;
    for (int64_t k = 0; k < want.numel(); ++k) scale = std::max(scale, std::fabs(want.f32()[k]));
    for (int64_t k = 0; k < want.numel(); ++k)
      ASSERT_NEAR(p->g()[k], want.f32()[k], 1e-5f * scale) << p->name << "[" << k << "]";
  }
}
