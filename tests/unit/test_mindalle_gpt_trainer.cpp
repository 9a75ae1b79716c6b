// MindalleGptTrainer (src/train/mindalle_gpt_trainer.h) on a tiny config:
//  - its forward equals the inference model's teacher-forced logits (transformer/mindalle_gpt.h,
//    the same weights through the CPU backend) within 1e-5 relative: both are f32 with the same
//    operations, only summation orders differ;
//  - the gradient of the loss equals central finite differences for two elements of every
//    parameter (tolerance below), and the parameters that feed nothing get exactly zero;
//  - the loss is the weighted sum of the image and text CE with PAD text targets left out;
//  - dropout replays exactly for the same (seed, step) and changes with the step;
//  - init is deterministic in the seed and follows the GPT rules; decay kinds; bad batches.
#include <cmath>
#include <random>

#include "backend/backend.h"
#include "test_util.h"
#include "train/mindalle_gpt_trainer.h"
#include "transformer/mindalle_gpt.h"

using namespace hwaga;
using namespace hwaga::train;

namespace {

// codes 2x3 (T = 6), text 4 ids from 11, K = 7
MindalleGptConfig tiny_config() {
  MindalleGptConfig c;
  c.vocab_size_txt = 11;
  c.vocab_size_img = 7;
  c.embed_dim = 16;
  c.n_layers = 2;
  c.n_heads = 2;
  c.ctx_len_txt = 4;
  c.ctx_len_img = 6;
  return c;
}

GptBatch tiny_batch(const MindalleGptConfig& c, int64_t B, uint32_t seed) {
  std::mt19937 g(seed);
  GptBatch b;
  b.text = Tensor::empty({B, c.ctx_len_txt}, DType::I32);
  b.codes = Tensor::empty({B, 2, 3, 1}, DType::I32);
  for (int64_t i = 0; i < b.codes.numel(); ++i) b.codes.ptr<int32_t>()[i] = int32_t(g() % uint32_t(c.vocab_size_img));
  for (int64_t r = 0; r < B; ++r)
    for (int t = 0; t < c.ctx_len_txt; ++t)  // a caption, then PADs (id 0)
      b.text.ptr<int32_t>()[r * c.ctx_len_txt + t] = t < 2 + r ? int32_t(1 + g() % uint32_t(c.vocab_size_txt - 1)) : 0;
  return b;
}

// Larger-than-init weights so that every path carries signal (init N(0,0.02) makes the
// gradients of deep parameters tiny next to the f32 noise of a finite difference).
void randomize(MindalleGptTrainer& tr, uint32_t seed) {
  std::mt19937 g(seed);
  for (auto& p : tr.params().all()) {
    const bool ln = p->name.find(".ln") != std::string::npos;
    const bool weight = p->name.size() > 7 && p->name.compare(p->name.size() - 7, 7, ".weight") == 0;
    std::normal_distribution<float> d(ln && weight ? 1.0f : 0.0f, ln ? 0.2f : 0.3f);
    for (int64_t i = 0; i < p->numel(); ++i) p->v()[i] = d(g);
  }
}

}  // namespace

TEST(GptTrainer, ForwardEqualsInferenceLogits) {
  const MindalleGptConfig cfg = tiny_config();
  MindalleGptTrainer tr(cfg);
  randomize(tr, 2);
  const GptBatch batch = tiny_batch(cfg, 3, 3);
  Tensor logits, text_logits;
  tr.evaluate(batch, &logits, &text_logits);
  ASSERT_EQ(logits.shape(), (Shape{3, 2, 3, 1, 7}));
  ASSERT_EQ(text_logits.shape(), (Shape{3, 3, 11}));

  auto be = make_cpu_backend();
  MindalleGpt inf(cfg, 2, 3, tr.params().values(), "trainer weights", *be);
  Tensor want = inf.logits_teacher_forced(batch.text, batch.codes);
  ASSERT_EQ(want.shape(), logits.shape());
  double max_err = 0, max_abs = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    max_err = std::max(max_err, double(std::abs(want.f32()[i] - logits.f32()[i])));
    max_abs = std::max(max_abs, double(std::abs(want.f32()[i])));
  }
  EXPECT_GT(max_abs, 0.5);  // real signal, not a zero model
  EXPECT_LE(max_err, 1e-5 * std::max(1.0, max_abs)) << "largest |logit| " << max_abs;

  // a changed last code changes no logit (it is a target only); a changed first code changes
  // the logits of codes 1.. but not code 0's (causality)
  GptBatch b2 = batch;
  b2.codes = batch.codes.clone();
  b2.codes.ptr<int32_t>()[5] = (b2.codes.ptr<int32_t>()[5] + 1) % cfg.vocab_size_img;
  b2.codes.ptr<int32_t>()[6] = (b2.codes.ptr<int32_t>()[6] + 1) % cfg.vocab_size_img;  // row 1, code 0
  Tensor l2;
  tr.evaluate(b2, &l2);
  const int64_t K = cfg.vocab_size_img;
  for (int64_t j = 0; j < 6 * K; ++j) EXPECT_EQ(l2.f32()[j], logits.f32()[j]) << "row 0";
  for (int64_t j = 0; j < K; ++j) EXPECT_EQ(l2.f32()[6 * K + j], logits.f32()[6 * K + j]) << "row 1 code 0";
  bool changed = false;
  for (int64_t j = K; j < 6 * K; ++j) changed |= l2.f32()[6 * K + j] != logits.f32()[6 * K + j];
  EXPECT_TRUE(changed);
}

TEST(GptTrainer, LossIsWeightedImageAndTextCE) {
  const MindalleGptConfig cfg = tiny_config();
  MindalleGptTrainer tr(cfg);
  randomize(tr, 4);
  const GptBatch batch = tiny_batch(cfg, 2, 5);
  Tensor logits, tl;
  GptLoss l = tr.evaluate(batch, &logits, &tl);
  const int64_t K = cfg.vocab_size_img, V = cfg.vocab_size_txt, L = cfg.ctx_len_txt;
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
  EXPECT_EQ(tr.targets_per_batch(2), 2 * (6 + 3));
}

// Finite differences of the f32 loss: step h = 1e-2 on parameters of size ~0.3; the loss is ~2
// and its f32 rounding (~1e-6 with double accumulation of row losses) over 2h gives ~5e-5, the
// truncation error O(h²) ~1e-4 · |f'''|. Tolerance 3e-4 + 3e-2·|fd|; a wrong factor or a
// missing path is off by O(|g|) (the checked elements have the largest |g| of their tensor,
// typically 1e-2 .. 1e-1).
TEST(GptTrainer, GradientMatchesFiniteDifferences) {
  const MindalleGptConfig cfg = tiny_config();
  MindalleGptTrainer tr(cfg);
  randomize(tr, 6);
  const GptBatch batch = tiny_batch(cfg, 2, 7);
  tr.params().zero_grad();
  tr.forward_backward(batch, 0, 0);
  int checked = 0;
  for (auto& p : tr.params().all()) {
    int64_t imax = 0;  // the element with the largest |grad|, and one fixed element
    for (int64_t i = 0; i < p->numel(); ++i)
      if (std::abs(p->g()[i]) > std::abs(p->g()[imax])) imax = i;
    if (p->name.find("attn.key.bias") == std::string::npos)  // softmax ignores a key bias: g = 0
      EXPECT_GT(std::abs(p->g()[imax]), 1e-4) << p->name << ": no gradient reaches it";
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
  EXPECT_EQ(checked, 2 * (4 + 16 * 2 + 4));  // tables, 2 blocks, ln_f + 2 heads
  // the last image position is never fed (its code is a target only): no gradient reaches its
  // positional row; image codes fed nowhere get none either
  const int64_t C = cfg.embed_dim;
  Param& pi = tr.params().get("stage2.pos_emb_img.weight");
  for (int64_t c = 0; c < C; ++c) EXPECT_EQ(pi.g()[5 * C + c], 0.0f);
  Param& ti = tr.params().get("stage2.tok_emb_img.weight");
  std::vector<bool> fed(size_t(cfg.vocab_size_img), false);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t j = 0; j < 5; ++j) fed[size_t(batch.codes.ptr<int32_t>()[b * 6 + j])] = true;
  for (int k = 0; k < cfg.vocab_size_img; ++k)
    if (!fed[size_t(k)])
      for (int64_t c = 0; c < C; ++c) EXPECT_EQ(ti.g()[k * C + c], 0.0f) << "code " << k;
}

TEST(GptTrainer, DropoutReplaysPerStep) {
  const MindalleGptConfig cfg = tiny_config();
  MindalleGptTrainer tr(cfg);
  EXPECT_EQ(tr.options().dropout, 0.0f);  // the released pdrop
  tr.init_weights(3);
  tr.options().dropout = 0.1f;
  const GptBatch batch = tiny_batch(cfg, 2, 8);
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

TEST(GptTrainer, InitIsDeterministicAndFollowsTheRules) {
  const MindalleGptConfig cfg = tiny_config();
  MindalleGptTrainer a(cfg), b(cfg), c(cfg);
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
    const bool ln = n.find(".ln") != std::string::npos;
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
  // AdamW decays the Linear weights (heads included), not embeddings, positions, norms, biases
  auto kind = [&](const std::string& k) { return a.params().get("stage2." + k).kind; };
  EXPECT_EQ(kind("blocks.0.attn.key.weight"), ParamKind::weight);
  EXPECT_EQ(kind("blocks.1.mlp.2.weight"), ParamKind::weight);
  EXPECT_EQ(kind("head_img.weight"), ParamKind::weight);
  EXPECT_EQ(kind("head_txt.weight"), ParamKind::weight);
  EXPECT_EQ(kind("tok_emb_img.weight"), ParamKind::no_decay);
  EXPECT_EQ(kind("tok_emb_txt.weight"), ParamKind::no_decay);
  EXPECT_EQ(kind("pos_emb_img.weight"), ParamKind::no_decay);
  EXPECT_EQ(kind("pos_emb_txt.weight"), ParamKind::no_decay);
  EXPECT_EQ(kind("blocks.0.ln1.weight"), ParamKind::no_decay);
  EXPECT_EQ(kind("ln_f.weight"), ParamKind::no_decay);
  EXPECT_EQ(kind("blocks.0.mlp.0.bias"), ParamKind::no_decay);
}

TEST(GptTrainer, BadBatchesAreRefused) {
  const MindalleGptConfig cfg = tiny_config();
  MindalleGptTrainer tr(cfg);
  GptBatch b = tiny_batch(cfg, 2, 9);
  b.codes.ptr<int32_t>()[3] = cfg.vocab_size_img;
  EXPECT_NE(test::error_of([&] { tr.evaluate(b); }).find("code 7 outside [0, 7)"), std::string::npos);
  b = tiny_batch(cfg, 2, 9);
  b.text.ptr<int32_t>()[0] = -1;
  EXPECT_NE(test::error_of([&] { tr.evaluate(b); }).find("text id -1"), std::string::npos);
  b = tiny_batch(cfg, 2, 9);
  b.text = Tensor::zeros({2, 3}, DType::I32);
  EXPECT_NE(test::error_of([&] { tr.evaluate(b); }).find("text ids must be int32 [2,4]"), std::string::npos);
  b = tiny_batch(cfg, 2, 9);
  b.codes = Tensor::zeros({2, 2, 3, 4}, DType::I32);  // RQ-style depth 4
  EXPECT_NE(test::error_of([&] { tr.evaluate(b); }).find("h*w = ctx_len_img 6"), std::string::npos);
  MindalleGptConfig bad = cfg;
  bad.n_heads = 3;
  EXPECT_NE(test::error_of([&] { MindalleGptTrainer t2(bad); }).find("not divisible"), std::string::npos);
}
