// Single-precision matrix multiply on the CPU, row-major:
//   C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C
// op(X) = X or X^T (trans_a / trans_b). lda/ldb/ldc are row strides in elements.
// Multi-threaded over hwaga's thread pool (core/threads.h).
#pragma once
#include <cstdint>

namespace hwaga::cpu {

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Which implementation runs (printed by benchmarks), e.g. "oneDNN 2.6 (avx512_core)".
const char* sgemm_kernel_name();

}  // namespace hwaga::cpu
