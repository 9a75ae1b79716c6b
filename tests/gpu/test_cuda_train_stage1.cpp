// Stage-1 (RQ-VAE) training on the GPU against the CPU: first each op of the taming conv net
// (train/train_ops.h's conv-net section: the CUDA ops against the CPU ops, which are
// train/conv_ops.h), then whole RqvaeTrainer steps (the encoder and decoder on the GPU, the
// quantizer on the host).
//
// Tolerances. f32 without TF32 on both sides; the GPU sums in other orders (cuBLAS tiles, block
// trees), so a result differs by a few f32 roundings per accumulation: each op's output within
// 1e-5 of its scale (gputest::rel_err: max|gpu-cpu| / max|cpu|), reductions in double (GroupNorm statistics, bias
// and gain sums, MSE) within 1e-5 too. A whole step chains ~40 ops: the encoder output agrees to
// ~1e-5, which leaves the quantizer's argmin unchanged unless two codes are within that distance;
// the test requires 99% of the codes equal and, where all are, the loss within 1e-4 and the
// gradients within 2e-3 of their scale (the decoder's gradients pass through every layer).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "gpu_test_util.h"
#include "train/conv_ops.h"
#include "train/optim.h"
#include "train/rqvae_trainer.h"
#include "train/train_ops.h"

using namespace hwaga;
using namespace hwaga::train;

namespace {

// The same op on the CPU and the GPU: inputs uploaded, outputs downloaded and compared.
struct Twin {
  TrainOps& gpu;
  TrainOps& cpu = cpu_train_ops();
  Tensor up(const Tensor& t) { return gpu.upload(t); }
  void expect(const Tensor& c, const Tensor& g, double tol, const char* what) {
    EXPECT_LE(gputest::rel_err(gpu.download(g), c), tol) << what;
  }
};

}  // namespace

TEST(CudaTrainStage1, ConvolutionsMatchTheCpu) {
  HWAGA_NEED_CUDA_TRAIN_OPS(ops);
  Twin t{ops};
  // 3x3 pad 1, 1x1, and the Downsample's 3x3 stride 2 with bottom/right padding only
  const cpu::Conv2dShape shapes[] = {{2, 5, 9, 7, 6, 3, 3, 1, 1, 1, 1, 1},
                                     {3, 8, 4, 4, 4, 1, 1, 1, 0, 0, 0, 0},
                                     {2, 4, 8, 8, 4, 3, 3, 2, 0, 0, 1, 1}};
  uint64_t seed = 1;
  for (const auto& s : shapes) {
    SCOPED_TRACE(::testing::Message() << "conv Cin " << s.Cin << " k " << s.kh << " stride " << s.stride);
    const Tensor x = gputest::random_tensor({s.B, s.Cin, s.H, s.W}, seed++);
    const Tensor w = gputest::random_tensor({s.Cout, s.Cin, s.kh, s.kw}, seed++);
    const Tensor b = gputest::random_tensor({s.Cout}, seed++);
    const Tensor dy = gputest::random_tensor({s.B, s.Cout, s.Ho(), s.Wo()}, seed++);
    Tensor y = Tensor::empty(dy.shape()), dx = Tensor::empty(x.shape());
    Tensor dw = gputest::random_tensor(w.shape(), seed++), db = gputest::random_tensor(b.shape(), seed++);
    const Tensor xg = t.up(x), wg = t.up(w), bg = t.up(b), dyg = t.up(dy);
    Tensor yg = ops.empty(y.shape()), dxg = ops.empty(x.shape()), dwg = t.up(dw), dbg = t.up(db);
    t.cpu.conv2d_fwd(s, x.f32(), w.f32(), b.f32(), y.f32());
    ops.conv2d_fwd(s, xg.f32(), wg.f32(), bg.f32(), yg.f32());
    t.expect(y, yg, 1e-5, "conv forward");
    t.cpu.conv2d_bwd(s, x.f32(), w.f32(), dy.f32(), dx.f32(), dw.f32(), db.f32());  // dw, db accumulate
    ops.conv2d_bwd(s, xg.f32(), wg.f32(), dyg.f32(), dxg.f32(), dwg.f32(), dbg.f32());
    t.expect(dx, dxg, 1e-5, "conv dx");
    t.expect(dw, dwg, 1e-5, "conv dw");
    t.expect(db, dbg, 1e-5, "conv db");
  }
}

TEST(CudaTrainStage1, NormsActivationsAttentionMatchTheCpu) {
  HWAGA_NEED_CUDA_TRAIN_OPS(ops);
  Twin t{ops};
  const int64_t B = 2, C = 64, S = 36, G = 32;
  const Tensor x = gputest::random_tensor({B, C, S}, 11, -2.0f, 3.0f);
  const Tensor gamma = gputest::random_tensor({C}, 12, 0.5f, 1.5f), beta = gputest::random_tensor({C}, 13);
  const Tensor dy = gputest::random_tensor({B, C, S}, 14);
  const Tensor xg = t.up(x), gg = t.up(gamma), bg = t.up(beta), dyg = t.up(dy);

  // GroupNorm forward and backward (dgamma/dbeta accumulate onto nonzero values; dx aliasing dy)
  Tensor y = Tensor::empty(x.shape()), m = Tensor::empty({B * G}), r = Tensor::empty({B * G});
  Tensor yg = ops.empty(x.shape()), mg = ops.empty({B * G}), rg = ops.empty({B * G});
  t.cpu.group_norm_fwd(x.f32(), gamma.f32(), beta.f32(), y.f32(), m.f32(), r.f32(), B, C, S, G, 1e-6f);
  ops.group_norm_fwd(xg.f32(), gg.f32(), bg.f32(), yg.f32(), mg.f32(), rg.f32(), B, C, S, G, 1e-6f);
  t.expect(y, yg, 1e-5, "group norm y");
  t.expect(m, mg, 1e-5, "group norm mean");
  t.expect(r, rg, 1e-5, "group norm rstd");
  Tensor dx = dy.clone(), dgam = gputest::random_tensor({C}, 15), dbet = gputest::random_tensor({C}, 16);
  Tensor dxg = t.up(dy), dgamg = t.up(dgam), dbetg = t.up(dbet);
  t.cpu.group_norm_bwd(x.f32(), gamma.f32(), m.f32(), r.f32(), dx.f32(), dx.f32(), dgam.f32(), dbet.f32(), B, C, S, G);
  ops.group_norm_bwd(xg.f32(), gg.f32(), mg.f32(), rg.f32(), dxg.f32(), dxg.f32(), dgamg.f32(), dbetg.f32(), B, C, S,
                     G);
  t.expect(dx, dxg, 1e-5, "group norm dx");
  t.expect(dgam, dgamg, 1e-5, "group norm dgamma");
  t.expect(dbet, dbetg, 1e-5, "group norm dbeta");

  // SiLU, nearest 2x upsampling, transpose, MSE
  Tensor a = Tensor::empty(x.shape()), ag = ops.empty(x.shape());
  t.cpu.silu_fwd(x.f32(), a.f32(), x.numel());
  ops.silu_fwd(xg.f32(), ag.f32(), x.numel());
  t.expect(a, ag, 1e-5, "silu");
  t.cpu.silu_bwd(x.f32(), dy.f32(), a.f32(), x.numel());
  ops.silu_bwd(xg.f32(), dyg.f32(), ag.f32(), x.numel());
  t.expect(a, ag, 1e-5, "silu backward");
  Tensor u = Tensor::empty({B * C, 12, 12}), ug = ops.empty({B * C, 12, 12});
  t.cpu.upsample2x_fwd(x.f32(), u.f32(), B * C, 6, 6);
  ops.upsample2x_fwd(xg.f32(), ug.f32(), B * C, 6, 6);
  t.expect(u, ug, 0.0, "upsample");
  Tensor dd = Tensor::empty(x.shape()), ddg = ops.empty(x.shape());
  t.cpu.upsample2x_bwd(u.f32(), dd.f32(), B * C, 6, 6);
  ops.upsample2x_bwd(ug.f32(), ddg.f32(), B * C, 6, 6);
  t.expect(dd, ddg, 0.0, "upsample backward");
  Tensor tr = Tensor::empty({B, S, C}), trg = ops.empty({B, S, C});
  t.cpu.transpose(x.f32(), tr.f32(), B, C, S);
  ops.transpose(xg.f32(), trg.f32(), B, C, S);
  t.expect(tr, trg, 0.0, "transpose");
  Tensor g1 = Tensor::empty(x.shape()), g1g = ops.empty(x.shape());
  const double lc = t.cpu.mse(x.f32(), dy.f32(), g1.f32(), x.numel(), 0.5f);
  const double lg = ops.mse(xg.f32(), dyg.f32(), g1g.f32(), x.numel(), 0.5f);
  EXPECT_NEAR(lg, lc, 1e-9 * lc);
  t.expect(g1, g1g, 0.0, "mse gradient");

  // the AttnBlock's single-head attention over S positions
  const Tensor q = gputest::random_tensor({B, C, S}, 21), k = gputest::random_tensor({B, C, S}, 22);
  const Tensor v = gputest::random_tensor({B, C, S}, 23);
  const Tensor qg = t.up(q), kg = t.up(k), vg = t.up(v);
  Tensor o = Tensor::empty(x.shape()), p = Tensor::empty({B, S, S}), og = ops.empty(x.shape()), pg = ops.empty({B, S, S});
  t.cpu.spatial_attention_fwd(q.f32(), k.f32(), v.f32(), o.f32(), p.f32(), B, C, S);
  ops.spatial_attention_fwd(qg.f32(), kg.f32(), vg.f32(), og.f32(), pg.f32(), B, C, S);
  t.expect(p, pg, 1e-5, "attention probabilities");
  t.expect(o, og, 1e-5, "attention output");
  Tensor dq = Tensor::empty(x.shape()), dk = Tensor::empty(x.shape()), dv = Tensor::empty(x.shape());
  Tensor dqg = ops.empty(x.shape()), dkg = ops.empty(x.shape()), dvg = ops.empty(x.shape());
  t.cpu.spatial_attention_bwd(q.f32(), k.f32(), v.f32(), p.f32(), dy.f32(), dq.f32(), dk.f32(), dv.f32(), B, C, S);
  ops.spatial_attention_bwd(qg.f32(), kg.f32(), vg.f32(), pg.f32(), dyg.f32(), dqg.f32(), dkg.f32(), dvg.f32(), B, C, S);
  t.expect(dq, dqg, 1e-5, "attention dq");
  t.expect(dk, dkg, 1e-5, "attention dk");
  t.expect(dv, dvg, 1e-5, "attention dv");
}

TEST(CudaTrainStage1, RqvaeStepsMatchTheCpu) {
  HWAGA_NEED_CUDA_TRAIN_OPS(ops);
  Stage1Config cfg;  // the emoji tokenizer's shape class: 64x64 -> 8x8x4, attention at 8x8
  cfg.type = "rq-vae";
  cfg.net.ch = 32;
  cfg.net.ch_mult = {1, 2, 4, 4};
  cfg.net.num_res_blocks = 1;
  cfg.net.attn_resolutions = {8};
  cfg.net.resolution = 64;
  cfg.net.z_channels = 64;
  cfg.embed_dim = 64;
  cfg.n_embed = 512;
  cfg.code_shape = {8, 8, 4};
  RqvaeTrainer cpu(cfg, 3), gpu(cfg, 3);
  gpu.to_device(ops);
  const Tensor x = gputest::random_tensor({4, 3, 64, 64}, 31);
  AdamW a_cpu, a_gpu;
  for (int64_t step = 0; step < 3; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    cpu.params().zero_grad();
    gpu.params().zero_grad();
    const RqvaeStepStats sc = cpu.train_step(x, 40 + uint64_t(step));
    const RqvaeStepStats sg = gpu.train_step(x, 40 + uint64_t(step));
    const Tensor& cc = cpu.last_codes();
    const Tensor& cg = gpu.last_codes();
    int64_t same = 0;
    for (int64_t i = 0; i < cc.numel(); ++i) same += cc.ptr<int32_t>()[i] == cg.ptr<int32_t>()[i];
    EXPECT_GE(double(same), 0.99 * double(cc.numel())) << "codes equal";
    if (same != cc.numel()) {
      std::printf("step %lld: %lld of %lld codes differ (near ties); the later steps are not compared\n",
                  (long long)step, (long long)(cc.numel() - same), (long long)cc.numel());
      break;
    }
    EXPECT_NEAR(sg.loss, sc.loss, 1e-4 * sc.loss);
    EXPECT_NEAR(sg.recon, sc.recon, 1e-4 * sc.recon);
    EXPECT_LE(gputest::rel_err(ops.download(gpu.last_recon()), cpu.last_recon()), 1e-4);
    for (size_t i = 0; i < cpu.params().all().size(); ++i) {
      const Param& a = *cpu.params().all()[i];
      const Param& b = *gpu.params().all()[i];
      if (a.grad.defined()) EXPECT_LE(gputest::rel_err(ops.download(b.grad), a.grad), 2e-3) << "gradient of " << a.name;
    }
    a_cpu.step(cpu.params(), 1e-3f);
    a_gpu.step(gpu.params(), 1e-3f);
  }
  const Tensor rc = cpu.reconstruct(x), rg = gpu.reconstruct(x);
  EXPECT_EQ(rg.device(), Device::CPU);
  EXPECT_LE(gputest::rel_err(rg, rc), 1e-2);  // after three updates (Adam amplifies tiny differences)
}
