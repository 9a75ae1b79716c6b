// Normalisation kernels on the CPU (f32, multi-threaded over hwaga's pool).
#pragma once
#include <cstdint>

namespace hwaga::cpu {

// GroupNorm over x [B,C,HW] with G groups (C % G == 0), per-channel affine gamma/beta [C]:
//   y = (x - mean_g) / sqrt(var_g + eps) * gamma + beta, then y = y * sigmoid(y) when silu.
// Statistics per (b, g) over (C/G)*HW values, biased variance, accumulated in double.
// y may alias x.
void group_norm_forward(const float* x, const float* gamma, const float* beta, float* y, int64_t B,
                        int64_t C, int64_t HW, int64_t groups, float eps, bool silu);

// LayerNorm over the last dim of x [N,C]: y = (x - mean) / sqrt(var + eps) * gamma + beta.
void layer_norm_forward(const float* x, const float* gamma, const float* beta, float* y, int64_t N,
                        int64_t C, float eps);

}  // namespace hwaga::cpu
