// sgemm: argument checks, the split of C over hwaga's pool, and the per-block backend
// (oneDNN's JIT sgemm when available, else sgemm_portable from gemm_portable.cpp).
//
// Why oneDNN (measured on 2 cores of a Xeon with AVX-512/AMX, GFLOP/s, 2 threads):
//   shape (MxNxK)     oneDNN  OpenBLAS 0.3.21  BLIS 0.9
//   1024^3             317       327             111
//   4096x256x256       364       279             111
//   65536x128x1152     298       210              85
//   256x512x512        381       151             100
// oneDNN is the fastest or tied everywhere, dispatches its JIT by CPU itself (avx2 on older
// CPUs), and also gives us the direct convolutions in conv2d.cpp.
#include "kernels/cpu/gemm.h"

#include <algorithm>
#include <string>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/gemm_dnnl.h"

namespace hwaga::cpu {
namespace {

// One block of C on the calling thread.
void sgemm_block(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K == 0 || alpha == 0.0f) {  // no product: C = beta * C (beta == 0 writes zeros, NaN-safe)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
#ifdef HWAGA_HAVE_DNNL
  dnnl_rt::single_thread_here();
  dnnl_status_t st = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  HWAGA_CHECK(st == dnnl_success, "sgemm: oneDNN dnnl_sgemm failed with status ", int(st), " for M=", M,
              " N=", N, " K=", K);
#else
  sgemm_portable(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

}  // namespace

void sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M < 0 || N < 0 || K < 0) fail("sgemm: expected M, N, K >= 0, found M=", M, " N=", N, " K=", K);
  if (M == 0 || N == 0) return;
  const int64_t a_cols = ta ? M : K, b_cols = tb ? K : N;
  if (lda < std::max<int64_t>(1, a_cols))
    fail("sgemm: lda must be >= ", a_cols, " (columns of A", ta ? "^T" : "", "), found ", lda);
  if (ldb < std::max<int64_t>(1, b_cols))
    fail("sgemm: ldb must be >= ", b_cols, " (columns of B", tb ? "^T" : "", "), found ", ldb);
  if (ldc < N) fail("sgemm: ldc must be >= N = ", N, ", found ", ldc);
  if (!C || (K > 0 && (!A || !B))) fail("sgemm: null matrix pointer");

  // Small products are not worth waking the pool. Otherwise split the longer side of C into
  // num_threads() slabs (16-aligned columns keep oneDNN's vector tiles whole).
  const int nt = num_threads();
  if (nt <= 1 || double(M) * N * K < 262144.0) {
    sgemm_block(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  } else if (M >= N) {
    parallel_for(M, 8, [&](int64_t m0, int64_t m1) {
      sgemm_block(ta, tb, m1 - m0, N, K, alpha, ta ? A + m0 : A + m0 * lda, lda, B, ldb, beta, C + m0 * ldc, ldc);
    });
  } else {
    const int64_t blocks = (N + 15) / 16;
    parallel_for(blocks, 1, [&](int64_t j0, int64_t j1) {
      int64_t n0 = j0 * 16, n1 = std::min(N, j1 * 16);
      sgemm_block(ta, tb, M, n1 - n0, K, alpha, A, lda, tb ? B + n0 * ldb : B + n0, ldb, beta, C + n0, ldc);
    });
  }
}

const char* sgemm_kernel_name() {
#ifdef HWAGA_HAVE_DNNL
  static const std::string name = [] {
    const dnnl_version_t* v = dnnl_version();
    return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
           " sgemm (" + dnnl_rt::isa_name() + ")";
  }();
  return name.c_str();
#else
  return "hwaga portable 6x16 (x86-64-v3)";
#endif
}

}  // namespace hwaga::cpu
