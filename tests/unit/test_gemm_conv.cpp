// kernels/cpu sgemm and conv2d against naive double-precision loops.
//
// Tolerance: an f32 dot product of length K computed in any order has error at most
// gamma_K * sum|a_k b_k| with gamma_K ~ K * eps (Higham, Accuracy and Stability, 3.1), eps the
// f32 unit roundoff 2^-24; plus one rounding each for alpha*, beta*C and the final add. We allow
// 2 * K * eps * sum|a b| (+ the rounding of the beta term), so a real bug (a wrong, missing or
// doubled term, of size ~|a b| >> K eps |a b|) fails while every valid summation order passes.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/gemm.h"

using namespace hwaga;
using namespace hwaga::cpu;

namespace {

constexpr double kEps = 5.9604644775390625e-08;  // 2^-24
const float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> random_vec(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Restores the thread count after a test changes it.
struct ThreadsGuard {
  int saved = num_threads();
  ~ThreadsGuard() { set_num_threads(saved); }
};

using GemmFn = void (*)(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                        float, float*, int64_t);

void check_gemm(GemmFn fn, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, float beta, int64_t pad) {
  const int64_t a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
  const int64_t lda = a_cols + pad, ldb = b_cols + pad, ldc = N + pad;
  auto A = random_vec(size_t(a_rows * lda), 11 + uint32_t(M)), B = random_vec(size_t(b_rows * ldb), 23 + uint32_t(N));
  auto C0 = random_vec(size_t(M * ldc), 37 + uint32_t(K));
  if (beta == 0.0f)  // BLAS convention: C is not read, so NaN there must not leak out
    for (auto& c : C0) c = kNaN;
  std::vector<float> C = C0;
  fn(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < ldc; ++n) {
      const float got = C[size_t(m * ldc + n)];
      if (n >= N) {  // padding columns untouched
        ASSERT_TRUE(std::isnan(C0[size_t(m * ldc + n)]) ? std::isnan(got) : got == C0[size_t(m * ldc + n)])
            << "sgemm wrote outside C at m=" << m << " n=" << n;
        continue;
      }
      double acc = 0, abs_acc = 0;
      for (int64_t k = 0; k < K; ++k) {
        double a = ta ? A[size_t(k * lda + m)] : A[size_t(m * lda + k)];
        double b = tb ? B[size_t(n * ldb + k)] : B[size_t(k * ldb + n)];
        acc += a * b;
        abs_acc += std::fabs(a * b);
      }
      double c0 = beta == 0.0f ? 0.0 : double(beta) * C0[size_t(m * ldc + n)];
      double want = double(alpha) * acc + c0;
      double tol = (2.0 * double(K) + 4.0) * kEps * (std::fabs(alpha) * abs_acc + std::fabs(c0)) + 1e-30;
      ASSERT_NEAR(got, want, tol) << "ta=" << ta << " tb=" << tb << " M=" << M << " N=" << N << " K=" << K
                                  << " alpha=" << alpha << " beta=" << beta << " at m=" << m << " n=" << n;
    }
}

void gemm_suite(GemmFn fn) {
  struct S { int64_t M, N, K; };
  const S sizes[] = {{1, 1, 1}, {7, 1, 33}, {1, 257, 7}, {33, 7, 257}, {65, 130, 33}, {257, 33, 65}, {100, 300, 129}};
  struct AB { float alpha, beta; };
  const AB abs[] = {{1.0f, 0.0f}, {0.5f, -1.5f}, {-2.0f, 1.0f}};
  for (int t = 0; t < 4; ++t)
    for (const S& s : sizes)
      for (const AB& ab : abs)
        for (int64_t pad : {0, 5}) check_gemm(fn, t & 1, t & 2, s.M, s.N, s.K, ab.alpha, ab.beta, pad);
}

// Naive double reference convolution.
std::vector<double> conv_ref(const Conv2dShape& s, const std::vector<float>& x, const std::vector<float>& w,
                             const float* bias, std::vector<double>* abs_out) {
  const int64_t Ho = s.Ho(), Wo = s.Wo();
  std::vector<double> y(size_t(s.B * s.Cout * Ho * Wo)), ya(y.size());
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t co = 0; co < s.Cout; ++co)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          double acc = bias ? bias[co] : 0.0, aa = bias ? std::fabs(bias[co]) : 0.0;
          for (int64_t ci = 0; ci < s.Cin; ++ci)
            for (int64_t r = 0; r < s.kh; ++r) {
              int64_t ih = oh * s.stride - s.pad_top + r;
              if (ih < 0 || ih >= s.H) continue;
              for (int64_t c = 0; c < s.kw; ++c) {
                int64_t iw = ow * s.stride - s.pad_left + c;
                if (iw < 0 || iw >= s.W) continue;
                double p = double(x[size_t(((b * s.Cin + ci) * s.H + ih) * s.W + iw)]) *
                           w[size_t(((co * s.Cin + ci) * s.kh + r) * s.kw + c)];
                acc += p;
                aa += std::fabs(p);
              }
            }
          size_t i = size_t(((b * s.Cout + co) * Ho + oh) * Wo + ow);
          y[i] = acc;
          ya[i] = aa;
        }
  *abs_out = ya;
  return y;
}

enum class Conv { forward, packed, portable };

void check_conv(const Conv2dShape& s, bool with_bias, Conv which) {
  auto x = random_vec(size_t(s.B * s.Cin * s.H * s.W), 5), w = random_vec(size_t(s.Cout * s.Cin * s.kh * s.kw), 6),
       bias = random_vec(size_t(s.Cout), 7);
  const float* bp = with_bias ? bias.data() : nullptr;
  std::vector<float> y(size_t(s.B * s.Cout * s.Ho() * s.Wo()), kNaN);  // every element must be written
  if (which == Conv::forward) conv2d_forward(s, x.data(), w.data(), bp, y.data());
  if (which == Conv::portable) conv2d_forward_portable(s, x.data(), w.data(), bp, y.data());
  if (which == Conv::packed) {
    PackedConv2d p(s, w.data(), bp);
    p.forward(s, x.data(), y.data());
  }
  std::vector<double> ya;
  auto want = conv_ref(s, x, w, bp, &ya);
  const double K = double(s.Cin * s.kh * s.kw) + 1;
  for (size_t i = 0; i < y.size(); ++i)
    ASSERT_NEAR(y[i], want[i], (2.0 * K + 4.0) * kEps * ya[i] + 1e-30)
        << "conv B=" << s.B << " Cin=" << s.Cin << " H=" << s.H << " W=" << s.W << " Cout=" << s.Cout << " k=" << s.kh
        << "x" << s.kw << " stride=" << s.stride << " bias=" << with_bias << " path=" << int(which) << " at " << i
        << " (" << conv2d_kernel_name(s) << ")";
}

const Conv2dShape kConvs[] = {
    {2, 5, 9, 11, 7, 1, 1, 1, 0, 0, 0, 0},      // 1x1 pointwise, batch 2, odd sizes (sgemm path)
    {2, 24, 9, 11, 40, 1, 1, 1, 0, 0, 0, 0},    // 1x1 with enough channels for oneDNN's 1x1 kernel
    {1, 16, 13, 17, 24, 3, 3, 1, 1, 1, 1, 1},   // 3x3 pad 1 (oneDNN direct path)
    {3, 20, 7, 5, 9, 3, 3, 1, 1, 1, 1, 1},      // batch 3, Cin/Cout not multiples of 16
    {1, 3, 19, 23, 16, 3, 3, 1, 1, 1, 1, 1},    // conv_in: 3 channels (im2col path)
    {1, 32, 12, 14, 3, 3, 3, 1, 1, 1, 1, 1},    // conv_out: 3 output channels
    {2, 16, 15, 16, 16, 3, 3, 2, 0, 0, 1, 1},   // downsample: stride 2, pad (top 0, left 0, bottom 1, right 1)
    {1, 17, 16, 15, 8, 3, 3, 2, 0, 0, 1, 1},    // downsample with odd H/W/Cin
    {1, 32, 40, 256, 32, 3, 3, 1, 1, 1, 1, 1},  // several row slabs per thread (top/middle/bottom/ragged)
    {1, 8, 9, 9, 8, 1, 1, 2, 1, 0, 0, 1},       // 1x1 with stride and pad (not the pointwise path)
    {1, 12, 6, 6, 10, 5, 3, 1, 2, 1, 2, 1},     // non-square kernel
};

void conv_suite(Conv which) {
  for (const Conv2dShape& s : kConvs)
    for (bool bias : {true, false}) check_conv(s, bias, which);
}

}  // namespace

// Winograd F(4x4,3x3) computes each output from a transformed 6x6 input tile and transformed
// 6x6 weights; the transforms scale by constants up to ~5 and add up to 36 terms, so its f32
// error is a bounded multiple of a direct sum's. Measured worst |err| / (K eps sum|x w|) on the
// shapes below: Winograd 0.008-0.020, direct 0.004-0.007 (random data: errors are far below the
// worst-case bound). We allow 0.25 for Winograd: 10x the measured worst, and still ~1e-4 of
// the error one wrong, missing or doubled term would make (~|x w| ~ sum|x w| / K).
constexpr double kWinogradRatio = 0.25;

// Worst |y - y_ref| / (K eps sum|x w|) of a PackedConv2d with `algo`; *name = its kernel.
double conv_error_ratio(const Conv2dShape& s, ConvAlgo algo, std::string* name) {
  auto x = random_vec(size_t(s.B * s.Cin * s.H * s.W), 15), w = random_vec(size_t(s.Cout * s.Cin * s.kh * s.kw), 16),
       bias = random_vec(size_t(s.Cout), 17);
  std::vector<float> y(size_t(s.B * s.Cout * s.Ho() * s.Wo()), kNaN);  // every element must be written
  PackedConv2d p(s, w.data(), bias.data(), algo);
  p.forward(s, x.data(), y.data());
  *name = p.kernel_name(s);
  std::vector<double> ya;
  auto want = conv_ref(s, x, w, bias.data(), &ya);
  const double K = double(s.Cin * s.kh * s.kw) + 1;
  double worst = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    if (std::isnan(y[i])) return 1e30;
    worst = std::max(worst, std::fabs(y[i] - want[i]) / (K * kEps * ya[i] + 1e-30));
  }
  return worst;
}

bool is_winograd(const std::string& kernel) { return kernel.find("wino") != std::string::npos; }

TEST(Sgemm, OneThread) {
  ThreadsGuard g;
  set_num_threads(1);
  gemm_suite(sgemm);
}

TEST(Sgemm, TwoThreads) {
  ThreadsGuard g;
  set_num_threads(2);
  gemm_suite(sgemm);
}

TEST(Sgemm, ThreeThreadsBigEnoughToSplit) {
  ThreadsGuard g;
  set_num_threads(3);  // more threads than slabs of 16 columns in some shapes, uneven splits
  for (int t = 0; t < 4; ++t) {
    check_gemm(sgemm, t & 1, t & 2, 191, 70, 77, 1.0f, 0.0f, 3);
    check_gemm(sgemm, t & 1, t & 2, 40, 333, 65, 0.5f, 2.0f, 0);
  }
}

TEST(Sgemm, PortableKernel) { gemm_suite(sgemm_portable); }

TEST(Sgemm, KZeroScalesC) {
  std::vector<float> C = {1, 2, 3, 4};
  sgemm(false, false, 2, 2, 0, 1.0f, nullptr, 1, nullptr, 2, 0.5f, C.data(), 2);
  EXPECT_EQ(C, (std::vector<float>{0.5f, 1, 1.5f, 2}));
}

TEST(Sgemm, KernelName) { EXPECT_STRNE(sgemm_kernel_name(), ""); }

TEST(Sgemm, BadArgumentsThrow) {
  std::vector<float> a(64), b(64), c(64);
  EXPECT_THROW(sgemm(false, false, 4, 4, 4, 1, a.data(), 3, b.data(), 4, 0, c.data(), 4), Error);  // lda < K
  EXPECT_THROW(sgemm(true, false, 4, 2, 4, 1, a.data(), 3, b.data(), 2, 0, c.data(), 2), Error);   // lda < M
  EXPECT_THROW(sgemm(false, true, 4, 4, 4, 1, a.data(), 4, b.data(), 2, 0, c.data(), 4), Error);   // ldb < K
  EXPECT_THROW(sgemm(false, false, 4, 4, 4, 1, a.data(), 4, b.data(), 4, 0, c.data(), 3), Error);  // ldc < N
  EXPECT_THROW(sgemm(false, false, -1, 4, 4, 1, a.data(), 4, b.data(), 4, 0, c.data(), 4), Error);
}

TEST(Conv2d, OneThread) {
  ThreadsGuard g;
  set_num_threads(1);
  conv_suite(Conv::forward);
}

TEST(Conv2d, TwoThreads) {
  ThreadsGuard g;
  set_num_threads(2);
  conv_suite(Conv::forward);
}

TEST(Conv2d, ThreeThreads) {
  ThreadsGuard g;
  set_num_threads(3);
  conv_suite(Conv::forward);
}

TEST(Conv2d, Packed) {
  ThreadsGuard g;
  set_num_threads(2);
  conv_suite(Conv::packed);
}

TEST(Conv2d, Portable) {
  ThreadsGuard g;
  set_num_threads(2);
  conv_suite(Conv::portable);
}

TEST(Conv2d, PackedReusedAcrossSizesAndThreads) {
  ThreadsGuard g;
  Conv2dShape s{1, 16, 10, 12, 16, 3, 3, 1, 1, 1, 1, 1};
  auto w = random_vec(size_t(16 * 16 * 9), 8), bias = random_vec(16, 9);
  PackedConv2d p(s, w.data(), bias.data());
  for (int threads : {2, 1}) {
    set_num_threads(threads);
    for (int64_t hw : {10, 7, 21}) {
      Conv2dShape t = s;
      t.B = hw == 7 ? 2 : 1;
      t.H = hw;
      t.W = hw + 3;
      auto x = random_vec(size_t(t.B * t.Cin * t.H * t.W), uint32_t(hw));
      std::vector<float> y1(size_t(t.B * t.Cout * t.Ho() * t.Wo())), y2(y1.size());
      p.forward(t, x.data(), y1.data());
      conv2d_forward_portable(t, x.data(), w.data(), bias.data(), y2.data());
      for (size_t i = 0; i < y1.size(); ++i) ASSERT_NEAR(y1[i], y2[i], 1e-4) << "H=" << hw << " at " << i;
    }
  }
}

TEST(Conv2d, BadShapesThrow) {
  std::vector<float> buf(4096);
  Conv2dShape s{1, 4, 8, 8, 4, 3, 3, 1, 1, 1, 1, 1};
  Conv2dShape bad = s;
  bad.stride = 0;
  EXPECT_THROW(conv2d_forward(bad, buf.data(), buf.data(), nullptr, buf.data()), Error);
  bad = s;
  bad.pad_left = -1;
  EXPECT_THROW(conv2d_forward(bad, buf.data(), buf.data(), nullptr, buf.data()), Error);
  bad = s;
  bad.H = 1;
  bad.pad_top = bad.pad_bottom = 0;  // 3x3 kernel on a 1-row input
  EXPECT_THROW(conv2d_forward(bad, buf.data(), buf.data(), nullptr, buf.data()), Error);
  PackedConv2d p(s, buf.data(), nullptr);
  Conv2dShape other = s;
  other.Cout = 5;
  EXPECT_THROW(p.forward(other, buf.data(), buf.data()), Error);
}

TEST(Conv2d, WinogradAgainstDoubleLoop) {
  ThreadsGuard g;
  const Conv2dShape shapes[] = {
      {1, 64, 20, 24, 64, 3, 3, 1, 1, 1, 1, 1},
      {2, 80, 13, 17, 96, 3, 3, 1, 1, 1, 1, 1},    // batch 2, odd sizes: ragged tiles and slabs
      {1, 128, 44, 36, 128, 3, 3, 1, 1, 1, 1, 1},  // several slabs per thread
  };
  for (int threads : {2, 3})
    for (const Conv2dShape& s : shapes) {
      set_num_threads(threads);
      std::string name;
      const double r = conv_error_ratio(s, ConvAlgo::winograd, &name);
      EXPECT_LE(r, kWinogradRatio) << "Cin=" << s.Cin << " H=" << s.H << " threads=" << threads << " (" << name << ")";
      // Without a Winograd kernel on this CPU (oneDNN has it for avx512 only) the direct path runs.
      if (!is_winograd(name)) std::printf("note: no Winograd kernel here, ran %s\n", name.c_str());
    }
}

TEST(Conv2d, WinogradRequestFallsBackWhereUnsupported) {
  // Shapes oneDNN's Winograd does not take (channels not multiples of 16, strides, 1x1, 5x3,
  // 3 channels): ConvAlgo::winograd must still give the exact convolution.
  ThreadsGuard g;
  set_num_threads(2);
  for (const Conv2dShape& s : kConvs) {
    std::string name;
    const double K = double(s.Cin * s.kh * s.kw) + 1;  // the direct bound of check_conv
    EXPECT_LE(conv_error_ratio(s, ConvAlgo::winograd, &name), (2.0 * K + 4.0) / K)
        << "Cin=" << s.Cin << " Cout=" << s.Cout << " k=" << s.kh << "x" << s.kw << " stride=" << s.stride << " ("
        << name << ")";
  }
}

TEST(Conv2d, AutomaticTakesWinogradOnlyWhereTheTableSays) {
  ThreadsGuard g;
  set_num_threads(2);
  struct Case { Conv2dShape s; bool winograd; };
  const Case cases[] = {
      {{1, 128, 256, 256, 128, 3, 3, 1, 1, 1, 1, 1}, true},   // decoder 256x256 level
      {{1, 256, 64, 64, 256, 3, 3, 1, 1, 1, 1, 1}, true},     // 64x64: the smallest taken
      {{1, 256, 32, 32, 256, 3, 3, 1, 1, 1, 1, 1}, false},    // transform costs more than it saves
      {{1, 512, 16, 16, 512, 3, 3, 1, 1, 1, 1, 1}, false},
      {{1, 128, 128, 128, 128, 3, 3, 2, 0, 0, 1, 1}, false},  // stride 2
      {{1, 128, 64, 64, 3, 3, 3, 1, 1, 1, 1, 1}, false},      // conv_out, 3 channels
  };
  // Is there a Winograd kernel at all here?
  const Conv2dShape probe{1, 64, 16, 16, 64, 3, 3, 1, 1, 1, 1, 1};
  std::vector<float> w0(size_t(64 * 64 * 9), 0.0f);
  const bool have = is_winograd(PackedConv2d(probe, w0.data(), nullptr, ConvAlgo::winograd).kernel_name(probe));
  for (const Case& c : cases) {
    std::vector<float> w(size_t(c.s.Cout * c.s.Cin * 9), 0.0f);
    const std::string automatic = PackedConv2d(c.s, w.data(), nullptr, ConvAlgo::automatic).kernel_name(c.s);
    const std::string direct = PackedConv2d(c.s, w.data(), nullptr, ConvAlgo::direct).kernel_name(c.s);
    EXPECT_EQ(is_winograd(automatic), c.winograd && have) << "Cin=" << c.s.Cin << " H=" << c.s.H << ": " << automatic;
    EXPECT_FALSE(is_winograd(direct)) << direct;
  }
}

TEST(Conv2d, CpuBackendRepacksWeightsChangedInPlace) {
  // The CPU backend keeps each layer packed (keyed by the weight storage); a weight tensor
  // overwritten in place must not be served from the stale packing.
  ThreadsGuard g;
  set_num_threads(2);
  auto be = make_cpu_backend();
  const Conv2dShape s{1, 16, 9, 10, 16, 3, 3, 1, 1, 1, 1, 1};
  Tensor x = Tensor::empty({s.B, s.Cin, s.H, s.W}), w = Tensor::empty({s.Cout, s.Cin, 3, 3}),
         b = Tensor::empty({s.Cout});
  for (uint32_t round = 0; round < 3; ++round) {
    auto xv = random_vec(size_t(x.numel()), 40 + round), wv = random_vec(size_t(w.numel()), 50 + round),
         bv = random_vec(size_t(b.numel()), 60 + round);
    std::copy(xv.begin(), xv.end(), x.f32());
    std::copy(wv.begin(), wv.end(), w.f32());
    std::copy(bv.begin(), bv.end(), b.f32());
    for (bool fast : {false, true}) {
      Conv2dParams p = Conv2dParams::same(1);
      p.allow_winograd = fast;
      Tensor y = be->conv2d(x, w, b, p);
      std::vector<double> ya;
      auto want = conv_ref(s, xv, wv, bv.data(), &ya);
      const double K = double(s.Cin * 9) + 1;
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_NEAR(y.f32()[i], want[i], (2.0 * K + 4.0) * kEps * ya[i] + 1e-30)
            << "round " << round << " allow_winograd=" << fast << " at " << i;
    }
  }
}
