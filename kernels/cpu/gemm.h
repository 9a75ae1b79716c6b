// Single-precision matrix multiply on the CPU, row-major:
//   C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C
// op(X) = X or X^T (trans_a / trans_b). lda/ldb/ldc are row strides in elements.
// Multi-threaded over hwaga's thread pool (core/threads.h): C is split into num_threads()
// blocks, each computed single-threaded. beta == 0 means C is not read (BLAS convention).
// Numerics are strict f32 (f32 products, f32 accumulation; no bf16/tf32 down-conversion).
//
// Backend: oneDNN's JIT sgemm (it picks avx512/avx2 code at run time) when the build found
// oneDNN (HWAGA_HAVE_DNNL), else sgemm_portable below. Bad arguments throw hwaga::Error.
#pragma once
#include <cstdint>

namespace hwaga::cpu {

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The same product in mixed precision, for training's matrix math: op(A) and op(B) are rounded
// to bf16 (round to nearest even), products are exact in f32 and accumulate in f32 (as on GPUs'
// bf16 tensor cores). Where the CPU has bf16 matrix hardware (AMX or AVX512-BF16) this runs
// oneDNN's bf16 matmul, measured 4-5x sgemm's rate on AMX; elsewhere sgemm on the rounded inputs
// (the same numbers, no faster). Same contract and argument checks as sgemm.
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
// gemm_bf16's path without bf16 hardware (no argument checks), exposed so that tests check it on
// machines that have the hardware.
void gemm_bf16_fallback(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                        int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
// Whether gemm_bf16 runs on bf16 hardware here; "oneDNN bf16 matmul (avx512_core_amx)" or the fallback.
bool gemm_bf16_native();
const char* gemm_bf16_kernel_name();

// Round to bf16 (nearest even; NaN stays NaN) and back: what gemm_bf16 multiplies.
float round_to_bf16(float x);

// Which implementation runs (printed by benchmarks), e.g. "oneDNN 2.6 (avx512_core)".
const char* sgemm_kernel_name();

// hwaga's own packed 6x16 kernel, single-threaded, same contract as sgemm (no argument checks).
// The fallback without oneDNN; exposed so tests can check it on machines that have oneDNN.
void sgemm_portable(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                    int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace hwaga::cpu
