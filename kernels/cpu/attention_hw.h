// Single-head spatial attention of the taming AttnBlock on the CPU (f32):
//   q, k, v [B,C,N] (N = H*W positions) -> out [B,C,N]
//   out[b,:,i] = sum_j softmax_j(q[b,:,i] . k[b,:,j] / sqrt(C)) v[b,:,j]
// Scores and the weighted sum run through hwaga::cpu::sgemm; the softmax subtracts the row max.
#pragma once
#include <cstdint>

namespace hwaga::cpu {

void attention_hw_forward(const float* q, const float* k, const float* v, float* out, int64_t B, int64_t C,
                          int64_t N);

}  // namespace hwaga::cpu
