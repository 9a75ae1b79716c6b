// VqganTrainer (train/vqgan_trainer.h): parameter names and initialisation, the whole net's
// gradient (codebook included) against central finite differences, which quantizer term carries
// beta, determinism, and that a few Adam steps lower the loss. Agreement with PyTorch autograd
// is tests/parity's job (test_train_stage1_vqgan.py).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "nn/stage1_config.h"
#include "train/optim.h"
#include "train/vqgan_trainer.h"

using namespace hwaga;
using namespace hwaga::train;

namespace {

// resolution 16, ch 32, ch_mult [1,2] (one downsampling -> 8x8), one res block, attention at 8,
// z 32, E 8, K 16: every kind of module.
Stage1Config tiny_config(int K = 16) {
  Stage1Config c;
  c.type = "vqgan";
  c.net.ch = 32;
  c.net.ch_mult = {1, 2};
  c.net.num_res_blocks = 1;
  c.net.attn_resolutions = {8};
  c.net.z_channels = 32;
  c.net.resolution = 16;
  c.embed_dim = 8;
  c.n_embed = K;
  c.code_shape = {8, 8, 1};
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

// Spreads the codebook over the scale of z: taming's U(-1/K, 1/K) start puts every row near 0,
// so one or two rows win everything. Rows ~ N(0, rms(z)^2), rms(z) read from one step's
// commitment (mean((z - e_c)^2) ~ mean(z^2) while the rows are ~0), so that several codes are
// chosen and every part of the codebook gradient is exercised.
void codebook_from_latents(VqganTrainer& t, const Tensor& x) {
  Param& cb = t.params().get(vqgan_codebook_key());
  const int64_t K = cb.value.dim(0), E = cb.value.dim(1);
  std::mt19937 g(7);
  std::normal_distribution<float> n(0.0f, 1.0f);
  float scale = 0;
  {
    t.params().zero_grad();
    VqganStepStats st = t.train_step(x);
    scale = float(std::sqrt(st.commitment));  // ~ the rms of z (the rows are ~0)
  }
  for (int64_t i = 0; i < K * E; ++i) cb.v()[i] = scale * n(g);
}

}  // namespace

TEST(VqganTrainer, ParamsAreTheReleasedKeys) {
  Stage1Config c = tiny_config();
  VqganTrainer t(c, 1);
  std::vector<TensorSpec> specs = stage1_tensor_specs(c);
  auto& all = t.params().all();
  ASSERT_EQ(all.size(), specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(all[i]->name, "stage1." + specs[i].name);
    EXPECT_EQ(all[i]->value.shape(), specs[i].shape);
  }
  const Param* cb = t.params().find("stage1.quantize.embedding.weight");
  ASSERT_TRUE(cb);
  EXPECT_EQ(cb->kind, ParamKind::no_decay) << "the codebook is trained by its gradient";
  EXPECT_EQ(cb->value.shape(), (Shape{16, 8}));
  // taming: uniform_(-1/K, 1/K)
  double mx = 0, mean = 0;
  for (int64_t i = 0; i < cb->numel(); ++i) {
    mx = std::max(mx, double(std::fabs(cb->value.f32()[i])));
    mean += cb->value.f32()[i];
  }
  EXPECT_LE(mx, 1.0 / 16);
  EXPECT_GT(mx, 0.8 / 16);
  EXPECT_NEAR(mean / 128, 0.0, 0.2 / 16);
  const Param& gn = t.params().get("stage1.decoder.norm_out.weight");
  EXPECT_EQ(gn.value.f32()[0], 1.0f);
  // deterministic in the seed
  VqganTrainer a(c, 1), d(c, 2);
  for (size_t i = 0; i < all.size(); ++i)
    EXPECT_TRUE(same_bits(all[i]->value, a.params().all()[i]->value)) << all[i]->name;
  EXPECT_FALSE(same_bits(t.params().get(vqgan_codebook_key()).value, d.params().get(vqgan_codebook_key()).value));
  // the export is exactly what a model file of this config holds
  TensorMap m = t.model_tensors();
  std::vector<TensorSpec> pre = specs;
  for (auto& s : pre) s.name = "stage1." + s.name;
  EXPECT_NO_THROW(check_tensors(m, pre, "stage1.", "export"));
  EXPECT_EQ(m.size(), specs.size());
}

// The gradient of the whole net against central finite differences. With straight_through off
// the decoder reads z itself, so with the codes fixed every gradient is the derivative of
//   f_theta = recon + w * mean((z - e_c)^2),
// w = w_codebook for the codebook (the only param the codebook term reaches through e_c) and
// w_commit for everything else (the commitment term reaches the encoder and quant_conv through
// z; the decoder sees neither). The stop-gradients make one loss for all params impossible, so
// each param is checked against its own f. Run for legacy (w_commit 1, w_codebook 0.25) and
// non-legacy (0.25, 1) weights, and for both recon kinds.
// (Not checkable this way, so not listed: the attention's k bias, which softmax ignores, and any
// bias feeding a GroupNorm of one-channel groups: their true gradient is 0; quant_conv.bias,
// which moves all z at once so that eps flips a code.) One picture: N = 64 latent vectors.
// Tolerance as in test_rqvae_trainer: eps 1e-3 (1e-4 on the codebook, whose rows are ~0.3 and
// whose finite differences must not flip a code); f32 rounding of the loss gives ~3e-5 of noise
// on fd; |fd - g| <= 1e-4 + 2e-3 max|g| + 2e-2 |g|. L1's kinks: a pixel whose residual crosses 0
// under the perturbation bends fd by at most ~eps |dx_rec/dtheta| / n, far below that.
TEST(VqganTrainer, GradientMatchesFiniteDifferences) {
  Stage1Config c = tiny_config();
  const std::vector<std::string> names = {
      "stage1.encoder.conv_in.weight",        "stage1.encoder.down.0.block.0.norm1.weight",
      "stage1.encoder.down.0.downsample.conv.weight", "stage1.encoder.down.1.block.0.nin_shortcut.weight",
      "stage1.encoder.mid.attn_1.q.bias",     "stage1.encoder.conv_out.bias",
      "stage1.quant_conv.weight",
      "stage1.quantize.embedding.weight",     "stage1.post_quant_conv.weight",
      "stage1.decoder.mid.attn_1.v.weight",   "stage1.decoder.up.1.upsample.conv.weight",
      "stage1.decoder.up.0.block.0.nin_shortcut.weight", "stage1.decoder.conv_out.weight"};
  // the second case re-checks only what its weights and recon kind change
  const std::vector<std::string> few = {"stage1.encoder.conv_in.weight", "stage1.quant_conv.weight",
                                        "stage1.quantize.embedding.weight", "stage1.decoder.conv_out.weight"};
  struct Case {
    bool legacy, l1;
    const std::vector<std::string>* names;
  };
  for (Case cs : {Case{true, true, &names}, Case{false, false, &few}}) {
    SCOPED_TRACE(std::string("legacy ") + (cs.legacy ? "on" : "off") + ", recon " + (cs.l1 ? "L1" : "MSE"));
    VqganTrainOptions o;
    o.straight_through = false;
    o.legacy = cs.legacy;
    o.l1 = cs.l1;
    VqganTrainer t(c, 3, o);
    Tensor x = pictures(1, 16, 9);
    codebook_from_latents(t, x);
    t.params().zero_grad();
    t.train_step(x);
    const Tensor codes0 = t.last_codes().clone();
    std::map<std::string, std::vector<float>> grads;  // before the probes add more
    for (const std::string& n : *cs.names)
      grads[n].assign(t.params().get(n).g(), t.params().get(n).g() + t.params().get(n).numel());
    int used = 0;
    for (int k = 0; k < 16; ++k) used += std::count(codes0.ptr<int32_t>(), codes0.ptr<int32_t>() + 64, k) > 0;
    ASSERT_GE(used, 4) << "too few codes chosen for a useful codebook check";
    int total = 0;
    for (const std::string& n : *cs.names) {
      Param& p = t.params().get(n);
      const bool is_cb = n == vqgan_codebook_key();
      const double w = is_cb ? o.codebook_weight() : o.commit_weight();
      bool flipped = false;
      auto f = [&] {
        VqganStepStats st = t.train_step(x);
        flipped = flipped || !same_bits(t.last_codes(), codes0);
        return st.recon + w * st.commitment;
      };
      const std::vector<float>& g = grads[n];
      std::vector<int64_t> idx(size_t(p.numel()));
      for (int64_t i = 0; i < p.numel(); ++i) idx[size_t(i)] = i;
      std::sort(idx.begin(), idx.end(),
                [&](int64_t a, int64_t b) { return std::fabs(g[size_t(a)]) > std::fabs(g[size_t(b)]); });
      const double gmax = std::fabs(g[size_t(idx[0])]);
      ASSERT_GT(gmax, 0) << n;
      // The 2 largest gradients whose perturbation leaves every code as it was (f is only
      // piecewise smooth: a flipped code makes fd meaningless there), out of the 8 largest.
      int checked = 0;
      for (size_t j = 0; j < 8 && j < idx.size() && checked < 2; ++j) {
        const int64_t i = idx[j];
        const float keep = p.v()[i], eps = is_cb ? 1e-4f : 1e-3f;
        flipped = false;
        p.v()[i] = keep + eps;
        const double lp = f();
        p.v()[i] = keep - eps;
        const double lm = f();
        p.v()[i] = keep;
        if (flipped) continue;
        checked++;
        const double fd = (lp - lm) / (2.0 * eps);
        const double tol = (is_cb ? 1e-3 : 1e-4) + 2e-3 * gmax + 2e-2 * std::fabs(g[size_t(i)]);
        EXPECT_LE(std::fabs(fd - g[size_t(i)]), tol) << n << "[" << i << "]: backward " << g[size_t(i)]
                                                     << ", finite difference " << fd;
      }
      EXPECT_GE(checked, 1) << n << ": every probe flipped a code";
      total += checked;
    }
    std::printf("  %s: %d elements checked\n", cs.legacy ? "legacy" : "non-legacy", total);
    // rows no vector chose get no gradient
    const std::vector<float>& gcb = grads[vqgan_codebook_key()];
    for (int k = 0; k < 16; ++k)
      if (std::count(codes0.ptr<int32_t>(), codes0.ptr<int32_t>() + 64, k) == 0)
        for (int e = 0; e < 8; ++e) EXPECT_EQ(gcb[size_t(k * 8 + e)], 0.0f) << "unused row " << k;
  }
}

// legacy (taming's default) puts beta on the codebook term: the loss value is the same either
// way (both terms equal mean((z - e_c)^2) in the forward), the codebook gradient is beta / 1 =
// 0.25 times the non-legacy one, and the decoder's gradient does not change.
TEST(VqganTrainer, LegacyBetaIsOnTheCodebookTerm) {
  Stage1Config c = tiny_config();
  Tensor x = pictures(2, 16, 21);
  VqganTrainOptions ol, on;
  on.legacy = false;
  VqganTrainer a(c, 5, ol), b(c, 5, on);
  codebook_from_latents(a, x);
  codebook_from_latents(b, x);
  a.params().zero_grad();
  b.params().zero_grad();
  const VqganStepStats sa = a.train_step(x), sb = b.train_step(x);
  EXPECT_EQ(sa.loss, sb.loss);
  EXPECT_EQ(sa.loss, sa.recon + 1.25 * sa.commitment);
  const Param& ga = a.params().get(vqgan_codebook_key());
  const Param& gb = b.params().get(vqgan_codebook_key());
  double na = 0, nb = 0;
  for (int64_t i = 0; i < ga.numel(); ++i) {
    EXPECT_NEAR(ga.grad.f32()[i], 0.25f * gb.grad.f32()[i], 1e-6f * (1 + std::fabs(gb.grad.f32()[i])));
    na += std::fabs(ga.grad.f32()[i]);
    nb += std::fabs(gb.grad.f32()[i]);
  }
  EXPECT_GT(nb, 0);
  EXPECT_TRUE(same_bits(a.params().get("stage1.decoder.conv_out.weight").grad,
                        b.params().get("stage1.decoder.conv_out.weight").grad));
  EXPECT_FALSE(same_bits(a.params().get("stage1.quant_conv.weight").grad, b.params().get("stage1.quant_conv.weight").grad))
      << "the commitment weight (1 vs 0.25) reaches the encoder side";
}

// In the real (straight-through) mode the decoder-side gradients are exact derivatives of the
// recon loss (the codes do not depend on the decoder); the encoder and codebook get the
// straight-through estimate, which parity checks against PyTorch.
TEST(VqganTrainer, StraightThroughDecoderGradient) {
  Stage1Config c = tiny_config();
  VqganTrainer t(c, 4);
  Tensor x = pictures(2, 16, 10);
  codebook_from_latents(t, x);
  t.params().zero_grad();
  t.train_step(x);
  const std::vector<std::string> names = {"stage1.post_quant_conv.weight", "stage1.decoder.conv_in.weight",
                                          "stage1.decoder.conv_out.bias"};
  std::map<std::string, std::vector<float>> grads;
  for (const std::string& n : names) grads[n].assign(t.params().get(n).g(), t.params().get(n).g() + t.params().get(n).numel());
  for (const std::string& n : names) {
    Param& p = t.params().get(n);
    const std::vector<float>& gs = grads[n];
    int64_t i = 0;
    for (int64_t j = 1; j < p.numel(); ++j)
      if (std::fabs(gs[size_t(j)]) > std::fabs(gs[size_t(i)])) i = j;
    const float keep = p.v()[i], eps = 1e-3f, g = gs[size_t(i)];
    p.v()[i] = keep + eps;
    const double lp = t.train_step(x).loss;
    p.v()[i] = keep - eps;
    const double lm = t.train_step(x).loss;
    p.v()[i] = keep;
    EXPECT_NEAR((lp - lm) / (2.0 * eps), g, 2e-2 * std::fabs(g) + 1e-4) << n;
  }
}

TEST(VqganTrainer, AdamStepsLowerTheLossDeterministically) {
  Stage1Config c = tiny_config();
  Tensor x = pictures(4, 16, 14);
  // The L1 of single steps is noisy (codes switch), and a change of the last bit anywhere (an
  // instrumented build, another exp) sends the run down another path. So the check compares
  // means: the last 10 of 40 steps against the first 3. Over 16 init seeds that ratio was
  // 0.62-0.73; 0.85 still demands a clear fall.
  auto run = [&](int steps, std::vector<double>* recon) {
    auto t = std::make_unique<VqganTrainer>(c, 31);
    AdamW opt(AdamWOptions{0.5f, 0.9f, 1e-8f, 0.0f});
    for (int s = 0; s < steps; ++s) {
      t->params().zero_grad();
      VqganStepStats st = t->train_step(x);
      EXPECT_GE(st.codes_used, 1);
      EXPECT_LE(st.perplexity, double(st.codes_used) + 1e-9);
      if (recon) recon->push_back(st.recon);
      opt.step(t->params(), 2e-3f);
    }
    return t;
  };
  std::vector<double> recon;
  auto a = run(40, &recon);
  double head = 0, tail = 0;
  for (int i = 0; i < 3; ++i) head += recon[size_t(i)] / 3;
  for (int i = 30; i < 40; ++i) tail += recon[size_t(i)] / 10;
  EXPECT_LT(tail, 0.85 * head) << "recon L1, mean of steps 1-3 " << head << " -> of steps 31-40 " << tail;
  auto b = run(2, nullptr), d = run(2, nullptr);
  for (size_t i = 0; i < b->params().all().size(); ++i)
    EXPECT_TRUE(same_bits(b->params().all()[i]->value, d->params().all()[i]->value)) << b->params().all()[i]->name;
  // the codebook moved (Adam on its gradient)
  VqganTrainer fresh(c, 31);
  EXPECT_FALSE(same_bits(fresh.params().get(vqgan_codebook_key()).value, a->params().get(vqgan_codebook_key()).value));
  Tensor codes;
  Tensor r = a->reconstruct(x, &codes);
  EXPECT_EQ(r.shape(), x.shape());
  EXPECT_EQ(codes.shape(), (Shape{4, 8, 8, 1}));
  for (int64_t i = 0; i < codes.numel(); ++i) {
    EXPECT_GE(codes.ptr<int32_t>()[i], 0);
    EXPECT_LT(codes.ptr<int32_t>()[i], 16);
  }
}

TEST(VqganTrainer, RefusesBadInput) {
  Stage1Config c = tiny_config();
  VqganTrainer t(c, 1);
  EXPECT_THROW(t.train_step(Tensor::zeros({1, 3, 8, 8})), Error);
  Stage1Config r = c;
  r.type = "rq-vae";
  r.code_shape = {8, 8, 2};
  EXPECT_THROW(VqganTrainer(r, 1), Error);
  TensorMap m = t.model_tensors();
  m.erase("stage1.quantize.embedding.weight");
  try {
    t.load_model_tensors(m, "x.safetensors");
    FAIL() << "a missing codebook was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x.safetensors"), std::string::npos) << e.what();
  }
  TensorMap m2 = t.model_tensors();
  m2["stage1.quantize.embedding.weight"] = Tensor::zeros({15, 8});
  EXPECT_THROW(t.load_model_tensors(m2, "x.safetensors"), Error);
}
