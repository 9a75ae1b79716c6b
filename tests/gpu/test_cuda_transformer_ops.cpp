// The transformer operators of the CUDA backend (kernels/cuda/transformer_ops.cu) against the
// CPU backend (kernels/cpu/transformer_ops.cpp) on random inputs, odd sizes included.
// Tolerances, as max|gpu-cpu| / max|cpu| (gputest::rel_err):
//   exact (0)  data movement: embedding gathers (f32/bf16/f16 tables widen exactly), add_rows
//              (one f32 add per element, same operands), concat, the KV cache contents after
//              appends and kv_cache_gather;
//   2e-6       GELU: erff on the GPU vs std::erf, both within ~2 ulp;
//   2e-5       LayerNorm (f32 two-pass statistics vs the CPU's shifted double sums; a common
//              offset of 10 costs ~C*10*2^-24/C in the mean) and attention (q.k dots over hd
//              <= 128 and softmax sums over up to ~2000 keys, summed in another order; expf vs
//              std::exp);
//   1e-4       16-bit linear against the CPU fed the same rounded activations: bf16 x bf16 and
//              f16 x f16 products are exact in f32, only the accumulation order (tensor cores)
//              differs;
//   1.5e-2     bf16 linear against the CPU with f32 activations: the GPU rounds activations to
//              bf16 (relative step 2^-8), as PyTorch autocast does; 4e-3 for f16 (2^-11).
#include <gtest/gtest.h>

#include <vector>

#include "gpu_test_util.h"

namespace hwaga {
namespace {

using gputest::cpu_backend;
using gputest::random_tensor;
using gputest::rel_err;
using gputest::round_bf16;

constexpr double kTolGelu = 2e-6;
constexpr double kTolF32 = 2e-5;
constexpr double kTolSameInputs16 = 1e-4;
constexpr double kTolBf16 = 1.5e-2;
constexpr double kTolF16 = 4e-3;

Tensor up(Backend& be, const Tensor& t) { return be.upload(t, t.dtype()); }

Tensor ids_tensor(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty({int64_t(v.size())}, DType::I32);
  for (size_t i = 0; i < v.size(); ++i) t.ptr<int32_t>()[i] = v[i];
  return t;
}

TEST(CudaTransformerOps, LayerNorm) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  struct Case {
    Shape s;
    float offset;
  };
  for (Case c : {Case{{3, 7, 5}, 0.0f}, Case{{64, 1536}, 0.0f}, Case{{2, 3, 1030}, 10.0f}, Case{{5, 2560}, 10.0f},
                 Case{{1, 1}, 0.0f}}) {
    Tensor x = random_tensor(c.s, 1, -1.0f + c.offset, 1.0f + c.offset);
    const int64_t C = c.s.back();
    Tensor g = random_tensor({C}, 2, 0.5f, 1.5f), b = random_tensor({C}, 3, -0.5f, 0.5f);
    Tensor ref = cpu.layer_norm(x, g, b, 1e-5f);
    Tensor got = gpu.download(gpu.layer_norm(up(gpu, x), up(gpu, g), up(gpu, b), 1e-5f));
    EXPECT_LE(rel_err(got, ref), kTolF32) << shape_str(c.s) << " offset " << c.offset;
  }
}

TEST(CudaTransformerOps, Gelu) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  for (Shape s : {Shape{1}, Shape{3, 1001}, Shape{64, 6144}}) {
    Tensor x = random_tensor(s, 4, -6.0f, 6.0f);
    EXPECT_LE(rel_err(gpu.download(gpu.gelu(up(gpu, x))), cpu.gelu(x)), kTolGelu) << shape_str(s);
    // 16-bit device tensors are widened to f32 first (exactly), like the CPU's .to(F32).
    for (DType t : {DType::BF16, DType::F16})
      EXPECT_LE(rel_err(gpu.download(gpu.gelu(gpu.upload(x, t))), cpu.gelu(x.to(t).to(DType::F32))), kTolGelu)
          << shape_str(s) << " " << dtype_name(t);
  }
}

TEST(CudaTransformerOps, EmbeddingF32Bf16F16TablesExact) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  Tensor table = random_tensor({37, 19}, 5, -2.0f, 2.0f);
  Tensor ids = ids_tensor({0, 36, 5, 5, 17, 0, 1, 35, 36, 20, 9});
  for (DType t : {DType::F32, DType::BF16, DType::F16}) {
    Tensor host = table.to(t);
    Tensor ref = cpu.embedding(cpu.upload_weight(host), ids);
    Tensor wd = gpu.upload_weight(host);
    EXPECT_EQ(wd.dtype(), t) << "upload_weight keeps the table's dtype";
    EXPECT_EQ(wd.device(), Device::CUDA);
    EXPECT_EQ(rel_err(gpu.download(gpu.embedding(wd, ids)), ref), 0.0) << dtype_name(t) << " host ids";
    EXPECT_EQ(rel_err(gpu.download(gpu.embedding(wd, gpu.upload(ids, DType::I32))), ref), 0.0)
        << dtype_name(t) << " device ids";
  }
  Tensor wd = gpu.upload_weight(table);
  EXPECT_THROW(gpu.embedding(wd, ids_tensor({3, 37})), Error);                          // host id checked
  EXPECT_THROW(gpu.embedding(wd, gpu.upload(ids_tensor({-1, 2}), DType::I32)), Error);  // device flag
  EXPECT_EQ(gpu.download(gpu.embedding(wd, ids_tensor({}))).numel(), 0);
}

TEST(CudaTransformerOps, AddRowsAndConcatExact) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  Tensor x = random_tensor({3, 5, 7}, 6);
  for (Shape rs : {Shape{5, 7}, Shape{1, 7}, Shape{15, 7}}) {
    Tensor r = random_tensor(rs, 7);
    EXPECT_EQ(rel_err(gpu.download(gpu.add_rows(up(gpu, x), up(gpu, r))), cpu.add_rows(x, r)), 0.0) << shape_str(rs);
  }
  EXPECT_THROW(gpu.add_rows(up(gpu, x), up(gpu, random_tensor({4, 7}, 8))), Error);  // 15 % 4 != 0
  std::vector<Tensor> parts = {random_tensor({2, 3, 4}, 9), random_tensor({0, 3, 4}, 10),
                               random_tensor({5, 3, 4}, 11)};
  std::vector<Tensor> dparts;
  for (const Tensor& p : parts) dparts.push_back(up(gpu, p));
  Tensor got = gpu.download(gpu.concat(dparts));
  EXPECT_EQ(rel_err(got, cpu.concat(parts)), 0.0);
  EXPECT_EQ(shape_str(got.shape()), "[7, 3, 4]");
  EXPECT_THROW(gpu.concat({up(gpu, parts[0]), up(gpu, random_tensor({1, 4, 3}, 12))}), Error);
}

// Positions [0, len) of a cache, [B,H,len,hd] f32 on the host.
Tensor cache_prefix(Backend& be, const Tensor& c, int64_t len) {
  Tensor h = be.download(c);
  const int64_t B = h.dim(0), H = h.dim(1), Tm = h.dim(2), hd = h.dim(3);
  Tensor out = Tensor::empty({B, H, len, hd});
  for (int64_t bh = 0; bh < B * H; ++bh)
    std::copy(h.f32() + bh * Tm * hd, h.f32() + bh * Tm * hd + len * hd, out.f32() + bh * len * hd);
  return out;
}

// One attention_step on both backends with the same random q/k/v; compares the outputs and the
// whole valid part of both caches.
void step_both(Backend& gpu, Backend::KvCache& gc, Backend::KvCache& cc, int64_t B, int64_t T, int64_t C, int H,
               uint64_t seed, const std::string& what) {
  Tensor q = random_tensor({B, T, C}, seed, -1.5f, 1.5f), k = random_tensor({B, T, C}, seed + 1, -1.5f, 1.5f),
         v = random_tensor({B, T, C}, seed + 2);
  Tensor ref = cpu_backend().attention_step(q, k, v, cc, H);
  Tensor got = gpu.download(gpu.attention_step(up(gpu, q), up(gpu, k), up(gpu, v), gc, H));
  EXPECT_LE(rel_err(got, ref), kTolF32) << what;
  ASSERT_EQ(gc.len, cc.len) << what;
  EXPECT_EQ(rel_err(cache_prefix(gpu, gc.k, gc.len), cache_prefix(cpu_backend(), cc.k, cc.len)), 0.0) << what;
  EXPECT_EQ(rel_err(cache_prefix(gpu, gc.v, gc.len), cache_prefix(cpu_backend(), cc.v, cc.len)), 0.0) << what;
}

TEST(CudaTransformerOps, AttentionPrefillThenDecodeSteps) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  struct Case {
    int64_t B;
    int H;
    int64_t hd, T_max, T0;
  };
  // hd 64 (both models), 48 and 7 (odd), 128 (the largest supported); B=64 as in a batch run.
  for (Case c : {Case{2, 4, 64, 40, 7}, Case{3, 2, 48, 20, 1}, Case{1, 5, 7, 12, 5}, Case{2, 3, 128, 30, 9},
                 Case{64, 16, 64, 48, 33}}) {
    const int64_t C = c.H * c.hd;
    const std::string what = "B" + std::to_string(c.B) + " H" + std::to_string(c.H) + " hd" + std::to_string(c.hd);
    Backend::KvCache gc = gpu.kv_cache_new(c.B, c.H, c.T_max, c.hd), cc = cpu.kv_cache_new(c.B, c.H, c.T_max, c.hd);
    ASSERT_EQ(gc.k.device(), Device::CUDA);
    ASSERT_EQ(shape_str(gc.k.shape()), shape_str(cc.k.shape()));
    step_both(gpu, gc, cc, c.B, c.T0, C, c.H, 100, what + " prefill");       // T > 1, empty cache
    for (int s = 0; s < 3; ++s) step_both(gpu, gc, cc, c.B, 1, C, c.H, 200 + 10 * s, what + " step");  // T = 1
    step_both(gpu, gc, cc, c.B, 2, C, c.H, 300, what + " T=2 on a partly filled cache");
    EXPECT_THROW(gpu.attention_step(up(gpu, random_tensor({c.B, c.T_max, C}, 1)),
                                    up(gpu, random_tensor({c.B, c.T_max, C}, 2)),
                                    up(gpu, random_tensor({c.B, c.T_max, C}, 3)), gc, c.H),
                 Error)
        << "cache overflow";
  }
}

// Long prefixes take the split-key (flash-decoding) path with a merge kernel; a long prefill
// also has key chunks that lie wholly in a token's future.
TEST(CudaTransformerOps, AttentionSplitKeysLongPrefix) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  const int H = 2;
  const int64_t hd = 64, C = H * hd, T_max = 2100;
  Backend::KvCache gc = gpu.kv_cache_new(1, H, T_max, hd), cc = cpu.kv_cache_new(1, H, T_max, hd);
  step_both(gpu, gc, cc, 1, 2000, C, H, 400, "prefill 2000");
  step_both(gpu, gc, cc, 1, 1, C, H, 410, "step after 2000");
  step_both(gpu, gc, cc, 1, 1, C, H, 420, "step after 2001");
  Backend::KvCache g2 = gpu.kv_cache_new(1, 1, 200, 64), c2 = cpu.kv_cache_new(1, 1, 200, 64);
  step_both(gpu, g2, c2, 1, 150, 64, 1, 430, "prefill 150, one head");
}

TEST(CudaTransformerOps, KvCacheGatherReplicatesPrefix) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  const int H = 3;
  const int64_t hd = 16, C = H * hd;
  // A 2-row prompt cache (conditional + unconditional, as CFG) of capacity 10 with 6 positions.
  Backend::KvCache gs = gpu.kv_cache_new(2, H, 10, hd), cs = cpu.kv_cache_new(2, H, 10, hd);
  step_both(gpu, gs, cs, 2, 6, C, H, 500, "prompt");
  const std::vector<int32_t> rows = {1, 0, 1, 1, 0};
  Backend::KvCache gd = gpu.kv_cache_new(5, H, 25, hd), cd = cpu.kv_cache_new(5, H, 25, hd);
  gpu.kv_cache_gather(gd, gs, rows);
  cpu.kv_cache_gather(cd, cs, rows);
  ASSERT_EQ(gd.len, 6);
  EXPECT_EQ(rel_err(cache_prefix(gpu, gd.k, 6), cache_prefix(cpu, cd.k, 6)), 0.0);
  EXPECT_EQ(rel_err(cache_prefix(gpu, gd.v, 6), cache_prefix(cpu, cd.v, 6)), 0.0);
  // Row 2 of the destination is row 1 of the source, bit for bit.
  Tensor s = cache_prefix(gpu, gs.k, 6), d = cache_prefix(gpu, gd.k, 6);
  for (int64_t i = 0; i < H * 6 * hd; ++i) ASSERT_EQ(d.f32()[2 * H * 6 * hd + i], s.f32()[1 * H * 6 * hd + i]);
  // Decoding continues from the gathered prefix.
  for (int st = 0; st < 2; ++st) step_both(gpu, gd, cd, 5, 1, C, H, 510 + st, "step after gather");
  Backend::KvCache bad = gpu.kv_cache_new(2, H, 25, hd);
  EXPECT_THROW(gpu.kv_cache_gather(bad, gs, {0, 2}), Error);  // row outside the source batch
  EXPECT_THROW(gpu.kv_cache_gather(bad, gs, {0}), Error);     // one row for a batch of 2
}

TEST(CudaTransformerOps, Linear16BitWeights) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  struct Case {
    int64_t N, in, out;
  };
  for (Case c : {Case{1, 256, 384}, Case{5, 272, 100}, Case{64, 512, 1000}, Case{3, 40, 37}}) {
    Tensor x = random_tensor({c.N, c.in}, 600), w = random_tensor({c.out, c.in}, 601, -0.2f, 0.2f),
           b = random_tensor({c.out}, 602);
    const std::string what = std::to_string(c.N) + "x" + std::to_string(c.in) + "->" + std::to_string(c.out);
    for (DType t : {DType::BF16, DType::F16}) {
      Tensor wh = w.to(t);
      Tensor wd = gpu.upload_weight(wh);
      ASSERT_EQ(wd.dtype(), t);
      Tensor got = gpu.download(gpu.linear(up(gpu, x), wd, up(gpu, b)));
      Tensor x16 = x.to(t).to(DType::F32);  // what the GPU multiplies
      EXPECT_LE(rel_err(got, cpu.linear(x16, wh, b)), kTolSameInputs16) << what << " " << dtype_name(t);
      EXPECT_LE(rel_err(got, cpu.linear(x, wh, b)), t == DType::BF16 ? kTolBf16 : kTolF16)
          << what << " " << dtype_name(t) << " vs f32 activations";
      Tensor got_nb = gpu.download(gpu.linear(up(gpu, x), wd, Tensor()));
      EXPECT_LE(rel_err(got_nb, cpu.linear(x16, wh, Tensor())), kTolSameInputs16) << what << " no bias";
    }
    // f32 weights through upload_weight stay f32 (no TF32: same tolerance as the f32 ops).
    Tensor wf = gpu.upload_weight(w);
    ASSERT_EQ(wf.dtype(), DType::F32);
    EXPECT_LE(rel_err(gpu.download(gpu.linear(up(gpu, x), wf, up(gpu, b))), cpu.linear(x, w, b)), kTolF32) << what;
  }
  (void)round_bf16;
}

TEST(CudaTransformerOps, UnsupportedHeadDimIsAnError) {
  HWAGA_NEED_GPU(gpu, false);
  Backend::KvCache c = gpu.kv_cache_new(1, 1, 4, 130);
  Tensor q = up(gpu, random_tensor({1, 1, 130}, 700));
  EXPECT_THROW(gpu.attention_step(q, q, q, c, 1), Error);
}

}  // namespace
}  // namespace hwaga
