// Placeholder reference sgemm (naive, threaded over rows); the tuned path replaces it.
#include "kernels/cpu/gemm.h"

#include "core/threads.h"

namespace hwaga::cpu {

void sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  parallel_for(M, 4, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) {
          float a = ta ? A[k * lda + m] : A[m * lda + k];
          float b = tb ? B[n * ldb + k] : B[k * ldb + n];
          acc += double(a) * b;
        }
        float prev = beta == 0.0f ? 0.0f : beta * C[m * ldc + n];
        C[m * ldc + n] = alpha * float(acc) + prev;
      }
  });
}

const char* sgemm_kernel_name() { return "naive"; }

}  // namespace hwaga::cpu
