#include "kernels/cuda/conv_train.cuh"

#include "backend/cuda/cuda_check.h"

namespace hwaga::cuda {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n, int threads = kThreads) {
  int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 65535 * 32 ? (b < 1 ? 1 : b) : 65535 * 32);
}

// Sum of one double per thread over a block of kThreads threads (fixed tree); every thread gets it.
__device__ double block_sum_d(double v, double* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    if (int(threadIdx.x) < o) sh[threadIdx.x] += sh[threadIdx.x + o];
    __syncthreads();
  }
  const double r = sh[0];
  __syncthreads();
  return r;
}

// ---------------------------------------------------------------- conv pieces

__global__ void im2col_kernel(const float* x, float* col, int Cin, int H, int W, int kh, int kw, int pt, int pl,
                              int stride, int Ho, int Wo) {
  const int64_t P = int64_t(Ho) * Wo, total = int64_t(Cin) * kh * kw * P;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i % P, r = i / P;  // r = (c*kh + ky)*kw + kx
    const int kx = int(r % kw), ky = int((r / kw) % kh), c = int(r / (int64_t(kw) * kh));
    const int oy = int(p / Wo), ox = int(p % Wo);
    const int iy = oy * stride - pt + ky, ix = ox * stride - pl + kx;
    col[i] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[(int64_t(c) * H + iy) * W + ix] : 0.0f;
  }
}

__global__ void col2im_kernel(const float* dcol, float* dx, int Cin, int H, int W, int kh, int kw, int pt, int pl,
                              int stride, int Ho, int Wo) {
  const int64_t total = int64_t(Cin) * H * W, P = int64_t(Ho) * Wo;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int ix = int(i % W), iy = int((i / W) % H), c = int(i / (int64_t(W) * H));
    float acc = 0.0f;
    for (int ky = 0; ky < kh; ++ky) {
      const int ty = iy + pt - ky;  // = oy * stride
      if (ty < 0 || ty % stride) continue;
      const int oy = ty / stride;
      if (oy >= Ho) continue;
      for (int kx = 0; kx < kw; ++kx) {
        const int tx = ix + pl - kx;
        if (tx < 0 || tx % stride) continue;
        const int ox = tx / stride;
        if (ox >= Wo) continue;
        acc += dcol[((int64_t(c) * kh + ky) * kw + kx) * P + int64_t(oy) * Wo + ox];
      }
    }
    dx[i] = acc;
  }
}

__global__ void channel_sum_kernel(const float* dy, float* db, int64_t B, int64_t C, int64_t S) {
  __shared__ double sh[kThreads];
  const int64_t c = blockIdx.x;
  double acc = 0;
  for (int64_t b = 0; b < B; ++b) {
    const float* r = dy + (b * C + c) * S;
    for (int64_t p = threadIdx.x; p < S; p += kThreads) acc += r[p];
  }
  acc = block_sum_d(acc, sh);
  if (threadIdx.x == 0) db[c] += float(acc);
}

// ---------------------------------------------------------------- GroupNorm

__global__ void gn_fwd_kernel(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                              float* rstd, int64_t C, int64_t S, int64_t G, float eps) {
  __shared__ double sh[kThreads];
  const int64_t t = blockIdx.x, Cg = C / G, M = Cg * S, g = t % G;
  const float* xs = x + t * M;
  double s = 0;
  for (int64_t i = threadIdx.x; i < M; i += kThreads) s += xs[i];
  const double m = block_sum_d(s, sh) / double(M);
  double q = 0;
  for (int64_t i = threadIdx.x; i < M; i += kThreads) q += (xs[i] - m) * (xs[i] - m);
  const double r = 1.0 / sqrt(block_sum_d(q, sh) / double(M) + double(eps));
  if (threadIdx.x == 0) {
    mean[t] = float(m);
    rstd[t] = float(r);
  }
  const float mf = float(m), rf = float(r);
  for (int64_t i = threadIdx.x; i < M; i += kThreads) {
    const int64_t ch = g * Cg + i / S;
    y[t * M + i] = (xs[i] - mf) * (rf * gamma[ch]) + beta[ch];
  }
}

__global__ void gn_bwd_dx_kernel(const float* x, const float* gamma, const float* mean, const float* rstd,
                                 const float* dy, float* dx, int64_t C, int64_t S, int64_t G) {
  __shared__ double sh[kThreads];
  const int64_t t = blockIdx.x, Cg = C / G, M = Cg * S, g = t % G;
  const float m = mean[t], r = rstd[t];
  const float* xs = x + t * M;
  const float* ds = dy + t * M;
  double m1 = 0, m2 = 0;  // Σ gamma dy, Σ gamma dy xhat over the group
  for (int64_t i = threadIdx.x; i < M; i += kThreads) {
    const double gm = gamma[g * Cg + i / S];
    m1 += gm * ds[i];
    m2 += gm * ds[i] * (double(xs[i] - m) * r);
  }
  const float f1 = float(block_sum_d(m1, sh) / double(M)), f2 = float(block_sum_d(m2, sh) / double(M));
  for (int64_t i = threadIdx.x; i < M; i += kThreads) {
    const float xh = (xs[i] - m) * r, d = ds[i];
    dx[t * M + i] = r * (d * gamma[g * Cg + i / S] - f1 - xh * f2);  // reads ds[i] before writing: may alias
  }
}

__global__ void gn_bwd_params_kernel(const float* x, const float* mean, const float* rstd, const float* dy,
                                     float* dgamma, float* dbeta, int64_t B, int64_t C, int64_t S, int64_t G) {
  __shared__ double sh[kThreads];
  const int64_t c = blockIdx.x, g = c / (C / G);
  double a = 0, s = 0;
  for (int64_t b = 0; b < B; ++b) {
    const float m = mean[b * G + g], r = rstd[b * G + g];
    const float* xc = x + (b * C + c) * S;
    const float* dc = dy + (b * C + c) * S;
    for (int64_t i = threadIdx.x; i < S; i += kThreads) {
      a += dc[i] * (double(xc[i] - m) * r);
      s += dc[i];
    }
  }
  a = block_sum_d(a, sh);
  s = block_sum_d(s, sh);
  if (threadIdx.x == 0) {
    if (dgamma) dgamma[c] += float(a);
    if (dbeta) dbeta[c] += float(s);
  }
}

// ---------------------------------------------------------------- elementwise

__global__ void silu_kernel(const float* x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = x[i] / (1.0f + expf(-x[i]));
}

__global__ void silu_bwd_kernel(const float* x, const float* dy, float* dx, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float s = 1.0f / (1.0f + expf(-x[i]));
    dx[i] = dy[i] * (s + x[i] * s * (1.0f - s));
  }
}

__global__ void upsample2x_bwd_kernel(const float* dy, float* dx, int64_t P, int64_t H, int64_t W) {
  const int64_t total = P * H * W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % W, r = (i / W) % H, p = i / (W * H);
    const float* r0 = dy + (p * 2 * H + 2 * r) * 2 * W;
    const float* r1 = r0 + 2 * W;
    dx[i] = (r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1]);
  }
}

// ---------------------------------------------------------------- softmax backward, MSE

__global__ void softmax_bwd_rows_kernel(const float* P, float* d, int64_t rows, int64_t n, float scale) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const float* p = P + row * n;
  float* r = d + row * n;
  double dot = 0;
  for (int64_t j = lane; j < n; j += 32) dot += double(p[j]) * r[j];
  for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
  const float df = float(dot);
  for (int64_t j = lane; j < n; j += 32) r[j] = p[j] * (r[j] - df) * scale;
}

constexpr int kMseParts = 256;

__global__ void mse_kernel(const float* y, const float* t, float* dy, float g, double* part, int64_t n) {
  __shared__ double sh[kThreads];
  const int64_t per = (n + gridDim.x - 1) / gridDim.x, i0 = blockIdx.x * per, i1 = min(n, i0 + per);
  double s = 0;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += kThreads) {
    const float d = y[i] - t[i];
    s += double(d) * d;
    if (dy) dy[i] = g * d;
  }
  s = block_sum_d(s, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

}  // namespace

void im2col_train_f32(const float* x, float* col, int Cin, int H, int W, int kh, int kw, int pt, int pl, int stride,
                      int Ho, int Wo, cudaStream_t s) {
  const int64_t total = int64_t(Cin) * kh * kw * Ho * Wo;
  if (total == 0) return;
  im2col_kernel<<<blocks_for(total), kThreads, 0, s>>>(x, col, Cin, H, W, kh, kw, pt, pl, stride, Ho, Wo);
  CUDA_CHECK_LAUNCH();
}

void col2im_train_f32(const float* dcol, float* dx, int Cin, int H, int W, int kh, int kw, int pt, int pl, int stride,
                      int Ho, int Wo, cudaStream_t s) {
  const int64_t total = int64_t(Cin) * H * W;
  if (total == 0) return;
  col2im_kernel<<<blocks_for(total), kThreads, 0, s>>>(dcol, dx, Cin, H, W, kh, kw, pt, pl, stride, Ho, Wo);
  CUDA_CHECK_LAUNCH();
}

void channel_sum_nchw_f32(const float* dy, float* db, int64_t B, int64_t C, int64_t S, cudaStream_t s) {
  if (C == 0) return;
  channel_sum_kernel<<<unsigned(C), kThreads, 0, s>>>(dy, db, B, C, S);
  CUDA_CHECK_LAUNCH();
}

void group_norm_train_fwd_f32(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                              float* rstd, int64_t B, int64_t C, int64_t S, int64_t G, float eps, cudaStream_t s) {
  HWAGA_CHECK(G > 0 && C % G == 0, "group_norm: C ", C, " not divisible by ", G, " groups");
  if (B * G == 0) return;
  gn_fwd_kernel<<<unsigned(B * G), kThreads, 0, s>>>(x, gamma, beta, y, mean, rstd, C, S, G, eps);
  CUDA_CHECK_LAUNCH();
}

void group_norm_train_bwd_dx_f32(const float* x, const float* gamma, const float* mean, const float* rstd,
                                 const float* dy, float* dx, int64_t B, int64_t C, int64_t S, int64_t G,
                                 cudaStream_t s) {
  if (B * G == 0) return;
  gn_bwd_dx_kernel<<<unsigned(B * G), kThreads, 0, s>>>(x, gamma, mean, rstd, dy, dx, C, S, G);
  CUDA_CHECK_LAUNCH();
}

void group_norm_train_bwd_params_f32(const float* x, const float* mean, const float* rstd, const float* dy,
                                     float* dgamma, float* dbeta, int64_t B, int64_t C, int64_t S, int64_t G,
                                     cudaStream_t s) {
  if (C == 0) return;
  gn_bwd_params_kernel<<<unsigned(C), kThreads, 0, s>>>(x, mean, rstd, dy, dgamma, dbeta, B, C, S, G);
  CUDA_CHECK_LAUNCH();
}

void silu_f32(const float* x, float* y, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  silu_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}

void silu_bwd_f32(const float* x, const float* dy, float* dx, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  silu_bwd_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, dy, dx, n);
  CUDA_CHECK_LAUNCH();
}

void upsample2x_bwd_f32(const float* dy, float* dx, int64_t P, int64_t H, int64_t W, cudaStream_t s) {
  if (P * H * W == 0) return;
  upsample2x_bwd_kernel<<<blocks_for(P * H * W), kThreads, 0, s>>>(dy, dx, P, H, W);
  CUDA_CHECK_LAUNCH();
}

void softmax_bwd_rows_f32(const float* P, float* d, int64_t rows, int64_t n, float scale, cudaStream_t s) {
  if (rows == 0) return;
  const int64_t warps = kThreads / 32;
  softmax_bwd_rows_kernel<<<unsigned((rows + warps - 1) / warps), kThreads, 0, s>>>(P, d, rows, n, scale);
  CUDA_CHECK_LAUNCH();
}

int mse_parts(int64_t n) { return int(n < kMseParts ? (n < 1 ? 1 : n) : kMseParts); }

void mse_f32(const float* y, const float* t, float* dy, float g, double* part, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  mse_kernel<<<unsigned(mse_parts(n)), kThreads, 0, s>>>(y, t, dy, g, part, n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hwaga::cuda
