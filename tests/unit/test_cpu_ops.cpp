// Each CPU backend op against a plain double-precision loop written here.
// Tolerances: f32 kernels on O(1) data accumulate rounding of about 1e-7 per term; with at most a
// few hundred terms per output, 2e-5 absolute (1e-5 relative for large values) bounds the error
// with a wide margin while any indexing mistake gives O(1) differences. Layout ops, add and
// upsample are exact. The quantizer is checked on integer-valued data, where f32 distances are
// exact, so codes (including ties -> lowest index) must match exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "core/threads.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/vec_math.h"
#include "test_util.h"

using namespace hwaga;

namespace {

using test::expect_close;
using test::randn;

Tensor randint(Shape s, uint32_t seed, int lo, int hi) {  // f32 tensor of integers in [lo, hi]
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> ud(lo, hi);
  Tensor t = Tensor::empty(std::move(s));
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = float(ud(rng));
  return t;
}

class CpuOps : public ::testing::TestWithParam<int> {  // parameter: thread count
 protected:
  void SetUp() override { set_num_threads(GetParam()); }
  void TearDown() override { set_num_threads(0); }
  std::unique_ptr<Backend> be = make_cpu_backend();
};

std::vector<double> group_norm_ref(const Tensor& x, const Tensor& g, const Tensor& b, int G, double eps, bool silu) {
  const int64_t B = x.dim(0), C = x.dim(1), S = x.dim(2) * x.dim(3), cpg = C / G;
  std::vector<double> y(size_t(x.numel()));
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t gi = 0; gi < G; ++gi) {
      const float* p = x.f32() + (bi * C + gi * cpg) * S;
      double mean = 0, var = 0;
      for (int64_t i = 0; i < cpg * S; ++i) mean += p[i];
      mean /= double(cpg * S);
      for (int64_t i = 0; i < cpg * S; ++i) var += (p[i] - mean) * (p[i] - mean);
      var /= double(cpg * S);
      for (int64_t c = 0; c < cpg; ++c)
        for (int64_t s = 0; s < S; ++s) {
          const int64_t ch = gi * cpg + c, idx = (bi * C + ch) * S + s;
          double v = (x.f32()[idx] - mean) / std::sqrt(var + eps) * g.f32()[ch] + b.f32()[ch];
          if (silu) v = v / (1.0 + std::exp(-v));
          y[size_t(idx)] = v;
        }
    }
  return y;
}

TEST_P(CpuOps, GroupNormAndFusedSilu) {
  // 5x7 planes: lengths that are not multiples of the 8-wide vectors exercise the tails.
  Tensor x = randn({2, 64, 5, 7}, 1, 2.0f, 0.5f), g = randn({64}, 2), b = randn({64}, 3);
  for (bool silu : {false, true}) {
    Tensor y = be->group_norm(x, g, b, 32, 1e-6f, silu);
    ASSERT_EQ(y.shape(), x.shape());
    expect_close(y, group_norm_ref(x, g, b, 32, 1e-6, silu), 2e-5, 1e-5, silu ? "gn+silu" : "gn");
  }
}

TEST_P(CpuOps, GroupNormLargeOffsetDoesNotCancel) {
  // mean 3000, spread 0.01: E[x^2] - mean^2 in f32 would lose every digit of the variance.
  Tensor x = randn({1, 32, 16, 16}, 4, 0.01f, 3000.0f), g = randn({32}, 5), b = randn({32}, 6);
  Tensor y = be->group_norm(x, g, b, 8, 1e-6f, false);
  // The inputs themselves are rounded to f32 steps of 2.4e-4 around 3000 (2.4% of the spread),
  // which the reference sees too; the kernel's own error must stay far below that.
  expect_close(y, group_norm_ref(x, g, b, 8, 1e-6, false), 2e-3, 1e-3, "gn offset");
}

TEST_P(CpuOps, SiluExtremes) {
  // Fused SiLU over values from -100 to 100 (exp range clamping) through GN with identity affine.
  Tensor x = Tensor::empty({1, 32, 1, 201});
  for (int c = 0; c < 32; ++c)
    for (int i = 0; i < 201; ++i) x.f32()[c * 201 + i] = float(i - 100) * (c % 2 ? 1.0f : -1.0f);
  Tensor g = Tensor::empty({32}), b = Tensor::zeros({32});
  for (int i = 0; i < 32; ++i) g.f32()[i] = 1.0f;
  Tensor y = be->group_norm(x, g, b, 32, 0.0f, true);
  expect_close(y, group_norm_ref(x, g, b, 32, 0.0, true), 2e-6, 2e-6, "silu range");
}

TEST_P(CpuOps, LayerNormKernel) {
  // Not a backend op yet (the transformers will add it); the kernel is checked here, including
  // a row with a large common offset.
  const int64_t N = 5, C = 77;
  Tensor x = randn({N, C}, 29), g = randn({C}, 30), b = randn({C}, 31);
  for (int64_t c = 0; c < C; ++c) x.f32()[4 * C + c] = 500.0f + 0.01f * x.f32()[4 * C + c];
  Tensor y = Tensor::empty({N, C});
  cpu::layer_norm_forward(x.f32(), g.f32(), b.f32(), y.f32(), N, C, 1e-5f);
  std::vector<double> want;
  for (int64_t n = 0; n < N; ++n) {
    double mean = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mean += x.f32()[n * C + c];
    mean /= C;
    for (int64_t c = 0; c < C; ++c) var += (x.f32()[n * C + c] - mean) * (x.f32()[n * C + c] - mean);
    var /= C;
    for (int64_t c = 0; c < C; ++c)
      want.push_back((x.f32()[n * C + c] - mean) / std::sqrt(var + 1e-5) * g.f32()[c] + b.f32()[c]);
  }
  // Row 4's inputs are f32-rounded at 3e-5 steps around 500 (0.3% of its spread); both sides
  // see the same rounded inputs, so 1e-4 still catches a cancelling formula (errors ~1e-1).
  expect_close(y, want, 1e-4, 1e-5, "layer_norm");
}

TEST_P(CpuOps, UpsampleAddLayoutExact) {
  Tensor x = randn({2, 3, 5, 7}, 7);
  Tensor u = be->upsample_nearest2x(x);
  ASSERT_EQ(u.shape(), (Shape{2, 3, 10, 14}));
  for (int64_t p = 0; p < 6; ++p)
    for (int64_t h = 0; h < 10; ++h)
      for (int64_t w = 0; w < 14; ++w)
        ASSERT_EQ(u.f32()[(p * 10 + h) * 14 + w], x.f32()[(p * 5 + h / 2) * 7 + w / 2]) << p << " " << h << " " << w;

  Tensor a = randn({3, 1000}, 8), c = randn({3, 1000}, 9);
  Tensor s = be->add(a, c);
  for (int64_t i = 0; i < s.numel(); ++i) ASSERT_EQ(s.f32()[i], a.f32()[i] + c.f32()[i]);
  EXPECT_THROW(be->add(a, randn({3, 999}, 1)), Error);

  // 37 channels x 9x5 positions: not multiples of the 32x32 transpose tiles.
  Tensor n = randn({2, 37, 9, 5}, 10);
  Tensor t = be->nchw_to_nhwc(n);
  ASSERT_EQ(t.shape(), (Shape{2, 9, 5, 37}));
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t ch = 0; ch < 37; ++ch)
      for (int64_t sp = 0; sp < 45; ++sp)
        ASSERT_EQ(t.f32()[(b * 45 + sp) * 37 + ch], n.f32()[(b * 37 + ch) * 45 + sp]);
  Tensor back = be->nhwc_to_nchw(t);
  ASSERT_EQ(back.shape(), n.shape());
  EXPECT_EQ(0, std::memcmp(back.data(), n.data(), n.nbytes()));
}

TEST_P(CpuOps, AttentionHw) {
  const int64_t B = 2, C = 16, H = 5, W = 3, N = H * W;
  Tensor q = randn({B, C, H, W}, 11), k = randn({B, C, H, W}, 12), v = randn({B, C, H, W}, 13);
  Tensor o = be->attention_hw(q, k, v);
  std::vector<double> want(size_t(o.numel()));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N; ++i) {
      std::vector<double> s(static_cast<size_t>(N));
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j < N; ++j) {
        double d = 0;
        for (int64_t c = 0; c < C; ++c) d += double(q.f32()[(b * C + c) * N + i]) * k.f32()[(b * C + c) * N + j];
        s[size_t(j)] = d / std::sqrt(double(C));
        mx = std::max(mx, s[size_t(j)]);
      }
      for (auto& e : s) sum += (e = std::exp(e - mx));
      for (int64_t c = 0; c < C; ++c) {
        double acc = 0;
        for (int64_t j = 0; j < N; ++j) acc += s[size_t(j)] / sum * v.f32()[(b * C + c) * N + j];
        want[size_t((b * C + c) * N + i)] = acc;
      }
    }
  expect_close(o, want, 2e-5, 1e-5, "attention_hw");
}

// Reference argmin in double, ties -> lowest index.
std::vector<int> rq_ref(const Tensor& z, const Tensor& cb, int64_t K, int D) {
  const int64_t N = z.dim(0), E = z.dim(1);
  std::vector<int> codes;
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> r(z.f32() + n * E, z.f32() + (n + 1) * E);
    for (int d = 0; d < D; ++d) {
      int best = 0;
      double bd = 1e300;
      for (int64_t k = 0; k < K; ++k) {
        double dist = 0;
        for (int64_t e = 0; e < E; ++e) dist += (r[size_t(e)] - cb.f32()[k * E + e]) * (r[size_t(e)] - cb.f32()[k * E + e]);
        if (dist < bd) bd = dist, best = int(k);
      }
      codes.push_back(best);
      for (int64_t e = 0; e < E; ++e) r[size_t(e)] -= cb.f32()[best * E + e];
    }
  }
  return codes;
}

TEST_P(CpuOps, ResidualQuantizeExactWithTiesAndPaddingRow) {
  const int64_t N = 70, E = 8, K = 33;  // 70 rows: two full blocks of 32 and a tail
  Tensor z = randint({N, E}, 14, -3, 3);
  Tensor table = randint({K + 1, E}, 15, -2, 2);  // [K+1,E]: RQ's table with its padding row
  for (int k = 0; k < 4; ++k)  // duplicate rows force ties: the lowest index must win
    std::memcpy(table.f32() + (20 + k) * E, table.f32() + k * E, E * sizeof(float));
  // The padding row K equals z[0] exactly, so it would be the nearest if it were a candidate.
  std::memcpy(table.f32() + K * E, z.f32(), E * sizeof(float));
  Tensor cb = table.slice0(0, K);
  for (int D : {1, 4}) {
    Tensor codes = be->residual_quantize(z, cb, D);
    ASSERT_EQ(codes.dtype(), DType::I32);
    ASSERT_EQ(codes.shape(), (Shape{N, D}));
    std::vector<int> want = rq_ref(z, table, K, D);
    for (int64_t i = 0; i < N * D; ++i) {
      ASSERT_LT(codes.ptr<int32_t>()[i], K) << "padding row chosen at " << i;
      ASSERT_EQ(codes.ptr<int32_t>()[i], want[size_t(i)]) << "row " << i / D << " depth " << i % D;
    }
  }
}

TEST_P(CpuOps, ResidualQuantizeFloatData) {
  // Generic f32 data: codes must agree with the double reference except where the reference's
  // two best distances are within f32 rounding of each other (none expected for this seed).
  const int64_t N = 40, E = 32, K = 100;
  Tensor z = randn({N, E}, 16), cb = randn({K, E}, 17, 0.7f);
  Tensor codes = be->residual_quantize(z, cb, 4);
  std::vector<int> want = rq_ref(z, cb, K, 4);
  for (int64_t i = 0; i < N * 4; ++i) EXPECT_EQ(codes.ptr<int32_t>()[i], want[size_t(i)]) << i;
}

TEST_P(CpuOps, EmbedSum) {
  const int64_t N = 13, D = 4, K = 50, E = 24;
  Tensor cb = randn({K, E}, 18);
  Tensor codes = Tensor::empty({N, D}, DType::I32);
  std::mt19937 rng(19);
  for (int64_t i = 0; i < N * D; ++i) codes.ptr<int32_t>()[i] = int32_t(rng() % K);
  Tensor out = be->embed_sum(codes, cb);
  ASSERT_EQ(out.shape(), (Shape{N, E}));
  std::vector<double> want(size_t(N * E), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d)
      for (int64_t e = 0; e < E; ++e) want[size_t(n * E + e)] += cb.f32()[codes.ptr<int32_t>()[n * D + d] * E + e];
  expect_close(out, want, 1e-6, 1e-6, "embed_sum");
  codes.ptr<int32_t>()[7] = int32_t(K);  // out of range -> error naming the value
  try {
    be->embed_sum(codes, cb);
    ADD_FAILURE() << "no error for code K";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("50"), std::string::npos) << e.what();
  }
  codes.ptr<int32_t>()[7] = -1;
  EXPECT_THROW(be->embed_sum(codes, cb), Error);
}

TEST_P(CpuOps, Linear) {
  Tensor x = randn({2, 3, 13}, 20), w = randn({5, 13}, 21), b = randn({5}, 22);
  for (bool with_bias : {true, false}) {
    Tensor y = be->linear(x, w, with_bias ? b : Tensor());
    ASSERT_EQ(y.shape(), (Shape{2, 3, 5}));
    std::vector<double> want;
    for (int64_t n = 0; n < 6; ++n)
      for (int64_t o = 0; o < 5; ++o) {
        double acc = with_bias ? b.f32()[o] : 0.0;
        for (int64_t i = 0; i < 13; ++i) acc += double(x.f32()[n * 13 + i]) * w.f32()[o * 13 + i];
        want.push_back(acc);
      }
    expect_close(y, want, 2e-5, 1e-5, "linear");
  }
  EXPECT_THROW(be->linear(randn({2, 12}, 1), w, b), Error);
}

TEST_P(CpuOps, Conv2dAsymmetricPadThroughBackend) {
  // The backend's mapping of Conv2dParams onto the conv kernel: the taming Downsample pads only
  // bottom/right, stride 2.
  Tensor x = randn({1, 3, 6, 6}, 23), w = randn({4, 3, 3, 3}, 24), b = randn({4}, 25);
  Conv2dParams p;
  p.stride = 2;
  p.pad_bottom = p.pad_right = 1;
  Tensor y = be->conv2d(x, w, b, p);
  ASSERT_EQ(y.shape(), (Shape{1, 4, 3, 3}));
  std::vector<double> want;
  for (int co = 0; co < 4; ++co)
    for (int oh = 0; oh < 3; ++oh)
      for (int ow = 0; ow < 3; ++ow) {
        double acc = b.f32()[co];
        for (int ci = 0; ci < 3; ++ci)
          for (int r = 0; r < 3; ++r)
            for (int c = 0; c < 3; ++c) {
              const int ih = oh * 2 + r, iw = ow * 2 + c;  // no top/left padding
              if (ih < 6 && iw < 6) acc += double(x.f32()[(ci * 6 + ih) * 6 + iw]) * w.f32()[((co * 3 + ci) * 3 + r) * 3 + c];
            }
        want.push_back(acc);
      }
  expect_close(y, want, 2e-5, 1e-5, "conv2d downsample");
}

TEST_P(CpuOps, UploadConvertsHalfTypes) {
  Tensor x = randn({3, 5}, 26);
  Tensor h = x.to(DType::BF16);
  Tensor u = be->upload(h, DType::BF16);
  ASSERT_EQ(u.dtype(), DType::F32);
  for (int64_t i = 0; i < 15; ++i) EXPECT_EQ(u.f32()[i], bf16_to_f32(h.ptr<uint16_t>()[i]));
  Tensor back = be->download(u);
  EXPECT_EQ(0, std::memcmp(back.data(), u.data(), u.nbytes()));
}

TEST_P(CpuOps, ActivationsOutliveBackendAndReusedBlocksAreRewritten) {
  // Outputs of 64 KiB and more come from the backend's block cache: a tensor must stay valid
  // after the backend is gone, and a recycled block must be fully overwritten.
  Tensor a = randn({4, 64, 32, 32}, 27), b = randn({4, 64, 32, 32}, 28);
  Tensor kept;
  {
    auto be2 = make_cpu_backend();
    for (int i = 0; i < 3; ++i) {
      Tensor s = be2->add(a, i % 2 ? b : a);  // the block of the previous iteration is reused
      for (int64_t j = 0; j < s.numel(); j += 97)
        ASSERT_EQ(s.f32()[j], a.f32()[j] + (i % 2 ? b : a).f32()[j]);
    }
    kept = be2->add(a, b);
  }
  for (int64_t j = 0; j < kept.numel(); ++j) ASSERT_EQ(kept.f32()[j], a.f32()[j] + b.f32()[j]);
}

INSTANTIATE_TEST_SUITE_P(Threads, CpuOps, ::testing::Values(1, 2));

// The rational erf of vec_math.h against double erf on a dense grid: at most 4.3e-7 absolute
// error was measured (at |x| ~ 3.62); 5e-7 is the bound. The AVX2 lanes and the scalar tail must
// agree with it, and GELU's value and derivative (Φ(x) + x φ(x)) follow within the same error
// scaled by |x|. Each array length leaves a scalar tail.
TEST(VecMath, ErfAgainstDouble) {
  std::vector<float> x;
  for (double v = -10.0; v <= 10.0; v += 1.0 / 4096) x.push_back(float(v));
  x.insert(x.end(), {0.0f, -0.0f, 1e-30f, -1e-30f, 4.0f, -4.0f, 1e30f, -1e30f});
  double worst = 0;
  for (float v : x) worst = std::max(worst, std::fabs(double(cpu::erf_scalar(v)) - std::erf(double(v))));
  EXPECT_LE(worst, 5e-7) << "scalar erf";
  EXPECT_EQ(cpu::erf_scalar(0.0f), 0.0f);
  EXPECT_EQ(cpu::erf_scalar(50.0f), 1.0f);
  EXPECT_EQ(cpu::erf_scalar(-50.0f), -1.0f);

  const int64_t n = int64_t(x.size());  // not a multiple of 8
  std::vector<float> y(x.size()), g(x.size()), ones(x.size(), 1.0f);
  cpu::gelu_values(x.data(), y.data(), n);
  cpu::gelu_grad_values(x.data(), ones.data(), g.data(), n);
  double worst_y = 0, worst_g = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[size_t(i)];
    if (std::fabs(v) > 1e6) continue;  // checked below
    const double cdf = 0.5 * (1.0 + std::erf(v / std::sqrt(2.0)));
    const double pdf = std::exp(-0.5 * v * v) / std::sqrt(2.0 * M_PI);
    const double scale = std::max(1.0, std::fabs(v));
    worst_y = std::max(worst_y, std::fabs(y[size_t(i)] - v * cdf) / scale);
    worst_g = std::max(worst_g, std::fabs(g[size_t(i)] - (cdf + v * pdf)) / scale);
  }
  EXPECT_LE(worst_y, 1e-6) << "gelu";
  EXPECT_LE(worst_g, 1e-6) << "gelu gradient";
  EXPECT_EQ(y[size_t(n - 2)], 1e30f);   // gelu(1e30) = 1e30
  EXPECT_EQ(y[size_t(n - 1)], -0.0f);   // gelu(-1e30) = -0
  EXPECT_EQ(g[size_t(n - 2)], 1.0f);
  EXPECT_EQ(g[size_t(n - 1)], 0.0f);
  // In place (y aliases x) gives the same values.
  std::vector<float> z = x;
  cpu::gelu_values(z.data(), z.data(), n);
  EXPECT_EQ(0, std::memcmp(z.data(), y.data(), y.size() * sizeof(float)));
}

// Every value is computed the same way wherever a chunk starts (the vector tail is padded, not
// scalar), so the training ops give the same bits for any thread count: one call over the array
// against calls over chunks of 13.
TEST(VecMath, ChunkingDoesNotChangeTheBits) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  const int64_t n = 1000;
  std::vector<float> x(n), dy(n);
  for (int64_t i = 0; i < n; ++i) x[size_t(i)] = nd(rng), dy[size_t(i)] = nd(rng);
  using Fn = void (*)(const float*, const float*, float*, int64_t);
  const Fn fns[] = {cpu::gelu_grad_values,
                    [](const float* a, const float*, float* o, int64_t m) { cpu::gelu_values(a, o, m); }};
  for (Fn f : fns) {
    std::vector<float> whole(n), chunked(n);
    f(x.data(), dy.data(), whole.data(), n);
    for (int64_t i = 0; i < n; i += 13) f(x.data() + i, dy.data() + i, chunked.data() + i, std::min<int64_t>(13, n - i));
    EXPECT_EQ(0, std::memcmp(whole.data(), chunked.data(), size_t(n) * sizeof(float)));
  }
}

}  // namespace
