// The CPU TrainOps (train/train_ops.h): the functions of train/transformer_ops.h and the small
// loops the trainers used to write inline, threaded over hwaga's pool.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/elementwise.h"
#include "train/conv_ops.h"
#include "train/train_ops.h"
#include "train/transformer_ops.h"

namespace hwaga::train {

namespace {

class CpuTrainOps final : public TrainOps {
 public:
  Device device() const override { return Device::CPU; }
  std::string name() const override { return "cpu"; }
  Backend& backend() override {
    std::call_once(backend_once_, [&] { backend_ = make_cpu_backend(); });
    return *backend_;
  }

  Tensor empty(const Shape& shape, DType dtype) override { return Tensor::empty(shape, dtype); }
  Tensor zeros(const Shape& shape, DType dtype) override { return Tensor::zeros(shape, dtype); }
  Tensor upload(const Tensor& host) override {
    HWAGA_CHECK(host.device() == Device::CPU, "cpu train ops: upload expects a host tensor");
    return host.clone();
  }
  Tensor download(const Tensor& t) override {
    HWAGA_CHECK(t.device() == Device::CPU, "cpu train ops: download of a ", device_name(t.device()), " tensor");
    return t.clone();
  }
  void write(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void read(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void copy(float* dst, const float* src, int64_t n) override {
    parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) { std::memcpy(dst + b, src + b, size_t(e - b) * sizeof(float)); });
  }
  void fill(float* x, int64_t n, float value) override {
    if (value == 0.0f) {
      std::memset(x, 0, size_t(n) * sizeof(float));
      return;
    }
    std::fill(x, x + n, value);
  }
  void synchronize() override {}

  void linear_fwd(const float* x, const float* W, const float* b, float* y, int64_t N, int64_t in,
                  int64_t out) override {
    train::linear_fwd(x, W, b, y, N, in, out);
  }
  void linear_bwd(const float* x, const float* W, const float* dy, float* dx, float* dW, float* db, int64_t N,
                  int64_t in, int64_t out, bool accumulate_dx) override {
    train::linear_bwd(x, W, dy, dx, dW, db, N, in, out, accumulate_dx);
  }
  void layer_norm_fwd(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd,
                      int64_t N, int64_t C, float eps) override {
    train::layer_norm_fwd(x, gamma, beta, y, mean, rstd, N, C, eps);
  }
  void layer_norm_bwd(const float* x, const float* gamma, const float* mean, const float* rstd, const float* dy,
                      float* dx, float* dgamma, float* dbeta, int64_t N, int64_t C, bool accumulate_dx) override {
    train::layer_norm_bwd(x, gamma, mean, rstd, dy, dx, dgamma, dbeta, N, C, accumulate_dx);
  }
  void gelu_fwd(const float* x, float* y, int64_t n) override { train::gelu_fwd(x, y, n); }
  void gelu_bwd(const float* x, const float* dy, float* dx, int64_t n) override { train::gelu_bwd(x, dy, dx, n); }
  void attention_fwd(const float* q, const float* k, const float* v, float* probs, float* out, int64_t B, int64_t T,
                     int64_t H, int64_t hd) override {
    train::attention_fwd(q, k, v, probs, out, B, T, H, hd);
  }
  void attention_bwd(const float* q, const float* k, const float* v, const float* probs, const float* dout, float* dq,
                     float* dk, float* dv, int64_t B, int64_t T, int64_t H, int64_t hd) override {
    train::attention_bwd(q, k, v, probs, dout, dq, dk, dv, B, T, H, hd);
  }
  void embedding_fwd(const float* table, const int32_t* ids, float* out, int64_t N, int64_t C) override {
    train::embedding_fwd(table, ids, out, N, C);
  }
  void embedding_bwd(const int32_t* ids, const float* dout, float* dtable, int64_t N, int64_t C) override {
    train::embedding_bwd(ids, dout, dtable, N, C);
  }
  void add_pos_fwd(float* y, const float* pos, int64_t N, int64_t R, int64_t C) override {
    train::add_pos_fwd(y, pos, N, R, C);
  }
  void add_pos_bwd(const float* dy, float* dpos, int64_t N, int64_t R, int64_t C) override {
    train::add_pos_bwd(dy, dpos, N, R, C);
  }
  double cross_entropy(const float* z, const int32_t* target, const float* w, float* dz, float dscale, int64_t N,
                       int64_t K) override {
    return train::cross_entropy(z, target, w, dz, dscale, N, K);
  }
  void dropout_apply(float* x, int64_t n, float p, uint64_t seed, uint64_t stream) override {
    train::dropout_apply(x, n, p, seed, stream);
  }

  void add(const float* a, const float* b, float* y, int64_t n) override {
    parallel_for(n, 1 << 15, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) y[i] = a[i] + b[i];
    });
  }
  void axpy(float* y, const float* x, float a, int64_t n) override {
    parallel_for(n, 1 << 15, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) y[i] += a * x[i];
    });
  }
  void scale(float* x, float s, int64_t n) override {
    parallel_for(n, 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) x[i] *= s;
    });
  }
  void pos_plus_bias(const float* pos, const float* bias, float s, float* out, int64_t R, int64_t C) override {
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) out[r * C + c] = pos[r * C + c] + s * bias[c];
  }
  void copy_rows(float* dst, const float* src, const RowCopy& g, bool accumulate) override {
    const int64_t C = g.C;
    parallel_for(g.blocks * g.rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1)), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / g.rows, r = i % g.rows;
        float* d = dst + (b * g.dst_block + g.dst_off + r * g.dst_row) * C;
        const float* s = src + (b * g.src_block + g.src_off + r * g.src_row) * C;
        if (accumulate) {
          for (int64_t c = 0; c < C; ++c) d[c] += s[c];
        } else {
          std::memcpy(d, s, size_t(C) * sizeof(float));
        }
      }
    });
  }

  void code_sum(const float* cb, const int32_t* codes, float* out, int64_t B, int64_t P, int64_t Pm, int64_t D,
                int64_t E) override {
    parallel_for(B * Pm, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / Pm, p = r % Pm;
        float* o = out + r * E;
        std::memset(o, 0, size_t(E) * sizeof(float));
        for (int64_t d = 0; d < D; ++d) {
          const float* e = cb + int64_t(codes[(b * P + p) * D + d]) * E;
          for (int64_t j = 0; j < E; ++j) o[j] += e[j];
        }
      }
    });
  }
  void code_prefix_sums(const float* cb, const int32_t* codes, float* out, int64_t BP, int64_t D,
                        int64_t E) override {
    parallel_for(BP, 64, [&](int64_t r0, int64_t r1) {
      std::vector<float> acc(static_cast<size_t>(E));
      for (int64_t r = r0; r < r1; ++r) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t d = 1; d < D; ++d) {
          const float* e = cb + int64_t(codes[r * D + d - 1]) * E;
          for (int64_t j = 0; j < E; ++j) acc[size_t(j)] += e[j];
          std::memcpy(out + (r * (D - 1) + d - 1) * E, acc.data(), size_t(E) * sizeof(float));
        }
      }
    });
  }

  void conv2d_fwd(const cpu::Conv2dShape& s, const float* x, const float* w, const float* b, float* y) override {
    train::conv2d_forward(s, x, w, b, y);
  }
  void conv2d_bwd(const cpu::Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                  float* db) override {
    train::conv2d_backward(s, x, w, dy, dx, dw, db);
  }
  void group_norm_fwd(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd,
                      int64_t B, int64_t C, int64_t S, int64_t G, float eps) override {
    train::group_norm_forward(x, gamma, beta, y, mean, rstd, B, C, S, G, eps);
  }
  void group_norm_bwd(const float* x, const float* gamma, const float* mean, const float* rstd, const float* dy,
                      float* dx, float* dgamma, float* dbeta, int64_t B, int64_t C, int64_t S, int64_t G) override {
    train::group_norm_backward(x, gamma, mean, rstd, dy, dx, dgamma, dbeta, B, C, S, G);
  }
  void silu_fwd(const float* x, float* y, int64_t n) override { train::silu_forward(x, y, n); }
  void silu_bwd(const float* x, const float* dy, float* dx, int64_t n) override { train::silu_backward(x, dy, dx, n); }
  void upsample2x_fwd(const float* x, float* y, int64_t P, int64_t H, int64_t W) override {
    train::upsample_nearest2x_forward(x, y, P, H, W);
  }
  void upsample2x_bwd(const float* dy, float* dx, int64_t P, int64_t H, int64_t W) override {
    train::upsample_nearest2x_backward(dy, dx, P, H, W);
  }
  void spatial_attention_fwd(const float* q, const float* k, const float* v, float* out, float* probs, int64_t B,
                             int64_t C, int64_t S) override {
    train::attention_forward(q, k, v, out, probs, B, C, S);
  }
  void spatial_attention_bwd(const float* q, const float* k, const float* v, const float* probs, const float* dout,
                             float* dq, float* dk, float* dv, int64_t B, int64_t C, int64_t S) override {
    train::attention_backward(q, k, v, probs, dout, dq, dk, dv, B, C, S);
  }
  double mse(const float* y, const float* t, float* dy, int64_t n, float scale) override {
    return train::mse_forward_backward(y, t, dy, n, scale);
  }
  void transpose(const float* x, float* y, int64_t B, int64_t R, int64_t S) override {
    cpu::nchw_to_nhwc_forward(x, y, B, R, S);
  }

  double sum_squares(const float* x, int64_t n) override {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += double(x[i]) * x[i];
    return s;
  }
  void adamw(float* w, const float* g, float* m, float* v, int64_t n, float decay, float b1, float b2, float step_size,
             float inv_sqrt_bc2, float eps) override {
    parallel_for(n, 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; j++) {
        w[j] *= decay;
        m[j] = b1 * m[j] + (1 - b1) * g[j];
        v[j] = b2 * v[j] + (1 - b2) * g[j] * g[j];
        w[j] -= step_size * m[j] / (std::sqrt(v[j]) * inv_sqrt_bc2 + eps);
      }
    });
  }

 private:
  std::once_flag backend_once_;
  std::unique_ptr<Backend> backend_;
};

}  // namespace

TrainOps& cpu_train_ops() {
  static CpuTrainOps ops;
  return ops;
}

#ifndef HWAGA_HAVE_CUDA
std::unique_ptr<TrainOps> make_cuda_train_ops(int, std::string* why) {
  if (why) *why = "hwaga was built without CUDA (nvcc was not found at configure time)";
  return nullptr;
}
#endif

}  // namespace hwaga::train
