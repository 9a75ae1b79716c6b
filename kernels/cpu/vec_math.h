// Vectorised exp / sigmoid / erf / GELU helpers for the CPU kernels (AVX2+FMA when the build
// targets it, scalar otherwise). exp is a Cody-Waite range reduction to |r| <= ln2/2 and a
// degree-7 Taylor polynomial: relative error below 2e-7 over the clamped range [-87.3, 88.3].
// erf is the rational minimax form x P(x^2) / Q(x^2) on x clamped to [-4, 4] (the float erf of
// Eigen and XLA; erf(4) rounds to 1 in float): at most 4.3e-7 absolute and relative error
// against double erf (tests/unit/test_cpu_ops.cpp), where libm's erff (1 ulp) cost a call per
// value and kept the GELU loops scalar: 12% of a stage-2 training step on one AVX2 core.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HWAGA_VEC_AVX2 1
#endif

namespace hwaga::cpu {

#ifdef HWAGA_VEC_AVX2
inline __m256 exp_avx2(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln2 high part (exact in f32)
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);      // ln2 low part
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
// x * sigmoid(x) = x / (1 + exp(-x))
inline __m256 silu_avx2(__m256 x) {
  __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x));
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}
#endif

inline float silu_scalar(float x) { return x / (1.0f + std::exp(-x)); }

// ---- erf and the exact (erf) GELU ----
inline constexpr float kErfP[7] = {-2.72614225801306e-10f, 2.77068142495902e-08f, -2.10102402082508e-06f,
                                   -5.69250639462346e-05f, -7.34990630326855e-04f, -2.95459980854025e-03f,
                                   -1.60960333262415e-02f};  // x^13 .. x^1 (odd numerator)
inline constexpr float kErfQ[5] = {-1.45660718464996e-05f, -2.13374055278905e-04f, -1.68282697438203e-03f,
                                   -7.37332916720468e-03f, -1.42647390514189e-02f};  // x^8 .. x^0
inline constexpr float kInvSqrt2 = 0.70710678118654752f;
inline constexpr float kInvSqrt2Pi = 0.39894228040143268f;

inline float erf_scalar(float x) {
  x = std::fmin(4.0f, std::fmax(-4.0f, x));
  const float x2 = x * x;
  float p = kErfP[0], q = kErfQ[0];
  for (int i = 1; i < 7; ++i) p = std::fma(p, x2, kErfP[i]);
  for (int i = 1; i < 5; ++i) q = std::fma(q, x2, kErfQ[i]);
  return x * p / q;
}

#ifdef HWAGA_VEC_AVX2
inline __m256 erf_avx2(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-4.0f)), _mm256_set1_ps(4.0f));
  const __m256 x2 = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(kErfP[0]), q = _mm256_set1_ps(kErfQ[0]);
  for (int i = 1; i < 7; ++i) p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kErfP[i]));
  for (int i = 1; i < 5; ++i) q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(kErfQ[i]));
  return _mm256_div_ps(_mm256_mul_ps(x, p), q);
}
#endif

// y[i] = x Φ(x) = 0.5 x (1 + erf(x / sqrt 2)) for i < n (y may alias x).
inline void gelu_values(const float* x, float* y, int64_t n) {
  int64_t i = 0;
#ifdef HWAGA_VEC_AVX2
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f), s = _mm256_set1_ps(kInvSqrt2);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 e = erf_avx2(_mm256_mul_ps(v, s));
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, e)));
  }
#endif
  for (; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + erf_scalar(x[i] * kInvSqrt2));
}

// dx[i] = dy[i] (Φ(x) + x φ(x)) for i < n (dx may alias dy). With AVX2 the last n % 8 values go
// through the same vector code (padded), so every value is computed the same way wherever a
// caller's chunks start: results do not depend on the thread count.
#ifdef HWAGA_VEC_AVX2
inline __m256 gelu_grad_avx2(__m256 v, __m256 dy) {
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  const __m256 cdf = _mm256_mul_ps(half, _mm256_add_ps(one, erf_avx2(_mm256_mul_ps(v, _mm256_set1_ps(kInvSqrt2)))));
  const __m256 pdf = _mm256_mul_ps(_mm256_set1_ps(kInvSqrt2Pi),
                                   exp_avx2(_mm256_mul_ps(_mm256_set1_ps(-0.5f), _mm256_mul_ps(v, v))));
  return _mm256_mul_ps(dy, _mm256_fmadd_ps(v, pdf, cdf));
}
#endif

inline void gelu_grad_values(const float* x, const float* dy, float* dx, int64_t n) {
#ifdef HWAGA_VEC_AVX2
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dx + i, gelu_grad_avx2(_mm256_loadu_ps(x + i), _mm256_loadu_ps(dy + i)));
  if (i < n) {
    alignas(32) float xv[8] = {}, gv[8] = {};
    std::copy(x + i, x + n, xv);
    std::copy(dy + i, dy + n, gv);
    _mm256_store_ps(gv, gelu_grad_avx2(_mm256_load_ps(xv), _mm256_load_ps(gv)));
    std::copy(gv, gv + (n - i), dx + i);
  }
#else
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float cdf = 0.5f * (1.0f + erf_scalar(v * kInvSqrt2));
    const float pdf = kInvSqrt2Pi * std::exp(-0.5f * v * v);
    dx[i] = dy[i] * (cdf + v * pdf);
  }
#endif
}

// y[i] = exp(x[i] - shift) for i < n; returns the sum of the y[i] (accumulated in double).
inline double exp_shifted(const float* x, float shift, float* y, int64_t n) {
  int64_t i = 0;
  double total = 0;
#ifdef HWAGA_VEC_AVX2
  __m256 s = _mm256_set1_ps(shift), acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    _mm256_storeu_ps(y + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  for (float l : lanes) total += l;
#endif
  for (; i < n; ++i) {
    y[i] = std::exp(x[i] - shift);
    total += y[i];
  }
  return total;
}

}  // namespace hwaga::cpu
