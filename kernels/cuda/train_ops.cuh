// CUDA kernels of the training ops (train/train_ops.h; the CPU reference is train/transformer_ops.cpp
// and train/cpu_train_ops.cpp). The matrix products run on cuBLAS (backend/cuda/cuda_train_ops.cpp);
// these are the rest. Every launcher takes the stream to run on and checks the launch.
//
// Determinism: no floating-point atomics. Every reduction has a fixed shape that depends only on
// the problem size (rows summed in index order per column, or fixed row chunks whose partial sums
// are added in chunk order), so results are the same run to run. Where the CPU accumulates a
// reduction in double, so do these kernels: the results then differ from the CPU only by the
// order of double additions, far below f32's resolution.
//
// Shape legend: N rows, C channels (row width), R positional rows, B batch, T tokens, H heads,
// K classes, P positions, D depth, E codebook vector dim.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace hwaga::cuda {

// ---- deterministic column sums (bias, LayerNorm gain/shift gradients) ----
// Rows are cut into chunks of train_row_chunk() rows; each chunk's column sums (double) go to
// `part`, then the chunks are added in order. part needs train_column_chunks(N) * C doubles per
// sum.
int64_t train_row_chunk();
int64_t train_column_chunks(int64_t N);
// db[c] += float(Σ_n dy[n,c]) (sum in double).
void bias_grad_f32(const float* dy, float* db, double* part, int64_t N, int64_t C, cudaStream_t s);

// ---- LayerNorm (train/transformer_ops.h: biased variance, statistics in double) ----
// y = (x - mean) * rstd * gamma + beta, with mean[N], rstd[N] saved. One block per row.
void layer_norm_train_fwd_f32(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                              float* rstd, int64_t N, int64_t C, float eps, cudaStream_t s);
// dx (= or += when accumulate), one block per row.
void layer_norm_train_bwd_dx_f32(const float* x, const float* gamma, const float* mean, const float* rstd,
                                 const float* dy, float* dx, int64_t N, int64_t C, bool accumulate, cudaStream_t s);
// dgamma += Σ_n dy*xhat, dbeta += Σ_n dy (either may be null); part needs 2 * train_column_chunks(N) * C
// doubles.
void layer_norm_train_bwd_params_f32(const float* x, const float* mean, const float* rstd, const float* dy,
                                     float* dgamma, float* dbeta, double* part, int64_t N, int64_t C, cudaStream_t s);

// ---- GELU gradient: dx = dy * (Φ(x) + x φ(x)), erff/expf; dx may alias dy ----
void gelu_bwd_f32(const float* x, const float* dy, float* dx, int64_t n, cudaStream_t s);

// ---- causal attention pieces (the products run on cuBLAS) ----
// probs [rows = BH*T, T], row i of each [T,T] block holds the scaled scores q_i.k_j: softmax over
// j <= i in place, zeros above the diagonal. One warp per row.
void causal_softmax_f32(float* probs, int64_t BH, int64_t T, cudaStream_t s);
// For b < B, i < T: with p = P + b*p_stride + i*T and d = dS + (b*T + i)*T (dP on entry):
// d[j] = p[j] * (d[j] - Σ_{j'<=i} p[j'] d[j']) for j <= i, 0 above. One warp per row.
void causal_softmax_bwd_f32(const float* P, int64_t p_stride, float* dS, int64_t B, int64_t T, cudaStream_t s);

// ---- embeddings and positions ----
// out[n,:] = table[ids[n],:] (ids in range: the caller's check).
void embedding_fwd_f32(const float* table, const int32_t* ids, float* out, int64_t N, int64_t C, cudaStream_t s);
// dtable[ids[n],:] += dout[n,:], rows added in index order per channel (one thread per channel),
// so the result equals the CPU's bit for bit.
void embedding_bwd_f32(const int32_t* ids, const float* dout, float* dtable, int64_t N, int64_t C, cudaStream_t s);
// y[n,:] += pos[n % R,:].
void add_pos_fwd_f32(float* y, const float* pos, int64_t N, int64_t R, int64_t C, cudaStream_t s);
// dpos[r,:] += Σ_{n%R==r} dy[n,:], f32 additions in increasing n (one thread per (r,c)): the CPU's bits.
void add_pos_bwd_f32(const float* dy, float* dpos, int64_t N, int64_t R, int64_t C, cudaStream_t s);

// ---- softmax cross-entropy, one block per row ----
// loss[n] = w[n] * (logsumexp(z_n) - z_n[t_n]) in double (0 for w == 0); dz (may be null) as in
// train/transformer_ops.h. A weighted row whose target is outside [0,K) writes loss 0, leaves
// its dz row alone and lowers *bad_row to its index (*bad_row must start at ~0ull).
void cross_entropy_rows_f32(const float* z, const int32_t* target, const float* w, float* dz, float dscale,
                            double* loss, unsigned long long* bad_row, int64_t N, int64_t K, cudaStream_t s);

// ---- dropout: x[i] = u_i < p ? 0 : x[i] * keep_scale, u_i = (word i of Philox4x64-10 {seed,
// stream}) >> 40 times 2^-24: the CPU's mask bit for bit (sample/rng.h) ----
void dropout_f32(float* x, int64_t n, float p, float keep_scale, uint64_t seed, uint64_t stream, cudaStream_t s);

// ---- elementwise and data movement ----
void axpy_f32(float* y, const float* x, float a, int64_t n, cudaStream_t s);  // y += a*x
void scale_f32(float* x, float a, int64_t n, cudaStream_t s);                 // x *= a
void fill_f32(float* x, float value, int64_t n, cudaStream_t s);
// out[r,c] = pos[r,c] + s*bias[c].
void pos_plus_bias_f32(const float* pos, const float* bias, float a, float* out, int64_t R, int64_t C,
                       cudaStream_t s);
// train::RowCopy, restated so that this header needs no C++20 (nvcc compiles the .cu as C++17).
struct RowCopyGeom {
  int64_t blocks = 1, rows = 0, C = 0;
  int64_t dst_block = 0, dst_row = 1, dst_off = 0;
  int64_t src_block = 0, src_row = 1, src_off = 0;
};
void copy_rows_f32(float* dst, const float* src, const RowCopyGeom& g, bool accumulate, cudaStream_t s);

// ---- stage-2 code embeddings (codes in range) ----
// out[b*Pm + p, j] = 0 + cb[codes[b,p,0], j] + ... + cb[codes[b,p,D-1], j] (f32, in order).
void code_sum_f32(const float* cb, const int32_t* codes, float* out, int64_t B, int64_t P, int64_t Pm, int64_t D,
                  int64_t E, cudaStream_t s);
// out[r*(D-1) + d-1, j] = running f32 sum of cb[codes[r,d'], j] for d' < d.
void code_prefix_sums_f32(const float* cb, const int32_t* codes, float* out, int64_t BP, int64_t D, int64_t E,
                          cudaStream_t s);

// ---- optimizer ----
// *out = Σ x[i]² in double (device), fixed two-level tree; part needs sum_squares_partials(n) doubles.
int64_t sum_squares_partials(int64_t n);
void sum_squares_f32(const float* x, int64_t n, double* part, double* out, cudaStream_t s);
// One AdamW step (train/train_ops.h's formula, f32, sqrtf).
void adamw_f32(float* w, const float* g, float* m, float* v, int64_t n, float decay, float b1, float b2,
               float step_size, float inv_sqrt_bc2, float eps, cudaStream_t s);

}  // namespace hwaga::cuda
