// CUDA kernels of the transformer ops (RQ-Transformer, minDALL-E GPT); the CPU twins are in
// kernels/cpu/transformer_ops.h and kernels/cpu/norm.h. All arithmetic is f32; bf16/f16 tables
// are widened on load. Every launcher takes the stream to run on and checks the launch.
//
// Shape legend: N rows, C channels, R broadcast rows, V table rows, B batch, T new tokens,
// H heads, hd head dim (<= 128), T_max cache capacity, len cached positions before the call.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#include "core/dtype.h"

namespace hwaga::cuda {

// LayerNorm over the last dim: x/y [N,C], gamma/beta [C]. Two-pass mean / variance of one row
// per block, rstd = 1/sqrt(var + eps) (biased variance, as PyTorch).
void layer_norm_f32(const float* x, const float* gamma, const float* beta, float* y, int64_t N, int64_t C, float eps,
                    cudaStream_t s);
// y = 0.5 x (1 + erf(x / sqrt 2)), n values (y may alias x).
void gelu_f32(const float* x, float* y, int64_t n, cudaStream_t s);
// out[n,:] = f32(table[ids[n],:]), table [V,C] of `dtype` (F32/BF16/F16). An id outside [0,V)
// sets *bad = 1 and writes zeros (the caller checks the flag).
void gather_rows_f32(const void* table, DType dtype, const int32_t* ids, float* out, int* bad, int64_t N, int64_t V,
                     int64_t C, cudaStream_t s);
// y[n,:] = x[n,:] + rows[n % R,:], x/y [N,C], rows [R,C].
void add_rows_f32(const float* x, const float* rows, float* y, int64_t N, int64_t R, int64_t C, cudaStream_t s);
// f32 -> f16 (round to nearest even; |x| > 65504 becomes inf) and f16 -> f32, n values.
void f32_to_f16(const float* x, uint16_t* y, int64_t n, cudaStream_t s);
void f16_to_f32(const uint16_t* x, float* y, int64_t n, cudaStream_t s);

// y[n,:] = x[n,:] + table[*counter + offset, :] (the row clamped to [0,R)), x/y [N,C], table [R,C].
void add_row_at_f32(const float* x, const float* table, const int32_t* counter, int32_t offset, float* y, int64_t N,
                    int64_t R, int64_t C, cudaStream_t s);
// out[n,:] = sum over j < d of f32(table[ids[n*D + j], :]), in column order; an id outside [0,V)
// reads row 0 (the sampler never writes one). table [V,C] of `dtype` (F32/BF16/F16).
void gather_sum_f32(const void* table, DType dtype, const int32_t* ids, float* out, int64_t N, int D, int d, int64_t V,
                    int64_t C, cudaStream_t s);
// *counter += delta on the stream (a device-side step counter that a CUDA graph advances).
void counter_add_i32(int32_t* counter, int32_t delta, cudaStream_t s);

// Writes the new tokens' keys/values k,v [B,T,C] (C = H*hd) into positions [len, len+T) of the
// caches kc/vc [B,H,T_max,hd]. With len_dev set, len is read from the device when the kernel
// runs (a recorded step replays at the current length).
void kv_append_f32(const float* k, const float* v, float* kc, float* vc, int64_t B, int64_t T, int64_t H, int64_t hd,
                   int64_t T_max, int64_t len, cudaStream_t s, const int32_t* len_dev = nullptr);

// Causal attention of q [B,T,C] over the caches (which already hold the T new tokens): for new
// token i, keys/values 0..len+i, scores q.k / sqrt(hd), max-subtracted softmax -> out [B,T,C].
// One block per (b, head, token, key chunk): keys are split into chunks of at most 1024 so that
// a decode step (T = 1) with few rows still fills the GPU (flash-decoding); the chunks' partial
// (max, sum, weighted values) are merged by a second kernel. `num_sms` sizes the split.
// `scratch` needs attention_scratch_floats(...) floats (may be null when that is 0).
// With len_dev set, the kernel reads len from the device and `len` is only the bound that sizes
// the split (pass T_max - T: chunks past a token's keys write empty partials).
int64_t attention_scratch_floats(int64_t B, int64_t T, int64_t H, int64_t hd, int64_t len, int num_sms);
void attention_cached_f32(const float* q, const float* kc, const float* vc, float* out, float* scratch, int64_t B,
                          int64_t T, int64_t H, int64_t hd, int64_t T_max, int64_t len, int num_sms, cudaStream_t s,
                          const int32_t* len_dev = nullptr);

}  // namespace hwaga::cuda
