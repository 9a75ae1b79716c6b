// Elementwise and data-movement kernels of the CUDA backend (the CPU twins live in
// src/backend/cpu). Every launcher takes the stream to run on and checks the launch.
// Shape legend: B batch, C channels, H/W height/width, R/S the two transposed dimensions.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace hwaga::cuda {

// out[i] = a[i] + b[i], n elements
void add_f32(const float* a, const float* b, float* out, int64_t n, cudaStream_t s);
// [B,C,H,W] -> [B,C,2H,2W], nearest neighbour
void upsample_nearest2x_f32(const float* x, float* y, int64_t BC, int H, int W, cudaStream_t s);
// Batched transpose [B,R,S] -> [B,S,R] (NCHW <-> NHWC with R=C,S=HW or R=HW,S=C).
void transpose_f32(const float* x, float* y, int64_t B, int64_t R, int64_t S, cudaStream_t s);
// f32 [B,R,S] -> bf16 [B,S,R] (activation NCHW -> NHWC for the bf16 convolutions)
void transpose_f32_to_bf16(const float* x, uint16_t* y, int64_t B, int64_t R, int64_t S, cudaStream_t s);
// bf16 [B,R,S] -> f32 [B,S,R], plus bias[s] when bias is not null (conv output NHWC -> NCHW)
void transpose_bf16_to_f32_bias(const uint16_t* x, float* y, const float* bias, int64_t B, int64_t R,
                                int64_t S, cudaStream_t s);
// Zero padding of [B,C,H,W] -> [B,C,H+pt+pb,W+pl+pr]
void pad2d_f32(const float* x, float* y, int64_t BC, int H, int W, int pt, int pb, int pl, int pr,
               cudaStream_t s);
// y[b,c,:] += bias[c] for y [B,C,HW]
void add_bias_nchw_f32(float* y, const float* bias, int64_t B, int64_t C, int64_t HW, cudaStream_t s);
// y[n,:] += bias for y [N,C]
void add_bias_rows_f32(float* y, const float* bias, int64_t N, int64_t C, cudaStream_t s);
// Float conversions (round to nearest even), n elements
void f32_to_bf16(const float* x, uint16_t* y, int64_t n, cudaStream_t s);
void bf16_to_f32(const uint16_t* x, float* y, int64_t n, cudaStream_t s);
// bf16 KCRS -> KRSC (conv weights for the NHWC convolutions): [K,C,RS] -> [K,RS,C]
void transpose_bf16(const uint16_t* x, uint16_t* y, int64_t B, int64_t R, int64_t S, cudaStream_t s);

}  // namespace hwaga::cuda
