// Forward (with what the backward needs) and backward passes of the transformer ops that the
// stage-2 trainers use, on the CPU in f32, multi-threaded over hwaga's pool.
//
// Conventions: gradients of parameters ACCUMULATE (+=) into their buffers (a parameter used twice,
// like input_mlp per depth, just gets two calls); gradients of activations are WRITTEN (=) unless
// the function says otherwise. The reductions written here (bias, LayerNorm gain, embedding and
// positional gradients, the loss) sum rows in a fixed order, threaded over columns, so they do
// not depend on the thread count; the matrix products go through cpu::sgemm.
//
// Shape legend: N rows, in/out features, C channels, B batch, T tokens, H heads, hd head dim,
// V table rows, K classes.
#pragma once
#include <cstdint>
#include <string>

namespace hwaga::train {

// Precision of the matrix products of the linear layers (linear_fwd / linear_bwd) and of the
// stage-1 convolutions (conv_ops.h): f32 (strict; the default) or bf16 (both inputs rounded to
// bf16, products accumulated in f32: cpu::gemm_bf16, AMX where the CPU has it). Weights,
// gradients, optimizer state and every other op stay f32 (f32 master weights). Process-wide;
// `hwaga train --matmul` and `hwaga train-tokenizer --matmul` set it.
enum class MatmulPrecision { f32, bf16 };
void set_matmul_precision(MatmulPrecision p);
MatmulPrecision matmul_precision();
// "f32" / "bf16"; parse_matmul_precision throws hwaga::Error naming `what` on anything else.
const char* matmul_precision_name(MatmulPrecision p);
MatmulPrecision parse_matmul_precision(const std::string& s, const std::string& what);
// The product the linear layers and convolutions use: cpu::sgemm or cpu::gemm_bf16.
void train_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// ---- linear: y [N,out] = x [N,in] W^T + b, W [out,in], b [out] or null ----
void linear_fwd(const float* x, const float* W, const float* b, float* y, int64_t N, int64_t in, int64_t out);
// dW += dy^T x, db += Σ_n dy[n] (when db != null); dx = dy W (dx null: skipped; accumulate_dx: +=).
void linear_bwd(const float* x, const float* W, const float* dy, float* dx, float* dW, float* db, int64_t N,
                int64_t in, int64_t out, bool accumulate_dx = false);

// ---- LayerNorm over the last dim (biased variance, eps inside the sqrt) ----
// y = (x - mean) * rstd * gamma + beta; saves mean[N], rstd[N].
void layer_norm_fwd(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd,
                    int64_t N, int64_t C, float eps);
// dx (= or += when accumulate_dx), dgamma +=, dbeta +=.
void layer_norm_bwd(const float* x, const float* gamma, const float* mean, const float* rstd, const float* dy,
                    float* dx, float* dgamma, float* dbeta, int64_t N, int64_t C, bool accumulate_dx = false);

// ---- exact erf GELU ----
void gelu_fwd(const float* x, float* y, int64_t n);
// dx = dy * (Φ(x) + x φ(x)); dx may alias dy.
void gelu_bwd(const float* x, const float* dy, float* dx, int64_t n);

// ---- causal multi-head self-attention over whole sequences ----
// q,k,v,out [B,T,C] with C = H*hd (head h = channels [h*hd,(h+1)*hd)); probs [B,H,T,T] saved
// (zero above the diagonal). out[b,i] = Σ_{j<=i} softmax_j(q_i.k_j / sqrt(hd)) v_j.
void attention_fwd(const float* q, const float* k, const float* v, float* probs, float* out, int64_t B, int64_t T,
                   int64_t H, int64_t hd);
// dq, dk, dv [B,T,C] written from dout [B,T,C] and the saved probs.
void attention_bwd(const float* q, const float* k, const float* v, const float* probs, const float* dout, float* dq,
                   float* dk, float* dv, int64_t B, int64_t T, int64_t H, int64_t hd);

// ---- embedding lookup: out[n] = table[ids[n]] (ids in [0,V), checked by the caller) ----
void embedding_fwd(const float* table, const int32_t* ids, float* out, int64_t N, int64_t C);
// dtable[ids[n]] += dout[n] (rows in order; threaded over channels).
void embedding_bwd(const int32_t* ids, const float* dout, float* dtable, int64_t N, int64_t C);

// ---- positional rows: y[n] += pos[n % R]; backward dpos[r] += Σ_{n % R == r} dy[n] ----
void add_pos_fwd(float* y, const float* pos, int64_t N, int64_t R, int64_t C);
void add_pos_bwd(const float* dy, float* dpos, int64_t N, int64_t R, int64_t C);

// ---- softmax cross-entropy with per-row weights ----
// loss = Σ_n w[n] * (logsumexp(z_n) - z_n[t_n]) (double); rows with w[n] == 0 are skipped (their
// target may be anything). When dz != null: dz_n = w[n] * (softmax(z_n) - onehot(t_n)) * dscale
// (zero rows for w == 0). Targets of weighted rows must be in [0,K) (checked: throws).
double cross_entropy(const float* z, const int32_t* target, const float* w, float* dz, float dscale, int64_t N,
                     int64_t K);

// ---- dropout (inverted, deterministic) ----
// Element i is kept when its uniform draw u_i >= p and then scaled by 1/(1-p); u_i is the i-th
// 24-bit float of the Philox stream (seed, stream) (sample/rng.h), so the mask depends only on
// (seed, stream, i) and the backward (the same call on the gradient) replays it exactly. p = 0:
// nothing happens.
void dropout_apply(float* x, int64_t n, float p, uint64_t seed, uint64_t stream);
// The stream of one dropout site at one training step: (step << 16) | site, site < 65536.
inline uint64_t dropout_stream(int64_t step, uint32_t site) { return (uint64_t(step) << 16) | site; }

}  // namespace hwaga::train
