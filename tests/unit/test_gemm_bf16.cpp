// cpu::gemm_bf16 (kernels/cpu/gemm_bf16.cpp) against a double-precision product of the
// bf16-rounded inputs, for every transpose combination, alpha and beta, odd sizes, and sizes that
// split over the thread pool; the path without bf16 hardware too; and the rounding itself.
//
// Tolerance: the products of two bf16 values are exact in f32; only the f32 accumulation
// rounds, by at most about K * 2^-24 * sum_k |a_k b_k| per element (a generous bound; blocked
// accumulation does better). To show that the inputs really were rounded, the same check on the
// unrounded inputs must fail somewhere: bf16 keeps 8 bits, so rounding moves the products by up
// to 2^-8 of their size, far outside that bound.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/gemm.h"

using namespace hwaga;

namespace {

std::vector<float> rnd(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

struct Case {
  bool ta, tb;
  int64_t M, N, K;
  float alpha, beta;
};

// Returns the largest |C - ref| / bound over C, with ref from (rounded ? bf16-rounded : raw) inputs.
double worst_ratio(const Case& c, const std::vector<float>& A, int64_t lda, const std::vector<float>& B, int64_t ldb,
                   const std::vector<float>& C0, const std::vector<float>& C, int64_t ldc, bool rounded) {
  double worst = 0;
  for (int64_t i = 0; i < c.M; ++i)
    for (int64_t j = 0; j < c.N; ++j) {
      double s = 0, mag = 0;
      for (int64_t k = 0; k < c.K; ++k) {
        float a = c.ta ? A[size_t(k * lda + i)] : A[size_t(i * lda + k)];
        float b = c.tb ? B[size_t(j * ldb + k)] : B[size_t(k * ldb + j)];
        if (rounded) a = cpu::round_to_bf16(a), b = cpu::round_to_bf16(b);
        s += double(a) * b;
        mag += std::fabs(double(a) * b);
      }
      const double ref = c.alpha * s + (c.beta != 0 ? c.beta * double(C0[size_t(i * ldc + j)]) : 0.0);
      const double bound = 2.0 * double(c.K) * std::ldexp(1.0, -24) * std::fabs(c.alpha) * mag +
                           2e-7 * std::fabs(ref) + 1e-30;
      worst = std::max(worst, std::fabs(double(C[size_t(i * ldc + j)]) - ref) / bound);
    }
  return worst;
}

using GemmFn = void (*)(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                       float, float*, int64_t);

void run(const Case& c, GemmFn gemm = cpu::gemm_bf16) {
  const int64_t lda = (c.ta ? c.M : c.K) + 3, ldb = (c.tb ? c.K : c.N) + 1, ldc = c.N + 2;
  const std::vector<float> A = rnd(size_t((c.ta ? c.K : c.M) * lda), 1), B = rnd(size_t((c.tb ? c.N : c.K) * ldb), 2);
  const std::vector<float> C0 = rnd(size_t(c.M * ldc), 3);
  std::vector<float> C = C0;
  gemm(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb, c.beta, C.data(), ldc);
  const double r = worst_ratio(c, A, lda, B, ldb, C0, C, ldc, true);
  EXPECT_LE(r, 1.0) << "ta " << c.ta << " tb " << c.tb << " " << c.M << "x" << c.N << "x" << c.K << " alpha "
                    << c.alpha << " beta " << c.beta;
  EXPECT_GT(worst_ratio(c, A, lda, B, ldb, C0, C, ldc, false), 1.0) << "the inputs were not rounded to bf16";
  // padding columns of C are untouched
  for (int64_t i = 0; i < c.M; ++i)
    for (int64_t j = c.N; j < ldc; ++j) EXPECT_EQ(C[size_t(i * ldc + j)], C0[size_t(i * ldc + j)]);
}

}  // namespace

TEST(GemmBf16, Rounding) {
  EXPECT_EQ(cpu::round_to_bf16(1.0f), 1.0f);
  EXPECT_EQ(cpu::round_to_bf16(1.0f + std::ldexp(1.0f, -8)), 1.0f);  // a tie: to even
  EXPECT_EQ(cpu::round_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 1.0f + std::ldexp(1.0f, -6));  // a tie: to even
  EXPECT_EQ(cpu::round_to_bf16(1.0f + std::ldexp(1.0f, -7)), 1.0f + std::ldexp(1.0f, -7));
  EXPECT_TRUE(std::isnan(cpu::round_to_bf16(std::nanf(""))));
  EXPECT_TRUE(std::isinf(cpu::round_to_bf16(INFINITY)));
  std::printf("  gemm_bf16: %s\n", cpu::gemm_bf16_kernel_name());
}

TEST(GemmBf16, AllLayoutsSmallAndOdd) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      run({ta, tb, 7, 5, 9, 1.0f, 0.0f});
      run({ta, tb, 13, 17, 33, 0.5f, 1.0f});
      run({ta, tb, 3, 29, 64, 1.0f, 0.25f});
      run({ta, tb, 13, 17, 33, 0.5f, 1.0f}, cpu::gemm_bf16_fallback);  // the path without bf16 hardware
    }
}

TEST(GemmBf16, SlabsOverThePool) {
  // big enough to be split over the threads: along M (M >= N) and along N
  set_num_threads(2);
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      run({ta, tb, 96, 40, 80, 1.0f, 0.0f});
      run({ta, tb, 40, 130, 72, 1.0f, 1.0f});
    }
  set_num_threads(0);
}

TEST(GemmBf16, BadArgumentsThrow) {
  std::vector<float> a(16), b(16), c(16);
  EXPECT_THROW(cpu::gemm_bf16(false, false, 4, 4, 4, 1.0f, a.data(), 3, b.data(), 4, 0.0f, c.data(), 4), Error);
  EXPECT_THROW(cpu::gemm_bf16(false, false, -1, 4, 4, 1.0f, a.data(), 4, b.data(), 4, 0.0f, c.data(), 4), Error);
}
