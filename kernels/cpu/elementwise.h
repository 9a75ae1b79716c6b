// Element-wise and layout kernels on the CPU (f32, multi-threaded over hwaga's pool).
#pragma once
#include <cstdint>

namespace hwaga::cpu {

// y = a + b over n values (y may alias a or b).
void add_forward(const float* a, const float* b, float* y, int64_t n);
// y = x * sigmoid(x) over n values (y may alias x).
void silu_forward(const float* x, float* y, int64_t n);
// Nearest x2: x [P,H,W] -> y [P,2H,2W] (P = B*C planes).
void upsample_nearest2x_forward(const float* x, float* y, int64_t P, int64_t H, int64_t W);
// x [B,C,S] -> y [B,S,C]  (S = H*W)
void nchw_to_nhwc_forward(const float* x, float* y, int64_t B, int64_t C, int64_t S);
// x [B,S,C] -> y [B,C,S]
void nhwc_to_nchw_forward(const float* x, float* y, int64_t B, int64_t S, int64_t C);

}  // namespace hwaga::cpu
