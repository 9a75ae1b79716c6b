// Spatial single-head attention (taming AttnBlock) on the CPU:
//   S = q^T k / sqrt(C)   [N,N]    (sgemm, q and k read as [C,N])
//   P = softmax over each row of S (row max subtracted first)
//   out = v P^T           [C,N]    (sgemm)
// One [N,N] score buffer per batch item; N = H*W is 64 or 256 for the released models.
#include "kernels/cpu/attention_hw.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/threads.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/vec_math.h"

namespace hwaga::cpu {

void attention_hw_forward(const float* q, const float* k, const float* v, float* out, int64_t B, int64_t C,
                          int64_t N) {
  std::vector<float> scores(size_t(N * N));
  float* S = scores.data();
  const float scale = float(1.0 / std::sqrt(double(C)));
  for (int64_t b = 0; b < B; ++b) {
    const float* qb = q + b * C * N;
    const float* kb = k + b * C * N;
    const float* vb = v + b * C * N;
    // S[i,j] = scale * sum_c q[c,i] k[c,j]                                   [N,N]
    sgemm(true, false, N, N, C, scale, qb, N, kb, N, 0.0f, S, N);
    // row softmax                                                             [N,N]
    parallel_for(N, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        float* row = S + i * N;
        const float mx = *std::max_element(row, row + N);
        const float inv = float(1.0 / exp_shifted(row, mx, row, N));
        for (int64_t j = 0; j < N; ++j) row[j] *= inv;
      }
    });
    // out[c,i] = sum_j v[c,j] P[i,j]                                          [C,N]
    sgemm(false, true, C, N, N, 1.0f, vb, N, S, N, 0.0f, out + b * C * N, N);
  }
}

}  // namespace hwaga::cpu
