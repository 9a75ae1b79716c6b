// VQGAN training step (see vqgan_trainer.h). Legend: B batch, R resolution, Z z_channels,
// E embed_dim, h/w latent size, N = B*h*w latent vectors, K codebook size.
#include "train/vqgan_trainer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/threads.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/quantize.h"
#include "train/conv_ops.h"

namespace hwaga::train {

std::string vqgan_codebook_key() { return "stage1.quantize.embedding.weight"; }

VqganTrainer::VqganTrainer(const Stage1Config& cfg, uint64_t seed, VqganTrainOptions opt) : cfg_(cfg), opt_(opt) {
  validate_stage1_config(cfg, "stage-1 training config");
  if (cfg.type != "vqgan") fail("VQGAN training: expected a config of type \"vqgan\", found \"", cfg.type, "\"");
  const int Z = cfg.net.z_channels, E = cfg.embed_dim, K = cfg.n_embed;
  encoder_.build(ps_, "stage1.encoder.", cfg.net);
  quant_conv_.build(ps_, "stage1.quant_conv", Z, E, 1, 0);
  post_quant_conv_.build(ps_, "stage1.post_quant_conv", E, Z, 1, 0);
  decoder_.build(ps_, "stage1.decoder.", cfg.net);
  codebook_ = &ps_.add(vqgan_codebook_key(), {K, E}, ParamKind::no_decay);

  // The trainable net must be exactly what a model file of this config holds.
  std::vector<TensorSpec> specs = stage1_tensor_specs(cfg);
  HWAGA_CHECK(specs.size() == ps_.all().size(), "VQGAN trainer params do not match stage1_tensor_specs");
  for (size_t i = 0; i < specs.size(); ++i)
    HWAGA_CHECK(ps_.all()[i]->name == "stage1." + specs[i].name && ps_.all()[i]->value.shape() == specs[i].shape,
                "VQGAN trainer param ", ps_.all()[i]->name, " differs from the spec stage1.", specs[i].name);

  init_taming_params(ps_, "stage1.", seed);  // (sets the rank-2 codebook to 1 like a norm gain: redrawn here)
  TrainRng rng(mix_seed(seed, codebook_->name));
  float* w = codebook_->v();  // taming: embedding.weight.data.uniform_(-1/n_e, 1/n_e)
  for (int64_t i = 0; i < int64_t(K) * E; ++i) w[i] = rng.uniform(-1.0f / float(K), 1.0f / float(K));
}

TensorMap VqganTrainer::model_tensors() const { return ps_.values(); }

void VqganTrainer::load_model_tensors(const TensorMap& m, const std::string& source) {
  for (auto& p : ps_.all()) {
    const Tensor& t = get_tensor(m, p->name, source);
    if (t.shape() != p->value.shape())
      fail(source, ": tensor '", p->name, "' has shape ", shape_str(t.shape()), ", expected ",
           shape_str(p->value.shape()), " from the training config");
    Tensor f = t.dtype() == DType::F32 ? t : t.to(DType::F32);
    std::memcpy(p->v(), f.data(), p->value.nbytes());
  }
}

namespace {

void check_images(const Stage1Config& cfg, const Tensor& x) {
  const Shape want = {x.ndim() > 0 ? x.dim(0) : 0, cfg.net.in_channels, cfg.net.resolution, cfg.net.resolution};
  if (x.ndim() != 4 || x.dim(0) < 1 || x.shape() != want || x.dtype() != DType::F32)
    fail("VQGAN training: expected f32 pictures [B,", cfg.net.in_channels, ",", cfg.net.resolution, ",",
         cfg.net.resolution, "], found ", shape_str(x.shape()));
}

// mean |y - t| over n values (summed in double); dy = sign(y - t) / n (0 where y == t, as
// torch's abs backward).
double l1_forward_backward(const float* y, const float* t, float* dy, int64_t n) {
  double s = 0;
  const float g = 1.0f / float(n);
  for (int64_t i = 0; i < n; ++i) {
    const float d = y[i] - t[i];
    s += std::fabs(double(d));
    dy[i] = d > 0 ? g : (d < 0 ? -g : 0.0f);
  }
  return s / double(n);
}

}  // namespace

VqganStepStats VqganTrainer::train_step(const Tensor& x, const Stage1Terms* terms) {
  check_images(cfg_, x);
  const int64_t B = x.dim(0), h = cfg_.net.latent_resolution(), E = cfg_.embed_dim, K = cfg_.n_embed;
  const int64_t N = B * h * h;
  VqganStepStats st;
  Tensor ze = quant_conv_.forward(encoder_.forward(x));  // [B,E,h,w]
  Tensor z = Tensor::empty({B, h, h, E});
  cpu::nchw_to_nhwc_forward(ze.f32(), z.f32(), B, E, h * h);  // [B,h,w,E]

  // quantize: c = argmin ||z - e_k||^2; zq = e_c [N,E]
  last_codes_ = Tensor::empty({B, h, h, 1}, DType::I32);
  int32_t* c = last_codes_.ptr<int32_t>();
  const float* W = codebook_->v();
  cpu::residual_quantize_forward(z.f32(), W, c, N, K, E, 1);
  Tensor zq = Tensor::empty({B, h, h, E});
  float* zqp = zq.f32();
  parallel_for(N, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) std::memcpy(zqp + i * E, W + int64_t(c[i]) * E, size_t(E) * sizeof(float));
  });
  // m = mean((z - e_c)^2); dz_commit = w_commit 2 (z - e_c) / (N E); de_c += w_codebook 2 (e_c - z) / (N E)
  const float* zp = z.f32();
  std::vector<float> dcommit(size_t(N * E));
  float* gW = codebook_->g();
  const float gc = 2.0f * opt_.commit_weight() / float(N * E), gb = 2.0f * opt_.codebook_weight() / float(N * E);
  double se = 0;
  std::vector<int64_t> hist(size_t(K), 0);
  for (int64_t i = 0; i < N; ++i) {  // sequential: rows chosen by several vectors add up in a fixed order
    const int64_t k = c[i];
    hist[size_t(k)]++;
    for (int64_t e = 0; e < E; ++e) {
      const float d = zp[i * E + e] - zqp[i * E + e];
      se += double(d) * d;
      dcommit[size_t(i * E + e)] = gc * d;
      gW[k * E + e] -= gb * d;
    }
  }
  st.commitment = se / double(N * E);

  // straight-through: the decoder reads e_c, its gradient goes to z unchanged
  Tensor zin = Tensor::empty({B, E, h, h});
  cpu::nhwc_to_nchw_forward(opt_.straight_through ? zqp : zp, zin.f32(), B, h * h, E);
  Tensor xr = decoder_.forward(post_quant_conv_.forward(zin));  // [B,out,R,R]
  Tensor dxr = Tensor::empty(xr.shape());
  st.recon = opt_.l1 ? l1_forward_backward(xr.f32(), x.f32(), dxr.f32(), xr.numel())
                     : mse_forward_backward(xr.f32(), x.f32(), dxr.f32(), xr.numel(), 1.0f);
  st.loss = st.recon + double(opt_.commit_weight() + opt_.codebook_weight()) * st.commitment;
  if (terms) apply_stage1_terms(*terms, x, xr, dxr, decoder_.conv_out, st.terms);
  last_recon_ = xr;

  Tensor dz = post_quant_conv_.backward(decoder_.backward(dxr));  // [B,E,h,w]
  Tensor dc = Tensor::empty({B, E, h, h});
  cpu::nhwc_to_nchw_forward(dcommit.data(), dc.f32(), B, h * h, E);
  add_inplace(dz.f32(), dc.f32(), dz.numel());
  encoder_.backward(quant_conv_.backward(dz));

  const CodeUsage u = code_usage(hist, dp_);
  st.codes_used = u.used;
  st.perplexity = u.perplexity;
  return st;
}

Tensor VqganTrainer::reconstruct(const Tensor& x, Tensor* codes_out) {
  check_images(cfg_, x);
  const int64_t B = x.dim(0), h = cfg_.net.latent_resolution(), E = cfg_.embed_dim, K = cfg_.n_embed;
  const int64_t N = B * h * h;
  Tensor ze = quant_conv_.forward(encoder_.forward(x, false), false);  // [B,E,h,w]
  Tensor z = Tensor::empty({B, h, h, E});
  cpu::nchw_to_nhwc_forward(ze.f32(), z.f32(), B, E, h * h);
  Tensor codes = Tensor::empty({B, h, h, 1}, DType::I32);
  cpu::residual_quantize_forward(z.f32(), codebook_->v(), codes.ptr<int32_t>(), N, K, E, 1);
  cpu::embed_sum_forward(codes.ptr<int32_t>(), codebook_->v(), z.f32(), N, 1, K, E);  // e_c [B,h,w,E]
  cpu::nhwc_to_nchw_forward(z.f32(), ze.f32(), B, h * h, E);
  if (codes_out) *codes_out = codes;
  return decoder_.forward(post_quant_conv_.forward(ze, false), false);
}

}  // namespace hwaga::train
