// The device paths of training (train/train_ops.h), stage 2 and the RQ-VAE, checked on the CPU: a "device" whose
// tensors are labelled CUDA but live in host memory and whose ops are the CPU ops. Everything the
// trainers, ParamSet, AdamW and the checkpoints do differently for a device (moving parameters,
// uploading batches, downloading logits and gradients, host copies for checkpoints, optimizer
// moments on the device) then runs here, and must give the CPU run's bits exactly, since the
// arithmetic is the same. (The real GPU ops are compared with the CPU in tests/gpu.)
#include <cstring>
#include <random>

#include "test_util.h"
#include "train/checkpoint.h"
#include "train/mindalle_gpt_trainer.h"
#include "train/optim.h"
#include "train/rq_transformer_trainer.h"
#include "train/rqvae_trainer.h"
#include "train/train_ops.h"

using namespace hwaga;
using namespace hwaga::train;

namespace {

// Host memory labelled Device::CUDA: host code that touches it without going through the ops
// (Tensor::clone, ParamSet::values) throws, as it would have to on a real device.
class LabelledHostOps final : public TrainOps {
 public:
  Device device() const override { return Device::CUDA; }
  std::string name() const override { return "labelled host"; }
  Backend& backend() override { return cpu().backend(); }

  Tensor empty(const Shape& s, DType t) override { return label(Tensor::empty(s, t)); }
  Tensor zeros(const Shape& s, DType t) override { return label(Tensor::zeros(s, t)); }
  Tensor upload(const Tensor& host) override {
    EXPECT_EQ(host.device(), Device::CPU);
    ++uploads;
    return label(host.clone());
  }
  Tensor download(const Tensor& t) override {
    EXPECT_EQ(t.device(), Device::CUDA);
    Tensor h = Tensor::empty(t.shape(), t.dtype());
    std::memcpy(h.data(), t.data(), t.nbytes());
    return h;
  }
  void write(void* d, const void* s, size_t n) override { std::memcpy(d, s, n); }
  void read(void* d, const void* s, size_t n) override { std::memcpy(d, s, n); }
  void copy(float* d, const float* s, int64_t n) override { cpu().copy(d, s, n); }
  void fill(float* x, int64_t n, float v) override { cpu().fill(x, n, v); }
  void synchronize() override {}

  void linear_fwd(const float* x, const float* W, const float* b, float* y, int64_t N, int64_t in,
                  int64_t out) override {
    cpu().linear_fwd(x, W, b, y, N, in, out);
  }
  void linear_bwd(const float* x, const float* W, const float* dy, float* dx, float* dW, float* db, int64_t N,
                  int64_t in, int64_t out, bool acc) override {
    cpu().linear_bwd(x, W, dy, dx, dW, db, N, in, out, acc);
  }
  void layer_norm_fwd(const float* x, const float* g, const float* b, float* y, float* m, float* r, int64_t N,
                      int64_t C, float eps) override {
    cpu().layer_norm_fwd(x, g, b, y, m, r, N, C, eps);
  }
  void layer_norm_bwd(const float* x, const float* g, const float* m, const float* r, const float* dy, float* dx,
                      float* dg, float* db, int64_t N, int64_t C, bool acc) override {
    cpu().layer_norm_bwd(x, g, m, r, dy, dx, dg, db, N, C, acc);
  }
  void gelu_fwd(const float* x, float* y, int64_t n) override { cpu().gelu_fwd(x, y, n); }
  void gelu_bwd(const float* x, const float* dy, float* dx, int64_t n) override { cpu().gelu_bwd(x, dy, dx, n); }
  void attention_fwd(const float* q, const float* k, const float* v, float* p, float* o, int64_t B, int64_t T,
                     int64_t H, int64_t hd) override {
    cpu().attention_fwd(q, k, v, p, o, B, T, H, hd);
  }
  void attention_bwd(const float* q, const float* k, const float* v, const float* p, const float* d, float* dq,
                     float* dk, float* dv, int64_t B, int64_t T, int64_t H, int64_t hd) override {
    cpu().attention_bwd(q, k, v, p, d, dq, dk, dv, B, T, H, hd);
  }
  void embedding_fwd(const float* t, const int32_t* ids, float* o, int64_t N, int64_t C) override {
    cpu().embedding_fwd(t, ids, o, N, C);
  }
  void embedding_bwd(const int32_t* ids, const float* d, float* dt, int64_t N, int64_t C) override {
    cpu().embedding_bwd(ids, d, dt, N, C);
  }
  void add_pos_fwd(float* y, const float* p, int64_t N, int64_t R, int64_t C) override {
    cpu().add_pos_fwd(y, p, N, R, C);
  }
  void add_pos_bwd(const float* dy, float* dp, int64_t N, int64_t R, int64_t C) override {
    cpu().add_pos_bwd(dy, dp, N, R, C);
  }
  double cross_entropy(const float* z, const int32_t* t, const float* w, float* dz, float s, int64_t N,
                       int64_t K) override {
    return cpu().cross_entropy(z, t, w, dz, s, N, K);
  }
  void dropout_apply(float* x, int64_t n, float p, uint64_t seed, uint64_t stream) override {
    cpu().dropout_apply(x, n, p, seed, stream);
  }
  void add(const float* a, const float* b, float* y, int64_t n) override { cpu().add(a, b, y, n); }
  void axpy(float* y, const float* x, float a, int64_t n) override { cpu().axpy(y, x, a, n); }
  void scale(float* x, float s, int64_t n) override { cpu().scale(x, s, n); }
  void pos_plus_bias(const float* p, const float* b, float s, float* o, int64_t R, int64_t C) override {
    cpu().pos_plus_bias(p, b, s, o, R, C);
  }
  void copy_rows(float* d, const float* s, const RowCopy& g, bool acc) override { cpu().copy_rows(d, s, g, acc); }
  void code_sum(const float* cb, const int32_t* c, float* o, int64_t B, int64_t P, int64_t Pm, int64_t D,
                int64_t E) override {
    cpu().code_sum(cb, c, o, B, P, Pm, D, E);
  }
  void code_prefix_sums(const float* cb, const int32_t* c, float* o, int64_t BP, int64_t D, int64_t E) override {
    cpu().code_prefix_sums(cb, c, o, BP, D, E);
  }
  void conv2d_fwd(const cpu::Conv2dShape& s, const float* x, const float* w, const float* b, float* y) override {
    cpu().conv2d_fwd(s, x, w, b, y);
  }
  void conv2d_bwd(const cpu::Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                  float* db) override {
    cpu().conv2d_bwd(s, x, w, dy, dx, dw, db);
  }
  void group_norm_fwd(const float* x, const float* g, const float* b, float* y, float* m, float* r, int64_t B,
                      int64_t C, int64_t S, int64_t G, float eps) override {
    cpu().group_norm_fwd(x, g, b, y, m, r, B, C, S, G, eps);
  }
  void group_norm_bwd(const float* x, const float* g, const float* m, const float* r, const float* dy, float* dx,
                      float* dg, float* db, int64_t B, int64_t C, int64_t S, int64_t G) override {
    cpu().group_norm_bwd(x, g, m, r, dy, dx, dg, db, B, C, S, G);
  }
  void silu_fwd(const float* x, float* y, int64_t n) override { cpu().silu_fwd(x, y, n); }
  void silu_bwd(const float* x, const float* dy, float* dx, int64_t n) override { cpu().silu_bwd(x, dy, dx, n); }
  void upsample2x_fwd(const float* x, float* y, int64_t P, int64_t H, int64_t W) override {
    cpu().upsample2x_fwd(x, y, P, H, W);
  }
  void upsample2x_bwd(const float* dy, float* dx, int64_t P, int64_t H, int64_t W) override {
    cpu().upsample2x_bwd(dy, dx, P, H, W);
  }
  void spatial_attention_fwd(const float* q, const float* k, const float* v, float* o, float* p, int64_t B, int64_t C,
                             int64_t S) override {
    cpu().spatial_attention_fwd(q, k, v, o, p, B, C, S);
  }
  void spatial_attention_bwd(const float* q, const float* k, const float* v, const float* p, const float* d, float* dq,
                             float* dk, float* dv, int64_t B, int64_t C, int64_t S) override {
    cpu().spatial_attention_bwd(q, k, v, p, d, dq, dk, dv, B, C, S);
  }
  double mse(const float* y, const float* t, float* dy, int64_t n, float s) override { return cpu().mse(y, t, dy, n, s); }
  void transpose(const float* x, float* y, int64_t B, int64_t R, int64_t S) override { cpu().transpose(x, y, B, R, S); }
  double sum_squares(const float* x, int64_t n) override { return cpu().sum_squares(x, n); }
  void adamw(float* w, const float* g, float* m, float* v, int64_t n, float decay, float b1, float b2, float ss,
             float ib, float eps) override {
    cpu().adamw(w, g, m, v, n, decay, b1, b2, ss, ib, eps);
  }

  int uploads = 0;

 private:
  static TrainOps& cpu() { return cpu_train_ops(); }
  static Tensor label(Tensor host) {
    auto keep = std::make_shared<Tensor>(host);
    return Tensor::wrap(host.data(), host.shape(), host.dtype(), std::shared_ptr<void>(keep, keep.get()), Device::CUDA);
  }
};

RqTransformerConfig tiny_rq() {
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

RqBatch tiny_batch(int64_t B, int64_t L, Shape code_shape, int32_t K, int32_t V, uint32_t seed) {
  std::mt19937 g(seed);
  RqBatch b;
  b.text = Tensor::empty({B, L}, DType::I32);
  code_shape.insert(code_shape.begin(), B);
  b.codes = Tensor::empty(code_shape, DType::I32);
  for (int64_t i = 0; i < b.codes.numel(); ++i) b.codes.ptr<int32_t>()[i] = int32_t(g() % uint32_t(K));
  for (int64_t r = 0; r < B; ++r)
    for (int64_t t = 0; t < L; ++t) b.text.ptr<int32_t>()[r * L + t] = t < 1 + r ? int32_t(1 + g() % uint32_t(V - 1)) : 0;
  return b;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

// Three steps (dropout, clipping, AdamW) on the CPU and on the labelled device: the same bits.
template <class Trainer>
void expect_same_training(Trainer& cpu, Trainer& dev, LabelledHostOps& ops, const RqBatch& batch) {
  AdamW a_cpu, a_dev;
  for (int64_t step = 0; step < 3; ++step) {
    for (auto* t : {&cpu, &dev}) t->params().zero_grad();
    const RqLoss lc = cpu.forward_backward(batch, 5, step);
    const RqLoss ld = dev.forward_backward(batch, 5, step);
    EXPECT_EQ(lc.loss, ld.loss);
    EXPECT_EQ(lc.text_loss, ld.text_loss);
    for (size_t i = 0; i < cpu.params().all().size(); ++i) {
      const Param& p = *cpu.params().all()[i];
      const Param& q = *dev.params().all()[i];
      ASSERT_EQ(q.grad.device(), Device::CUDA) << q.name;
      EXPECT_TRUE(same_bits(p.grad, ops.download(q.grad))) << "gradient of " << p.name;
    }
    EXPECT_EQ(cpu.params().clip_grad_norm(0.5f), dev.params().clip_grad_norm(0.5f));
    a_cpu.step(cpu.params(), 1e-2f);
    a_dev.step(dev.params(), 1e-2f);
  }
  const TensorMap hv = dev.params().host_values();
  for (auto& p : cpu.params().all()) EXPECT_TRUE(same_bits(p->value, hv.at(p->name))) << p->name;
  EXPECT_THROW(dev.params().values(), Error);  // device values need host_values()

  // a checkpoint of the device run restores into a CPU trainer, moments included
  test::TempDir dir;
  const std::string path = dir.p("ckpt.safetensors");
  save_checkpoint(path, dev.params(), &a_dev, {}, {{"step", 3}});
  TensorMap host_state;
  a_cpu.save_state(cpu.params(), host_state);
  const Checkpoint ck = read_checkpoint(path);
  EXPECT_FALSE(host_state.empty());
  for (auto& [k, t] : host_state) EXPECT_TRUE(same_bits(t, ck.tensors.at(k))) << k;
}

}  // namespace

TEST(TrainOnDevice, RqTransformerGivesTheCpuBits) {
  const RqTransformerConfig cfg = tiny_rq();
  const Tensor cb = test::randn({cfg.vocab_size, cfg.input_embed_dim}, 1, 0.7f);
  RqTransformerTrainer cpu(cfg, cb), dev(cfg, cb);
  cpu.init_weights(3);
  dev.init_weights(3);
  LabelledHostOps ops;
  dev.to_device(ops);
  EXPECT_EQ(dev.params().device(), Device::CUDA);
  EXPECT_THROW(dev.init_weights(3), Error);  // initialise on the host, then move
  const RqBatch batch = tiny_batch(3, cfg.block_size_cond, {2, 3, 3}, cfg.vocab_size, cfg.vocab_size_cond, 4);
  expect_same_training(cpu, dev, ops, batch);

  Tensor lc, ld, tc, td;
  cpu.evaluate(batch, &lc, &tc);
  dev.evaluate(batch, &ld, &td);
  EXPECT_EQ(ld.device(), Device::CPU);
  EXPECT_TRUE(same_bits(lc, ld));
  EXPECT_TRUE(same_bits(tc, td));
}

TEST(TrainOnDevice, MindalleGptGivesTheCpuBits) {
  MindalleGptConfig c;
  c.vocab_size_txt = 11, c.vocab_size_img = 7, c.embed_dim = 16, c.n_layers = 2, c.n_heads = 2;
  c.ctx_len_txt = 4, c.ctx_len_img = 6;
  GptTrainerOptions o;
  o.dropout = 0.1f;
  MindalleGptTrainer cpu(c, o), dev(c, o);
  cpu.init_weights(3);
  dev.init_weights(3);
  LabelledHostOps ops;
  dev.to_device(ops);
  const RqBatch batch = tiny_batch(2, c.ctx_len_txt, {2, 3, 1}, c.vocab_size_img, c.vocab_size_txt, 6);
  expect_same_training(cpu, dev, ops, batch);
}

TEST(TrainOnDevice, ParamsLoadAndMoveBack) {
  const RqTransformerConfig cfg = tiny_rq();
  const Tensor cb = test::randn({cfg.vocab_size, cfg.input_embed_dim}, 1, 0.7f);
  RqTransformerTrainer src(cfg, cb), dev(cfg, cb);
  src.init_weights(8);
  LabelledHostOps ops;
  dev.to_device(ops);
  dev.params().load_values(src.params().values(), "test");  // host -> device through ops.write
  const TensorMap hv = dev.params().host_values();
  for (auto& p : src.params().all()) EXPECT_TRUE(same_bits(p->value, hv.at(p->name))) << p->name;
  dev.to_device(cpu_train_ops());  // and back to the host
  EXPECT_EQ(dev.params().device(), Device::CPU);
  for (auto& p : src.params().all()) EXPECT_TRUE(same_bits(p->value, dev.params().get(p->name).value)) << p->name;
}

// The RQ-VAE on the labelled device: the encoder and decoder run through the device ops, the
// quantizer and its EMA codebook stay on the host (host_only params). Three steps with code
// restarts, AdamW and an attention level give the CPU run's bits; so do reconstruct, the model
// tensors, a checkpoint and a fine-tune's load.
TEST(TrainOnDevice, RqvaeGivesTheCpuBits) {
  Stage1Config cfg;
  cfg.type = "rq-vae";
  cfg.net.ch = 32;
  cfg.net.ch_mult = {1, 2};
  cfg.net.num_res_blocks = 1;
  cfg.net.attn_resolutions = {8};
  cfg.net.resolution = 16;
  cfg.net.z_channels = 8;
  cfg.net.in_channels = cfg.net.out_ch = 3;
  cfg.embed_dim = 6;
  cfg.n_embed = 160;  // more codes than the batch's 128 vectors: restarts draw tiled, noisy residuals
  cfg.code_shape = {8, 8, 3};
  RqvaeTrainer cpu(cfg, 5), dev(cfg, 5);
  LabelledHostOps ops;
  dev.to_device(ops);
  EXPECT_EQ(dev.params().get("stage1.decoder.conv_out.weight").value.device(), Device::CUDA);
  EXPECT_EQ(dev.params().get(rqvae_codebook_key("embed_ema")).value.device(), Device::CPU);
  const Tensor x = test::randn({2, 3, 16, 16}, 9, 0.8f);
  AdamW a_cpu, a_dev;
  int64_t restarted = 0;
  for (int64_t step = 0; step < 3; ++step) {
    for (auto* t : {&cpu, &dev}) t->params().zero_grad();
    const RqvaeStepStats sc = cpu.train_step(x, 100 + uint64_t(step));
    const RqvaeStepStats sd = dev.train_step(x, 100 + uint64_t(step));
    EXPECT_EQ(sc.loss, sd.loss);
    EXPECT_EQ(sc.commitment, sd.commitment);
    EXPECT_EQ(sc.restarted, sd.restarted);
    restarted += sc.restarted;
    EXPECT_TRUE(same_bits(cpu.last_codes(), dev.last_codes()));
    EXPECT_TRUE(same_bits(cpu.last_recon(), ops.download(dev.last_recon())));
    for (size_t i = 0; i < cpu.params().all().size(); ++i) {
      const Param& p = *cpu.params().all()[i];
      const Param& q = *dev.params().all()[i];
      if (p.grad.defined()) EXPECT_TRUE(same_bits(p.grad, ops.download(q.grad))) << "gradient of " << p.name;
    }
    EXPECT_EQ(cpu.params().clip_grad_norm(1.0f), dev.params().clip_grad_norm(1.0f));
    a_cpu.step(cpu.params(), 1e-3f);
    a_dev.step(dev.params(), 1e-3f);
  }
  EXPECT_GT(restarted, 0);
  const TensorMap hv = dev.params().host_values();
  for (auto& p : cpu.params().all()) EXPECT_TRUE(same_bits(p->value, hv.at(p->name))) << p->name;

  RqvaeTrainer cpu2(cfg, 11);  // a CPU trainer that loads the device run's model
  Tensor c1, c2;
  const Tensor r_dev = dev.reconstruct(x, &c2);
  EXPECT_EQ(r_dev.device(), Device::CPU);
  const TensorMap mt = dev.model_tensors();
  for (auto& [k, t] : mt) EXPECT_EQ(t.device(), Device::CPU) << k;
  EXPECT_EQ(mt.count(rqvae_codebook_key("embed_ema")), 0u);
  cpu2.load_model_tensors(mt, "device model");  // a fine-tune's start, on the CPU
  const Tensor r_cpu = cpu2.reconstruct(x, &c1);
  EXPECT_TRUE(same_bits(r_cpu, r_dev));
  EXPECT_TRUE(same_bits(c1, c2));
  RqvaeTrainer dev2(cfg, 6);
  LabelledHostOps ops2;
  dev2.to_device(ops2);
  dev2.load_model_tensors(mt, "device model");  // and on the device
  EXPECT_TRUE(same_bits(dev2.reconstruct(x), r_dev));

  test::TempDir dir;
  const std::string path = dir.p("s1.safetensors");
  save_checkpoint(path, dev.params(), &a_dev, {}, {{"step", 3}});
  const Checkpoint ck = read_checkpoint(path);
  for (auto& [k, t] : hv) EXPECT_TRUE(same_bits(t, ck.tensors.at(k))) << k;
}
