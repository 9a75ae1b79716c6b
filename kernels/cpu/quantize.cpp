// Residual / plain vector quantization on the CPU (architecture.md §1.5).
//
// Rows are split into blocks of kRows; each block runs all D depths on its own thread:
//   dist[m,k] = (||r_m||^2 + ||e_k||^2) - 2 r_m.e_k   (one sgemm with alpha -2, beta 1, as the
//   reference's addmm), argmin with ties to the lowest k, r -= e_c.
// The distance block [kRows, K] is 2 MiB for K = 16384.
#include "kernels/cpu/quantize.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/gemm.h"

namespace hwaga::cpu {

namespace {
constexpr int64_t kRows = 32;

float sum_sq(const float* x, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
  return s;
}
}  // namespace

void residual_quantize_forward(const float* z, const float* codebook, int32_t* codes, int64_t N, int64_t K,
                               int64_t E, int64_t depth) {
  HWAGA_CHECK(K > 0 && K <= INT32_MAX, "residual_quantize: codebook size ", K, " out of range");
  // ||e_k||^2                                                                  [K]
  std::vector<float> e_sq(static_cast<size_t>(K));
  parallel_for(K, 256, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) e_sq[size_t(k)] = sum_sq(codebook + k * E, E);
  });
  const int64_t blocks = (N + kRows - 1) / kRows;
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> r(size_t(kRows * E)), dist(size_t(kRows * K));
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t n0 = blk * kRows, m = std::min(N, n0 + kRows) - n0;
      std::copy(z + n0 * E, z + (n0 + m) * E, r.begin());  // r_0 = z      [m,E]
      for (int64_t d = 0; d < depth; ++d) {
        for (int64_t i = 0; i < m; ++i) {  // dist = ||r||^2 + ||e||^2        [m,K]
          const float r_sq = sum_sq(r.data() + i * E, E);
          float* row = dist.data() + i * K;
          for (int64_t k = 0; k < K; ++k) row[k] = r_sq + e_sq[size_t(k)];
        }
        // dist += -2 r e^T (nested inside parallel_for, so sgemm runs on this thread)
        sgemm(false, true, m, K, E, -2.0f, r.data(), E, codebook, E, 1.0f, dist.data(), K);
        for (int64_t i = 0; i < m; ++i) {
          const float* row = dist.data() + i * K;
          int64_t best = 0;  // strict < keeps the lowest index on ties
          for (int64_t k = 1; k < K; ++k)
            if (row[k] < row[best]) best = k;
          codes[(n0 + i) * depth + d] = int32_t(best);
          const float* e = codebook + best * E;  // r_{d+1} = r_d - e_c
          float* ri = r.data() + i * E;
          for (int64_t j = 0; j < E; ++j) ri[j] -= e[j];
        }
      }
    }
  });
}

void embed_sum_forward(const int32_t* codes, const float* codebook, float* out, int64_t N, int64_t D,
                       int64_t K, int64_t E) {
  HWAGA_CHECK(D >= 1, "embed_sum: code depth must be at least 1, got ", D);
  for (int64_t i = 0; i < N * D; ++i)
    if (codes[i] < 0 || codes[i] >= K)
      fail("embed_sum: code ", codes[i], " at position ", i / D, ", depth ", i % D,
           " is outside the codebook range [0, ", K, ")");
  parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      float* o = out + n * E;
      const float* e0 = codebook + int64_t(codes[n * D]) * E;
      std::copy(e0, e0 + E, o);
      for (int64_t d = 1; d < D; ++d) {  // plain sum over depth, in depth order
        const float* e = codebook + int64_t(codes[n * D + d]) * E;
        for (int64_t j = 0; j < E; ++j) o[j] += e[j];
      }
    }
  });
}

}  // namespace hwaga::cpu
