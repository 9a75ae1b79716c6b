// The CUDA TrainOps (train/train_ops.h): the training ops of one GPU, queued on the stream of a CUDA
// inference backend that this object owns (so the sample pictures of a training run share its
// device, stream and caching allocator).
//
// Matrix products run on cuBLAS in column-major terms: a row-major [r,c] matrix with leading
// dimension ld is the column-major [c,r] matrix with the same ld, so y = x W^T (row-major) is
// y^T = W x^T, i.e. gemm(T, N) with W and x as stored. f32 products keep the handle's default math
// (no TF32, as the backend sets it); bf16 products round both operands to bf16 (round to nearest
// even, like the CPU's gemm_bf16) and accumulate in f32. The other ops are the kernels of
// kernels/cuda/train_ops.cu. Scratch memory comes from the backend's caching allocator; since all
// work is on one stream, a scratch block released at the end of an op may be reused by the next
// op's kernels without a sync.
//
// Stage 1's convolutions are im2col + cuBLAS per image (forward, dW, and dx through col2im), f32
// without TF32 like the rest; the spatial attention is three strided-batched products around the
// row softmax. (cuDNN's backward convolutions would be faster; this is the simple, checked path.)
#include <cmath>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_context.h"
#include "kernels/cuda/conv_train.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/softmax.cuh"
#include "kernels/cuda/train_ops.cuh"
#include "kernels/cuda/transformer_ops.cuh"
#include "train/train_ops.h"
#include "train/transformer_ops.h"

namespace hwaga::train {
namespace {

constexpr int64_t kIntMax = 2147483647;

int as_int(int64_t v, const char* what) {
  HWAGA_CHECK(v >= 0 && v <= kIntMax, "cuda train ops: ", what, " = ", v, " is outside cuBLAS's int range");
  return int(v);
}

class CudaTrainOps final : public TrainOps {
 public:
  explicit CudaTrainOps(std::unique_ptr<Backend> be) : be_(std::move(be)), ctx_(cuda_context(*be_)) {
    gpu_name_ = cuda_stats(*be_).device_name;
  }
  ~CudaTrainOps() override { cudaStreamSynchronize(ctx_.stream); }

  Device device() const override { return Device::CUDA; }
  std::string name() const override { return "cuda (" + gpu_name_ + ")"; }
  Backend& backend() override { return *be_; }

  // ---------------------------------------------------------------- memory

  Tensor empty(const Shape& shape, DType dtype) override {
    bind();
    return ctx_.empty(shape, dtype);
  }
  Tensor zeros(const Shape& shape, DType dtype) override {
    bind();
    Tensor t = ctx_.empty(shape, dtype);
    if (t.nbytes()) CUDA_CHECK(cudaMemsetAsync(t.data(), 0, t.nbytes(), ctx_.stream));
    return t;
  }
  Tensor upload(const Tensor& host) override {
    HWAGA_CHECK(host.device() == Device::CPU, "cuda train ops: upload expects a host tensor, got a ",
                device_name(host.device()), " one");
    HWAGA_CHECK(host.defined() || host.numel() == 0, "cuda train ops: upload of an undefined tensor");
    bind();
    Tensor d = ctx_.empty(host.shape(), host.dtype());
    if (d.nbytes()) {
      CUDA_CHECK(cudaMemcpyAsync(d.data(), host.data(), d.nbytes(), cudaMemcpyHostToDevice, ctx_.stream));
      CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));  // `host` may be a temporary
    }
    return d;
  }
  Tensor download(const Tensor& t) override {
    HWAGA_CHECK(t.device() == Device::CUDA, "cuda train ops: download of a ", device_name(t.device()),
                " tensor (expected a cuda one)");
    bind();
    Tensor h = Tensor::empty(t.shape(), t.dtype());
    if (h.nbytes()) CUDA_CHECK(cudaMemcpyAsync(h.data(), t.data(), h.nbytes(), cudaMemcpyDeviceToHost, ctx_.stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    return h;
  }
  void write(void* dst, const void* host_src, size_t bytes) override {
    if (bytes == 0) return;
    bind();
    CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, ctx_.stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));  // the caller may reuse host_src at once
  }
  void read(void* host_dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    bind();
    CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
  }
  void copy(float* dst, const float* src, int64_t n) override {
    if (n <= 0 || dst == src) return;
    bind();
    CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(float), cudaMemcpyDeviceToDevice, ctx_.stream));
  }
  void fill(float* x, int64_t n, float value) override {
    if (n <= 0) return;
    bind();
    if (value == 0.0f) {  // like the CPU: memset (so -0.0f fills +0.0f too)
      CUDA_CHECK(cudaMemsetAsync(x, 0, size_t(n) * sizeof(float), ctx_.stream));
      return;
    }
    cuda::fill_f32(x, value, n, ctx_.stream);
  }
  void synchronize() override {
    bind();
    CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
  }

  // ---------------------------------------------------------------- linear

  void linear_fwd(const float* x, const float* W, const float* b, float* y, int64_t N, int64_t in,
                  int64_t out) override {
    if (N == 0 || out == 0) return;
    bind();
    if (in == 0) {
      CUDA_CHECK(cudaMemsetAsync(y, 0, size_t(N * out) * sizeof(float), ctx_.stream));
    } else if (bf16()) {
      auto Wb = to_bf16(W, out * in), xb = to_bf16(x, N * in);
      gemm_bf16(CUBLAS_OP_T, CUBLAS_OP_N, out, N, in, 1.0f, bf(Wb), in, bf(xb), in, 0.0f, y, out);
    } else {
      sgemm(CUBLAS_OP_T, CUBLAS_OP_N, out, N, in, 1.0f, W, in, x, in, 0.0f, y, out);  // y^T = W x^T
    }
    if (b) cuda::add_bias_rows_f32(y, b, N, out, ctx_.stream);
  }

  void linear_bwd(const float* x, const float* W, const float* dy, float* dx, float* dW, float* db, int64_t N,
                  int64_t in, int64_t out, bool accumulate_dx) override {
    if (N == 0) return;
    bind();
    const bool do_dW = dW && in > 0 && out > 0, do_dx = dx && in > 0;
    if (bf16()) {
      std::shared_ptr<void> dyb, xb, Wb;
      if ((do_dW || do_dx) && out > 0) dyb = to_bf16(dy, N * out);
      if (do_dW) {
        xb = to_bf16(x, N * in);
        gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_T, in, out, N, 1.0f, bf(xb), in, bf(dyb), out, 1.0f, dW, in);
      }
      if (do_dx && out > 0) {
        Wb = to_bf16(W, out * in);
        gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_N, in, N, out, 1.0f, bf(Wb), in, bf(dyb), out, accumulate_dx ? 1.0f : 0.0f,
                  dx, in);
      }
    } else {
      // dW^T [in,out] += x^T dy ; dx^T [in,N] (+)= W^T dy^T
      if (do_dW) sgemm(CUBLAS_OP_N, CUBLAS_OP_T, in, out, N, 1.0f, x, in, dy, out, 1.0f, dW, in);
      if (do_dx && out > 0)
        sgemm(CUBLAS_OP_N, CUBLAS_OP_N, in, N, out, 1.0f, W, in, dy, out, accumulate_dx ? 1.0f : 0.0f, dx, in);
    }
    if (do_dx && out == 0 && !accumulate_dx)  // an empty product: dx = 0
      CUDA_CHECK(cudaMemsetAsync(dx, 0, size_t(N * in) * sizeof(float), ctx_.stream));
    if (db && out > 0) {
      auto part = ctx_.scratch(size_t(cuda::train_column_chunks(N) * out) * sizeof(double));
      cuda::bias_grad_f32(dy, db, static_cast<double*>(part.get()), N, out, ctx_.stream);
    }
  }

  // ---------------------------------------------------------------- LayerNorm, GELU

  void layer_norm_fwd(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd,
                      int64_t N, int64_t C, float eps) override {
    bind();
    cuda::layer_norm_train_fwd_f32(x, gamma, beta, y, mean, rstd, N, C, eps, ctx_.stream);
  }

  void layer_norm_bwd(const float* x, const float* gamma, const float* mean, const float* rstd, const float* dy,
                      float* dx, float* dgamma, float* dbeta, int64_t N, int64_t C, bool accumulate_dx) override {
    if (N == 0 || C == 0) return;
    bind();
    // dx first, then the parameter sums, in the CPU's order (matters only if dx aliases dy).
    if (dx) cuda::layer_norm_train_bwd_dx_f32(x, gamma, mean, rstd, dy, dx, N, C, accumulate_dx, ctx_.stream);
    if (dgamma || dbeta) {
      auto part = ctx_.scratch(size_t(2 * cuda::train_column_chunks(N) * C) * sizeof(double));
      cuda::layer_norm_train_bwd_params_f32(x, mean, rstd, dy, dgamma, dbeta, static_cast<double*>(part.get()), N, C,
                                            ctx_.stream);
    }
  }

  void gelu_fwd(const float* x, float* y, int64_t n) override {
    if (n == 0) return;
    bind();
    cuda::gelu_f32(x, y, n, ctx_.stream);
  }
  void gelu_bwd(const float* x, const float* dy, float* dx, int64_t n) override {
    bind();
    cuda::gelu_bwd_f32(x, dy, dx, n, ctx_.stream);
  }

  // ---------------------------------------------------------------- attention
  //
  // Per head h, batched over B (stride T*C through q/k/v/out, H*T*T through probs): the head's
  // [T,hd] slices are row-major with leading dimension C.

  void attention_fwd(const float* q, const float* k, const float* v, float* probs, float* out, int64_t B, int64_t T,
                     int64_t H, int64_t hd) override {
    if (B == 0 || T == 0 || H == 0) return;
    HWAGA_CHECK(hd > 0, "attention_fwd: head dim must be positive, got ", hd);
    bind();
    const int64_t C = H * hd, TT = T * T;
    const float scale = 1.0f / std::sqrt(float(hd));  // the CPU's f32 constant
    for (int64_t h = 0; h < H; ++h)  // S^T = K Q^T * scale into probs[b,h]
      sgemm_batched(CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, scale, k + h * hd, C, T * C, q + h * hd, C, T * C, 0.0f,
                    probs + h * TT, T, H * TT, B);
    cuda::causal_softmax_f32(probs, B * H, T, ctx_.stream);
    for (int64_t h = 0; h < H; ++h)  // out^T = V^T P^T
      sgemm_batched(CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, 1.0f, v + h * hd, C, T * C, probs + h * TT, T, H * TT, 0.0f,
                    out + h * hd, C, T * C, B);
  }

  void attention_bwd(const float* q, const float* k, const float* v, const float* probs, const float* dout, float* dq,
                     float* dk, float* dv, int64_t B, int64_t T, int64_t H, int64_t hd) override {
    if (B == 0 || T == 0 || H == 0) return;
    HWAGA_CHECK(hd > 0, "attention_bwd: head dim must be positive, got ", hd);
    bind();
    const int64_t C = H * hd, TT = T * T;
    const float scale = 1.0f / std::sqrt(float(hd));
    auto dS_block = ctx_.scratch(size_t(B * TT) * sizeof(float));  // one head's dP / dS [B,T,T]
    float* dS = static_cast<float*>(dS_block.get());
    for (int64_t h = 0; h < H; ++h) {
      const int64_t off = h * hd;
      const float* P = probs + h * TT;
      // dV = P^T dO  ->  dV^T = dO^T P
      sgemm_batched(CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, 1.0f, dout + off, C, T * C, P, T, H * TT, 0.0f, dv + off, C,
                    T * C, B);
      // dP = dO V^T  ->  dP^T = V dO^T
      sgemm_batched(CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, 1.0f, v + off, C, T * C, dout + off, C, T * C, 0.0f, dS, T, TT,
                    B);
      cuda::causal_softmax_bwd_f32(P, H * TT, dS, B, T, ctx_.stream);  // dS = P * (dP - Σ P dP)
      // dQ = dS K * scale  ->  dQ^T = K^T dS^T
      sgemm_batched(CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, scale, k + off, C, T * C, dS, T, TT, 0.0f, dq + off, C, T * C,
                    B);
      // dK = dS^T Q * scale  ->  dK^T = Q^T dS
      sgemm_batched(CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, scale, q + off, C, T * C, dS, T, TT, 0.0f, dk + off, C, T * C,
                    B);
    }
  }

  // ---------------------------------------------------------------- embedding, positions, loss, dropout

  void embedding_fwd(const float* table, const int32_t* ids, float* out, int64_t N, int64_t C) override {
    bind();
    cuda::embedding_fwd_f32(table, ids, out, N, C, ctx_.stream);
  }
  void embedding_bwd(const int32_t* ids, const float* dout, float* dtable, int64_t N, int64_t C) override {
    bind();
    cuda::embedding_bwd_f32(ids, dout, dtable, N, C, ctx_.stream);
  }
  void add_pos_fwd(float* y, const float* pos, int64_t N, int64_t R, int64_t C) override {
    bind();
    cuda::add_pos_fwd_f32(y, pos, N, R, C, ctx_.stream);
  }
  void add_pos_bwd(const float* dy, float* dpos, int64_t N, int64_t R, int64_t C) override {
    bind();
    cuda::add_pos_bwd_f32(dy, dpos, N, R, C, ctx_.stream);
  }

  double cross_entropy(const float* z, const int32_t* target, const float* w, float* dz, float dscale, int64_t N,
                       int64_t K) override {
    if (N == 0) return 0.0;
    bind();
    auto loss_block = ctx_.scratch(size_t(N) * sizeof(double));
    auto bad_block = ctx_.scratch(sizeof(unsigned long long));
    auto* bad = static_cast<unsigned long long*>(bad_block.get());
    CUDA_CHECK(cudaMemsetAsync(bad, 0xFF, sizeof(unsigned long long), ctx_.stream));  // no bad row yet
    cuda::cross_entropy_rows_f32(z, target, w, dz, dscale, static_cast<double*>(loss_block.get()), bad, N, K,
                                 ctx_.stream);
    std::vector<double> rows(static_cast<size_t>(N));
    unsigned long long bad_row = 0;
    CUDA_CHECK(cudaMemcpyAsync(rows.data(), loss_block.get(), rows.size() * sizeof(double), cudaMemcpyDeviceToHost,
                               ctx_.stream));
    CUDA_CHECK(cudaMemcpyAsync(&bad_row, bad, sizeof(bad_row), cudaMemcpyDeviceToHost, ctx_.stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    if (bad_row != ~0ull) {
      // The lowest offending row, as the CPU's check (which runs in row order) reports it. Unlike
      // the CPU, the other rows' dz are already written.
      int32_t t = 0;
      CUDA_CHECK(cudaMemcpy(&t, target + bad_row, sizeof(t), cudaMemcpyDeviceToHost));
      fail("cross_entropy: target ", t, " of row ", bad_row, " is outside [0, ", K, ")");
    }
    double loss = 0;  // row order in double, like the CPU
    for (double l : rows) loss += l;
    return loss;
  }

  void dropout_apply(float* x, int64_t n, float p, uint64_t seed, uint64_t stream) override {
    if (p <= 0.0f) return;
    HWAGA_CHECK(p < 1.0f, "dropout: p must be below 1, got ", p);
    const float keep_scale = 1.0f / (1.0f - p);  // the CPU's f32 expression
    bind();
    cuda::dropout_f32(x, n, p, keep_scale, seed, stream, ctx_.stream);
  }

  // ---------------------------------------------------------------- elementwise and data movement

  void add(const float* a, const float* b, float* y, int64_t n) override {
    if (n == 0) return;
    bind();
    cuda::add_f32(a, b, y, n, ctx_.stream);
  }
  void axpy(float* y, const float* x, float a, int64_t n) override {
    bind();
    cuda::axpy_f32(y, x, a, n, ctx_.stream);
  }
  void scale(float* x, float s, int64_t n) override {
    bind();
    cuda::scale_f32(x, s, n, ctx_.stream);
  }
  void pos_plus_bias(const float* pos, const float* bias, float s, float* out, int64_t R, int64_t C) override {
    bind();
    cuda::pos_plus_bias_f32(pos, bias, s, out, R, C, ctx_.stream);
  }
  void copy_rows(float* dst, const float* src, const RowCopy& g, bool accumulate) override {
    cuda::RowCopyGeom c;
    c.blocks = g.blocks;
    c.rows = g.rows;
    c.C = g.C;
    c.dst_block = g.dst_block;
    c.dst_row = g.dst_row;
    c.dst_off = g.dst_off;
    c.src_block = g.src_block;
    c.src_row = g.src_row;
    c.src_off = g.src_off;
    bind();
    cuda::copy_rows_f32(dst, src, c, accumulate, ctx_.stream);
  }

  void code_sum(const float* cb, const int32_t* codes, float* out, int64_t B, int64_t P, int64_t Pm, int64_t D,
                int64_t E) override {
    bind();
    cuda::code_sum_f32(cb, codes, out, B, P, Pm, D, E, ctx_.stream);
  }
  void code_prefix_sums(const float* cb, const int32_t* codes, float* out, int64_t BP, int64_t D,
                        int64_t E) override {
    bind();
    cuda::code_prefix_sums_f32(cb, codes, out, BP, D, E, ctx_.stream);
  }

  // ---------------------------------------------------------------- the taming conv net

  void conv2d_fwd(const cpu::Conv2dShape& s, const float* x, const float* w, const float* b, float* y) override {
    const int64_t Ho = s.Ho(), Wo = s.Wo(), P = Ho * Wo, K2 = s.Cin * s.kh * s.kw;
    HWAGA_CHECK(Ho >= 1 && Wo >= 1, "conv2d_fwd: empty output");
    if (s.B == 0 || s.Cout == 0) return;
    bind();
    auto col_block = ctx_.scratch(size_t(K2 * P) * sizeof(float));
    float* col = static_cast<float*>(col_block.get());
    for (int64_t i = 0; i < s.B; ++i) {
      im2col(s, x + i * s.Cin * s.H * s.W, col);
      // y_i [Cout,P] = w [Cout,K2] col [K2,P]  ->  y_i^T = col^T w^T
      sgemm(CUBLAS_OP_N, CUBLAS_OP_N, P, s.Cout, K2, 1.0f, col, P, w, K2, 0.0f, y + i * s.Cout * P, P);
    }
    if (b) cuda::add_bias_nchw_f32(y, b, s.B, s.Cout, P, ctx_.stream);
  }

  void conv2d_bwd(const cpu::Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                  float* db) override {
    const int64_t Ho = s.Ho(), Wo = s.Wo(), P = Ho * Wo, K2 = s.Cin * s.kh * s.kw;
    HWAGA_CHECK(Ho >= 1 && Wo >= 1, "conv2d_bwd: empty output");
    if (s.B == 0) return;
    bind();
    if (db) cuda::channel_sum_nchw_f32(dy, db, s.B, s.Cout, P, ctx_.stream);
    if (!dw && !dx) return;
    auto col_block = ctx_.scratch(size_t(K2 * P) * sizeof(float));
    float* col = static_cast<float*>(col_block.get());
    for (int64_t i = 0; i < s.B; ++i) {
      const float* dyi = dy + i * s.Cout * P;
      if (dw) {  // dw [Cout,K2] += dy_i [Cout,P] col^T  ->  dw^T += col dy_i^T
        im2col(s, x + i * s.Cin * s.H * s.W, col);
        sgemm(CUBLAS_OP_T, CUBLAS_OP_N, K2, s.Cout, P, 1.0f, col, P, dyi, P, 1.0f, dw, K2);
      }
      if (dx) {  // dcol [K2,P] = w^T dy_i  ->  dcol^T = dy_i^T w
        sgemm(CUBLAS_OP_N, CUBLAS_OP_T, P, K2, s.Cout, 1.0f, dyi, P, w, K2, 0.0f, col, P);
        cuda::col2im_train_f32(col, dx + i * s.Cin * s.H * s.W, int(s.Cin), int(s.H), int(s.W), int(s.kh),
                               int(s.kw), s.pad_top, s.pad_left, s.stride, int(Ho), int(Wo), ctx_.stream);
      }
    }
  }

  void group_norm_fwd(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd,
                      int64_t B, int64_t C, int64_t S, int64_t G, float eps) override {
    bind();
    cuda::group_norm_train_fwd_f32(x, gamma, beta, y, mean, rstd, B, C, S, G, eps, ctx_.stream);
  }
  void group_norm_bwd(const float* x, const float* gamma, const float* mean, const float* rstd, const float* dy,
                      float* dx, float* dgamma, float* dbeta, int64_t B, int64_t C, int64_t S, int64_t G) override {
    bind();
    // the parameter sums first: dx may alias dy
    if (dgamma || dbeta)
      cuda::group_norm_train_bwd_params_f32(x, mean, rstd, dy, dgamma, dbeta, B, C, S, G, ctx_.stream);
    cuda::group_norm_train_bwd_dx_f32(x, gamma, mean, rstd, dy, dx, B, C, S, G, ctx_.stream);
  }
  void silu_fwd(const float* x, float* y, int64_t n) override {
    bind();
    cuda::silu_f32(x, y, n, ctx_.stream);
  }
  void silu_bwd(const float* x, const float* dy, float* dx, int64_t n) override {
    bind();
    cuda::silu_bwd_f32(x, dy, dx, n, ctx_.stream);
  }
  void upsample2x_fwd(const float* x, float* y, int64_t P, int64_t H, int64_t W) override {
    if (P * H * W == 0) return;
    bind();
    cuda::upsample_nearest2x_f32(x, y, P, int(H), int(W), ctx_.stream);
  }
  void upsample2x_bwd(const float* dy, float* dx, int64_t P, int64_t H, int64_t W) override {
    bind();
    cuda::upsample2x_bwd_f32(dy, dx, P, H, W, ctx_.stream);
  }

  // Row-major q_b, k_b, v_b [C,S] are column-major [S,C] with ld S; probs_b [S,S] row-major.
  void spatial_attention_fwd(const float* q, const float* k, const float* v, float* out, float* probs, int64_t B,
                             int64_t C, int64_t S) override {
    if (B == 0 || S == 0) return;
    bind();
    const int64_t CS = C * S, SS = S * S;
    const float scale = 1.0f / std::sqrt(float(C));  // the CPU's f32 constant
    // P[i,j] = scale Σ_c q[c,i] k[c,j]  ->  P^T = k^T q (column-major)
    sgemm_batched(CUBLAS_OP_N, CUBLAS_OP_T, S, S, C, scale, k, S, CS, q, S, CS, 0.0f, probs, S, SS, B);
    cuda::softmax_rows_f32(probs, B * S, S, ctx_.stream);
    // out [C,S] = v P^T  ->  out^T = P v^T
    sgemm_batched(CUBLAS_OP_T, CUBLAS_OP_N, S, C, S, 1.0f, probs, S, SS, v, S, CS, 0.0f, out, S, CS, B);
  }
  void spatial_attention_bwd(const float* q, const float* k, const float* v, const float* probs, const float* dout,
                             float* dq, float* dk, float* dv, int64_t B, int64_t C, int64_t S) override {
    if (B == 0 || S == 0) return;
    bind();
    const int64_t CS = C * S, SS = S * S;
    const float scale = 1.0f / std::sqrt(float(C));
    auto ds_block = ctx_.scratch(size_t(B * SS) * sizeof(float));
    float* ds = static_cast<float*>(ds_block.get());
    // dv [C,S] = dout P  ->  dv^T = P^T dout^T
    sgemm_batched(CUBLAS_OP_N, CUBLAS_OP_N, S, C, S, 1.0f, probs, S, SS, dout, S, CS, 0.0f, dv, S, CS, B);
    // dP [S,S] = dout^T v  ->  dP^T = v^T dout
    sgemm_batched(CUBLAS_OP_N, CUBLAS_OP_T, S, S, C, 1.0f, v, S, CS, dout, S, CS, 0.0f, ds, S, SS, B);
    cuda::softmax_bwd_rows_f32(probs, ds, B * S, S, scale, ctx_.stream);  // dS = P (dP - Σ P dP) scale
    // dq [C,S] = k dS^T  ->  dq^T = dS k^T
    sgemm_batched(CUBLAS_OP_T, CUBLAS_OP_N, S, C, S, 1.0f, ds, S, SS, k, S, CS, 0.0f, dq, S, CS, B);
    // dk [C,S] = q dS  ->  dk^T = dS^T q^T
    sgemm_batched(CUBLAS_OP_N, CUBLAS_OP_N, S, C, S, 1.0f, ds, S, SS, q, S, CS, 0.0f, dk, S, CS, B);
  }

  double mse(const float* y, const float* t, float* dy, int64_t n, float scale) override {
    HWAGA_CHECK(n > 0, "mse: no values");
    bind();
    const int parts = cuda::mse_parts(n);
    auto part = ctx_.scratch(size_t(parts) * sizeof(double));
    cuda::mse_f32(y, t, dy, 2.0f * scale / float(n), static_cast<double*>(part.get()), n, ctx_.stream);
    std::vector<double> h(static_cast<size_t>(parts));
    CUDA_CHECK(cudaMemcpyAsync(h.data(), part.get(), h.size() * sizeof(double), cudaMemcpyDeviceToHost, ctx_.stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    double sum = 0;
    for (double v : h) sum += v;
    return sum / double(n);
  }

  void transpose(const float* x, float* y, int64_t B, int64_t R, int64_t S) override {
    if (B * R * S == 0) return;
    bind();
    cuda::transpose_f32(x, y, B, R, S, ctx_.stream);
  }

  // ---------------------------------------------------------------- optimizer

  double sum_squares(const float* x, int64_t n) override {
    if (n <= 0) return 0.0;
    bind();
    auto part = ctx_.scratch(size_t(cuda::sum_squares_partials(n)) * sizeof(double));
    auto out = ctx_.scratch(sizeof(double));
    cuda::sum_squares_f32(x, n, static_cast<double*>(part.get()), static_cast<double*>(out.get()), ctx_.stream);
    double s = 0;
    CUDA_CHECK(cudaMemcpyAsync(&s, out.get(), sizeof(s), cudaMemcpyDeviceToHost, ctx_.stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    return s;
  }
  void adamw(float* w, const float* g, float* m, float* v, int64_t n, float decay, float b1, float b2, float step_size,
             float inv_sqrt_bc2, float eps) override {
    bind();
    cuda::adamw_f32(w, g, m, v, n, decay, b1, b2, step_size, inv_sqrt_bc2, eps, ctx_.stream);
  }

 private:
  // Kernel launches go to the calling thread's current device: make it ours (data-parallel
  // training drives one TrainOps per GPU, possibly from one thread).
  void bind() const {
    int cur = -1;
    CUDA_CHECK(cudaGetDevice(&cur));
    if (cur != ctx_.device) CUDA_CHECK(cudaSetDevice(ctx_.device));
  }
  static bool bf16() { return matmul_precision() == MatmulPrecision::bf16; }

  // The products must be strict f32 (no TF32): the backend creates the handle with
  // CUBLAS_DEFAULT_MATH; put it back should anything have changed it.
  void default_math() {
    cublasMath_t mode;
    CUBLAS_CHECK(cublasGetMathMode(ctx_.blas, &mode));
    if (mode != CUBLAS_DEFAULT_MATH) CUBLAS_CHECK(cublasSetMathMode(ctx_.blas, CUBLAS_DEFAULT_MATH));
  }

  // Column-major C[m,n] = alpha op(A) op(B) + beta C, f32.
  void sgemm(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A,
             int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    default_math();
    CUBLAS_CHECK(cublasSgemm(ctx_.blas, ta, tb, as_int(m, "m"), as_int(n, "n"), as_int(k, "k"), &alpha, A,
                             as_int(lda, "lda"), B, as_int(ldb, "ldb"), &beta, C, as_int(ldc, "ldc")));
  }

  // The same with bf16 A and B (uint16 bits), f32 C and f32 accumulation.
  void gemm_bf16(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, float alpha,
                 const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    default_math();
    CUBLAS_CHECK(cublasGemmEx(ctx_.blas, ta, tb, as_int(m, "m"), as_int(n, "n"), as_int(k, "k"), &alpha, A,
                              CUDA_R_16BF, as_int(lda, "lda"), B, CUDA_R_16BF, as_int(ldb, "ldb"), &beta, C,
                              CUDA_R_32F, as_int(ldc, "ldc"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  // batch strided products (f32): matrix i of A/B/C at A + i*sa etc.
  void sgemm_batched(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, float alpha,
                     const float* A, int64_t lda, int64_t sa, const float* B, int64_t ldb, int64_t sb, float beta,
                     float* C, int64_t ldc, int64_t sc, int64_t batch) {
    default_math();
    CUBLAS_CHECK(cublasSgemmStridedBatched(ctx_.blas, ta, tb, as_int(m, "m"), as_int(n, "n"), as_int(k, "k"), &alpha,
                                           A, as_int(lda, "lda"), sa, B, as_int(ldb, "ldb"), sb, &beta, C,
                                           as_int(ldc, "ldc"), sc, as_int(batch, "batch")));
  }

  // One image of a convolution's input [Cin,H,W] -> col [Cin*kh*kw, Ho*Wo].
  void im2col(const cpu::Conv2dShape& s, const float* x, float* col) {
    cuda::im2col_train_f32(x, col, int(s.Cin), int(s.H), int(s.W), int(s.kh), int(s.kw), s.pad_top, s.pad_left,
                           s.stride, int(s.Ho()), int(s.Wo()), ctx_.stream);
  }

  // n values rounded to bf16 in a scratch block (kept alive by the caller until the product is queued).
  std::shared_ptr<void> to_bf16(const float* x, int64_t n) {
    auto block = ctx_.scratch(size_t(n) * sizeof(uint16_t));
    cuda::f32_to_bf16(x, static_cast<uint16_t*>(block.get()), n, ctx_.stream);
    return block;
  }
  static const uint16_t* bf(const std::shared_ptr<void>& p) { return static_cast<const uint16_t*>(p.get()); }

  std::unique_ptr<Backend> be_;
  cuda::Context& ctx_;
  std::string gpu_name_;
};

}  // namespace

std::unique_ptr<TrainOps> make_cuda_train_ops(int device, std::string* why) {
  CudaBackendOptions opts;
  opts.device = device;
  std::string reason;
  std::unique_ptr<Backend> be = make_cuda_backend_with(opts, &reason);
  if (!be) {
    if (why) *why = reason;
    return nullptr;
  }
  try {
    return std::make_unique<CudaTrainOps>(std::move(be));
  } catch (const std::exception& e) {
    if (why) *why = std::string("CUDA training ops failed to start: ") + e.what();
    return nullptr;
  }
}

}  // namespace hwaga::train
