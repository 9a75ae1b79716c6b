// The CUDA training ops (backend/cuda/cuda_train_ops.cpp, kernels/cuda/train_ops.cu) against the CPU
// training ops (train/cpu_train_ops.cpp, the reference), op by op on random inputs with sizes that
// are not multiples of a warp or of the kernels' chunks (N = 37 and 600 rows, C = 48 and 300,
// T = 13 and 40, H = 3, hd = 16, K = 70 and 1000).
//
// Tolerances, as max|gpu-cpu| / max|cpu| (gputest::rel_err) unless said otherwise:
//   bitwise    data movement and the ops whose f32 additions the GPU replays in the CPU's order:
//              embedding fwd/bwd (rows added per channel in index order), add_pos fwd/bwd, add,
//              scale, copy_rows (= and +=), code_sum / code_prefix_sums, fill/zeros/copy/
//              upload/download/write/read, and dropout (the same Philox words, the same f32
//              comparison and product);
//   1e-6       ops with one multiply-add per element, where the CPU compiler and nvcc may or may
//              not fuse it into an FMA (one rounding apart): axpy, pos_plus_bias, adamw; and the
//              reductions both sides accumulate in double before one rounding to f32 (bias,
//              LayerNorm gain/shift gradients: the same values summed in another order, ~1e-16);
//   2e-6       LayerNorm forward and input gradient: statistics in double on both sides, then the
//              same f32 expressions up to FMA contraction (a few ulp of the largest term);
//   1e-5       GELU fwd/bwd (erff/expf vs the CPU's rational erf and AVX2 exp, each within a few
//              ulp), cross-entropy dz (expf, 2 ulp, vs glibc's expf); f32 linear layers (sums of
//              48..70 products in cuBLAS's order instead of the CPU sgemm's, no TF32) and the
//              attention forward (16-term dots, softmax over <= 40 keys, expf);
//   2e-5       attention backward (two chained products and the softmax gradient);
//   2e-3       bf16 linear layers: both sides round both operands to bf16 (nearest even) and
//              multiply exactly in f32, so only the accumulation order (tensor cores) differs;
//              a result that was NOT rounded would differ by ~5e-3, which the separate check
//              "differs from the f32 product by > 1e-5" catches;
//   1e-12      relative, the double results: the loss (per-row logsumexp in double, rows summed
//              in order on the host) and sum_squares (exact squares, another summation order).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "train/train_ops.h"
#include "train/transformer_ops.h"

namespace hwaga {
namespace {

using gputest::random_tensor;
using gputest::rel_err;
using train::cpu_train_ops;
using train::TrainOps;

constexpr double kTolFma = 1e-6;
constexpr double kTolDoubleSum = 1e-6;
constexpr double kTolNorm = 2e-6;
constexpr double kTolF32 = 1e-5;
constexpr double kTolAttnBwd = 2e-5;
constexpr double kTolBf16 = 2e-3;
constexpr double kTolDouble = 1e-12;

// Restores the process-wide matmul precision when a test leaves (also on a failed assertion).
struct MatmulPrecisionGuard {
  train::MatmulPrecision saved = train::matmul_precision();
  ~MatmulPrecisionGuard() { train::set_matmul_precision(saved); }
};

Tensor rnd(const Shape& s, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  return random_tensor(s, seed, lo, hi);
}

Tensor int_ids(int64_t n, int lo, int hi, uint64_t seed) {
  Tensor t = Tensor::empty({n}, DType::I32);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> u(lo, hi);
  for (int64_t i = 0; i < n; ++i) t.ptr<int32_t>()[i] = u(rng);
  return t;
}

// Same bytes (so NaN payloads and -0.0 count); names the first differing element.
::testing::AssertionResult same_bits(const Tensor& got, const Tensor& ref) {
  if (got.shape() != ref.shape() || got.dtype() != ref.dtype())
    return ::testing::AssertionFailure() << "shape/dtype " << shape_str(got.shape()) << " vs " << shape_str(ref.shape());
  const size_t es = dtype_size(ref.dtype());
  const auto* a = static_cast<const unsigned char*>(got.data());
  const auto* b = static_cast<const unsigned char*>(ref.data());
  for (int64_t i = 0; i < ref.numel(); ++i) {
    if (std::memcmp(a + i * es, b + i * es, es) != 0) {
      auto f = ::testing::AssertionFailure() << "first difference at element " << i << " of " << ref.numel();
      if (ref.dtype() == DType::F32) f << ": gpu " << got.ptr<float>()[i] << " vs cpu " << ref.ptr<float>()[i];
      if (ref.dtype() == DType::I32) f << ": gpu " << got.ptr<int32_t>()[i] << " vs cpu " << ref.ptr<int32_t>()[i];
      return f;
    }
  }
  return ::testing::AssertionSuccess();
}

double rel_diff(double got, double ref) { return std::fabs(got - ref) / std::max(1.0, std::fabs(ref)); }

// ---------------------------------------------------------------- identity and memory

TEST(CudaTrainOps, NameDeviceBackend) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  EXPECT_EQ(gpu.device(), Device::CUDA);
  EXPECT_EQ(gpu.name().rfind("cuda (", 0), 0u) << gpu.name();
  EXPECT_EQ(gpu.backend().device(), Device::CUDA);
}

TEST(CudaTrainOps, MemoryOpsExact) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  Tensor x = rnd({37, 48}, 1);
  Tensor d = gpu.upload(x);
  EXPECT_EQ(d.device(), Device::CUDA);
  EXPECT_TRUE(same_bits(gpu.download(d), x));

  Tensor ids = int_ids(37, -5, 100, 2);  // any dtype travels as bytes
  EXPECT_TRUE(same_bits(gpu.download(gpu.upload(ids)), ids));

  Tensor z = gpu.zeros({13, 7});
  EXPECT_TRUE(same_bits(gpu.download(z), Tensor::zeros({13, 7})));
  Tensor zi = gpu.zeros({5}, DType::I32);
  EXPECT_TRUE(same_bits(gpu.download(zi), Tensor::zeros({5}, DType::I32)));

  Tensor e = gpu.empty({3, 11});
  EXPECT_EQ(e.device(), Device::CUDA);
  EXPECT_EQ(e.shape(), (Shape{3, 11}));
  gpu.fill(e.f32(), e.numel(), -2.5f);
  Tensor ref = Tensor::empty({3, 11});
  cpu_train_ops().fill(ref.f32(), ref.numel(), -2.5f);
  EXPECT_TRUE(same_bits(gpu.download(e), ref));
  gpu.fill(e.f32(), e.numel(), 0.0f);
  EXPECT_TRUE(same_bits(gpu.download(e), Tensor::zeros({3, 11})));

  // write / read of a sub-range, copy between device buffers
  Tensor part = rnd({100}, 3);
  gpu.write(d.f32() + 10, part.f32(), 100 * sizeof(float));
  Tensor expect = x.clone();
  std::memcpy(expect.f32() + 10, part.f32(), 100 * sizeof(float));
  EXPECT_TRUE(same_bits(gpu.download(d), expect));
  std::vector<float> back(100);
  gpu.read(back.data(), d.f32() + 10, 100 * sizeof(float));
  EXPECT_EQ(std::memcmp(back.data(), part.f32(), 100 * sizeof(float)), 0);

  Tensor d2 = gpu.zeros({37, 48});
  gpu.copy(d2.f32() + 1, d.f32() + 3, 500);
  Tensor expect2 = Tensor::zeros({37, 48});
  std::memcpy(expect2.f32() + 1, expect.f32() + 3, 500 * sizeof(float));
  gpu.synchronize();
  EXPECT_TRUE(same_bits(gpu.download(d2), expect2));

  EXPECT_THROW(gpu.download(x), Error);  // a host tensor is not this device's
}

// ---------------------------------------------------------------- linear

struct LinearCase {
  int64_t N, in, out;
  bool bias, accumulate_dx;
};

void check_linear(TrainOps& gpu, const LinearCase& lc, double tol, uint64_t seed) {
  TrainOps& cpu = cpu_train_ops();
  const int64_t N = lc.N, in = lc.in, out = lc.out;
  const std::string what = "N=" + std::to_string(N) + " in=" + std::to_string(in) + " out=" + std::to_string(out) +
                           (lc.bias ? " bias" : " no bias") + (lc.accumulate_dx ? " dx+=" : " dx=") + " " +
                           train::matmul_precision_name(train::matmul_precision());
  Tensor x = rnd({N, in}, seed), W = rnd({out, in}, seed + 1), b = rnd({out}, seed + 2), dy = rnd({N, out}, seed + 3);
  Tensor dW0 = rnd({out, in}, seed + 4), db0 = rnd({out}, seed + 5), dx0 = rnd({N, in}, seed + 6);
  Tensor xd = gpu.upload(x), Wd = gpu.upload(W), bd = gpu.upload(b), dyd = gpu.upload(dy);

  Tensor y_c = Tensor::empty({N, out});
  cpu.linear_fwd(x.f32(), W.f32(), lc.bias ? b.f32() : nullptr, y_c.f32(), N, in, out);
  Tensor y_g = gpu.empty({N, out});
  gpu.linear_fwd(xd.f32(), Wd.f32(), lc.bias ? bd.f32() : nullptr, y_g.f32(), N, in, out);
  EXPECT_LE(rel_err(gpu.download(y_g), y_c), tol) << "linear_fwd " << what;

  Tensor dx_c = dx0.clone(), dW_c = dW0.clone(), db_c = db0.clone();
  cpu.linear_bwd(x.f32(), W.f32(), dy.f32(), dx_c.f32(), dW_c.f32(), lc.bias ? db_c.f32() : nullptr, N, in, out,
                 lc.accumulate_dx);
  Tensor dx_g = gpu.upload(dx0), dW_g = gpu.upload(dW0), db_g = gpu.upload(db0);
  gpu.linear_bwd(xd.f32(), Wd.f32(), dyd.f32(), dx_g.f32(), dW_g.f32(), lc.bias ? db_g.f32() : nullptr, N, in, out,
                 lc.accumulate_dx);
  EXPECT_LE(rel_err(gpu.download(dx_g), dx_c), tol) << "linear_bwd dx " << what;
  EXPECT_LE(rel_err(gpu.download(dW_g), dW_c), tol) << "linear_bwd dW " << what;
  // The bias gradient never goes through the product: double sums on both sides.
  EXPECT_LE(rel_err(gpu.download(db_g), db_c), kTolDoubleSum) << "linear_bwd db " << what;

  // dx null: skipped (dW only); db null: untouched.
  Tensor dW_c2 = dW0.clone(), dW_g2 = gpu.upload(dW0);
  cpu.linear_bwd(x.f32(), W.f32(), dy.f32(), nullptr, dW_c2.f32(), nullptr, N, in, out, false);
  gpu.linear_bwd(xd.f32(), Wd.f32(), dyd.f32(), nullptr, dW_g2.f32(), nullptr, N, in, out, false);
  EXPECT_LE(rel_err(gpu.download(dW_g2), dW_c2), tol) << "linear_bwd dW without dx " << what;
}

const LinearCase kLinearCases[] = {
    {37, 48, 70, true, false}, {37, 48, 70, true, true}, {37, 48, 70, false, false},
    {37, 48, 70, false, true}, {600, 33, 5, true, false},  // 600 rows: the bias sums cross a 256-row chunk
    {5, 70, 1, true, true},
};

TEST(CudaTrainOps, LinearF32) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  MatmulPrecisionGuard guard;
  train::set_matmul_precision(train::MatmulPrecision::f32);
  uint64_t seed = 100;
  for (const LinearCase& lc : kLinearCases) check_linear(gpu, lc, kTolF32, seed += 10);
}

TEST(CudaTrainOps, LinearBf16) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  MatmulPrecisionGuard guard;
  train::set_matmul_precision(train::MatmulPrecision::bf16);
  uint64_t seed = 200;
  for (const LinearCase& lc : kLinearCases) check_linear(gpu, lc, kTolBf16, seed += 10);

  // The GPU really rounds to bf16: its product is not the f32 one.
  const int64_t N = 37, in = 48, out = 70;
  Tensor x = rnd({N, in}, 7), W = rnd({out, in}, 8);
  Tensor y_g = gpu.empty({N, out});
  gpu.linear_fwd(gpu.upload(x).f32(), gpu.upload(W).f32(), nullptr, y_g.f32(), N, in, out);
  Tensor y_bf16 = gpu.download(y_g);
  train::set_matmul_precision(train::MatmulPrecision::f32);
  Tensor y_f32 = Tensor::empty({N, out});
  cpu_train_ops().linear_fwd(x.f32(), W.f32(), nullptr, y_f32.f32(), N, in, out);
  EXPECT_GT(rel_err(y_bf16, y_f32), 1e-5) << "bf16 mode gave the f32 product";
}

// ---------------------------------------------------------------- LayerNorm

TEST(CudaTrainOps, LayerNorm) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  TrainOps& cpu = cpu_train_ops();
  struct Case {
    int64_t N, C;
    float offset;
  };
  uint64_t seed = 300;
  for (Case k : {Case{37, 48, 0.0f}, Case{600, 300, 3.0f}, Case{3, 1, 0.0f}, Case{2, 1030, 10.0f}}) {
    seed += 10;
    const int64_t N = k.N, C = k.C;
    const std::string what = "N=" + std::to_string(N) + " C=" + std::to_string(C);
    const float eps = 1e-5f;
    Tensor x = rnd({N, C}, seed, -1.0f + k.offset, 1.0f + k.offset);
    Tensor gamma = rnd({C}, seed + 1, 0.5f, 1.5f), beta = rnd({C}, seed + 2, -0.5f, 0.5f);
    Tensor y_c = Tensor::empty({N, C}), mean_c = Tensor::empty({N}), rstd_c = Tensor::empty({N});
    cpu.layer_norm_fwd(x.f32(), gamma.f32(), beta.f32(), y_c.f32(), mean_c.f32(), rstd_c.f32(), N, C, eps);
    Tensor xd = gpu.upload(x), gd = gpu.upload(gamma), bd = gpu.upload(beta);
    Tensor y_g = gpu.empty({N, C}), mean_g = gpu.empty({N}), rstd_g = gpu.empty({N});
    gpu.layer_norm_fwd(xd.f32(), gd.f32(), bd.f32(), y_g.f32(), mean_g.f32(), rstd_g.f32(), N, C, eps);
    EXPECT_LE(rel_err(gpu.download(y_g), y_c), kTolNorm) << "layer_norm_fwd y " << what;
    EXPECT_LE(rel_err(gpu.download(mean_g), mean_c), kTolDoubleSum) << "layer_norm_fwd mean " << what;
    EXPECT_LE(rel_err(gpu.download(rstd_g), rstd_c), kTolDoubleSum) << "layer_norm_fwd rstd " << what;

    // The backward from the same saved statistics (the CPU's) on both sides.
    Tensor meand = gpu.upload(mean_c), rstdd = gpu.upload(rstd_c);
    Tensor dy = rnd({N, C}, seed + 3), dx0 = rnd({N, C}, seed + 4), dg0 = rnd({C}, seed + 5), db0 = rnd({C}, seed + 6);
    Tensor dyd = gpu.upload(dy);
    for (bool acc : {false, true}) {
      Tensor dx_c = dx0.clone(), dg_c = dg0.clone(), db_c = db0.clone();
      cpu.layer_norm_bwd(x.f32(), gamma.f32(), mean_c.f32(), rstd_c.f32(), dy.f32(), dx_c.f32(), dg_c.f32(),
                         db_c.f32(), N, C, acc);
      Tensor dx_g = gpu.upload(dx0), dg_g = gpu.upload(dg0), db_g = gpu.upload(db0);
      gpu.layer_norm_bwd(xd.f32(), gd.f32(), meand.f32(), rstdd.f32(), dyd.f32(), dx_g.f32(), dg_g.f32(), db_g.f32(),
                         N, C, acc);
      EXPECT_LE(rel_err(gpu.download(dx_g), dx_c), kTolNorm) << "layer_norm_bwd dx " << what << " acc " << acc;
      EXPECT_LE(rel_err(gpu.download(dg_g), dg_c), kTolDoubleSum) << "layer_norm_bwd dgamma " << what;
      EXPECT_LE(rel_err(gpu.download(db_g), db_c), kTolDoubleSum) << "layer_norm_bwd dbeta " << what;
    }
    // dgamma only (dbeta null), no dx.
    Tensor dg_c = dg0.clone(), dg_g = gpu.upload(dg0);
    cpu.layer_norm_bwd(x.f32(), gamma.f32(), mean_c.f32(), rstd_c.f32(), dy.f32(), nullptr, dg_c.f32(), nullptr, N, C,
                       false);
    gpu.layer_norm_bwd(xd.f32(), gd.f32(), meand.f32(), rstdd.f32(), dyd.f32(), nullptr, dg_g.f32(), nullptr, N, C,
                       false);
    EXPECT_LE(rel_err(gpu.download(dg_g), dg_c), kTolDoubleSum) << "layer_norm_bwd dgamma only " << what;
  }
}

// ---------------------------------------------------------------- GELU

TEST(CudaTrainOps, Gelu) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  TrainOps& cpu = cpu_train_ops();
  for (int64_t n : {int64_t(1), int64_t(1001), int64_t(70001)}) {
    Tensor x = rnd({n}, 400 + n, -6.0f, 6.0f), dy = rnd({n}, 401 + n);
    Tensor y_c = Tensor::empty({n}), dx_c = Tensor::empty({n});
    cpu.gelu_fwd(x.f32(), y_c.f32(), n);
    cpu.gelu_bwd(x.f32(), dy.f32(), dx_c.f32(), n);
    Tensor xd = gpu.upload(x), dyd = gpu.upload(dy), y_g = gpu.empty({n}), dx_g = gpu.empty({n});
    gpu.gelu_fwd(xd.f32(), y_g.f32(), n);
    gpu.gelu_bwd(xd.f32(), dyd.f32(), dx_g.f32(), n);
    EXPECT_LE(rel_err(gpu.download(y_g), y_c), kTolF32) << "gelu_fwd n=" << n;
    EXPECT_LE(rel_err(gpu.download(dx_g), dx_c), kTolF32) << "gelu_bwd n=" << n;
    gpu.gelu_bwd(xd.f32(), dyd.f32(), dyd.f32(), n);  // dx aliasing dy
    EXPECT_LE(rel_err(gpu.download(dyd), dx_c), kTolF32) << "gelu_bwd in place n=" << n;
  }
}

// ---------------------------------------------------------------- attention

TEST(CudaTrainOps, Attention) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  TrainOps& cpu = cpu_train_ops();
  struct Case {
    int64_t B, T, H, hd;
  };
  uint64_t seed = 500;
  for (Case k : {Case{2, 13, 3, 16}, Case{3, 40, 2, 24}, Case{1, 1, 1, 8}}) {
    seed += 10;
    const int64_t B = k.B, T = k.T, H = k.H, hd = k.hd, C = H * hd;
    const std::string what = "B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) +
                             " hd=" + std::to_string(hd);
    Tensor q = rnd({B, T, C}, seed, -2.0f, 2.0f), kk = rnd({B, T, C}, seed + 1, -2.0f, 2.0f),
           v = rnd({B, T, C}, seed + 2), dout = rnd({B, T, C}, seed + 3);
    Tensor probs_c = Tensor::empty({B, H, T, T}), out_c = Tensor::empty({B, T, C});
    cpu.attention_fwd(q.f32(), kk.f32(), v.f32(), probs_c.f32(), out_c.f32(), B, T, H, hd);
    Tensor qd = gpu.upload(q), kd = gpu.upload(kk), vd = gpu.upload(v), dod = gpu.upload(dout);
    Tensor probs_g = gpu.empty({B, H, T, T}), out_g = gpu.empty({B, T, C});
    gpu.attention_fwd(qd.f32(), kd.f32(), vd.f32(), probs_g.f32(), out_g.f32(), B, T, H, hd);
    Tensor probs_h = gpu.download(probs_g);
    EXPECT_LE(rel_err(probs_h, probs_c), kTolF32) << "attention_fwd probs " << what;
    EXPECT_LE(rel_err(gpu.download(out_g), out_c), kTolF32) << "attention_fwd out " << what;
    int64_t nonzero_above = 0;
    for (int64_t r = 0; r < B * H * T; ++r)
      for (int64_t j = r % T + 1; j < T; ++j) nonzero_above += probs_h.f32()[r * T + j] != 0.0f;
    EXPECT_EQ(nonzero_above, 0) << "probs above the diagonal " << what;

    Tensor dq_c = Tensor::empty({B, T, C}), dk_c = Tensor::empty({B, T, C}), dv_c = Tensor::empty({B, T, C});
    cpu.attention_bwd(q.f32(), kk.f32(), v.f32(), probs_c.f32(), dout.f32(), dq_c.f32(), dk_c.f32(), dv_c.f32(), B, T,
                      H, hd);
    // The GPU backward from the CPU's probs, so that only the backward is compared.
    Tensor pd = gpu.upload(probs_c);
    Tensor dq_g = gpu.empty({B, T, C}), dk_g = gpu.empty({B, T, C}), dv_g = gpu.empty({B, T, C});
    gpu.attention_bwd(qd.f32(), kd.f32(), vd.f32(), pd.f32(), dod.f32(), dq_g.f32(), dk_g.f32(), dv_g.f32(), B, T, H,
                      hd);
    EXPECT_LE(rel_err(gpu.download(dq_g), dq_c), kTolAttnBwd) << "attention_bwd dq " << what;
    EXPECT_LE(rel_err(gpu.download(dk_g), dk_c), kTolAttnBwd) << "attention_bwd dk " << what;
    EXPECT_LE(rel_err(gpu.download(dv_g), dv_c), kTolAttnBwd) << "attention_bwd dv " << what;
  }
}

// ---------------------------------------------------------------- embeddings, positions

TEST(CudaTrainOps, EmbeddingExact) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  TrainOps& cpu = cpu_train_ops();
  const int64_t V = 70, C = 48;
  for (int64_t N : {int64_t(37), int64_t(600)}) {
    Tensor table = rnd({V, C}, 600 + N), dout = rnd({N, C}, 601 + N), dt0 = rnd({V, C}, 602 + N);
    Tensor ids = int_ids(N, 0, 9, 603 + N);  // few distinct ids: many repeats, so the order matters
    ids.ptr<int32_t>()[N - 1] = int32_t(V - 1);
    Tensor out_c = Tensor::empty({N, C});
    cpu.embedding_fwd(table.f32(), ids.ptr<int32_t>(), out_c.f32(), N, C);
    Tensor td = gpu.upload(table), idd = gpu.upload(ids), out_g = gpu.empty({N, C});
    gpu.embedding_fwd(td.f32(), idd.ptr<int32_t>(), out_g.f32(), N, C);
    EXPECT_TRUE(same_bits(gpu.download(out_g), out_c)) << "embedding_fwd N=" << N;

    Tensor dt_c = dt0.clone(), dt_g = gpu.upload(dt0);
    cpu.embedding_bwd(ids.ptr<int32_t>(), dout.f32(), dt_c.f32(), N, C);
    gpu.embedding_bwd(idd.ptr<int32_t>(), gpu.upload(dout).f32(), dt_g.f32(), N, C);
    EXPECT_TRUE(same_bits(gpu.download(dt_g), dt_c)) << "embedding_bwd N=" << N;
  }
}

TEST(CudaTrainOps, AddPosExact) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  TrainOps& cpu = cpu_train_ops();
  struct Case {
    int64_t N, R, C;
  };
  for (Case k : {Case{37, 13, 48}, Case{600, 7, 33}, Case{5, 5, 1}}) {
    Tensor y = rnd({k.N, k.C}, 700 + k.N), pos = rnd({k.R, k.C}, 701 + k.N), dpos0 = rnd({k.R, k.C}, 702 + k.N);
    Tensor y_c = y.clone(), y_g = gpu.upload(y);
    cpu.add_pos_fwd(y_c.f32(), pos.f32(), k.N, k.R, k.C);
    gpu.add_pos_fwd(y_g.f32(), gpu.upload(pos).f32(), k.N, k.R, k.C);
    EXPECT_TRUE(same_bits(gpu.download(y_g), y_c)) << "add_pos_fwd N=" << k.N;
    Tensor dp_c = dpos0.clone(), dp_g = gpu.upload(dpos0);
    cpu.add_pos_bwd(y.f32(), dp_c.f32(), k.N, k.R, k.C);
    gpu.add_pos_bwd(gpu.upload(y).f32(), dp_g.f32(), k.N, k.R, k.C);
    EXPECT_TRUE(same_bits(gpu.download(dp_g), dp_c)) << "add_pos_bwd N=" << k.N;
  }
}

// ---------------------------------------------------------------- cross-entropy

TEST(CudaTrainOps, CrossEntropy) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  TrainOps& cpu = cpu_train_ops();
  struct Case {
    int64_t N, K;
  };
  uint64_t seed = 800;
  for (Case k : {Case{37, 70}, Case{9, 1000}, Case{1, 1}}) {
    seed += 10;
    const int64_t N = k.N, K = k.K;
    Tensor z = rnd({N, K}, seed, -4.0f, 4.0f);
    Tensor t = int_ids(N, 0, int(K - 1), seed + 1);
    Tensor w = Tensor::empty({N});
    double wsum = 0;
    for (int64_t n = 0; n < N; ++n) {
      // Every 5th row unweighted, with a target out of range (allowed there); the others weighted.
      const bool skip = N > 1 && n % 5 == 2;
      w.f32()[n] = skip ? 0.0f : 0.5f + 0.25f * float(n % 3);
      if (skip) t.ptr<int32_t>()[n] = (n % 2) ? int32_t(K + 5) : -1;
      wsum += w.f32()[n];
    }
    const float dscale = float(1.0 / wsum);
    Tensor dz0 = rnd({N, K}, seed + 2, 10.0f, 20.0f);  // garbage the op must overwrite
    Tensor dz_c = dz0.clone();
    const double loss_c = cpu.cross_entropy(z.f32(), t.ptr<int32_t>(), w.f32(), dz_c.f32(), dscale, N, K);
    Tensor zd = gpu.upload(z), td = gpu.upload(t), wd = gpu.upload(w), dz_g = gpu.upload(dz0);
    const double loss_g = gpu.cross_entropy(zd.f32(), td.ptr<int32_t>(), wd.f32(), dz_g.f32(), dscale, N, K);
    const std::string what = "N=" + std::to_string(N) + " K=" + std::to_string(K);
    EXPECT_LE(rel_diff(loss_g, loss_c), kTolDouble) << "cross_entropy loss " << what << ": " << loss_g << " vs "
                                                    << loss_c;
    EXPECT_LE(rel_err(gpu.download(dz_g), dz_c), kTolF32) << "cross_entropy dz " << what;
    // Unweighted rows' dz are exact zeros.
    Tensor dzh = gpu.download(dz_g);
    for (int64_t n = 0; n < N; ++n)
      if (w.f32()[n] == 0.0f)
        for (int64_t j = 0; j < K; ++j) ASSERT_EQ(dzh.f32()[n * K + j], 0.0f) << "row " << n << " " << what;
    // dz null: the loss only.
    const double loss_g2 = gpu.cross_entropy(zd.f32(), td.ptr<int32_t>(), wd.f32(), nullptr, dscale, N, K);
    EXPECT_LE(rel_diff(loss_g2, loss_c), kTolDouble) << "cross_entropy loss without dz " << what;
  }
}

TEST(CudaTrainOps, CrossEntropyBadTargetThrows) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  TrainOps& cpu = cpu_train_ops();
  const int64_t N = 37, K = 70;
  Tensor z = rnd({N, K}, 900);
  Tensor w = Tensor::empty({N});
  for (int64_t n = 0; n < N; ++n) w.f32()[n] = 1.0f;
  for (int32_t bad : {int32_t(K), int32_t(-1)}) {
    Tensor t = int_ids(N, 0, int(K - 1), 901);
    t.ptr<int32_t>()[5] = bad;
    t.ptr<int32_t>()[20] = bad;  // the lowest bad row is the one named
    std::string cpu_msg, gpu_msg;
    try {
      cpu.cross_entropy(z.f32(), t.ptr<int32_t>(), w.f32(), nullptr, 1.0f, N, K);
    } catch (const Error& e) {
      cpu_msg = e.what();
    }
    Tensor zd = gpu.upload(z), td = gpu.upload(t), wd = gpu.upload(w), dz = gpu.empty({N, K});
    try {
      gpu.cross_entropy(zd.f32(), td.ptr<int32_t>(), wd.f32(), dz.f32(), 1.0f, N, K);
    } catch (const Error& e) {
      gpu_msg = e.what();
    }
    EXPECT_FALSE(cpu_msg.empty()) << "the CPU did not throw for target " << bad;
    EXPECT_EQ(gpu_msg, cpu_msg) << "target " << bad;
    EXPECT_NE(gpu_msg.find("row 5 "), std::string::npos) << gpu_msg;
  }
  // The ops still work after the error.
  Tensor x = rnd({100}, 902);
  EXPECT_LE(rel_diff(gpu.sum_squares(gpu.upload(x).f32(), 100), cpu.sum_squares(x.f32(), 100)), kTolDouble);
}

// ---------------------------------------------------------------- dropout

TEST(CudaTrainOps, DropoutBitwise) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  TrainOps& cpu = cpu_train_ops();
  for (int64_t n : {int64_t(1), int64_t(1003), int64_t(100001)}) {
    for (float p : {0.0f, 0.1f, 0.5f, 0.9f}) {
      for (uint64_t seed : {uint64_t(0), uint64_t(1234567)}) {
        const uint64_t stream = train::dropout_stream(17, 3);
        Tensor x = rnd({n}, 1000 + n);
        Tensor x_c = x.clone(), x_g = gpu.upload(x);
        cpu.dropout_apply(x_c.f32(), n, p, seed, stream);
        gpu.dropout_apply(x_g.f32(), n, p, seed, stream);
        EXPECT_TRUE(same_bits(gpu.download(x_g), x_c)) << "dropout n=" << n << " p=" << p << " seed=" << seed;
      }
    }
  }
  Tensor x = gpu.zeros({4});
  EXPECT_THROW(gpu.dropout_apply(x.f32(), 4, 1.0f, 1, 2), Error);
  Tensor xh = Tensor::zeros({4});
  EXPECT_THROW(cpu.dropout_apply(xh.f32(), 4, 1.0f, 1, 2), Error);
}

// ---------------------------------------------------------------- elementwise and data movement

TEST(CudaTrainOps, Elementwise) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  TrainOps& cpu = cpu_train_ops();
  const int64_t n = 100003;
  Tensor a = rnd({n}, 1100), b = rnd({n}, 1101, -3.0f, 3.0f);

  Tensor y_c = Tensor::empty({n}), y_g = gpu.empty({n});
  Tensor ad = gpu.upload(a), bd = gpu.upload(b);
  cpu.add(a.f32(), b.f32(), y_c.f32(), n);
  gpu.add(ad.f32(), bd.f32(), y_g.f32(), n);
  EXPECT_TRUE(same_bits(gpu.download(y_g), y_c)) << "add";
  Tensor a_c = a.clone();
  cpu.add(a_c.f32(), b.f32(), a_c.f32(), n);  // y aliasing a
  gpu.add(ad.f32(), bd.f32(), ad.f32(), n);
  EXPECT_TRUE(same_bits(gpu.download(ad), a_c)) << "add in place";

  Tensor ax_c = a.clone(), ax_g = gpu.upload(a);
  cpu.axpy(ax_c.f32(), b.f32(), -0.37f, n);
  gpu.axpy(ax_g.f32(), bd.f32(), -0.37f, n);
  EXPECT_LE(rel_err(gpu.download(ax_g), ax_c), kTolFma) << "axpy";

  Tensor s_c = a.clone(), s_g = gpu.upload(a);
  cpu.scale(s_c.f32(), 1.7f, n);
  gpu.scale(s_g.f32(), 1.7f, n);
  EXPECT_TRUE(same_bits(gpu.download(s_g), s_c)) << "scale";

  const int64_t R = 13, C = 48;
  Tensor pos = rnd({R, C}, 1102), bias = rnd({C}, 1103);
  Tensor pb_c = Tensor::empty({R, C}), pb_g = gpu.empty({R, C});
  cpu.pos_plus_bias(pos.f32(), bias.f32(), 0.25f, pb_c.f32(), R, C);
  gpu.pos_plus_bias(gpu.upload(pos).f32(), gpu.upload(bias).f32(), 0.25f, pb_g.f32(), R, C);
  EXPECT_LE(rel_err(gpu.download(pb_g), pb_c), kTolFma) << "pos_plus_bias";
}

TEST(CudaTrainOps, CopyRowsExact) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  TrainOps& cpu = cpu_train_ops();
  train::RowCopy g;
  g.blocks = 3;
  g.rows = 4;
  g.C = 5;
  g.dst_block = 10;
  g.dst_row = 2;
  g.dst_off = 1;
  g.src_block = 7;
  g.src_row = 1;
  g.src_off = 2;
  // Highest rows touched: dst 2*10 + 1 + 3*2 = 27, src 2*7 + 2 + 3 = 19.
  Tensor dst0 = rnd({30, g.C}, 1200), src = rnd({21, g.C}, 1201);
  Tensor srcd = gpu.upload(src);
  for (bool acc : {false, true}) {
    Tensor d_c = dst0.clone(), d_g = gpu.upload(dst0);
    cpu.copy_rows(d_c.f32(), src.f32(), g, acc);
    gpu.copy_rows(d_g.f32(), srcd.f32(), g, acc);
    EXPECT_TRUE(same_bits(gpu.download(d_g), d_c)) << "copy_rows accumulate=" << acc;
  }
  // One contiguous block (the common case) and a gather with a negative-free stride pattern.
  train::RowCopy h;
  h.rows = 20;
  h.C = 48;
  h.dst_off = 3;
  h.src_row = 1;
  Tensor dst1 = rnd({23, 48}, 1202), src1 = rnd({20, 48}, 1203);
  for (bool acc : {false, true}) {
    Tensor d_c = dst1.clone(), d_g = gpu.upload(dst1);
    cpu.copy_rows(d_c.f32(), src1.f32(), h, acc);
    gpu.copy_rows(d_g.f32(), gpu.upload(src1).f32(), h, acc);
    EXPECT_TRUE(same_bits(gpu.download(d_g), d_c)) << "copy_rows contiguous accumulate=" << acc;
  }
}

// ---------------------------------------------------------------- code embeddings

TEST(CudaTrainOps, CodeSumsExact) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  TrainOps& cpu = cpu_train_ops();
  const int64_t K = 70, E = 48, B = 2, P = 13, Pm = 11, D = 4;
  Tensor cb = rnd({K, E}, 1300);
  Tensor codes = int_ids(B * P * D, 0, int(K - 1), 1301);
  Tensor cbd = gpu.upload(cb), cd = gpu.upload(codes);
  Tensor s_c = Tensor::empty({B * Pm, E}), s_g = gpu.empty({B * Pm, E});
  cpu.code_sum(cb.f32(), codes.ptr<int32_t>(), s_c.f32(), B, P, Pm, D, E);
  gpu.code_sum(cbd.f32(), cd.ptr<int32_t>(), s_g.f32(), B, P, Pm, D, E);
  EXPECT_TRUE(same_bits(gpu.download(s_g), s_c)) << "code_sum";

  const int64_t BP = B * P;
  Tensor p_c = Tensor::empty({BP * (D - 1), E}), p_g = gpu.empty({BP * (D - 1), E});
  cpu.code_prefix_sums(cb.f32(), codes.ptr<int32_t>(), p_c.f32(), BP, D, E);
  gpu.code_prefix_sums(cbd.f32(), cd.ptr<int32_t>(), p_g.f32(), BP, D, E);
  EXPECT_TRUE(same_bits(gpu.download(p_g), p_c)) << "code_prefix_sums";
}

// ---------------------------------------------------------------- optimizer

TEST(CudaTrainOps, SumSquares) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  TrainOps& cpu = cpu_train_ops();
  for (int64_t n : {int64_t(1), int64_t(1001), int64_t(100003)}) {
    Tensor x = rnd({n}, 1400 + n, -3.0f, 3.0f);
    const double c = cpu.sum_squares(x.f32(), n), g = gpu.sum_squares(gpu.upload(x).f32(), n);
    EXPECT_LE(rel_diff(g, c), kTolDouble) << "sum_squares n=" << n << ": " << g << " vs " << c;
  }
  EXPECT_EQ(gpu.sum_squares(nullptr, 0), 0.0);
}

TEST(CudaTrainOps, AdamW) {
  HWAGA_NEED_CUDA_TRAIN_OPS(gpu);
  TrainOps& cpu = cpu_train_ops();
  const int64_t n = 1001;
  Tensor w = rnd({n}, 1500), g = rnd({n}, 1501, -0.1f, 0.1f), m = rnd({n}, 1502, -0.01f, 0.01f),
         v = rnd({n}, 1503, 0.0f, 1e-3f);
  Tensor w_c = w.clone(), m_c = m.clone(), v_c = v.clone();
  Tensor w_g = gpu.upload(w), m_g = gpu.upload(m), v_g = gpu.upload(v), gd = gpu.upload(g);
  const float lr = 3e-4f, decay = 1.0f - lr * 0.01f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f;
  const float step_size = lr / (1.0f - 0.9f * 0.9f), inv_sqrt_bc2 = float(1.0 / std::sqrt(1.0 - 0.95 * 0.95));
  for (int step = 0; step < 3; ++step) {
    cpu.adamw(w_c.f32(), g.f32(), m_c.f32(), v_c.f32(), n, decay, b1, b2, step_size, inv_sqrt_bc2, eps);
    gpu.adamw(w_g.f32(), gd.f32(), m_g.f32(), v_g.f32(), n, decay, b1, b2, step_size, inv_sqrt_bc2, eps);
  }
  EXPECT_LE(rel_err(gpu.download(w_g), w_c), kTolFma) << "adamw w";
  EXPECT_LE(rel_err(gpu.download(m_g), m_c), kTolFma) << "adamw m";
  EXPECT_LE(rel_err(gpu.download(v_g), v_c), kTolFma) << "adamw v";
}

}  // namespace
}  // namespace hwaga
