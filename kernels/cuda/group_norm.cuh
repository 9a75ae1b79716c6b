// GroupNorm (+ optional fused SiLU) over [B,C,H,W]; the CPU twin is Backend::group_norm of the
// CPU backend. Statistics in two passes (mean, then the mean of squared deviations) in f32.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace hwaga::cuda {

void group_norm_f32(const float* x, const float* gamma, const float* beta, float* y, int64_t B, int64_t C,
                    int64_t HW, int groups, float eps, bool silu, cudaStream_t s);

}  // namespace hwaga::cuda
