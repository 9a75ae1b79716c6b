// CUDA kernels of the training ops; see train_ops.cuh.
//
// Where the CPU reference (train/transformer_ops.cpp, train/cpu_train_ops.cpp) performs a chain of
// f32 additions in a fixed order (embedding and positional gradients, code sums, data movement),
// one thread replays that chain for its column so the bits agree. Where the CPU accumulates in
// double (LayerNorm statistics and gradients, bias gradients, the loss, sum of squares), these
// kernels accumulate in double too, in fixed trees or fixed row chunks (deterministic run to run,
// and within double rounding of the CPU's sequential sums). exp/erf use the full-precision CUDA
// functions (no fast math), so they differ from glibc by an ulp or two.
#include "kernels/cuda/train_ops.cuh"

#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/sampler.cuh"  // philox_block: the sampler's Philox4x64-10

namespace hwaga::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRowThreads = 128;         // block per row: LayerNorm
constexpr int kCeThreads = 256;          // block per row: cross-entropy (K up to ~16k)
constexpr int64_t kRowChunk = 256;       // rows per partial of the column sums
constexpr int64_t kSqChunk = 8192;       // elements per partial of sum_squares

inline unsigned blocks_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  return unsigned(b < 65536 * 16 ? (b > 0 ? b : 1) : 65536 * 16);  // grid-stride loops cover the rest
}

#define HWAGA_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// One block per row needs the row count to fit grid.x.
void check_rows(int64_t N, const char* what) {
  HWAGA_CHECK(N < (int64_t(1) << 31), what, ": ", N, " rows exceed one launch (at most 2^31 - 1)");
}

__device__ __forceinline__ double warp_sum_d(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// block_sum (reduce.cuh) in double: a fixed tree (lanes, then warps), every thread gets the sum.
__device__ __forceinline__ double block_sum_d(double v, double* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum_d(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double t = lane < nwarps ? shared[lane] : 0.0;
    t = warp_sum_d(t);
    if (lane == 0) shared[32] = t;
  }
  __syncthreads();
  return shared[32];
}

// ---------------------------------------------------------------- column sums

// Chunk k of rows [k*kRowChunk, ...) for column c: Σ dy, and with kLn Σ dy * xhat (xhat in f32 as
// the CPU forms it, the product in double).
template <bool kLn>
__global__ void column_partial_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                                      const float* __restrict__ mean, const float* __restrict__ rstd,
                                      double* __restrict__ part_sum, double* __restrict__ part_xhat, int64_t N,
                                      int64_t C, int64_t col_blocks) {
  const int64_t k = blockIdx.x / col_blocks;
  const int64_t c = (blockIdx.x % col_blocks) * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  const int64_t n0 = k * kRowChunk, n1 = n0 + kRowChunk < N ? n0 + kRowChunk : N;
  double s = 0, sx = 0;
  for (int64_t n = n0; n < n1; ++n) {
    const float g = dy[n * C + c];
    s += g;
    if (kLn) sx += double(g) * double((x[n * C + c] - mean[n]) * rstd[n]);
  }
  if (part_sum) part_sum[k * C + c] = s;
  if (kLn && part_xhat) part_xhat[k * C + c] = sx;
}

// out[c] += float(Σ_k part[k*C + c]), chunks in order.
__global__ void column_finish_kernel(const double* __restrict__ part, int64_t chunks, int64_t C, float* out) {
  HWAGA_GRID_STRIDE(c, C) {
    double t = 0;
    for (int64_t k = 0; k < chunks; ++k) t += part[k * C + c];
    out[c] += float(t);
  }
}

// ---------------------------------------------------------------- LayerNorm

// x and y may be the same rows (each thread reads x[c] before it writes y[c]), so no __restrict__.
__global__ void ln_fwd_kernel(const float* x, const float* __restrict__ gamma, const float* __restrict__ beta,
                              float* y, float* __restrict__ mean, float* __restrict__ rstd, int64_t C, float eps) {
  __shared__ double red[33];
  const int64_t n = blockIdx.x;
  const float* xr = x + n * C;
  double s = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += xr[c];
  const double m = block_sum_d(s, red) / double(C);
  double v = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const double d = xr[c] - m;
    v += d * d;
  }
  v = block_sum_d(v, red);
  const float r = float(1.0 / sqrt(v / double(C) + double(eps)));
  const float mf = float(m);
  if (threadIdx.x == 0) {
    mean[n] = mf;
    rstd[n] = r;
  }
  float* yr = y + n * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) yr[c] = (xr[c] - mf) * r * gamma[c] + beta[c];
}

// dx = r * (dy*gamma - mean(dy*gamma) - xhat * mean(dy*gamma*xhat)), the means in double. dx may be
// dy (as on the CPU: every thread reads its dy[c] before writing dx[c]).
__global__ void ln_bwd_dx_kernel(const float* __restrict__ x, const float* __restrict__ gamma,
                                 const float* __restrict__ mean, const float* __restrict__ rstd, const float* dy,
                                 float* dx, int64_t C, bool accumulate) {
  __shared__ double red[33];
  const int64_t n = blockIdx.x;
  const float* xr = x + n * C;
  const float* g = dy + n * C;
  const float m = mean[n], r = rstd[n];
  double sg = 0, sgx = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const double gg = double(g[c]) * gamma[c];
    sg += gg;
    sgx += gg * double((xr[c] - m) * r);
  }
  sg = block_sum_d(sg, red);
  sgx = block_sum_d(sgx, red);
  const float a = float(sg / double(C)), bcoef = float(sgx / double(C));
  float* d = dx + n * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float xhat = (xr[c] - m) * r;
    const float v = r * (g[c] * gamma[c] - a - xhat * bcoef);
    d[c] = accumulate ? d[c] + v : v;
  }
}

// ---------------------------------------------------------------- GELU gradient

__global__ void gelu_bwd_kernel(const float* x, const float* dy, float* dx, int64_t n) {
  HWAGA_GRID_STRIDE(i, n) {
    const float v = x[i];
    const float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
    const float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
    dx[i] = dy[i] * (cdf + v * pdf);
  }
}

// ---------------------------------------------------------------- causal softmax (one warp per row)

__global__ void causal_softmax_kernel(float* P, int64_t rows, int64_t T) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;  // uniform over the warp
  const int64_t i = row % T;
  float* pr = P + row * T;
  float mx = -INFINITY;
  for (int64_t j = lane; j <= i; j += 32) mx = fmaxf(mx, pr[j]);
  mx = warp_max(mx);
  float sum = 0.0f;
  for (int64_t j = lane; j <= i; j += 32) {
    const float e = expf(pr[j] - mx);
    pr[j] = e;
    sum += e;
  }
  sum = warp_sum(sum);
  const float inv = 1.0f / sum;
  for (int64_t j = lane; j <= i; j += 32) pr[j] *= inv;
  for (int64_t j = i + 1 + lane; j < T; j += 32) pr[j] = 0.0f;
}

__global__ void causal_softmax_bwd_kernel(const float* __restrict__ P, int64_t p_stride, float* __restrict__ dS,
                                          int64_t rows, int64_t T) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const int64_t b = row / T, i = row % T;
  const float* pr = P + b * p_stride + i * T;
  float* dr = dS + row * T;
  float dot = 0.0f;
  for (int64_t j = lane; j <= i; j += 32) dot += pr[j] * dr[j];
  dot = warp_sum(dot);
  for (int64_t j = lane; j <= i; j += 32) dr[j] = pr[j] * (dr[j] - dot);
  for (int64_t j = i + 1 + lane; j < T; j += 32) dr[j] = 0.0f;
}

unsigned warp_row_blocks(int64_t rows) {
  const int64_t b = (rows + kThreads / 32 - 1) / (kThreads / 32);
  HWAGA_CHECK(b < (int64_t(1) << 31), "attention: ", rows, " softmax rows exceed one launch");
  return unsigned(b > 0 ? b : 1);
}

// ---------------------------------------------------------------- embeddings and positions

__global__ void embedding_fwd_kernel(const float* __restrict__ table, const int32_t* __restrict__ ids,
                                     float* __restrict__ out, int64_t N, int64_t C) {
  HWAGA_GRID_STRIDE(i, N * C) out[i] = table[int64_t(ids[i / C]) * C + i % C];
}

// One thread per channel walks the rows in order: the f32 additions into each table cell happen in
// the CPU's order (rows sharing an id are added one after the other).
__global__ void embedding_bwd_kernel(const int32_t* __restrict__ ids, const float* __restrict__ dout, float* dtable,
                                     int64_t N, int64_t C) {
  HWAGA_GRID_STRIDE(c, C) {
    for (int64_t n = 0; n < N; ++n) dtable[int64_t(ids[n]) * C + c] += dout[n * C + c];
  }
}

__global__ void add_pos_fwd_kernel(float* y, const float* __restrict__ pos, int64_t N, int64_t R, int64_t C) {
  HWAGA_GRID_STRIDE(i, N * C) y[i] += pos[((i / C) % R) * C + i % C];
}

__global__ void add_pos_bwd_kernel(const float* __restrict__ dy, float* __restrict__ dpos, int64_t N, int64_t R,
                                   int64_t C) {
  HWAGA_GRID_STRIDE(i, R * C) {
    const int64_t r = i / C, c = i % C;
    float acc = dpos[i];
    for (int64_t n = r; n < N; n += R) acc += dy[n * C + c];
    dpos[i] = acc;
  }
}

// ---------------------------------------------------------------- cross-entropy (one block per row)

// dz may be z (as on the CPU): the target's logit is read by every thread before the first barrier,
// and each thread only overwrites the entries it reads itself.
__global__ void cross_entropy_kernel(const float* z, const int32_t* __restrict__ target,
                                     const float* __restrict__ w, float* dz, float dscale,
                                     double* __restrict__ loss, unsigned long long* bad_row, int64_t K) {
  __shared__ float redf[33];
  __shared__ double redd[33];
  const int64_t n = blockIdx.x;
  const float wn = w[n];  // the branches below are uniform over the block
  float* d = dz ? dz + n * K : nullptr;
  if (wn == 0.0f) {
    if (d)
      for (int64_t j = threadIdx.x; j < K; j += blockDim.x) d[j] = 0.0f;
    if (threadIdx.x == 0) loss[n] = 0.0;
    return;
  }
  const int32_t t = target[n];
  if (t < 0 || t >= K) {
    if (threadIdx.x == 0) {
      loss[n] = 0.0;
      atomicMin(bad_row, static_cast<unsigned long long>(n));  // an integer minimum: deterministic
    }
    return;
  }
  const float* zr = z + n * K;
  const float zt = zr[t];
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < K; j += blockDim.x) mx = fmaxf(mx, zr[j]);
  mx = block_max(mx, redf);
  double s = 0;
  for (int64_t j = threadIdx.x; j < K; j += blockDim.x) s += exp(double(zr[j] - mx));
  s = block_sum_d(s, redd);
  if (threadIdx.x == 0) {
    const double lse = double(mx) + log(s);
    loss[n] = double(wn) * (lse - double(zt));
  }
  if (d) {
    // The CPU stores g*e*inv and then subtracts g from the target's entry: two roundings, which
    // the explicit _rn operations keep (no fused multiply-add).
    const float g = wn * dscale;
    const float inv = float(1.0 / s);
    for (int64_t j = threadIdx.x; j < K; j += blockDim.x) {
      float v = __fmul_rn(__fmul_rn(g, expf(zr[j] - mx)), inv);
      if (j == t) v = __fsub_rn(v, g);
      d[j] = v;
    }
  }
}

// ---------------------------------------------------------------- dropout


// One thread per Philox block of 4 words = 4 consecutive elements.
__global__ void dropout_kernel(float* x, int64_t n, float p, float keep_scale, uint64_t seed, uint64_t stream) {
  const int64_t nblk = (n + 3) / 4;
  HWAGA_GRID_STRIDE(blk, nblk) {
    uint64_t words[4];
    philox_block(uint64_t(blk), seed, stream, words);
    for (int q = 0; q < 4; ++q) {
      const int64_t i = blk * 4 + q;
      if (i >= n) break;
      const float u = float(words[q] >> 40) * 0x1.0p-24f;  // Rng::next_float, exact
      x[i] = u < p ? 0.0f : x[i] * keep_scale;
    }
  }
}

// ---------------------------------------------------------------- elementwise and data movement

__global__ void axpy_kernel(float* y, const float* x, float a, int64_t n) {
  HWAGA_GRID_STRIDE(i, n) y[i] += a * x[i];
}

__global__ void scale_kernel(float* x, float a, int64_t n) {
  HWAGA_GRID_STRIDE(i, n) x[i] *= a;
}

__global__ void fill_kernel(float* x, float value, int64_t n) {
  HWAGA_GRID_STRIDE(i, n) x[i] = value;
}

__global__ void pos_plus_bias_kernel(const float* __restrict__ pos, const float* __restrict__ bias, float a,
                                     float* __restrict__ out, int64_t R, int64_t C) {
  HWAGA_GRID_STRIDE(i, R * C) out[i] = pos[i] + a * bias[i % C];
}

__global__ void copy_rows_kernel(float* dst, const float* src, RowCopyGeom g, bool accumulate) {
  HWAGA_GRID_STRIDE(i, g.blocks * g.rows * g.C) {
    const int64_t c = i % g.C, br = i / g.C, r = br % g.rows, b = br / g.rows;
    float* d = dst + (b * g.dst_block + g.dst_off + r * g.dst_row) * g.C + c;
    const float v = src[(b * g.src_block + g.src_off + r * g.src_row) * g.C + c];
    *d = accumulate ? *d + v : v;
  }
}

__global__ void code_sum_kernel(const float* __restrict__ cb, const int32_t* __restrict__ codes,
                                float* __restrict__ out, int64_t B, int64_t P, int64_t Pm, int64_t D, int64_t E) {
  HWAGA_GRID_STRIDE(i, B * Pm * E) {
    const int64_t j = i % E, r = i / E, b = r / Pm, p = r % Pm;
    const int32_t* cr = codes + (b * P + p) * D;
    float acc = 0.0f;
    for (int64_t d = 0; d < D; ++d) acc += cb[int64_t(cr[d]) * E + j];
    out[i] = acc;
  }
}

__global__ void code_prefix_kernel(const float* __restrict__ cb, const int32_t* __restrict__ codes,
                                   float* __restrict__ out, int64_t BP, int64_t D, int64_t E) {
  HWAGA_GRID_STRIDE(i, BP * E) {
    const int64_t j = i % E, r = i / E;
    const int32_t* cr = codes + r * D;
    float acc = 0.0f;
    for (int64_t d = 1; d < D; ++d) {
      acc += cb[int64_t(cr[d - 1]) * E + j];
      out[(r * (D - 1) + d - 1) * E + j] = acc;
    }
  }
}

// ---------------------------------------------------------------- optimizer

// Partial k: Σ x[i]² over [k*kSqChunk, (k+1)*kSqChunk), a fixed per-block tree.
__global__ void sum_squares_partial_kernel(const float* __restrict__ x, int64_t n, double* __restrict__ part) {
  __shared__ double red[33];
  const int64_t i0 = int64_t(blockIdx.x) * kSqChunk;
  const int64_t i1 = i0 + kSqChunk < n ? i0 + kSqChunk : n;
  double s = 0;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) s += double(x[i]) * double(x[i]);
  s = block_sum_d(s, red);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ void sum_squares_finish_kernel(const double* __restrict__ part, int64_t parts, double* __restrict__ out) {
  __shared__ double red[33];
  double s = 0;
  for (int64_t k = threadIdx.x; k < parts; k += blockDim.x) s += part[k];
  s = block_sum_d(s, red);
  if (threadIdx.x == 0) *out = s;
}

__global__ void adamw_kernel(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, int64_t n, float decay, float b1, float b2, float step_size,
                             float inv_sqrt_bc2, float eps) {
  HWAGA_GRID_STRIDE(j, n) {
    const float gj = g[j];
    float wj = w[j] * decay;
    const float mj = b1 * m[j] + (1 - b1) * gj;
    const float vj = b2 * v[j] + (1 - b2) * gj * gj;
    wj -= step_size * mj / (sqrtf(vj) * inv_sqrt_bc2 + eps);
    w[j] = wj;
    m[j] = mj;
    v[j] = vj;
  }
}

}  // namespace

// ---------------------------------------------------------------- launchers

int64_t train_row_chunk() { return kRowChunk; }
int64_t train_column_chunks(int64_t N) { return N > 0 ? (N + kRowChunk - 1) / kRowChunk : 0; }

namespace {
// Grid of the column partial kernels: (column blocks of kThreads) x chunks, flattened into x.
void column_grid(int64_t N, int64_t C, int64_t* col_blocks, unsigned* grid) {
  *col_blocks = (C + kThreads - 1) / kThreads;
  const int64_t g = *col_blocks * train_column_chunks(N);
  HWAGA_CHECK(g < (int64_t(1) << 31), "column sums: [", N, ", ", C, "] too large for one launch");
  *grid = unsigned(g);
}
}  // namespace

void bias_grad_f32(const float* dy, float* db, double* part, int64_t N, int64_t C, cudaStream_t s) {
  if (N == 0 || C == 0) return;
  int64_t col_blocks;
  unsigned grid;
  column_grid(N, C, &col_blocks, &grid);
  column_partial_kernel<false><<<grid, kThreads, 0, s>>>(dy, nullptr, nullptr, nullptr, part, nullptr, N, C,
                                                         col_blocks);
  CUDA_CHECK_LAUNCH();
  column_finish_kernel<<<blocks_for(C), kThreads, 0, s>>>(part, train_column_chunks(N), C, db);
  CUDA_CHECK_LAUNCH();
}

void layer_norm_train_fwd_f32(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                              float* rstd, int64_t N, int64_t C, float eps, cudaStream_t s) {
  if (N == 0) return;
  check_rows(N, "layer_norm_fwd");
  ln_fwd_kernel<<<unsigned(N), kRowThreads, 0, s>>>(x, gamma, beta, y, mean, rstd, C, eps);
  CUDA_CHECK_LAUNCH();
}

void layer_norm_train_bwd_dx_f32(const float* x, const float* gamma, const float* mean, const float* rstd,
                                 const float* dy, float* dx, int64_t N, int64_t C, bool accumulate, cudaStream_t s) {
  if (N == 0 || C == 0) return;
  check_rows(N, "layer_norm_bwd");
  ln_bwd_dx_kernel<<<unsigned(N), kRowThreads, 0, s>>>(x, gamma, mean, rstd, dy, dx, C, accumulate);
  CUDA_CHECK_LAUNCH();
}

void layer_norm_train_bwd_params_f32(const float* x, const float* mean, const float* rstd, const float* dy,
                                     float* dgamma, float* dbeta, double* part, int64_t N, int64_t C, cudaStream_t s) {
  if (N == 0 || C == 0 || (!dgamma && !dbeta)) return;
  int64_t col_blocks;
  unsigned grid;
  column_grid(N, C, &col_blocks, &grid);
  const int64_t chunks = train_column_chunks(N);
  double* part_b = part;                  // Σ dy
  double* part_g = part + chunks * C;     // Σ dy * xhat
  column_partial_kernel<true><<<grid, kThreads, 0, s>>>(dy, x, mean, rstd, part_b, part_g, N, C, col_blocks);
  CUDA_CHECK_LAUNCH();
  if (dgamma) {
    column_finish_kernel<<<blocks_for(C), kThreads, 0, s>>>(part_g, chunks, C, dgamma);
    CUDA_CHECK_LAUNCH();
  }
  if (dbeta) {
    column_finish_kernel<<<blocks_for(C), kThreads, 0, s>>>(part_b, chunks, C, dbeta);
    CUDA_CHECK_LAUNCH();
  }
}

void gelu_bwd_f32(const float* x, const float* dy, float* dx, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  gelu_bwd_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, dy, dx, n);
  CUDA_CHECK_LAUNCH();
}

void causal_softmax_f32(float* probs, int64_t BH, int64_t T, cudaStream_t s) {
  if (BH == 0 || T == 0) return;
  causal_softmax_kernel<<<warp_row_blocks(BH * T), kThreads, 0, s>>>(probs, BH * T, T);
  CUDA_CHECK_LAUNCH();
}

void causal_softmax_bwd_f32(const float* P, int64_t p_stride, float* dS, int64_t B, int64_t T, cudaStream_t s) {
  if (B == 0 || T == 0) return;
  causal_softmax_bwd_kernel<<<warp_row_blocks(B * T), kThreads, 0, s>>>(P, p_stride, dS, B * T, T);
  CUDA_CHECK_LAUNCH();
}

void embedding_fwd_f32(const float* table, const int32_t* ids, float* out, int64_t N, int64_t C, cudaStream_t s) {
  if (N == 0 || C == 0) return;
  embedding_fwd_kernel<<<blocks_for(N * C), kThreads, 0, s>>>(table, ids, out, N, C);
  CUDA_CHECK_LAUNCH();
}

void embedding_bwd_f32(const int32_t* ids, const float* dout, float* dtable, int64_t N, int64_t C, cudaStream_t s) {
  if (N == 0 || C == 0) return;
  // Small blocks: C threads in all, spread over as many SMs as possible.
  const int threads = 64;
  const int64_t b = (C + threads - 1) / threads;
  embedding_bwd_kernel<<<unsigned(b < 65536 ? b : 65535), threads, 0, s>>>(ids, dout, dtable, N, C);
  CUDA_CHECK_LAUNCH();
}

void add_pos_fwd_f32(float* y, const float* pos, int64_t N, int64_t R, int64_t C, cudaStream_t s) {
  if (N == 0 || C == 0) return;
  HWAGA_CHECK(R > 0, "add_pos_fwd: R must be positive, got ", R);
  add_pos_fwd_kernel<<<blocks_for(N * C), kThreads, 0, s>>>(y, pos, N, R, C);
  CUDA_CHECK_LAUNCH();
}

void add_pos_bwd_f32(const float* dy, float* dpos, int64_t N, int64_t R, int64_t C, cudaStream_t s) {
  if (N == 0 || C == 0 || R == 0) return;
  // R*C threads, each with about N/R rows: smaller blocks spread a short R*C over more SMs.
  const int threads = 64;
  const int64_t b = (R * C + threads - 1) / threads;
  add_pos_bwd_kernel<<<unsigned(b < 65536 * 16 ? b : 65536 * 16), threads, 0, s>>>(dy, dpos, N, R, C);
  CUDA_CHECK_LAUNCH();
}

void cross_entropy_rows_f32(const float* z, const int32_t* target, const float* w, float* dz, float dscale,
                            double* loss, unsigned long long* bad_row, int64_t N, int64_t K, cudaStream_t s) {
  if (N == 0) return;
  check_rows(N, "cross_entropy");
  HWAGA_CHECK(K > 0, "cross_entropy: K must be positive, got ", K);
  cross_entropy_kernel<<<unsigned(N), kCeThreads, 0, s>>>(z, target, w, dz, dscale, loss, bad_row, K);
  CUDA_CHECK_LAUNCH();
}

void dropout_f32(float* x, int64_t n, float p, float keep_scale, uint64_t seed, uint64_t stream, cudaStream_t s) {
  if (n == 0) return;
  dropout_kernel<<<blocks_for((n + 3) / 4), kThreads, 0, s>>>(x, n, p, keep_scale, seed, stream);
  CUDA_CHECK_LAUNCH();
}

void axpy_f32(float* y, const float* x, float a, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  axpy_kernel<<<blocks_for(n), kThreads, 0, s>>>(y, x, a, n);
  CUDA_CHECK_LAUNCH();
}

void scale_f32(float* x, float a, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  scale_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, a, n);
  CUDA_CHECK_LAUNCH();
}

void fill_f32(float* x, float value, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  fill_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, value, n);
  CUDA_CHECK_LAUNCH();
}

void pos_plus_bias_f32(const float* pos, const float* bias, float a, float* out, int64_t R, int64_t C,
                       cudaStream_t s) {
  if (R == 0 || C == 0) return;
  pos_plus_bias_kernel<<<blocks_for(R * C), kThreads, 0, s>>>(pos, bias, a, out, R, C);
  CUDA_CHECK_LAUNCH();
}

void copy_rows_f32(float* dst, const float* src, const RowCopyGeom& g, bool accumulate, cudaStream_t s) {
  if (g.blocks <= 0 || g.rows <= 0 || g.C <= 0) return;
  copy_rows_kernel<<<blocks_for(g.blocks * g.rows * g.C), kThreads, 0, s>>>(dst, src, g, accumulate);
  CUDA_CHECK_LAUNCH();
}

void code_sum_f32(const float* cb, const int32_t* codes, float* out, int64_t B, int64_t P, int64_t Pm, int64_t D,
                  int64_t E, cudaStream_t s) {
  if (B == 0 || Pm == 0 || E == 0) return;
  code_sum_kernel<<<blocks_for(B * Pm * E), kThreads, 0, s>>>(cb, codes, out, B, P, Pm, D, E);
  CUDA_CHECK_LAUNCH();
}

void code_prefix_sums_f32(const float* cb, const int32_t* codes, float* out, int64_t BP, int64_t D, int64_t E,
                          cudaStream_t s) {
  if (BP == 0 || D <= 1 || E == 0) return;
  code_prefix_kernel<<<blocks_for(BP * E), kThreads, 0, s>>>(cb, codes, out, BP, D, E);
  CUDA_CHECK_LAUNCH();
}

int64_t sum_squares_partials(int64_t n) { return n > 0 ? (n + kSqChunk - 1) / kSqChunk : 0; }

void sum_squares_f32(const float* x, int64_t n, double* part, double* out, cudaStream_t s) {
  if (n == 0) {
    CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double), s));
    return;
  }
  const int64_t parts = sum_squares_partials(n);
  HWAGA_CHECK(parts < (int64_t(1) << 31), "sum_squares: ", n, " values exceed one launch");
  sum_squares_partial_kernel<<<unsigned(parts), kThreads, 0, s>>>(x, n, part);
  CUDA_CHECK_LAUNCH();
  sum_squares_finish_kernel<<<1, 1024, 0, s>>>(part, parts, out);
  CUDA_CHECK_LAUNCH();
}

void adamw_f32(float* w, const float* g, float* m, float* v, int64_t n, float decay, float b1, float b2,
               float step_size, float inv_sqrt_bc2, float eps, cudaStream_t s) {
  if (n == 0) return;
  adamw_kernel<<<blocks_for(n), kThreads, 0, s>>>(w, g, m, v, n, decay, b1, b2, step_size, inv_sqrt_bc2, eps);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hwaga::cuda
