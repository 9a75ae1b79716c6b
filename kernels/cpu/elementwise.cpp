// Element-wise and layout kernels on the CPU. Plain loops the compiler vectorises; SiLU uses
// the AVX2 exp of vec_math.h. Work is split into chunks of at least 16K values per thread.
#include "kernels/cpu/elementwise.h"

#include <algorithm>

#include "core/threads.h"
#include "kernels/cpu/vec_math.h"

namespace hwaga::cpu {

constexpr int64_t kGrain = 1 << 14;

void add_forward(const float* a, const float* b, float* y, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = a[i] + b[i];
  });
}

void silu_forward(const float* x, float* y, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
#ifdef HWAGA_VEC_AVX2
    for (; i + 8 <= i1; i += 8) _mm256_storeu_ps(y + i, silu_avx2(_mm256_loadu_ps(x + i)));
#endif
    for (; i < i1; ++i) y[i] = silu_scalar(x[i]);
  });
}

void upsample_nearest2x_forward(const float* x, float* y, int64_t P, int64_t H, int64_t W) {
  // One task = one input row: writes output rows 2h and 2h+1.
  parallel_for(P * H, std::max<int64_t>(1, kGrain / (4 * W + 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* src = x + r * W;
      float* d0 = y + r * 4 * W;  // row (p, 2h) of the output: (p*2H + 2h) * 2W = r * 4W
      float* d1 = d0 + 2 * W;
      for (int64_t w = 0; w < W; ++w) d0[2 * w] = d0[2 * w + 1] = src[w];
      std::copy(d0, d0 + 2 * W, d1);
    }
  });
}

namespace {
// y [cols, rows] = x [rows, cols]^T for one batch, in 32x32 tiles.
void transpose(const float* x, float* y, int64_t rows, int64_t cols) {
  constexpr int64_t T = 32;
  const int64_t tiles_r = (rows + T - 1) / T;
  parallel_for(tiles_r, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t tr = t0; tr < t1; ++tr) {
      const int64_t r0 = tr * T, r1 = std::min(rows, r0 + T);
      for (int64_t c0 = 0; c0 < cols; c0 += T) {
        const int64_t c1 = std::min(cols, c0 + T);
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) y[c * rows + r] = x[r * cols + c];
      }
    }
  });
}
}  // namespace

void nchw_to_nhwc_forward(const float* x, float* y, int64_t B, int64_t C, int64_t S) {
  for (int64_t b = 0; b < B; ++b) transpose(x + b * C * S, y + b * C * S, C, S);
}

void nhwc_to_nchw_forward(const float* x, float* y, int64_t B, int64_t S, int64_t C) {
  for (int64_t b = 0; b < B; ++b) transpose(x + b * C * S, y + b * C * S, S, C);
}

}  // namespace hwaga::cpu
