// RqvaeTrainer (train/rqvae_trainer.h): parameter names and initialisation, the whole net's
// gradient against central finite differences, the EMA codebook rules, determinism, and that
// a few Adam steps lower the loss. Agreement with PyTorch autograd is tests/parity's job
// (test_train_stage1.py).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>

#include "nn/stage1_config.h"
#include "train/optim.h"
#include "train/rqvae_trainer.h"

using namespace hwaga;
using namespace hwaga::train;

namespace {

// resolution 16, ch 32, ch_mult [1,2] (one downsampling -> 8x8), one res block, attention at 8,
// z 32, E 8, K 16, depth 2: every kind of module, ~740k parameters.
Stage1Config tiny_config(int K = 16, int D = 2) {
  Stage1Config c;
  c.type = "rq-vae";
  c.net.ch = 32;
  c.net.ch_mult = {1, 2};
  c.net.num_res_blocks = 1;
  c.net.attn_resolutions = {8};
  c.net.z_channels = 32;
  c.net.resolution = 16;
  c.embed_dim = 8;
  c.n_embed = K;
  c.code_shape = {8, 8, D};
  validate_stage1_config(c, "tiny");
  return c;
}

Tensor pictures(int64_t B, int64_t R, uint32_t seed) {
  Tensor t = Tensor::empty({B, 3, R, R});
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  float* p = t.f32();
  for (int64_t b = 0; b < B; ++b)  // smooth pictures with a little noise
    for (int64_t c = 0; c < 3; ++c) {
      const float a = u(g), f = 0.2f + 0.3f * std::fabs(u(g));
      for (int64_t y = 0; y < R; ++y)
        for (int64_t x = 0; x < R; ++x)
          p[((b * 3 + c) * R + y) * R + x] = std::clamp(a * std::sin(f * float(x + 2 * y)) + 0.1f * u(g), -1.0f, 1.0f);
    }
  return t;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

}  // namespace

TEST(RqvaeTrainer, ParamsAreTheReleasedKeys) {
  Stage1Config c = tiny_config();
  RqvaeTrainer t(c, 1);
  std::vector<TensorSpec> specs = stage1_tensor_specs(c);
  auto& all = t.params().all();
  ASSERT_EQ(all.size(), specs.size() + 2);
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(all[i]->name, "stage1." + specs[i].name);
    EXPECT_EQ(all[i]->value.shape(), specs[i].shape);
  }
  const Param* cb = t.params().find("stage1.quantizer.codebooks.0.weight");
  ASSERT_TRUE(cb);
  EXPECT_EQ(cb->kind, ParamKind::buffer);
  EXPECT_EQ(cb->value.shape(), (Shape{17, 8}));
  EXPECT_EQ(t.params().find("stage1.quantizer.codebooks.0.cluster_size_ema")->value.shape(), (Shape{16}));
  EXPECT_EQ(t.params().find("stage1.quantizer.codebooks.0.embed_ema")->value.shape(), (Shape{16, 8}));
  // the export is exactly what a model file of this config holds
  TensorMap m = t.model_tensors();
  std::vector<TensorSpec> pre = specs;
  for (auto& s : pre) s.name = "stage1." + s.name;
  EXPECT_NO_THROW(check_tensors(m, pre, "stage1.", "export"));
}

TEST(RqvaeTrainer, InitialisationLikePyTorch) {
  Stage1Config c = tiny_config();
  RqvaeTrainer a(c, 5), b(c, 5), d(c, 6);
  for (size_t i = 0; i < a.params().all().size(); ++i)
    EXPECT_TRUE(same_bits(a.params().all()[i]->value, b.params().all()[i]->value)) << a.params().all()[i]->name;
  const Param& w = a.params().get("stage1.encoder.down.0.block.0.conv1.weight");  // [32,32,3,3]: bound 1/sqrt(288)
  const float bound = 1.0f / std::sqrt(288.0f);
  double mean = 0, sq = 0, mx = 0;
  for (int64_t i = 0; i < w.numel(); ++i) {
    mean += w.value.f32()[i];
    sq += double(w.value.f32()[i]) * w.value.f32()[i];
    mx = std::max(mx, double(std::fabs(w.value.f32()[i])));
  }
  mean /= double(w.numel());
  EXPECT_LE(mx, bound);
  EXPECT_GT(mx, 0.95 * bound);
  EXPECT_NEAR(std::sqrt(sq / double(w.numel())), bound / std::sqrt(3.0), 0.05 * bound);  // U(-b,b) std b/sqrt(3)
  EXPECT_NEAR(mean, 0.0, 0.05 * bound);
  const Param& bias = a.params().get("stage1.quant_conv.bias");  // fan_in 32
  for (int64_t i = 0; i < bias.numel(); ++i) EXPECT_LE(std::fabs(bias.value.f32()[i]), 1.0f / std::sqrt(32.0f));
  const Param& gn = a.params().get("stage1.decoder.norm_out.weight");
  for (int64_t i = 0; i < gn.numel(); ++i) EXPECT_EQ(gn.value.f32()[i], 1.0f);
  EXPECT_EQ(a.params().get("stage1.decoder.norm_out.bias").value.f32()[3], 0.0f);
  const float* cb = a.params().get("stage1.quantizer.codebooks.0.weight").value.f32();
  const float* ee = a.params().get("stage1.quantizer.codebooks.0.embed_ema").value.f32();
  for (int e = 0; e < 8; ++e) EXPECT_EQ(cb[16 * 8 + e], 0.0f) << "padding row";
  EXPECT_EQ(std::memcmp(cb, ee, 16 * 8 * 4), 0);
  double s2 = 0;
  for (int i = 0; i < 128; ++i) s2 += double(cb[i]) * cb[i];
  EXPECT_NEAR(s2 / 128, 1.0, 0.35);  // N(0,1)
  EXPECT_FALSE(same_bits(a.params().all()[0]->value, d.params().all()[0]->value)) << "the seed changes the weights";
}

// The gradient of the whole net against central finite differences of its loss. With
// straight_through off the decoder reads z itself (and the EMA is off), so the loss is a smooth
// function of every weight while no code changes (codes only enter through the commitment
// term's S_d, which is treated as a constant, as in the reference's .detach()).
// (Not checkable this way, so not listed: the attention's k bias, which softmax ignores, and
// with ch 32 = 32 GroupNorm groups any bias that feeds a GroupNorm directly, whose one-channel
// groups remove it: their true gradient is 0 and the backward gives ~1e-10.)
// Tolerance: eps 1e-3; f32 rounding of the loss (~1e-7 relative over the ~15 layers) gives
// noise: L ~ 0.4 is known to ~5e-8, i.e. ~3e-5 after dividing by 2 eps (measured on the small
// q-bias gradient, 5e-4). |fd - g| <= 1e-4 + 2e-3 * max|g| + 2e-2 |g|, max|g| over the tensor;
// most gradients checked are 1e-2..1, so a wrong term (an error the size of g) still fails.
TEST(RqvaeTrainer, GradientMatchesFiniteDifferences) {
  Stage1Config c = tiny_config();
  RqvaeTrainOptions o;
  o.ema = false;
  o.straight_through = false;
  RqvaeTrainer t(c, 3, o);
  Tensor x = pictures(2, 16, 9);
  t.params().zero_grad();
  const double l0 = t.train_step(x, 0).loss;
  std::vector<std::string> names = {
      "stage1.encoder.conv_in.weight",        "stage1.encoder.down.0.block.0.norm1.weight",
      "stage1.encoder.down.0.downsample.conv.weight", "stage1.encoder.down.1.block.0.nin_shortcut.weight",
      "stage1.encoder.down.1.attn.0.q.weight", "stage1.encoder.mid.attn_1.q.bias",
      "stage1.encoder.conv_out.bias",          "stage1.quant_conv.weight",
      "stage1.post_quant_conv.bias",           "stage1.decoder.mid.attn_1.v.weight",
      "stage1.decoder.up.1.attn.1.proj_out.weight", "stage1.decoder.up.1.upsample.conv.weight",
      "stage1.decoder.up.0.block.0.nin_shortcut.weight", "stage1.decoder.norm_out.bias",
      "stage1.decoder.conv_out.weight"};
  const Tensor codes0 = t.last_codes().clone();
  std::map<std::string, std::vector<float>> grads;  // before the probes add more
  for (const std::string& n : names) grads[n].assign(t.params().get(n).g(), t.params().get(n).g() + t.params().get(n).numel());
  for (const std::string& n : names) {
    Param& p = t.params().get(n);
    const std::vector<float>& g = grads[n];
    // the 2 largest gradients of this tensor (their finite differences stand out of the noise)
    std::vector<int64_t> idx(size_t(p.numel()));
    for (int64_t i = 0; i < p.numel(); ++i) idx[size_t(i)] = i;
    std::partial_sort(idx.begin(), idx.begin() + 2, idx.end(),
                      [&](int64_t a, int64_t b) { return std::fabs(g[size_t(a)]) > std::fabs(g[size_t(b)]); });
    double gmax = std::fabs(g[size_t(idx[0])]);
    ASSERT_GT(gmax, 0) << n;
    for (int j = 0; j < 2; ++j) {
      const int64_t i = idx[size_t(j)];
      const float keep = p.v()[i], eps = 1e-3f;
      p.v()[i] = keep + eps;
      const double lp = t.train_step(x, 0).loss;
      ASSERT_TRUE(same_bits(t.last_codes(), codes0)) << n << ": a code changed under the perturbation";
      p.v()[i] = keep - eps;
      const double lm = t.train_step(x, 0).loss;
      ASSERT_TRUE(same_bits(t.last_codes(), codes0)) << n << ": a code changed under the perturbation";
      p.v()[i] = keep;
      const double fd = (lp - lm) / (2.0 * eps);
      EXPECT_LE(std::fabs(fd - g[size_t(i)]), 1e-4 + 2e-3 * gmax + 2e-2 * std::fabs(g[size_t(i)]))
          << n << "[" << i << "]: backward " << g[size_t(i)] << ", finite difference " << fd << " (loss " << l0 << ")";
    }
  }
}

// In the real (straight-through) mode the decoder-side gradients are still exact derivatives
// of the loss (the codes do not depend on the decoder); the encoder gets the straight-through
// estimate, which parity checks against PyTorch.
TEST(RqvaeTrainer, StraightThroughDecoderGradient) {
  Stage1Config c = tiny_config();
  RqvaeTrainOptions o;
  o.ema = false;
  RqvaeTrainer t(c, 4, o);
  Tensor x = pictures(2, 16, 10);
  t.params().zero_grad();
  t.train_step(x, 0);
  const std::vector<std::string> names = {"stage1.post_quant_conv.weight", "stage1.decoder.conv_in.weight",
                                          "stage1.decoder.conv_out.bias"};
  std::map<std::string, std::vector<float>> grads;  // before the probes add more
  for (const std::string& n : names) grads[n].assign(t.params().get(n).g(), t.params().get(n).g() + t.params().get(n).numel());
  for (const std::string& n : names) {
    Param& p = t.params().get(n);
    const std::vector<float>& gs = grads[n];
    int64_t i = 0;
    for (int64_t j = 1; j < p.numel(); ++j)
      if (std::fabs(gs[size_t(j)]) > std::fabs(gs[size_t(i)])) i = j;
    const float keep = p.v()[i], eps = 1e-3f, g = gs[size_t(i)];
    p.v()[i] = keep + eps;
    const double lp = t.train_step(x, 0).loss;
    p.v()[i] = keep - eps;
    const double lm = t.train_step(x, 0).loss;
    p.v()[i] = keep;
    const double fd = (lp - lm) / (2.0 * eps);
    EXPECT_NEAR(fd, g, 2e-2 * std::fabs(g)) << n;
  }
}

TEST(RqvaeTrainer, EmaCodebookRules) {
  Stage1Config c = tiny_config(/*K=*/16, /*D=*/3);
  RqvaeTrainer t(c, 7);
  Tensor x = pictures(1, 16, 11);  // N = 64 vectors >= K: restarts draw without noise
  const float* cs = t.params().get(rqvae_codebook_key("cluster_size_ema")).value.f32();
  const float* ee = t.params().get(rqvae_codebook_key("embed_ema")).value.f32();
  const float* w = t.params().get(rqvae_codebook_key("weight")).value.f32();
  t.params().zero_grad();
  RqvaeStepStats st = t.train_step(x, 123);
  // cluster_size_ema starts at 0: after one step only codes with n_k >= 100 could keep it >= 1,
  // impossible with 64 vectors, so every code was restarted at depth 0 (and stays >= 1 after).
  EXPECT_GE(st.restarted, 16);
  ASSERT_EQ(t.last_restart_vectors().size(), 3u);
  double tot = 0;
  for (int k = 0; k < 16; ++k) {
    EXPECT_GE(cs[k], 0.99f * 0.99f) << k;  // restarted to 1 at some depth, decayed since
    tot += cs[k];
  }
  for (int k = 0; k < 16; ++k) {  // weight = embed_ema / normalised cluster size
    const double norm = tot * (cs[k] + 1e-5) / (tot + 16 * 1e-5);
    for (int e = 0; e < 8; ++e) EXPECT_NEAR(w[k * 8 + e], ee[k * 8 + e] / norm, 1e-5 * (1 + std::fabs(w[k * 8 + e])));
  }
  for (int e = 0; e < 8; ++e) EXPECT_EQ(w[16 * 8 + e], 0.0f) << "the padding row is never updated";
  // codes: [1,8,8,3] in [0,K)
  EXPECT_EQ(t.last_codes().shape(), (Shape{1, 8, 8, 3}));
  for (int64_t i = 0; i < t.last_codes().numel(); ++i) {
    EXPECT_GE(t.last_codes().ptr<int32_t>()[i], 0);
    EXPECT_LT(t.last_codes().ptr<int32_t>()[i], 16);
  }
  EXPECT_GT(st.codes_used, 0);
  EXPECT_LE(st.codes_used, 16);
  EXPECT_GE(st.perplexity, 1.0);
  EXPECT_LE(st.perplexity, double(st.codes_used) + 1e-9);
}

TEST(RqvaeTrainer, RestartVectorsTiledWithNoiseWhenFewResiduals) {
  Stage1Config c = tiny_config(/*K=*/100, /*D=*/1);  // N = 64 < K = 100
  RqvaeTrainer t(c, 8);
  Tensor x = pictures(1, 16, 12);
  t.params().zero_grad();
  t.train_step(x, 5);
  ASSERT_EQ(t.last_restart_vectors().size(), 1u);
  const Tensor& rv = t.last_restart_vectors()[0];
  ASSERT_EQ(rv.shape(), (Shape{100, 8}));
  // Distinctness: a permutation of the tiled set picks no (vector, copy) twice, so at most
  // ceil(100/64) = 2 candidates come from one residual.
  std::set<std::vector<float>> seen;
  for (int k = 0; k < 100; ++k) seen.insert(std::vector<float>(rv.f32() + k * 8, rv.f32() + k * 8 + 8));
  EXPECT_EQ(seen.size(), 100u) << "noise makes every candidate distinct";
}

TEST(RqvaeTrainer, DeterministicForASeed) {
  Stage1Config c = tiny_config();
  Tensor x = pictures(2, 16, 13);
  auto run = [&](uint64_t step_seed) {
    auto t = std::make_unique<RqvaeTrainer>(c, 21);
    AdamW opt(AdamWOptions{0.5f, 0.9f, 1e-8f, 0.0f});
    for (int s = 0; s < 2; ++s) {
      t->params().zero_grad();
      t->train_step(x, step_seed + uint64_t(s));
      opt.step(t->params(), 1e-3f);
    }
    return t;
  };
  auto a = run(100), b = run(100), d = run(200);
  for (size_t i = 0; i < a->params().all().size(); ++i)
    EXPECT_TRUE(same_bits(a->params().all()[i]->value, b->params().all()[i]->value)) << a->params().all()[i]->name;
  EXPECT_FALSE(same_bits(a->params().get(rqvae_codebook_key("embed_ema")).value,
                         d->params().get(rqvae_codebook_key("embed_ema")).value))
      << "the restart draws follow the step seed";
}

TEST(RqvaeTrainer, AdamStepsLowerTheLoss) {
  Stage1Config c = tiny_config();
  RqvaeTrainer t(c, 31);
  AdamW opt(AdamWOptions{0.5f, 0.9f, 1e-8f, 0.0f});
  Tensor x = pictures(4, 16, 14);
  double first = 0, last = 0;
  for (int s = 0; s < 25; ++s) {
    t.params().zero_grad();
    RqvaeStepStats st = t.train_step(x, uint64_t(s));
    if (s == 0) first = st.recon;
    last = st.recon;
    opt.step(t.params(), 2e-3f);
  }
  EXPECT_LT(last, 0.7 * first) << "recon MSE " << first << " -> " << last;
  Tensor codes;
  Tensor r = t.reconstruct(x, &codes);
  EXPECT_EQ(r.shape(), x.shape());
  EXPECT_EQ(codes.shape(), (Shape{4, 8, 8, 2}));
}

TEST(RqvaeTrainer, RefusesBadInput) {
  Stage1Config c = tiny_config();
  RqvaeTrainer t(c, 1);
  EXPECT_THROW(t.train_step(Tensor::zeros({1, 3, 8, 8}), 0), Error);
  Stage1Config v = c;
  v.type = "vqgan";
  v.code_shape = {8, 8, 1};
  EXPECT_THROW(RqvaeTrainer(v, 1), Error);
  TensorMap m = t.model_tensors();
  m.erase("stage1.decoder.conv_out.bias");
  EXPECT_THROW(t.load_model_tensors(m, "x.safetensors"), Error);
}
