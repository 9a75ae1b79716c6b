// Stage-2 training on the GPU against the same training on the CPU (train/train_ops.h): the
// trainers are one code path over TrainOps, so the CUDA run must give the CPU run's losses,
// gradients and AdamW updates up to summation order.
//
// Tolerances. f32 products without TF32 on both sides; the GPU sums in other orders (cuBLAS
// tiles, tree reductions), so each quantity differs by a few f32 roundings per accumulation:
// losses 2e-5 relative; gradients compared per tensor as max|gpu-cpu| / max|cpu| <= 2e-4 (the
// backward chains ~30 products and reductions; the largest elements set the scale, tiny elements
// of a tensor are only checked against it); parameters after 3 AdamW steps 1e-4 of their scale
// (Adam divides by sqrt(v), which can amplify a tiny gradient's relative error, hence the
// per-tensor scale). bf16 products: both inputs rounded to bf16 (8 bits of mantissa, 2^-9
// relative), but the two sides round different intermediate values, so the loss agrees to 1e-2.
// Dropout masks come from the same Philox stream on both devices and are part of the check.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include "gpu_test_util.h"
#include "train/checkpoint.h"
#include "train/mindalle_gpt_trainer.h"
#include "train/nccl_comm.h"
#include "train/optim.h"
#include "train/rq_transformer_trainer.h"
#include "train/train_ops.h"
#include "train/transformer_ops.h"

using namespace hwaga;
using namespace hwaga::train;

namespace {

RqTransformerConfig rq_config(bool medium) {
  RqTransformerConfig c;
  if (medium) {  // the shipped emoji model's shape class: 8x8x4 codes, text 24
    c.embed_dim = 128, c.n_layer_body = 3, c.n_layer_head = 2, c.n_head = 4;
    c.block_size = {8, 8, 4};
    c.vocab_size = 512, c.vocab_size_cond = 300, c.block_size_cond = 24, c.input_embed_dim = 32;
  } else {
    c.embed_dim = 48, c.n_layer_body = 2, c.n_layer_head = 2, c.n_head = 3;
    c.block_size = {3, 5, 3};
    c.vocab_size = 70, c.vocab_size_cond = 37, c.block_size_cond = 6, c.input_embed_dim = 12;
  }
  return c;
}

Tensor randn(const Shape& s, uint32_t seed, float std) {
  Tensor t = Tensor::empty(s);
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, std);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = d(g);
  return t;
}

// Random codes and captions (PAD = 0 after a caption of varying length), one row all PAD;
// noisy_inputs: a third of the input codes differ from the targets (train --code-noise/--self-feed).
RqBatch random_batch(int64_t B, int64_t L, int64_t h, int64_t w, int64_t d, int64_t K, int64_t V, uint32_t seed,
                     bool noisy_inputs = false) {
  std::mt19937 g(seed);
  RqBatch b;
  b.text = Tensor::empty({B, L}, DType::I32);
  b.codes = Tensor::empty({B, h, w, d}, DType::I32);
  for (int64_t i = 0; i < b.codes.numel(); ++i) b.codes.ptr<int32_t>()[i] = int32_t(g() % uint32_t(K));
  for (int64_t r = 0; r < B; ++r)
    for (int64_t t = 0; t < L; ++t)
      b.text.ptr<int32_t>()[r * L + t] = (r > 0 && t < 1 + (r + t) % L) ? int32_t(1 + g() % uint32_t(V - 1)) : 0;
  if (noisy_inputs) {
    b.input_codes = b.codes.clone();
    for (int64_t i = 0; i < b.codes.numel(); i += 3) b.input_codes.ptr<int32_t>()[i] = int32_t(g() % uint32_t(K));
  }
  return b;
}

// Larger-than-init weights so that every path carries signal.
void randomize(ParamSet& ps, uint32_t seed) {
  std::mt19937 g(seed);
  for (auto& p : ps.all()) {
    const bool ln = p->name.find(".ln") != std::string::npos || p->name.find("layer_norm") != std::string::npos;
    const bool weight = p->name.size() > 7 && p->name.compare(p->name.size() - 7, 7, ".weight") == 0;
    std::normal_distribution<float> d(ln && weight ? 1.0f : 0.0f, ln ? 0.2f : 0.1f);
    for (int64_t i = 0; i < p->numel(); ++i) p->v()[i] = d(g);
  }
}

// max|a-b| / max|a| over one tensor (a: the CPU reference, host; b: host copy of the GPU's).
double scaled_diff(const Tensor& a, const Tensor& b) {
  double dmax = 0, amax = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    dmax = std::max(dmax, double(std::fabs(a.f32()[i] - b.f32()[i])));
    amax = std::max(amax, double(std::fabs(a.f32()[i])));
  }
  return amax > 0 ? dmax / amax : dmax;
}

void expect_grads_close(const ParamSet& cpu, const ParamSet& gpu, TrainOps& ops, double tol) {
  ASSERT_EQ(cpu.all().size(), gpu.all().size());
  for (size_t i = 0; i < cpu.all().size(); ++i) {
    const Param& a = *cpu.all()[i];
    const Param& b = *gpu.all()[i];
    ASSERT_EQ(a.name, b.name);
    if (!a.grad.defined()) continue;
    ASSERT_EQ(b.grad.device(), Device::CUDA) << a.name;
    EXPECT_LE(scaled_diff(a.grad, ops.download(b.grad)), tol) << "gradient of " << a.name;
  }
}

void expect_values_close(const ParamSet& cpu, const ParamSet& gpu, double tol) {
  const TensorMap hv = gpu.host_values();
  for (auto& p : cpu.all()) EXPECT_LE(scaled_diff(p->value, hv.at(p->name)), tol) << "value of " << p->name;
}

template <class Trainer>
void compare_steps(Trainer& cpu, Trainer& gpu, TrainOps& ops, const RqBatch& batch, double loss_tol, double grad_tol,
                   double value_tol) {
  AdamW a_cpu, a_gpu;
  for (int64_t step = 0; step < 3; ++step) {
    cpu.params().zero_grad();
    gpu.params().zero_grad();
    const RqLoss lc = cpu.forward_backward(batch, 7, step);
    const RqLoss lg = gpu.forward_backward(batch, 7, step);
    EXPECT_NEAR(lg.loss, lc.loss, loss_tol * std::fabs(lc.loss)) << "step " << step;
    EXPECT_NEAR(lg.image_loss, lc.image_loss, loss_tol * std::fabs(lc.image_loss)) << "step " << step;
    EXPECT_NEAR(lg.text_loss, lc.text_loss, loss_tol * std::fabs(lc.text_loss) + 1e-12) << "step " << step;
    EXPECT_EQ(lg.text_targets, lc.text_targets);
    expect_grads_close(cpu.params(), gpu.params(), ops, grad_tol);
    const double nc = cpu.params().clip_grad_norm(1.0f), ng = gpu.params().clip_grad_norm(1.0f);
    EXPECT_NEAR(ng, nc, 1e-4 * nc) << "gradient norm, step " << step;
    a_cpu.step(cpu.params(), 1e-3f);
    a_gpu.step(gpu.params(), 1e-3f);
    expect_values_close(cpu.params(), gpu.params(), value_tol);
  }
}

}  // namespace

TEST(CudaTrain, RqTransformerStepsMatchTheCpu) {
  HWAGA_NEED_CUDA_TRAIN_OPS(ops);
  for (bool medium : {false, true}) {
    SCOPED_TRACE(medium ? "medium config" : "small config");
    const RqTransformerConfig cfg = rq_config(medium);
    const Tensor cb = randn({cfg.vocab_size, cfg.input_embed_dim}, 1, 0.7f);
    RqTrainerOptions o;
    o.dropout = 0.1f;
    RqTransformerTrainer cpu(cfg, cb, o), gpu(cfg, cb, o);
    randomize(cpu.params(), 2);
    randomize(gpu.params(), 2);
    gpu.to_device(ops);
    EXPECT_EQ(gpu.params().device(), Device::CUDA);
    const RqBatch batch = random_batch(medium ? 4 : 3, cfg.block_size_cond, cfg.H(), cfg.W(), cfg.D(), cfg.vocab_size,
                                       cfg.vocab_size_cond, 3, /*noisy_inputs=*/medium);
    compare_steps(cpu, gpu, ops, batch, 2e-5, 2e-4, 1e-4);

    // evaluate's logits come back to the host and match
    Tensor lc, lg, tc, tg;
    cpu.evaluate(batch, &lc, &tc);
    gpu.evaluate(batch, &lg, &tg);
    ASSERT_EQ(lg.device(), Device::CPU);
    EXPECT_EQ(lg.shape(), lc.shape());
    EXPECT_LE(scaled_diff(lc, lg), 1e-4);
    EXPECT_LE(scaled_diff(tc, tg), 1e-4);
  }
}

TEST(CudaTrain, MindalleGptStepsMatchTheCpu) {
  HWAGA_NEED_CUDA_TRAIN_OPS(ops);
  MindalleGptConfig c;
  c.embed_dim = 48, c.n_layers = 2, c.n_heads = 3;
  c.ctx_len_img = 12, c.ctx_len_txt = 5, c.vocab_size_img = 40, c.vocab_size_txt = 30;
  GptTrainerOptions o;
  o.dropout = 0.1f;
  MindalleGptTrainer cpu(c, o), gpu(c, o);
  randomize(cpu.params(), 4);
  randomize(gpu.params(), 4);
  gpu.to_device(ops);
  for (bool noisy : {false, true}) {
    SCOPED_TRACE(noisy ? "noisy input codes" : "input codes = targets");
    const RqBatch batch = random_batch(3, c.ctx_len_txt, 3, 4, 1, c.vocab_size_img, c.vocab_size_txt, 5, noisy);
    compare_steps(cpu, gpu, ops, batch, 2e-5, 2e-4, 1e-4);
  }
}

TEST(CudaTrain, Bf16ProductsStayCloseToF32) {
  HWAGA_NEED_CUDA_TRAIN_OPS(ops);
  const RqTransformerConfig cfg = rq_config(true);
  const Tensor cb = randn({cfg.vocab_size, cfg.input_embed_dim}, 1, 0.7f);
  RqTransformerTrainer cpu(cfg, cb), gpu(cfg, cb);
  randomize(cpu.params(), 2);
  randomize(gpu.params(), 2);
  gpu.to_device(ops);
  const RqBatch batch = random_batch(4, cfg.block_size_cond, cfg.H(), cfg.W(), cfg.D(), cfg.vocab_size,
                                     cfg.vocab_size_cond, 3);
  const RqLoss lc = cpu.evaluate(batch);
  set_matmul_precision(MatmulPrecision::bf16);
  const RqLoss lg = gpu.evaluate(batch);
  set_matmul_precision(MatmulPrecision::f32);
  EXPECT_NEAR(lg.loss, lc.loss, 1e-2 * lc.loss);
  EXPECT_NE(lg.loss, lc.loss) << "bf16 products should round somewhere";
}

TEST(CudaTrain, CheckpointsTravelBetweenDevices) {
  HWAGA_NEED_CUDA_TRAIN_OPS(ops);
  const RqTransformerConfig cfg = rq_config(false);
  const Tensor cb = randn({cfg.vocab_size, cfg.input_embed_dim}, 1, 0.7f);
  RqTransformerTrainer gpu(cfg, cb);
  gpu.init_weights(9);
  gpu.to_device(ops);
  AdamW adam;
  const RqBatch batch = random_batch(2, cfg.block_size_cond, cfg.H(), cfg.W(), cfg.D(), cfg.vocab_size,
                                     cfg.vocab_size_cond, 6);
  for (int64_t s = 0; s < 2; ++s) {
    gpu.params().zero_grad();
    gpu.forward_backward(batch, 1, s);
    gpu.params().clip_grad_norm(1.0f);
    adam.step(gpu.params(), 1e-3f);
  }
  const std::string path = testing::TempDir() + "/cuda_train_ckpt.safetensors";
  save_checkpoint(path, gpu.params(), &adam, {}, {{"step", 2}});
  const Checkpoint ck = read_checkpoint(path);

  // into a CPU trainer: the same values and moments, bit for bit
  RqTransformerTrainer cpu(cfg, cb);
  AdamW adam_cpu;
  restore_checkpoint(ck, path, cpu.params(), &adam_cpu);
  const TensorMap hv = gpu.params().host_values();
  for (auto& p : cpu.params().all())
    EXPECT_EQ(std::memcmp(p->value.data(), hv.at(p->name).data(), p->value.nbytes()), 0) << p->name;
  EXPECT_EQ(adam_cpu.steps(), 2);

  // and back onto the GPU: one more step from either device agrees
  RqTransformerTrainer gpu2(cfg, cb);
  gpu2.to_device(ops);
  AdamW adam2;
  restore_checkpoint(ck, path, gpu2.params(), &adam2);
  for (auto* t : {&cpu, &gpu2}) {
    t->params().zero_grad();
    t->forward_backward(batch, 1, 2);
    t->params().clip_grad_norm(1.0f);
  }
  adam_cpu.step(cpu.params(), 1e-3f);
  adam2.step(gpu2.params(), 1e-3f);
  expect_values_close(cpu.params(), gpu2.params(), 1e-4);
  std::remove(path.c_str());
}

// NCCL is loaded at run time (train/nccl_comm.h); where it is found, its id needs no GPU.
TEST(NcclHost, UniqueIdsAre128FreshBytes) {
  std::string why;
  if (!nccl_available(&why)) GTEST_SKIP() << "NCCL not loadable: " << why;
  const std::string a = NcclComm::unique_id(), b = NcclComm::unique_id();
  EXPECT_EQ(a.size(), 128u);
  EXPECT_NE(a, b);
}

// One rank: the communicator forms on the training ops' stream and a sum over one rank leaves
// the buffers as they were (the two-rank sum needs two GPUs: docs/PERFORMANCE.md, device runs).
TEST(CudaTrain, NcclOneRankKeepsTheBuffers) {
  HWAGA_NEED_CUDA_TRAIN_OPS(ops);
  std::string why;
  if (!nccl_available(&why)) GTEST_SKIP() << "NCCL not loadable: " << why;
  NcclComm comm(0, 1, NcclComm::unique_id(), ops);
  EXPECT_EQ(comm.world(), 1);
  const Tensor h = randn({1000}, 11, 1.0f), h2 = randn({7}, 12, 1.0f);
  Tensor d = ops.upload(h), d2 = ops.upload(h2);
  comm.all_reduce_sum({{d.f32(), d.numel()}, {d2.f32(), d2.numel()}});
  const Tensor back = ops.download(d), back2 = ops.download(d2);
  EXPECT_EQ(std::memcmp(back.data(), h.data(), h.nbytes()), 0);
  EXPECT_EQ(std::memcmp(back2.data(), h2.data(), h2.nbytes()), 0);
}
