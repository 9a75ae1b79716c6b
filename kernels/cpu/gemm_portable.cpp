// hwaga's own single-threaded sgemm: the path used when oneDNN is not available at build time
// (and a second, independent implementation the tests compare against oneDNN).
//
// Classic packed-panel layout (Goto/van de Geijn): B is packed into KC x 16 column panels,
// A into 6 x KC row panels, and a 6x16 register tile (12 eight-float accumulators) is updated
// with one broadcast of A and two vector loads of B per k. Written with GCC vector types so
// it compiles for the library's x86-64-v3 target (AVX2 + FMA) without intrinsics.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/gemm.h"

namespace hwaga::cpu {
namespace {

typedef float v8 __attribute__((vector_size(32)));
constexpr int MR = 6, NR = 16;
constexpr int64_t KC = 256, MC = 120, NC = 2048;

// Bp[panel][k][NR] <- op(B)[k0:k0+kc, n0:n0+nc], zero-padded to a multiple of NR columns.
void pack_b(bool tb, const float* B, int64_t ldb, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* Bp) {
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    int64_t nr = std::min<int64_t>(NR, nc - j0);
    for (int64_t k = 0; k < kc; ++k) {
      float* dst = Bp + (j0 / NR) * kc * NR + k * NR;
      for (int64_t j = 0; j < nr; ++j)
        dst[j] = tb ? B[(n0 + j0 + j) * ldb + k0 + k] : B[(k0 + k) * ldb + n0 + j0 + j];
      for (int64_t j = nr; j < NR; ++j) dst[j] = 0.0f;
    }
  }
}

// Ap[panel][k][MR] <- op(A)[m0:m0+mc, k0:k0+kc], zero-padded to a multiple of MR rows.
void pack_a(bool ta, const float* A, int64_t lda, int64_t m0, int64_t mc, int64_t k0, int64_t kc, float* Ap) {
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    int64_t mr = std::min<int64_t>(MR, mc - i0);
    for (int64_t k = 0; k < kc; ++k) {
      float* dst = Ap + (i0 / MR) * kc * MR + k * MR;
      for (int64_t i = 0; i < mr; ++i)
        dst[i] = ta ? A[(k0 + k) * lda + m0 + i0 + i] : A[(m0 + i0 + i) * lda + k0 + k];
      for (int64_t i = mr; i < MR; ++i) dst[i] = 0.0f;
    }
  }
}

// C[0:mr, 0:nr] = alpha * (Ap panel . Bp panel) + beta * C   (beta == 0: C is not read).
void micro_kernel(int64_t kc, const float* Ap, const float* Bp, float alpha, float beta, float* C, int64_t ldc,
                  int64_t mr, int64_t nr) {
  v8 acc[MR][2] = {};
  for (int64_t k = 0; k < kc; ++k) {
    v8 b0, b1;
    std::memcpy(&b0, Bp + k * NR, sizeof b0);
    std::memcpy(&b1, Bp + k * NR + 8, sizeof b1);
    for (int i = 0; i < MR; ++i) {
      float a = Ap[k * MR + i];
      acc[i][0] += a * b0;
      acc[i][1] += a * b1;
    }
  }
  for (int64_t i = 0; i < mr; ++i) {
    float row[NR];
    std::memcpy(row, &acc[i][0], sizeof(v8));
    std::memcpy(row + 8, &acc[i][1], sizeof(v8));
    float* c = C + i * ldc;
    if (beta == 0.0f)
      for (int64_t j = 0; j < nr; ++j) c[j] = alpha * row[j];
    else
      for (int64_t j = 0; j < nr; ++j) c[j] = alpha * row[j] + beta * c[j];
  }
}

}  // namespace

void sgemm_portable(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                    const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {  // C = beta * C
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  thread_local std::vector<float> Bp, Ap;
  Bp.resize(size_t(KC) * ((NC + NR - 1) / NR) * NR);
  Ap.resize(size_t(KC) * ((MC + MR - 1) / MR) * MR);
  for (int64_t n0 = 0; n0 < N; n0 += NC) {
    int64_t nc = std::min(NC, N - n0);
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      int64_t kc = std::min(KC, K - k0);
      float b = k0 == 0 ? beta : 1.0f;  // later K blocks accumulate into C
      pack_b(tb, B, ldb, k0, kc, n0, nc, Bp.data());
      for (int64_t m0 = 0; m0 < M; m0 += MC) {
        int64_t mc = std::min(MC, M - m0);
        pack_a(ta, A, lda, m0, mc, k0, kc, Ap.data());
        for (int64_t j0 = 0; j0 < nc; j0 += NR)
          for (int64_t i0 = 0; i0 < mc; i0 += MR)
            micro_kernel(kc, Ap.data() + (i0 / MR) * kc * MR, Bp.data() + (j0 / NR) * kc * NR, alpha, b,
                         C + (m0 + i0) * ldc + n0 + j0, ldc, std::min<int64_t>(MR, mc - i0),
                         std::min<int64_t>(NR, nc - j0));
      }
    }
  }
}

}  // namespace hwaga::cpu
