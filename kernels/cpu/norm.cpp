// GroupNorm (+ fused SiLU) and LayerNorm on the CPU.
//
// GroupNorm: NCHW keeps the channels of one group next to each other, so the (b, g) slice is one
// contiguous run of (C/G)*HW values. Each run is read twice: once for the statistics (sums of
// x - x0, shifted by the run's first value to avoid cancellation, in f32 lanes over short blocks
// and double across blocks), once to write y = (x - x0)*scale_c + shift_c (with SiLU fused).
#include "kernels/cpu/norm.h"

#include <algorithm>
#include <cmath>

#include "core/threads.h"
#include "kernels/cpu/vec_math.h"

namespace hwaga::cpu {
namespace {

// Sums of (x - shift) and (x - shift)^2 over n values, in double.
void shifted_moments(const float* x, int64_t n, float shift, double* sum, double* sumsq) {
  double s = 0, q = 0;
  constexpr int64_t kBlock = 2048;  // f32 partial sums over short blocks stay accurate
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    int64_t b1 = std::min(n, b0 + kBlock);
    int64_t i = b0;
    float fs = 0, fq = 0;
#ifdef HWAGA_VEC_AVX2
    __m256 vs = _mm256_setzero_ps(), vq = _mm256_setzero_ps(), sh = _mm256_set1_ps(shift);
    for (; i + 8 <= b1; i += 8) {
      __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), sh);
      vs = _mm256_add_ps(vs, d);
      vq = _mm256_fmadd_ps(d, d, vq);
    }
    alignas(32) float ls[8], lq[8];
    _mm256_store_ps(ls, vs);
    _mm256_store_ps(lq, vq);
    for (int l = 0; l < 8; ++l) {
      fs += ls[l];
      fq += lq[l];
    }
#endif
    for (; i < b1; ++i) {
      float d = x[i] - shift;
      fs += d;
      fq += d * d;
    }
    s += fs;
    q += fq;
  }
  *sum = s;
  *sumsq = q;
}

// y = (x - m)*a + c over n values, then SiLU when asked. m is the run's first value (exact in
// f32); folding a large mean into c instead would cancel badly when |mean| >> std.
void scale_shift(const float* x, float* y, int64_t n, float m, float a, float c, bool silu) {
  int64_t i = 0;
#ifdef HWAGA_VEC_AVX2
  __m256 vm = _mm256_set1_ps(m), va = _mm256_set1_ps(a), vc = _mm256_set1_ps(c);
  if (silu) {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(y + i, silu_avx2(_mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), va, vc)));
  } else {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(y + i, _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), va, vc));
  }
#endif
  for (; i < n; ++i) {
    float v = (x[i] - m) * a + c;
    y[i] = silu ? silu_scalar(v) : v;
  }
}

}  // namespace

void group_norm_forward(const float* x, const float* gamma, const float* beta, float* y, int64_t B,
                        int64_t C, int64_t HW, int64_t groups, float eps, bool silu) {
  const int64_t cpg = C / groups;  // channels per group
  const int64_t run = cpg * HW;    // values per (b, g)
  parallel_for(B * groups, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / groups, g = t % groups;
      const float* xs = x + (b * C + g * cpg) * HW;
      float* ys = y + (b * C + g * cpg) * HW;
      if (run == 0) continue;
      double s, q;
      const float x0 = xs[0];
      shifted_moments(xs, run, x0, &s, &q);
      const double mean_d = s / double(run);  // mean of (x - x0)
      const double var = std::max(0.0, q / double(run) - mean_d * mean_d);
      const double rstd = 1.0 / std::sqrt(var + double(eps));
      for (int64_t c = 0; c < cpg; ++c) {
        const int64_t ch = g * cpg + c;
        // (x - x0) is exact for x near x0, and mean - x0 is small, so nothing large cancels.
        const double a = rstd * gamma[ch];
        scale_shift(xs + c * HW, ys + c * HW, HW, x0, float(a), float(beta[ch] - mean_d * a), silu);
      }
    }
  });
}

void layer_norm_forward(const float* x, const float* gamma, const float* beta, float* y, int64_t N,
                        int64_t C, float eps) {
  parallel_for(N, 8, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* xr = x + n * C;
      float* yr = y + n * C;
      if (C == 0) continue;
      double s, q;
      shifted_moments(xr, C, xr[0], &s, &q);
      const double mean_d = s / double(C);
      const double var = std::max(0.0, q / double(C) - mean_d * mean_d);
      const float x0 = xr[0], md = float(mean_d);  // mean = x0 + md, kept apart (see scale_shift)
      const float rstd = float(1.0 / std::sqrt(var + double(eps)));
      for (int64_t c = 0; c < C; ++c) yr[c] = ((xr[c] - x0) - md) * rstd * gamma[c] + beta[c];
    }
  });
}

}  // namespace hwaga::cpu
