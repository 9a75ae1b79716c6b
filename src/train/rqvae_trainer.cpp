// RQ-VAE training step (see rqvae_trainer.h). Legend: B batch, R resolution, Z z_channels,
// E embed_dim, h/w latent size, N = B*h*w latent vectors, K codebook size, D depth.
#include "train/rqvae_trainer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/threads.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/quantize.h"
#include "train/conv_ops.h"
#include "train/train_ops.h"

namespace hwaga::train {

std::string rqvae_codebook_key(const char* what) { return std::string("stage1.quantizer.codebooks.0.") + what; }

RqvaeTrainer::RqvaeTrainer(const Stage1Config& cfg, uint64_t seed, RqvaeTrainOptions opt) : cfg_(cfg), opt_(opt) {
  validate_stage1_config(cfg, "stage-1 training config");
  if (!cfg.is_rq()) fail("stage-1 training: only rq-vae configs can be trained, found type \"", cfg.type, "\"");
  const int Z = cfg.net.z_channels, E = cfg.embed_dim, K = cfg.n_embed;
  encoder_.build(ps_, "stage1.encoder.", cfg.net);
  quant_conv_.build(ps_, "stage1.quant_conv", Z, E, 1, 0);
  post_quant_conv_.build(ps_, "stage1.post_quant_conv", E, Z, 1, 0);
  decoder_.build(ps_, "stage1.decoder.", cfg.net);
  codebook_ = &ps_.add(rqvae_codebook_key("weight"), {K + 1, E}, ParamKind::buffer);
  cluster_size_ = &ps_.add(rqvae_codebook_key("cluster_size_ema"), {K}, ParamKind::buffer);
  embed_ema_ = &ps_.add(rqvae_codebook_key("embed_ema"), {K, E}, ParamKind::buffer);
  codebook_->host_only = cluster_size_->host_only = embed_ema_->host_only = true;  // the quantizer runs on the host

  // The trainable net must be exactly what a model file of this config holds.
  std::vector<TensorSpec> specs = stage1_tensor_specs(cfg);
  HWAGA_CHECK(specs.size() + 2 == ps_.all().size(), "trainer params do not match stage1_tensor_specs");
  for (size_t i = 0; i < specs.size(); ++i)
    HWAGA_CHECK(ps_.all()[i]->name == "stage1." + specs[i].name && ps_.all()[i]->value.shape() == specs[i].shape,
                "trainer param ", ps_.all()[i]->name, " differs from the spec stage1.", specs[i].name);

  init_taming_params(ps_, "stage1.", seed);
  TrainRng rng(mix_seed(seed, codebook_->name));
  float* w = codebook_->v();  // nn.Embedding: N(0,1); row K (padding_idx) zero
  for (int64_t i = 0; i < int64_t(K) * E; ++i) w[i] = rng.normal();
  std::memcpy(embed_ema_->v(), w, size_t(K) * E * sizeof(float));
}

TensorMap RqvaeTrainer::model_tensors() const {
  TensorMap m = ps_.host_values();  // views on the CPU, host copies of device params
  m.erase(cluster_size_->name);
  m.erase(embed_ema_->name);
  return m;
}

void RqvaeTrainer::load_model_tensors(const TensorMap& m, const std::string& source) {
  for (auto& p : ps_.all()) {
    if (p.get() == cluster_size_ || p.get() == embed_ema_) continue;
    const Tensor& t = get_tensor(m, p->name, source);
    if (t.shape() != p->value.shape())
      fail(source, ": tensor '", p->name, "' has shape ", shape_str(t.shape()), ", expected ",
           shape_str(p->value.shape()), " from the training config");
    Tensor f = t.dtype() == DType::F32 ? t : t.to(DType::F32);
    if (p->value.device() == Device::CPU)
      std::memcpy(p->v(), f.data(), p->value.nbytes());
    else
      ps_.ops().write(p->v(), f.data(), p->value.nbytes());
  }
  const int64_t K = cfg_.n_embed, E = cfg_.embed_dim;
  std::memcpy(embed_ema_->v(), codebook_->v(), size_t(K * E) * sizeof(float));
  std::fill(cluster_size_->v(), cluster_size_->v() + K, 1.0f);
  std::fill(codebook_->v() + K * E, codebook_->v() + (K + 1) * E, 0.0f);
}

// ---------------------------------------------------------------------------------------------
// quantizer

// z [N,E] -> zq [N,E] = S_D, dz [N,E] = d(commitment term of the loss)/dz; the EMA updates.
void RqvaeTrainer::quantize_train(const float* z, int64_t N, uint64_t step_seed, std::vector<float>& zq,
                                  std::vector<float>& dz, RqvaeStepStats& st) {
  const int64_t K = cfg_.n_embed, E = cfg_.embed_dim, D = cfg_.depth();
  float* W = codebook_->v();  // [K+1,E]
  float* cs = cluster_size_->v();
  float* ee = embed_ema_->v();
  std::vector<float> r(z, z + N * E), q(size_t(N * E));
  zq.assign(size_t(N * E), 0.0f);  // running sum S_d
  dz.assign(size_t(N * E), 0.0f);  // sum over d of (z - S_d)
  std::vector<int32_t> c(static_cast<size_t>(N));
  std::vector<int64_t> hist(size_t(K), 0);
  last_codes_ = Tensor::empty({N, D}, DType::I32);
  int32_t* codes = last_codes_.ptr<int32_t>();
  last_restart_.clear();
  double commit = 0;
  const float keep = opt_.decay, add = float(1.0 - double(opt_.decay));
  const bool dist = dp_ && dp_->world() > 1;
  std::vector<float> all_r;  // rank 0 of a data-parallel run: every rank's residuals, rank order

  for (int64_t d = 0; d < D; ++d) {
    cpu::residual_quantize_forward(r.data(), W, c.data(), N, K, E, 1);  // argmin over rows [0,K)
    parallel_for(N, 64, [&](int64_t i0, int64_t i1) {  // q_d = table[c] before this depth's update
      for (int64_t i = i0; i < i1; ++i) std::memcpy(&q[size_t(i * E)], W + int64_t(c[size_t(i)]) * E, size_t(E) * 4);
    });
    if (opt_.ema) {
      std::vector<double> n(size_t(K), 0.0), s(size_t(K * E), 0.0);
      for (int64_t i = 0; i < N; ++i) {  // fixed order: deterministic
        const int64_t k = c[size_t(i)];
        n[size_t(k)] += 1;
        for (int64_t e = 0; e < E; ++e) s[size_t(k * E + e)] += r[size_t(i * E + e)];
      }
      if (dist) {
        dp_->all_reduce_sum(n.data(), K);
        dp_->all_reduce_sum(s.data(), K * E);
      }
      for (int64_t k = 0; k < K; ++k) {
        cs[k] = cs[k] * keep + add * float(n[size_t(k)]);
        for (int64_t e = 0; e < E; ++e) ee[k * E + e] = ee[k * E + e] * keep + add * float(s[size_t(k * E + e)]);
      }
      if (opt_.restart_unused) {
        // A random permutation of this depth's residuals (tiled, with noise, when N < K), first K:
        // of the global batch's residuals, drawn by rank 0 when data parallel.
        const float* res = r.data();
        int64_t Ng = N;
        if (dist) {
          dp_->gather(r.data(), N * E, &all_r);
          res = all_r.data();
          Ng = N * dp_->world();
        }
        Tensor rv = Tensor::empty({K, E});
        float* rp = rv.f32();
        if (!dist || dp_->leader()) {
          TrainRng rng(mix_seed(step_seed, uint64_t(d)));
          const bool tiled = Ng < K;
          const int64_t M = tiled ? Ng * ((K + Ng - 1) / Ng) : Ng;
          const float noise = 0.01f / std::sqrt(float(E));
          std::vector<int64_t> idx(static_cast<size_t>(M));
          std::iota(idx.begin(), idx.end(), int64_t(0));
          for (int64_t k = 0; k < K; ++k) {
            std::swap(idx[size_t(k)], idx[size_t(k + int64_t(rng.below(uint64_t(M - k))))]);
            const float* src = res + (idx[size_t(k)] % Ng) * E;
            for (int64_t e = 0; e < E; ++e) rp[k * E + e] = src[e] + (tiled ? rng.uniform() * noise : 0.0f);
          }
        }
        if (dist) dp_->broadcast(rp, K * E);
        for (int64_t k = 0; k < K; ++k)
          if (!(cs[k] >= 1.0f)) {
            std::memcpy(ee + k * E, rp + k * E, size_t(E) * 4);
            cs[k] = 1.0f;
            st.restarted++;
          }
        last_restart_.push_back(rv);
      }
      double tot = 0;
      for (int64_t k = 0; k < K; ++k) tot += cs[k];
      const float nf = float(tot), den = nf + float(K) * opt_.eps;
      for (int64_t k = 0; k < K; ++k) {
        const float norm = nf * (cs[k] + opt_.eps) / den;
        for (int64_t e = 0; e < E; ++e) W[k * E + e] = ee[k * E + e] / norm;
      }
    }
    // r -= q; S += q; commitment against the cumulative sum S_d
    double part = 0;
    for (int64_t i = 0; i < N; ++i) {
      codes[i * D + d] = c[size_t(i)];
      hist[size_t(c[size_t(i)])]++;
      for (int64_t e = 0; e < E; ++e) {
        const size_t j = size_t(i * E + e);
        r[j] -= q[j];
        zq[j] += q[j];
        const float diff = z[j] - zq[j];
        part += double(diff) * diff;
        dz[j] += diff;
      }
    }
    commit += part / double(N * E);
  }
  st.commitment = commit / double(D);
  // d/dz of w * mean_d mean((z - S_d)^2) = w * 2 sum_d (z - S_d) / (D N E)
  const float g = 2.0f * opt_.commitment_weight / float(D * N * E);
  for (float& v : dz) v *= g;
  const CodeUsage u = code_usage(hist, dist ? dp_ : nullptr);
  st.codes_used = u.used;
  st.perplexity = u.perplexity;
}

// ---------------------------------------------------------------------------------------------
// step

namespace {
void check_images(const Stage1Config& cfg, const Tensor& x) {
  const Shape want = {x.ndim() > 0 ? x.dim(0) : 0, cfg.net.in_channels, cfg.net.resolution, cfg.net.resolution};
  if (x.ndim() != 4 || x.dim(0) < 1 || x.shape() != want || x.dtype() != DType::F32)
    fail("stage-1 training: expected f32 pictures [B,", cfg.net.in_channels, ",", cfg.net.resolution, ",",
         cfg.net.resolution, "], found ", shape_str(x.shape()));
}
}  // namespace

void RqvaeTrainer::to_device(TrainOps& ops) { ps_.to_device(ops); }

namespace {
// A host [N,E] tensor holding `v`.
Tensor host_rows(const std::vector<float>& v, int64_t N, int64_t E) {
  Tensor t = Tensor::empty({N, E});
  std::memcpy(t.data(), v.data(), v.size() * sizeof(float));
  return t;
}
}  // namespace

RqvaeStepStats RqvaeTrainer::train_step(const Tensor& x_in, uint64_t step_seed, const Stage1Terms* terms) {
  check_images(cfg_, x_in);
  TrainOps& ops = ps_.ops();
  const bool on_host = ops.device() == Device::CPU;
  if (!on_host && terms && (terms->lpips || terms->gan))
    fail("stage-1 training on ", ops.name(), ": the LPIPS and GAN terms run on the CPU only");
  const Tensor x = on_device(ops, x_in);
  const int64_t B = x.dim(0), h = cfg_.net.latent_resolution(), E = cfg_.embed_dim, N = B * h * h;
  RqvaeStepStats st;
  Tensor ze = quant_conv_.forward(encoder_.forward(x));  // [B,E,h,w]
  Tensor z = ops.empty({B, h, h, E});
  ops.transpose(ze.f32(), z.f32(), B, E, h * h);  // [B,h,w,E]
  const Tensor zh = to_host(ops, z);               // the quantizer and its EMA codebook live on the host
  std::vector<float> zq, dcommit;
  quantize_train(zh.f32(), N, step_seed, zq, dcommit, st);
  last_codes_ = last_codes_.reshape({B, h, h, cfg_.depth()});
  // straight-through: the decoder reads S_D, its gradient goes to z unchanged
  const Tensor zsrc = opt_.straight_through ? on_device(ops, host_rows(zq, N, E)) : z;
  Tensor zin = ops.empty({B, E, h, h});
  ops.transpose(zsrc.f32(), zin.f32(), B, h * h, E);
  Tensor xr = decoder_.forward(post_quant_conv_.forward(zin));  // [B,out,R,R]
  Tensor dxr = ops.empty(xr.shape());
  st.recon = ops.mse(xr.f32(), x.f32(), dxr.f32(), xr.numel(), 1.0f);
  st.loss = st.recon + double(opt_.commitment_weight) * st.commitment;
  if (terms) apply_stage1_terms(*terms, x, xr, dxr, decoder_.conv_out, st.terms);
  last_recon_ = xr;

  Tensor dz = post_quant_conv_.backward(decoder_.backward(dxr));  // [B,E,h,w]
  const Tensor dcn = on_device(ops, host_rows(dcommit, N, E));    // [B,h,w,E]
  Tensor dc = ops.empty({B, E, h, h});
  ops.transpose(dcn.f32(), dc.f32(), B, h * h, E);
  ops.add(dz.f32(), dc.f32(), dz.f32(), dz.numel());
  encoder_.backward(quant_conv_.backward(dz));
  return st;
}

Tensor RqvaeTrainer::reconstruct(const Tensor& x_in, Tensor* codes_out) {
  check_images(cfg_, x_in);
  TrainOps& ops = ps_.ops();
  const Tensor x = on_device(ops, x_in);
  const int64_t B = x.dim(0), h = cfg_.net.latent_resolution(), E = cfg_.embed_dim, N = B * h * h;
  const int64_t K = cfg_.n_embed, D = cfg_.depth();
  Tensor ze = quant_conv_.forward(encoder_.forward(x, false), false);  // [B,E,h,w]
  Tensor z = ops.empty({B, h, h, E});
  ops.transpose(ze.f32(), z.f32(), B, E, h * h);
  Tensor zh = to_host(ops, z);  // [B,h,w,E] on the host, where the codebook is (z is not needed again)
  Tensor codes = Tensor::empty({B, h, h, D}, DType::I32);
  cpu::residual_quantize_forward(zh.f32(), codebook_->v(), codes.ptr<int32_t>(), N, K, E, D);
  cpu::embed_sum_forward(codes.ptr<int32_t>(), codebook_->v(), zh.f32(), N, D, K, E);  // z_q [B,h,w,E]
  const Tensor zq = on_device(ops, zh);
  ops.transpose(zq.f32(), ze.f32(), B, h * h, E);
  if (codes_out) *codes_out = codes;
  return to_host(ops, decoder_.forward(post_quant_conv_.forward(ze, false), false));
}

}  // namespace hwaga::train
