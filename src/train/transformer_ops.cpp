#include "train/transformer_ops.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/vec_math.h"
#include "sample/rng.h"

namespace hwaga::train {

namespace {

// Column-chunked reduction over rows: fn(c0, c1) handles columns [c0,c1) for every row in order.
// Chunks of 64 columns keep each row's slice in one or two cache lines per thread.
void for_column_chunks(int64_t C, const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t chunk = 64, n_chunks = (C + chunk - 1) / chunk;
  parallel_for(n_chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) fn(i * chunk, std::min(C, (i + 1) * chunk));
  });
}

// Rows per parallel chunk, so tiny row counts stay in one thread.
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)); }

}  // namespace

// ---------------------------------------------------------------- matrix products

namespace {
std::atomic<MatmulPrecision> g_matmul{MatmulPrecision::f32};
}

void set_matmul_precision(MatmulPrecision p) { g_matmul.store(p); }
MatmulPrecision matmul_precision() { return g_matmul.load(); }
const char* matmul_precision_name(MatmulPrecision p) { return p == MatmulPrecision::bf16 ? "bf16" : "f32"; }

MatmulPrecision parse_matmul_precision(const std::string& s, const std::string& what) {
  if (s == "f32") return MatmulPrecision::f32;
  if (s == "bf16") return MatmulPrecision::bf16;
  fail(what, ": expected f32 or bf16, found \"", s, "\"");
}

void train_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (matmul_precision() == MatmulPrecision::bf16) cpu::gemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else cpu::sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// ---------------------------------------------------------------- linear

void linear_fwd(const float* x, const float* W, const float* b, float* y, int64_t N, int64_t in, int64_t out) {
  if (N == 0) return;
  train_gemm(false, true, N, out, in, 1.0f, x, in, W, in, 0.0f, y, out);  // y = x W^T
  if (b) {
    parallel_for(N, row_grain(out), [&](int64_t r0, int64_t r1) {
      for (int64_t n = r0; n < r1; ++n)
        for (int64_t o = 0; o < out; ++o) y[n * out + o] += b[o];
    });
  }
}

void linear_bwd(const float* x, const float* W, const float* dy, float* dx, float* dW, float* db, int64_t N,
                int64_t in, int64_t out, bool accumulate_dx) {
  if (N == 0) return;
  if (dW) train_gemm(true, false, out, in, N, 1.0f, dy, out, x, in, 1.0f, dW, in);  // dW += dy^T x
  if (dx) train_gemm(false, false, N, in, out, 1.0f, dy, out, W, in, accumulate_dx ? 1.0f : 0.0f, dx, in);
  if (db) {
    for_column_chunks(out, [&](int64_t c0, int64_t c1) {
      double acc[64] = {};
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = c0; c < c1; ++c) acc[c - c0] += dy[n * out + c];
      for (int64_t c = c0; c < c1; ++c) db[c] += float(acc[c - c0]);
    });
  }
}

// ---------------------------------------------------------------- LayerNorm

void layer_norm_fwd(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd,
                    int64_t N, int64_t C, float eps) {
  parallel_for(N, row_grain(C), [&](int64_t r0, int64_t r1) {
    for (int64_t n = r0; n < r1; ++n) {
      const float* xr = x + n * C;
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += xr[c];
      const double m = s / double(C);
      double v = 0;
      for (int64_t c = 0; c < C; ++c) v += (xr[c] - m) * (xr[c] - m);
      const float r = float(1.0 / std::sqrt(v / double(C) + double(eps)));
      const float mf = float(m);
      mean[n] = mf;
      rstd[n] = r;
      float* yr = y + n * C;
      for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - mf) * r * gamma[c] + beta[c];
    }
  });
}

void layer_norm_bwd(const float* x, const float* gamma, const float* mean, const float* rstd, const float* dy,
                    float* dx, float* dgamma, float* dbeta, int64_t N, int64_t C, bool accumulate_dx) {
  if (dx) {
    parallel_for(N, row_grain(C), [&](int64_t r0, int64_t r1) {
      for (int64_t n = r0; n < r1; ++n) {
        const float* xr = x + n * C;
        const float* g = dy + n * C;
        const float m = mean[n], r = rstd[n];
        double sg = 0, sgx = 0;  // Σ dy*gamma, Σ dy*gamma*xhat
        for (int64_t c = 0; c < C; ++c) {
          const double gg = double(g[c]) * gamma[c];
          sg += gg;
          sgx += gg * double((xr[c] - m) * r);
        }
        const float a = float(sg / double(C)), bcoef = float(sgx / double(C));
        float* d = dx + n * C;
        for (int64_t c = 0; c < C; ++c) {
          const float xhat = (xr[c] - m) * r;
          const float v = r * (g[c] * gamma[c] - a - xhat * bcoef);
          d[c] = accumulate_dx ? d[c] + v : v;
        }
      }
    });
  }
  if (dgamma || dbeta) {
    for_column_chunks(C, [&](int64_t c0, int64_t c1) {
      double ag[64] = {}, ab[64] = {};
      for (int64_t n = 0; n < N; ++n) {
        const float m = mean[n], r = rstd[n];
        for (int64_t c = c0; c < c1; ++c) {
          const float g = dy[n * C + c];
          ag[c - c0] += double(g) * double((x[n * C + c] - m) * r);
          ab[c - c0] += g;
        }
      }
      for (int64_t c = c0; c < c1; ++c) {
        if (dgamma) dgamma[c] += float(ag[c - c0]);
        if (dbeta) dbeta[c] += float(ab[c - c0]);
      }
    });
  }
}

// ---------------------------------------------------------------- GELU

// Both through kernels/cpu/vec_math.h (erf as a rational function, 8 values per AVX2 step).
void gelu_fwd(const float* x, float* y, int64_t n) {
  parallel_for(n, 1 << 14, [&](int64_t b, int64_t e) { cpu::gelu_values(x + b, y + b, e - b); });
}

void gelu_bwd(const float* x, const float* dy, float* dx, int64_t n) {
  parallel_for(n, 1 << 14, [&](int64_t b, int64_t e) { cpu::gelu_grad_values(x + b, dy + b, dx + b, e - b); });
}

// ---------------------------------------------------------------- attention

void attention_fwd(const float* q, const float* k, const float* v, float* probs, float* out, int64_t B, int64_t T,
                   int64_t H, int64_t hd) {
  const int64_t C = H * hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  parallel_for(B * H, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t bh = i0; bh < i1; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const float* Q = q + b * T * C + h * hd;
      const float* Kp = k + b * T * C + h * hd;
      const float* Vp = v + b * T * C + h * hd;
      float* P = probs + bh * T * T;
      cpu::sgemm(false, true, T, T, hd, scale, Q, C, Kp, C, 0.0f, P, T);  // S = Q K^T / sqrt(hd)
      for (int64_t i = 0; i < T; ++i) {
        float* row = P + i * T;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j <= i; ++j) mx = std::max(mx, row[j]);
        float sum = 0;
        for (int64_t j = 0; j <= i; ++j) {
          row[j] = std::exp(row[j] - mx);
          sum += row[j];
        }
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j <= i; ++j) row[j] *= inv;
        for (int64_t j = i + 1; j < T; ++j) row[j] = 0.0f;
      }
      cpu::sgemm(false, false, T, hd, T, 1.0f, P, T, Vp, C, 0.0f, out + b * T * C + h * hd, C);  // P V
    }
  });
}

void attention_bwd(const float* q, const float* k, const float* v, const float* probs, const float* dout, float* dq,
                   float* dk, float* dv, int64_t B, int64_t T, int64_t H, int64_t hd) {
  const int64_t C = H * hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  parallel_for(B * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> dS(size_t(T * T));
    for (int64_t bh = i0; bh < i1; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const int64_t off = b * T * C + h * hd;
      const float* P = probs + bh * T * T;
      cpu::sgemm(true, false, T, hd, T, 1.0f, P, T, dout + off, C, 0.0f, dv + off, C);        // dV = P^T dO
      cpu::sgemm(false, true, T, T, hd, 1.0f, dout + off, C, v + off, C, 0.0f, dS.data(), T);  // dP = dO V^T
      for (int64_t i = 0; i < T; ++i) {  // dS = P * (dP - Σ_j P dP)
        const float* pr = P + i * T;
        float* dr = dS.data() + i * T;
        float dot = 0;
        for (int64_t j = 0; j <= i; ++j) dot += pr[j] * dr[j];
        for (int64_t j = 0; j <= i; ++j) dr[j] = pr[j] * (dr[j] - dot);
        for (int64_t j = i + 1; j < T; ++j) dr[j] = 0.0f;
      }
      cpu::sgemm(false, false, T, hd, T, scale, dS.data(), T, k + off, C, 0.0f, dq + off, C);  // dQ = dS K / sqrt(hd)
      cpu::sgemm(true, false, T, hd, T, scale, dS.data(), T, q + off, C, 0.0f, dk + off, C);   // dK = dS^T Q / sqrt(hd)
    }
  });
}

// ---------------------------------------------------------------- embedding / positions

void embedding_fwd(const float* table, const int32_t* ids, float* out, int64_t N, int64_t C) {
  parallel_for(N, row_grain(C), [&](int64_t r0, int64_t r1) {
    for (int64_t n = r0; n < r1; ++n) std::memcpy(out + n * C, table + int64_t(ids[n]) * C, size_t(C) * sizeof(float));
  });
}

void embedding_bwd(const int32_t* ids, const float* dout, float* dtable, int64_t N, int64_t C) {
  for_column_chunks(C, [&](int64_t c0, int64_t c1) {
    for (int64_t n = 0; n < N; ++n) {
      float* d = dtable + int64_t(ids[n]) * C;
      const float* g = dout + n * C;
      for (int64_t c = c0; c < c1; ++c) d[c] += g[c];
    }
  });
}

void add_pos_fwd(float* y, const float* pos, int64_t N, int64_t R, int64_t C) {
  parallel_for(N, row_grain(C), [&](int64_t r0, int64_t r1) {
    for (int64_t n = r0; n < r1; ++n) {
      const float* p = pos + (n % R) * C;
      for (int64_t c = 0; c < C; ++c) y[n * C + c] += p[c];
    }
  });
}

void add_pos_bwd(const float* dy, float* dpos, int64_t N, int64_t R, int64_t C) {
  for_column_chunks(C, [&](int64_t c0, int64_t c1) {
    for (int64_t n = 0; n < N; ++n) {
      float* d = dpos + (n % R) * C;
      for (int64_t c = c0; c < c1; ++c) d[c] += dy[n * C + c];
    }
  });
}

// ---------------------------------------------------------------- cross-entropy

double cross_entropy(const float* z, const int32_t* target, const float* w, float* dz, float dscale, int64_t N,
                     int64_t K) {
  for (int64_t n = 0; n < N; ++n)
    if (w[n] != 0.0f && (target[n] < 0 || target[n] >= K))
      fail("cross_entropy: target ", target[n], " of row ", n, " is outside [0, ", K, ")");
  std::vector<double> row_loss(size_t(N), 0.0);
  parallel_for(N, row_grain(K), [&](int64_t r0, int64_t r1) {
    for (int64_t n = r0; n < r1; ++n) {
      const float* zr = z + n * K;
      float* d = dz ? dz + n * K : nullptr;
      if (w[n] == 0.0f) {
        if (d) std::memset(d, 0, size_t(K) * sizeof(float));
        continue;
      }
      float mx = zr[0];
      for (int64_t j = 1; j < K; ++j) mx = std::max(mx, zr[j]);
      double s = 0;
      for (int64_t j = 0; j < K; ++j) s += std::exp(double(zr[j] - mx));
      const double lse = double(mx) + std::log(s);
      row_loss[size_t(n)] = double(w[n]) * (lse - double(zr[target[n]]));
      if (d) {
        const float g = w[n] * dscale;
        const float inv = float(1.0 / s);
        for (int64_t j = 0; j < K; ++j) d[j] = g * std::exp(zr[j] - mx) * inv;
        d[target[n]] -= g;
      }
    }
  });
  double loss = 0;
  for (double l : row_loss) loss += l;
  return loss;
}

// ---------------------------------------------------------------- dropout

void dropout_apply(float* x, int64_t n, float p, uint64_t seed, uint64_t stream) {
  if (p <= 0.0f) return;
  HWAGA_CHECK(p < 1.0f, "dropout: p must be below 1, got ", p);
  const float keep_scale = 1.0f / (1.0f - p);
  parallel_for(n, 1 << 14, [&](int64_t b, int64_t e) {
    Rng rng(seed, stream);
    rng.seek(uint64_t(b));
    for (int64_t i = b; i < e; ++i) x[i] = rng.next_float() < p ? 0.0f : x[i] * keep_scale;
  });
}

}  // namespace hwaga::train
