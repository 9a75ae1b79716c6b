// Vector quantization kernels on the CPU (architecture.md §1.5, §4.1).
//
// Shape legend: N vectors, E vector dim, K codebook rows that are candidates, D depth.
#pragma once
#include <cstdint>

namespace hwaga::cpu {

// Residual quantization of z [N,E] against codebook [K,E], depth D -> codes int32 [N,D]:
//   r_0 = z; c_d = argmin_k ||r_d||^2 + ||e_k||^2 - 2 r_d.e_k (f32, ties -> lowest k);
//   r_{d+1} = r_d - e_{c_d}.   D = 1 is plain VQ. Only the K rows given are candidates
// (the caller passes rows [0,K) of RQ's [K+1,E] table, so the padding row is never chosen).
void residual_quantize_forward(const float* z, const float* codebook, int32_t* codes, int64_t N, int64_t K,
                               int64_t E, int64_t depth);

// out [N,E] = sum_d codebook[codes[n,d]] (codes int32 [N,D], each in [0,K); throws hwaga::Error
// naming the first bad value otherwise).
void embed_sum_forward(const int32_t* codes, const float* codebook, float* out, int64_t N, int64_t D,
                       int64_t K, int64_t E);

}  // namespace hwaga::cpu
