// CUDA kernels of stage-1 training: the taming conv net's forward and backward pieces
// (train/train_ops.h's conv-net section; the CPU twins are in train/conv_ops.cpp). The matrix
// products (convolutions as im2col + GEMM, the attention's products) run on cuBLAS in
// backend/cuda/cuda_train_ops.cpp; these are the rest.
//
// Determinism: no floating-point atomics; every reduction has a fixed shape (one block per
// output, its threads' partial sums combined in a fixed tree), and where the CPU sums in double,
// so do these kernels.
//
// Shape legend: B batch, C channels, S = H*W positions, G groups, P planes (B*C), kh/kw kernel,
// pt/pl the top and left zero padding, Ho/Wo the output size.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace hwaga::cuda {

// One image: x [Cin,H,W] -> col [Cin*kh*kw, Ho*Wo], zero outside the input (the padding may be
// asymmetric: Ho/Wo carry the bottom and right pads).
void im2col_train_f32(const float* x, float* col, int Cin, int H, int W, int kh, int kw, int pt, int pl, int stride,
                      int Ho, int Wo, cudaStream_t s);
// The adjoint: dcol [Cin*kh*kw, Ho*Wo] -> dx [Cin,H,W] (overwritten); each input pixel gathers
// the entries of the windows that cover it, in (ky, kx) order.
void col2im_train_f32(const float* dcol, float* dx, int Cin, int H, int W, int kh, int kw, int pt, int pl, int stride,
                      int Ho, int Wo, cudaStream_t s);
// db[c] += float(Σ_{b,p} dy[b,c,p]) (double), one block per channel.
void channel_sum_nchw_f32(const float* dy, float* db, int64_t B, int64_t C, int64_t S, cudaStream_t s);

// GroupNorm over x [B,C,S]: mean/rstd [B*G] in double (two passes), y = (x - m) * (r gamma) + beta.
void group_norm_train_fwd_f32(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                              float* rstd, int64_t B, int64_t C, int64_t S, int64_t G, float eps, cudaStream_t s);
// dx = rstd (gamma dy - mean_g(gamma dy) - xhat mean_g(gamma dy xhat)); dx may alias dy.
void group_norm_train_bwd_dx_f32(const float* x, const float* gamma, const float* mean, const float* rstd,
                                 const float* dy, float* dx, int64_t B, int64_t C, int64_t S, int64_t G,
                                 cudaStream_t s);
// dgamma[c] += Σ_{b,p} dy xhat, dbeta[c] += Σ_{b,p} dy (double), one block per channel.
void group_norm_train_bwd_params_f32(const float* x, const float* mean, const float* rstd, const float* dy,
                                     float* dgamma, float* dbeta, int64_t B, int64_t C, int64_t S, int64_t G,
                                     cudaStream_t s);

// SiLU y = x sigmoid(x); backward dx = dy (s + x s (1 - s)) (dx may alias dy).
void silu_f32(const float* x, float* y, int64_t n, cudaStream_t s);
void silu_bwd_f32(const float* x, const float* dy, float* dx, int64_t n, cudaStream_t s);
// Nearest 2x upsampling's backward: dy [P,2H,2W] -> dx [P,H,W], the 4 copies summed in the CPU's order.
void upsample2x_bwd_f32(const float* dy, float* dx, int64_t P, int64_t H, int64_t W, cudaStream_t s);

// Full-row softmax backward in place: for each row, d = p (d - Σ_j p_j d_j) scale (the dot in
// double). One warp per row.
void softmax_bwd_rows_f32(const float* P, float* d, int64_t rows, int64_t n, float scale, cudaStream_t s);

// Mean squared error pieces: part[i] (double) for i < mse_parts(n) receives the sum of (y - t)^2
// over its fixed slice; dy = g (y - t) when dy is not null.
int mse_parts(int64_t n);
void mse_f32(const float* y, const float* t, float* dy, float g, double* part, int64_t n, cudaStream_t s);

}  // namespace hwaga::cuda
