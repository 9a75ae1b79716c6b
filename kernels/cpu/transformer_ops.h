// CPU kernels of the transformer ops (RQ-Transformer, minDALL-E GPT): exact GELU, row gather,
// row-broadcast add, causal attention over a KV cache, and a linear layer that reads f32, bf16 or
// f16 weights (LayerNorm is layer_norm_forward in norm.h). All f32 arithmetic, multi-threaded
// over hwaga's pool.
//
// Shape legend: N rows, C channels, B batch, T new tokens, H heads, hd head dim, T_max cache
// capacity, V table rows.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace hwaga::cpu {

// y = 0.5 x (1 + erf(x / sqrt 2)) over n values (y may alias x).
void gelu_forward(const float* x, float* y, int64_t n);

// out[n,:] = table[ids[n],:] converted to f32; table [V,C] of `dtype` (F32/BF16/F16).
// ids must be in [0,V) (the caller checks).
void gather_rows_forward(const void* table, DType dtype, const int32_t* ids, float* out, int64_t N, int64_t C);

// y[n,:] = x[n,:] + rows[n % R,:], x/y [N,C], rows [R,C] (y may alias x).
void add_rows_forward(const float* x, const float* rows, float* y, int64_t N, int64_t R, int64_t C);

// Causal attention over a KV cache. q,k,v [B,T,C] with C = H*hd (head h = channels [h*hd, (h+1)*hd)),
// caches kc/vc [B,H,T_max,hd] holding `len` valid positions. Writes k,v into positions
// [len, len+T) of the caches, then out[b,i] attends to positions 0..len+i with scores
// q.k / sqrt(hd) and a softmax (max-subtracted, f32 exp, f32 sums). len + T <= T_max.
void attention_cached_forward(const float* q, const float* k, const float* v, float* kc, float* vc, float* out,
                              int64_t B, int64_t T, int64_t H, int64_t hd, int64_t T_max, int64_t len);

// y [N,out] = x [N,in] w^T (+ b), w [out,in] of `wtype` (F32/BF16/F16), b [out] f32 or null.
// Small N (a sampling step: memory-bound) streams the weights once through a register-tiled
// dot-product kernel that converts bf16/f16 to f32 on the fly (AVX-512 when the CPU has it,
// else AVX2); larger N converts blocks of weight rows to f32 and multiplies with sgemm (f32
// weights go to sgemm directly). Products and sums are f32 either way.
void linear_forward(const float* x, const void* w, DType wtype, const float* b, float* y, int64_t N, int64_t in,
                    int64_t out);

// The two paths of linear_forward, exposed for tests and benchmarks.
void linear_gemv(const float* x, const void* w, DType wtype, const float* b, float* y, int64_t N, int64_t in,
                 int64_t out);
void linear_gemm(const float* x, const void* w, DType wtype, const float* b, float* y, int64_t N, int64_t in,
                 int64_t out);
// Rows up to which linear_forward takes the GEMV path.
inline constexpr int64_t kLinearGemvMaxRows = 16;

// Which GEMV code runs ("avx512" or "avx2"); `force` = "avx2" makes the AVX2 path run even on an
// AVX-512 machine (tests), "" restores the automatic choice.
const char* linear_gemv_isa();
void linear_gemv_force_isa(const char* force);

}  // namespace hwaga::cpu
