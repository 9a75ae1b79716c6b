// The operators of stage-2 training on one device: what the trainers (rq_transformer_trainer,
// mindalle_gpt_trainer, gpt_block_train), ParamSet and AdamW call, so that one trainer runs on
// the CPU and, unchanged, on a GPU.
//
//   TrainOps& ops = cpu_train_ops();                      // or *make_cuda_train_ops(0, &why)
//   Tensor y = ops.empty({N, out});                        // memory on ops.device()
//   ops.linear_fwd(x.f32(), W.f32(), b.f32(), y.f32(), N, in, out);
//
// Every pointer argument points into memory of ops.device() (host memory for the CPU ops,
// device memory for the CUDA ops), except where a comment says "host". The contracts of the ops
// shared with train/transformer_ops.h are exactly those written there (accumulation, aliasing,
// the dropout stream); the CPU implementation (train/cpu_train_ops.cpp) forwards to those
// functions, so CPU training gives the same bits as before this interface existed.
//
// Work on a GPU is queued on one stream in call order; the calls that return a number to the host
// (cross_entropy, sum_squares) and download/read wait for the queued work.
//
// Stage 1 (train/taming_train.h's encoder and decoder) runs on the "taming conv net" ops; their
// contracts are those of train/conv_ops.h, whose functions the CPU implementation calls.
//
// Shape legend: N rows, C channels (row width), B batch, P positions, D depth, E codebook vector
// dim, R positional rows; for the conv net NCHW [B,C,H,W] with S = H*W positions, G groups.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"
#include "kernels/cpu/conv2d.h"

namespace hwaga {
class Backend;
}

namespace hwaga::train {

// A strided copy of `rows` rows of C floats in each of `blocks` blocks:
//   for b < blocks, r < rows:  dst row (b*dst_block + dst_off + r*dst_row)  =/+=
//                              src row (b*src_block + src_off + r*src_row)
// (row indices in units of C floats). Destination rows must not overlap within one call.
struct RowCopy {
  int64_t blocks = 1, rows = 0, C = 0;
  int64_t dst_block = 0, dst_row = 1, dst_off = 0;
  int64_t src_block = 0, src_row = 1, src_off = 0;
};

class TrainOps {
 public:
  virtual ~TrainOps() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;  // "cpu" or "cuda (NVIDIA H100 80GB HBM3)"
  // An inference backend on the same device (the training loop paints its sample PNGs with it).
  virtual Backend& backend() = 0;

  // ---- memory ----
  virtual Tensor empty(const Shape& shape, DType dtype = DType::F32) = 0;  // uninitialised
  virtual Tensor zeros(const Shape& shape, DType dtype = DType::F32) = 0;
  virtual Tensor upload(const Tensor& host) = 0;    // a copy on this device (CPU: a deep copy)
  virtual Tensor download(const Tensor& t) = 0;     // a host copy of a tensor of this device
  virtual void write(void* dst, const void* host_src, size_t bytes) = 0;  // host -> this device
  virtual void read(void* host_dst, const void* src, size_t bytes) = 0;   // this device -> host
  virtual void copy(float* dst, const float* src, int64_t n) = 0;         // on this device
  virtual void fill(float* x, int64_t n, float value) = 0;
  virtual void synchronize() = 0;

  // ---- the ops of train/transformer_ops.h (same contracts) ----
  virtual void linear_fwd(const float* x, const float* W, const float* b, float* y, int64_t N, int64_t in,
                          int64_t out) = 0;
  virtual void linear_bwd(const float* x, const float* W, const float* dy, float* dx, float* dW, float* db, int64_t N,
                          int64_t in, int64_t out, bool accumulate_dx = false) = 0;
  virtual void layer_norm_fwd(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                              float* rstd, int64_t N, int64_t C, float eps) = 0;
  virtual void layer_norm_bwd(const float* x, const float* gamma, const float* mean, const float* rstd,
                              const float* dy, float* dx, float* dgamma, float* dbeta, int64_t N, int64_t C,
                              bool accumulate_dx = false) = 0;
  virtual void gelu_fwd(const float* x, float* y, int64_t n) = 0;
  virtual void gelu_bwd(const float* x, const float* dy, float* dx, int64_t n) = 0;
  virtual void attention_fwd(const float* q, const float* k, const float* v, float* probs, float* out, int64_t B,
                             int64_t T, int64_t H, int64_t hd) = 0;
  virtual void attention_bwd(const float* q, const float* k, const float* v, const float* probs, const float* dout,
                             float* dq, float* dk, float* dv, int64_t B, int64_t T, int64_t H, int64_t hd) = 0;
  virtual void embedding_fwd(const float* table, const int32_t* ids, float* out, int64_t N, int64_t C) = 0;
  virtual void embedding_bwd(const int32_t* ids, const float* dout, float* dtable, int64_t N, int64_t C) = 0;
  virtual void add_pos_fwd(float* y, const float* pos, int64_t N, int64_t R, int64_t C) = 0;
  virtual void add_pos_bwd(const float* dy, float* dpos, int64_t N, int64_t R, int64_t C) = 0;
  // z, target, w, dz on this device; the loss comes back to the host (double). Weighted rows
  // with a target outside [0,K) throw hwaga::Error.
  virtual double cross_entropy(const float* z, const int32_t* target, const float* w, float* dz, float dscale,
                               int64_t N, int64_t K) = 0;
  virtual void dropout_apply(float* x, int64_t n, float p, uint64_t seed, uint64_t stream) = 0;

  // ---- elementwise and data movement ----
  virtual void add(const float* a, const float* b, float* y, int64_t n) = 0;  // y = a + b (y may alias a or b)
  virtual void axpy(float* y, const float* x, float a, int64_t n) = 0;        // y += a*x
  virtual void scale(float* x, float s, int64_t n) = 0;                       // x *= s
  // out[r,c] = pos[r,c] + s*bias[c] for r < R, c < C.
  virtual void pos_plus_bias(const float* pos, const float* bias, float s, float* out, int64_t R, int64_t C) = 0;
  virtual void copy_rows(float* dst, const float* src, const RowCopy& g, bool accumulate) = 0;

  // ---- the stage-2 code embeddings (cb: the frozen codebook [K,E]; codes [B,P,D], in range) ----
  // out [B*Pm, E]: out[b*Pm + p] = Σ_{d<D} cb[codes[b,p,d]] for p < Pm (d summed in order).
  virtual void code_sum(const float* cb, const int32_t* codes, float* out, int64_t B, int64_t P, int64_t Pm,
                        int64_t D, int64_t E) = 0;
  // out [BP*(D-1), E]: out[r*(D-1) + d-1] = Σ_{d'<d} cb[codes[r,d']] for d = 1..D-1, r < BP
  // (the running sum, accumulated in order).
  virtual void code_prefix_sums(const float* cb, const int32_t* codes, float* out, int64_t BP, int64_t D,
                                int64_t E) = 0;

  // ---- the taming conv net (train/conv_ops.h: same contracts, f32 NCHW) ----
  // conv2d: x [B,Cin,H,W], w [Cout,Cin,kh,kw], b [Cout] (nullable) -> y [B,Cout,Ho,Wo].
  virtual void conv2d_fwd(const cpu::Conv2dShape& s, const float* x, const float* w, const float* b, float* y) = 0;
  // dx overwritten (nullable), dw and db accumulated (each nullable).
  virtual void conv2d_bwd(const cpu::Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx,
                          float* dw, float* db) = 0;
  // GroupNorm with affine over x [B,C,S]: mean, rstd [B*G] saved (statistics in double).
  virtual void group_norm_fwd(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                              float* rstd, int64_t B, int64_t C, int64_t S, int64_t G, float eps) = 0;
  // dx overwritten (may alias dy), dgamma/dbeta accumulated.
  virtual void group_norm_bwd(const float* x, const float* gamma, const float* mean, const float* rstd,
                              const float* dy, float* dx, float* dgamma, float* dbeta, int64_t B, int64_t C,
                              int64_t S, int64_t G) = 0;
  virtual void silu_fwd(const float* x, float* y, int64_t n) = 0;
  virtual void silu_bwd(const float* x, const float* dy, float* dx, int64_t n) = 0;  // dx may alias dy
  // x [P,H,W] -> y [P,2H,2W]; backward sums the 4 copies.
  virtual void upsample2x_fwd(const float* x, float* y, int64_t P, int64_t H, int64_t W) = 0;
  virtual void upsample2x_bwd(const float* dy, float* dx, int64_t P, int64_t H, int64_t W) = 0;
  // Single-head spatial attention over q, k, v [B,C,S] (AttnBlock): probs [B,S,S] saved.
  virtual void spatial_attention_fwd(const float* q, const float* k, const float* v, float* out, float* probs,
                                     int64_t B, int64_t C, int64_t S) = 0;
  virtual void spatial_attention_bwd(const float* q, const float* k, const float* v, const float* probs,
                                     const float* dout, float* dq, float* dk, float* dv, int64_t B, int64_t C,
                                     int64_t S) = 0;
  // mean((y - t)^2) to the host (double); dy = scale * 2 (y - t) / n when dy is not null.
  virtual double mse(const float* y, const float* t, float* dy, int64_t n, float scale) = 0;
  // [B,R,S] -> [B,S,R] (NCHW <-> NHWC).
  virtual void transpose(const float* x, float* y, int64_t B, int64_t R, int64_t S) = 0;

  // ---- optimizer ----
  // Σ x[i]² in double (to the host). The CPU sums in index order.
  virtual double sum_squares(const float* x, int64_t n) = 0;
  // One AdamW update of n elements (train/optim.h), with the step's constants:
  //   w *= decay; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;
  //   w -= step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)
  virtual void adamw(float* w, const float* g, float* m, float* v, int64_t n, float decay, float b1, float b2,
                     float step_size, float inv_sqrt_bc2, float eps) = 0;
};

// The CPU ops (process-wide, threaded over hwaga's pool).
TrainOps& cpu_train_ops();

// The ops of one CUDA device (cuBLAS for the products, kernels/cuda/train_ops.cu for the rest;
// the matrix products follow matmul_precision(): f32 without TF32, or bf16 inputs with f32
// accumulation). Null, with the reason in *why, when hwaga was built without CUDA or the device
// cannot be used.
std::unique_ptr<TrainOps> make_cuda_train_ops(int device, std::string* why);

// `t` itself when it already lives on the device of `ops`, else a copy there (host tensors only).
inline Tensor on_device(TrainOps& ops, const Tensor& t) { return t.device() == ops.device() ? t : ops.upload(t); }
// `t` itself when on the host, else a host copy.
inline Tensor to_host(TrainOps& ops, const Tensor& t) { return t.device() == Device::CPU ? t : ops.download(t); }

}  // namespace hwaga::train
