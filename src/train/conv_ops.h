// Forward and backward kernels of the ops the taming conv net (RQ-VAE / VQGAN encoder and
// decoder) is built from, for training on the CPU: conv2d (any kernel, stride, asymmetric pads),
// GroupNorm with affine, BatchNorm (training mode) and LeakyReLU (the patch-GAN discriminator), SiLU,
// nearest 2x upsampling, the single-head spatial attention of the
// AttnBlock, and MSE. f32, NCHW, threaded over hwaga's pool (sgemm threads itself).
//
// Conventions: backward functions OVERWRITE input gradients (dx, dq, ...) and ACCUMULATE (+=)
// parameter gradients (dw, db, dgamma, dbeta), so gradients of shared or repeated parameters
// add up and ParamSet::zero_grad() resets them once per step. A null dx skips that work (the
// first layer). Every function is deterministic for a given thread count.
//
// Shape legend: B batch, C/Cin/Cout channels, H/W input size, Ho/Wo output size, N = H*W
// positions, G GroupNorm groups, P = B*C planes.
#pragma once
#include <cstdint>

#include "kernels/cpu/conv2d.h"

namespace hwaga::train {

// ---- conv2d: x [B,Cin,H,W], w [Cout,Cin,kh,kw], b [Cout] -> y [B,Cout,Ho,Wo] ----
// im2col + sgemm (see conv_ops.cpp for why not kernels/cpu/conv2d.h).
void conv2d_forward(const cpu::Conv2dShape& s, const float* x, const float* w, const float* b, float* y);
// dy [B,Cout,Ho,Wo] -> dx [B,Cin,H,W], dw += [Cout,Cin,kh,kw], db += [Cout]; each nullable (a frozen
// net, like LPIPS's VGG, needs dx only).
// im2col + sgemm over chunks of images, col2im for dx.
void conv2d_backward(const cpu::Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db);

// ---- GroupNorm over x [B,C,N] with G groups and affine gamma/beta [C] ----
// y = (x - mean_bg) * rstd_bg * gamma_c + beta_c; saves mean and rstd = 1/sqrt(var + eps)
// (biased variance, statistics in double), each [B*G]. y may not alias x.
void group_norm_forward(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd,
                        int64_t B, int64_t C, int64_t N, int64_t G, float eps);
// dy [B,C,N] -> dx [B,C,N] (may alias dy), dgamma += [C], dbeta += [C].
void group_norm_backward(const float* x, const float* gamma, const float* mean, const float* rstd, const float* dy,
                         float* dx, float* dgamma, float* dbeta, int64_t B, int64_t C, int64_t N, int64_t G);

// ---- BatchNorm2d in training mode over x [B,C,N]: statistics per channel over B and N ----
// y = (x - mean_c) * rstd_c * gamma_c + beta_c, rstd = 1/sqrt(biased var + eps) (statistics in
// double); saves mean and rstd [C]; var_unbiased [C] (nullable) receives the unbiased variance
// that nn.BatchNorm2d folds into its running_var. y may not alias x.
void batch_norm_train_forward(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                              float* rstd, float* var_unbiased, int64_t B, int64_t C, int64_t N, float eps);
// dy [B,C,N] -> dx [B,C,N] (may alias dy), dgamma += [C], dbeta += [C]:
// dx = gamma rstd (dy - mean(dy) - xhat mean(dy xhat)), means over the channel's B*N values.
void batch_norm_train_backward(const float* x, const float* gamma, const float* mean, const float* rstd,
                               const float* dy, float* dx, float* dgamma, float* dbeta, int64_t B, int64_t C,
                               int64_t N);

// ---- LeakyReLU y = x > 0 ? x : slope x (slope >= 0, 0 = ReLU; y may alias x) ----
void leaky_relu_forward(const float* x, float* y, int64_t n, float slope);
// From the OUTPUT y, as PyTorch's in-place LeakyReLU does (same sign as x for slope > 0):
// dx = y > 0 ? dy : slope dy; dx may alias dy.
void leaky_relu_backward(const float* y, const float* dy, float* dx, int64_t n, float slope);

// ---- 2x2 max pooling, stride 2 (floor): x [P,H,W] -> y [P,H/2,W/2] ----
void max_pool2x2_forward(const float* x, float* y, int64_t P, int64_t H, int64_t W);
// dy [P,H/2,W/2] -> dx [P,H,W] (overwritten): each window's gradient goes to its first largest
// input in row-major order (PyTorch's choice), the others get 0.
void max_pool2x2_backward(const float* x, const float* dy, float* dx, int64_t P, int64_t H, int64_t W);

// ---- SiLU y = x * sigmoid(x) ----
void silu_forward(const float* x, float* y, int64_t n);
// dx = dy * (s + x s (1 - s)), s = sigmoid(x); dx may alias dy.
void silu_backward(const float* x, const float* dy, float* dx, int64_t n);

// ---- nearest 2x upsampling: x [P,H,W] -> y [P,2H,2W] ----
void upsample_nearest2x_forward(const float* x, float* y, int64_t P, int64_t H, int64_t W);
// dy [P,2H,2W] -> dx [P,H,W] (each input pixel gets the sum of its 4 copies).
void upsample_nearest2x_backward(const float* dy, float* dx, int64_t P, int64_t H, int64_t W);

// ---- single-head spatial attention: q, k, v [B,C,N] -> out [B,C,N] ----
// out[:,i] = sum_j p[i,j] v[:,j], p = softmax_j(q[:,i] . k[:,j] / sqrt(C)); saves p [B,N,N].
void attention_forward(const float* q, const float* k, const float* v, float* out, float* p, int64_t B, int64_t C,
                       int64_t N);
// dout [B,C,N] -> dq, dk, dv [B,C,N] (overwritten).
void attention_backward(const float* q, const float* k, const float* v, const float* p, const float* dout, float* dq,
                        float* dk, float* dv, int64_t B, int64_t C, int64_t N);

// ---- element-wise ----
void add_inplace(float* y, const float* x, int64_t n);  // y += x

// Mean squared error over n values: returns mean((y - t)^2) (summed in double); when dy is not
// null, dy = scale * 2 (y - t) / n (overwritten).
double mse_forward_backward(const float* y, const float* t, float* dy, int64_t n, float scale);

}  // namespace hwaga::train
