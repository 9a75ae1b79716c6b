// Kernels of the (residual) vector quantizer; the CPU twin is Backend::residual_quantize and
// Backend::embed_sum of the CPU backend. Legend: N rows, E code vector dim, K codebook size,
// D code depth.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace hwaga::cuda {

// out[n] = sum_e x[n,e]^2, x [N,E]
void row_sqnorm_f32(const float* x, float* out, int64_t N, int64_t E, cudaStream_t s);
// For each row n of a chunk of rows [n0, n0+nc): given G [nc,K] = r.e^T, picks
// c = argmin_k (rnorm[n] + cnorm[k]) - 2 G[n,k] (ties -> lowest k), writes codes[n*D + d] = c,
// then updates r[n,:] -= codebook[c,:] and rnorm[n] = ||r[n,:]||^2 for the next depth.
void argmin_update_f32(const float* G, float* rnorm, const float* cnorm, float* r, const float* codebook,
                       int32_t* codes, int64_t n0, int64_t nc, int64_t K, int64_t E, int D, int d,
                       cudaStream_t s);
// out[n,:] = sum_d codebook[codes[n,d],:]; a code outside [0,K) sets *bad = 1 and adds nothing.
void embed_sum_f32(const int32_t* codes, const float* codebook, float* out, int* bad, int64_t N, int D,
                   int64_t K, int64_t E, cudaStream_t s);

}  // namespace hwaga::cuda
