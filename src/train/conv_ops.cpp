// Training kernels of the taming conv net (see conv_ops.h). Legend as in the header; also
// KK = kh*kw taps, CKK = Cin*KK rows of an unfolded input, L = columns of a chunk (images x Ho*Wo).
#include "train/conv_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/vec_math.h"
#include "train/transformer_ops.h"

namespace hwaga::train {

// ---------------------------------------------------------------------------------------------
// conv2d

namespace {

// The output columns ox whose input column ix = ox*stride - pad_left + kj lies in [0, W).
struct ColRange {
  int64_t begin, end;
};
ColRange valid_cols(const cpu::Conv2dShape& s, int64_t kj) {
  const int64_t Wo = s.Wo(), off = kj - s.pad_left;  // ix = ox*stride + off
  int64_t b = off >= 0 ? 0 : (-off + s.stride - 1) / s.stride;
  int64_t e = s.W - 1 - off < 0 ? 0 : (s.W - 1 - off) / s.stride + 1;
  b = std::min(b, Wo);
  e = std::clamp(e, b, Wo);
  return {b, e};
}

// col[(ci*kh + ki)*kw + kj][(i*Ho + oy)*Wo + ox] = x[b0+i, ci, oy*stride - pad_top + ki, ox*stride - pad_left + kj]
// (0 outside), for the nb images from b0; col is [CKK, nb*Ho*Wo].
void im2col(const cpu::Conv2dShape& s, const float* x, int64_t b0, int64_t nb, float* col) {
  const int64_t Ho = s.Ho(), Wo = s.Wo(), HoWo = Ho * Wo, L = nb * HoWo;
  parallel_for(nb * s.Cin, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / s.Cin, ci = t % s.Cin;
      const float* src = x + ((b0 + i) * s.Cin + ci) * s.H * s.W;
      for (int64_t ki = 0; ki < s.kh; ++ki)
        for (int64_t kj = 0; kj < s.kw; ++kj) {
          float* dst = col + ((ci * s.kh + ki) * s.kw + kj) * L + i * HoWo;
          const ColRange cr = valid_cols(s, kj);
          for (int64_t oy = 0; oy < Ho; ++oy) {
            const int64_t iy = oy * s.stride - s.pad_top + ki;
            float* d = dst + oy * Wo;
            if (iy < 0 || iy >= s.H) {
              std::fill(d, d + Wo, 0.0f);
              continue;
            }
            const float* row = src + iy * s.W - s.pad_left + kj;  // row[ox * stride] = x[iy][ix]
            std::fill(d, d + cr.begin, 0.0f);
            if (s.stride == 1)
              std::memcpy(d + cr.begin, row + cr.begin, size_t(cr.end - cr.begin) * sizeof(float));
            else
              for (int64_t ox = cr.begin; ox < cr.end; ++ox) d[ox] = row[ox * s.stride];
            std::fill(d + cr.end, d + Wo, 0.0f);
          }
        }
    }
  });
}

// The adjoint of im2col: dx[b0+i] = fold(dcol) (overwritten).
void col2im(const cpu::Conv2dShape& s, const float* dcol, int64_t b0, int64_t nb, float* dx) {
  const int64_t Ho = s.Ho(), Wo = s.Wo(), HoWo = Ho * Wo, L = nb * HoWo;
  parallel_for(nb * s.Cin, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / s.Cin, ci = t % s.Cin;
      float* dst = dx + ((b0 + i) * s.Cin + ci) * s.H * s.W;
      std::fill(dst, dst + s.H * s.W, 0.0f);
      for (int64_t ki = 0; ki < s.kh; ++ki)
        for (int64_t kj = 0; kj < s.kw; ++kj) {
          const float* src = dcol + ((ci * s.kh + ki) * s.kw + kj) * L + i * HoWo;
          const ColRange cr = valid_cols(s, kj);
          for (int64_t oy = 0; oy < Ho; ++oy) {
            const int64_t iy = oy * s.stride - s.pad_top + ki;
            if (iy < 0 || iy >= s.H) continue;
            float* row = dst + iy * s.W - s.pad_left + kj;
            const float* d = src + oy * Wo;
            if (s.stride == 1)  // contiguous: vectorises
              for (int64_t ox = cr.begin; ox < cr.end; ++ox) row[ox] += d[ox];
            else
              for (int64_t ox = cr.begin; ox < cr.end; ++ox) row[ox * s.stride] += d[ox];
          }
        }
    }
  });
}

}  // namespace

namespace {
// Images per im2col chunk: enough columns (>= 2048) for sgemm to be efficient on the small late
// layers, but the unfolded chunk kept under ~32 MB.
int64_t chunk_images(const cpu::Conv2dShape& s) {
  const int64_t HoWo = s.Ho() * s.Wo(), CKK = s.Cin * s.kh * s.kw;
  int64_t nb = std::max<int64_t>(1, 2048 / HoWo);
  nb = std::min(nb, std::max<int64_t>(1, (int64_t(8) << 20) / std::max<int64_t>(1, CKK * HoWo)));
  return std::min(nb, s.B);
}
}  // namespace

// im2col + sgemm rather than kernels/cpu's oneDNN convolution: that one plans and repacks the
// weights on every call (the weights change every step), which costs more than the small
// layers' arithmetic.
void conv2d_forward(const cpu::Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
  const int64_t HoWo = s.Ho() * s.Wo(), CKK = s.Cin * s.kh * s.kw;
  HWAGA_CHECK(s.Ho() >= 1 && s.Wo() >= 1, "conv2d_forward: empty output");
  const int64_t nb = chunk_images(s);
  std::vector<float> col(size_t(CKK * nb * HoWo)), yc(nb > 1 ? size_t(s.Cout * nb * HoWo) : 0);
  for (int64_t b0 = 0; b0 < s.B; b0 += nb) {
    const int64_t n = std::min(nb, s.B - b0), L = n * HoWo;
    im2col(s, x, b0, n, col.data());
    // out [Cout, L] = w [Cout, CKK] . col [CKK, L]; one image's [Cout, HoWo] is y's own layout
    float* out = n == 1 ? y + b0 * s.Cout * HoWo : yc.data();
    train_gemm(false, false, s.Cout, L, CKK, 1.0f, w, CKK, col.data(), L, 0.0f, out, L);
    parallel_for(s.Cout, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t co = c0; co < c1; ++co)
        for (int64_t i = 0; i < n; ++i) {
          const float* src = out + co * L + i * HoWo;
          float* dst = y + ((b0 + i) * s.Cout + co) * HoWo;
          const float bias = b ? b[co] : 0.0f;
          for (int64_t j = 0; j < HoWo; ++j) dst[j] = src[j] + bias;  // in place when n == 1
        }
    });
  }
}

void conv2d_backward(const cpu::Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db) {
  const int64_t Ho = s.Ho(), Wo = s.Wo(), HoWo = Ho * Wo, CKK = s.Cin * s.kh * s.kw;
  HWAGA_CHECK(Ho >= 1 && Wo >= 1, "conv2d_backward: empty output");
  const int64_t nb = chunk_images(s);
  std::vector<float> col(size_t(CKK * nb * HoWo)), dyc(nb > 1 ? size_t(s.Cout * nb * HoWo) : 0);
  for (int64_t b0 = 0; b0 < s.B; b0 += nb) {
    const int64_t n = std::min(nb, s.B - b0), L = n * HoWo;
    // g [Cout, L]: the chunk's output gradients with images side by side (one image: dy itself)
    const float* g = dy + b0 * s.Cout * HoWo;
    if (n > 1) {
      parallel_for(s.Cout, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t co = c0; co < c1; ++co)
          for (int64_t i = 0; i < n; ++i)
            std::memcpy(dyc.data() + co * L + i * HoWo, dy + ((b0 + i) * s.Cout + co) * HoWo, size_t(HoWo) * 4);
      });
      g = dyc.data();
    }
    if (db)
      parallel_for(s.Cout, 8, [&](int64_t c0, int64_t c1) {
        for (int64_t co = c0; co < c1; ++co) {
          const float* r = g + co * L;
          double acc = 0;
          for (int64_t j = 0; j < L; ++j) acc += r[j];
          db[co] += float(acc);
        }
      });
    if (dw) {
      im2col(s, x, b0, n, col.data());
      // dw [Cout, CKK] += g [Cout, L] . col^T [L, CKK]
      train_gemm(false, true, s.Cout, CKK, L, 1.0f, g, L, col.data(), L, 1.0f, dw, CKK);
    }
    if (dx) {
      // dcol [CKK, L] = w^T [CKK, Cout] . g [Cout, L]  (into col, no longer needed)
      train_gemm(true, false, CKK, L, s.Cout, 1.0f, w, CKK, g, L, 0.0f, col.data(), L);
      col2im(s, col.data(), b0, n, dx);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// GroupNorm

void group_norm_forward(const float* x, const float* gamma, const float* beta, float* y, float* mean, float* rstd,
                        int64_t B, int64_t C, int64_t N, int64_t G, float eps) {
  HWAGA_CHECK(G > 0 && C % G == 0, "group_norm_forward: C ", C, " not divisible by ", G, " groups");
  const int64_t Cg = C / G, M = Cg * N;
  parallel_for(B * G, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* xs = x + t * M;
      double s = 0;
      for (int64_t i = 0; i < M; ++i) s += xs[i];
      const double m = s / double(M);
      double q = 0;
      for (int64_t i = 0; i < M; ++i) q += (xs[i] - m) * (xs[i] - m);
      const double r = 1.0 / std::sqrt(q / double(M) + double(eps));
      mean[t] = float(m);
      rstd[t] = float(r);
      const int64_t g = t % G;
      for (int64_t c = 0; c < Cg; ++c) {
        const int64_t ch = g * Cg + c;
        const float a = float(r) * gamma[ch], sh = beta[ch], mf = float(m);
        const float* xc = xs + c * N;
        float* yc = y + t * M + c * N;
        for (int64_t i = 0; i < N; ++i) yc[i] = (xc[i] - mf) * a + sh;
      }
    }
  });
}

void group_norm_backward(const float* x, const float* gamma, const float* mean, const float* rstd, const float* dy,
                         float* dx, float* dgamma, float* dbeta, int64_t B, int64_t C, int64_t N, int64_t G) {
  const int64_t Cg = C / G, M = Cg * N;
  // per (b, c): sum dy * xhat and sum dy, reduced over b afterwards in a fixed order
  std::vector<double> sa(size_t(B * C)), sb(size_t(B * C));
  parallel_for(B * G, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / G, g = t % G;
      const float m = mean[t], r = rstd[t];
      double m1 = 0, m2 = 0;  // sums of gamma*dy and gamma*dy*xhat over the group
      for (int64_t c = 0; c < Cg; ++c) {
        const int64_t ch = g * Cg + c;
        const float* xc = x + t * M + c * N;
        const float* dc = dy + t * M + c * N;
        double a = 0, s = 0;
        for (int64_t i = 0; i < N; ++i) {
          const double xh = double(xc[i] - m) * r;
          a += dc[i] * xh;
          s += dc[i];
        }
        sa[size_t(b * C + ch)] = a;
        sb[size_t(b * C + ch)] = s;
        m1 += gamma[ch] * s;
        m2 += gamma[ch] * a;
      }
      const float f1 = float(m1 / double(M)), f2 = float(m2 / double(M));
      for (int64_t c = 0; c < Cg; ++c) {
        const int64_t ch = g * Cg + c;
        const float gm = gamma[ch];
        const float* xc = x + t * M + c * N;
        const float* dc = dy + t * M + c * N;
        float* o = dx + t * M + c * N;
        for (int64_t i = 0; i < N; ++i) {
          const float xh = (xc[i] - m) * r;
          o[i] = r * (dc[i] * gm - f1 - xh * f2);
        }
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double a = 0, s = 0;
    for (int64_t b = 0; b < B; ++b) {
      a += sa[size_t(b * C + c)];
      s += sb[size_t(b * C + c)];
    }
    dgamma[c] += float(a);
    dbeta[c] += float(s);
  }
}

// ---------------------------------------------------------------------------------------------
// SiLU, upsampling, add

// ---------------------------------------------------------------------------------------------
// BatchNorm (training mode), LeakyReLU

void batch_norm_train_forward(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                              float* rstd, float* var_unbiased, int64_t B, int64_t C, int64_t N, float eps) {
  const int64_t M = B * N;
  HWAGA_CHECK(M > 1, "batch_norm: a channel needs more than one value, found ", M);
  parallel_for(C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double s = 0;
      for (int64_t b = 0; b < B; ++b)
        for (const float *p = x + (b * C + c) * N, *e = p + N; p < e; ++p) s += *p;
      const double m = s / double(M);
      double q = 0;
      for (int64_t b = 0; b < B; ++b)
        for (const float *p = x + (b * C + c) * N, *e = p + N; p < e; ++p) q += (*p - m) * (*p - m);
      const double r = 1.0 / std::sqrt(q / double(M) + double(eps));
      mean[c] = float(m);
      rstd[c] = float(r);
      if (var_unbiased) var_unbiased[c] = float(q / double(M - 1));
      const float a = float(r) * gamma[c], sh = beta[c], mf = float(m);
      for (int64_t b = 0; b < B; ++b) {
        const float* xc = x + (b * C + c) * N;
        float* yc = y + (b * C + c) * N;
        for (int64_t i = 0; i < N; ++i) yc[i] = (xc[i] - mf) * a + sh;
      }
    }
  });
}

void batch_norm_train_backward(const float* x, const float* gamma, const float* mean, const float* rstd,
                               const float* dy, float* dx, float* dgamma, float* dbeta, int64_t B, int64_t C,
                               int64_t N) {
  const int64_t M = B * N;
  parallel_for(C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const float m = mean[c], r = rstd[c];
      double sd = 0, sdx = 0;  // sum dy, sum dy * xhat
      for (int64_t b = 0; b < B; ++b) {
        const float* xc = x + (b * C + c) * N;
        const float* dc = dy + (b * C + c) * N;
        for (int64_t i = 0; i < N; ++i) {
          sd += dc[i];
          sdx += double(dc[i]) * (double(xc[i] - m) * r);
        }
      }
      dgamma[c] += float(sdx);
      dbeta[c] += float(sd);
      const float k = gamma[c] * r, md = float(sd / double(M)), mdx = float(sdx / double(M));
      for (int64_t b = 0; b < B; ++b) {
        const float* xc = x + (b * C + c) * N;
        const float* dc = dy + (b * C + c) * N;
        float* o = dx + (b * C + c) * N;
        for (int64_t i = 0; i < N; ++i) o[i] = k * (dc[i] - md - (xc[i] - m) * r * mdx);
      }
    }
  });
}

void leaky_relu_forward(const float* x, float* y, int64_t n, float slope) {
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = x[i] > 0 ? x[i] : slope * x[i];
  });
}

void leaky_relu_backward(const float* y, const float* dy, float* dx, int64_t n, float slope) {
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dx[i] = y[i] > 0 ? dy[i] : slope * dy[i];
  });
}

void max_pool2x2_forward(const float* x, float* y, int64_t P, int64_t H, int64_t W) {
  const int64_t Ho = H / 2, Wo = W / 2;
  parallel_for(P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t i = 0; i < Ho; ++i)
        for (int64_t j = 0; j < Wo; ++j) {
          const float* w = x + (p * H + 2 * i) * W + 2 * j;
          y[(p * Ho + i) * Wo + j] = std::max(std::max(w[0], w[1]), std::max(w[W], w[W + 1]));
        }
  });
}

void max_pool2x2_backward(const float* x, const float* dy, float* dx, int64_t P, int64_t H, int64_t W) {
  const int64_t Ho = H / 2, Wo = W / 2;
  parallel_for(P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      std::memset(dx + p * H * W, 0, size_t(H * W) * sizeof(float));
      for (int64_t i = 0; i < Ho; ++i)
        for (int64_t j = 0; j < Wo; ++j) {
          const int64_t base = (p * H + 2 * i) * W + 2 * j;
          int64_t best = base;
          for (int64_t o : {base + 1, base + W, base + W + 1})
            if (x[o] > x[best]) best = o;
          dx[best] = dy[(p * Ho + i) * Wo + j];
        }
    }
  });
}

void silu_forward(const float* x, float* y, int64_t n) { cpu::silu_forward(x, y, n); }

void silu_backward(const float* x, const float* dy, float* dx, int64_t n) {
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
#ifdef HWAGA_VEC_AVX2
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= i1; i += 8) {  // s = 1 / (1 + exp(-x)) with silu_forward's exp
      const __m256 v = _mm256_loadu_ps(x + i);
      const __m256 sg = _mm256_div_ps(one, _mm256_add_ps(one, cpu::exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), v))));
      const __m256 t = _mm256_add_ps(sg, _mm256_mul_ps(_mm256_mul_ps(v, sg), _mm256_sub_ps(one, sg)));
      _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(dy + i), t));
    }
#endif
    for (; i < i1; ++i) {
      const float s = 1.0f / (1.0f + std::exp(-x[i]));
      dx[i] = dy[i] * (s + x[i] * s * (1.0f - s));
    }
  });
}

void upsample_nearest2x_forward(const float* x, float* y, int64_t P, int64_t H, int64_t W) {
  cpu::upsample_nearest2x_forward(x, y, P, H, W);
}

void upsample_nearest2x_backward(const float* dy, float* dx, int64_t P, int64_t H, int64_t W) {
  parallel_for(P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t i = 0; i < H; ++i) {
        const float* r0 = dy + (p * 2 * H + 2 * i) * 2 * W;
        const float* r1 = r0 + 2 * W;
        float* o = dx + (p * H + i) * W;
        for (int64_t j = 0; j < W; ++j) o[j] = (r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1]);
      }
  });
}

void add_inplace(float* y, const float* x, int64_t n) {
  parallel_for(n, 1 << 15, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] += x[i];
  });
}

// ---------------------------------------------------------------------------------------------
// attention

void attention_forward(const float* q, const float* k, const float* v, float* out, float* p, int64_t B, int64_t C,
                       int64_t N) {
  const float scale = 1.0f / std::sqrt(float(C));
  parallel_for(B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float *qb = q + b * C * N, *kb = k + b * C * N, *vb = v + b * C * N;
      float* pb = p + b * N * N;
      // scores [N,N] = q^T k / sqrt(C)  (nested in parallel_for: sgemm runs on this thread)
      cpu::sgemm(true, false, N, N, C, scale, qb, N, kb, N, 0.0f, pb, N);
      for (int64_t i = 0; i < N; ++i) {
        float* r = pb + i * N;
        const float mx = *std::max_element(r, r + N);
        double sum = 0;
        for (int64_t j = 0; j < N; ++j) {
          r[j] = std::exp(r[j] - mx);
          sum += r[j];
        }
        const float inv = float(1.0 / sum);
        for (int64_t j = 0; j < N; ++j) r[j] *= inv;
      }
      // out [C,N] = v [C,N] . p^T
      cpu::sgemm(false, true, C, N, N, 1.0f, vb, N, pb, N, 0.0f, out + b * C * N, N);
    }
  });
}

void attention_backward(const float* q, const float* k, const float* v, const float* p, const float* dout, float* dq,
                        float* dk, float* dv, int64_t B, int64_t C, int64_t N) {
  const float scale = 1.0f / std::sqrt(float(C));
  parallel_for(B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> ds(size_t(N * N));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = b * C * N;
      const float* pb = p + b * N * N;
      // dv [C,N] = dout [C,N] . p [N,N]
      cpu::sgemm(false, false, C, N, N, 1.0f, dout + o, N, pb, N, 0.0f, dv + o, N);
      // dp [N,N] = dout^T . v
      cpu::sgemm(true, false, N, N, C, 1.0f, dout + o, N, v + o, N, 0.0f, ds.data(), N);
      // ds = p * (dp - sum_j p dp) * scale
      for (int64_t i = 0; i < N; ++i) {
        float* r = ds.data() + i * N;
        const float* pr = pb + i * N;
        double dot = 0;
        for (int64_t j = 0; j < N; ++j) dot += double(pr[j]) * r[j];
        const float d = float(dot);
        for (int64_t j = 0; j < N; ++j) r[j] = pr[j] * (r[j] - d) * scale;
      }
      // dq [C,N] = k . ds^T ; dk [C,N] = q . ds
      cpu::sgemm(false, true, C, N, N, 1.0f, k + o, N, ds.data(), N, 0.0f, dq + o, N);
      cpu::sgemm(false, false, C, N, N, 1.0f, q + o, N, ds.data(), N, 0.0f, dk + o, N);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// MSE

double mse_forward_backward(const float* y, const float* t, float* dy, int64_t n, float scale) {
  HWAGA_CHECK(n > 0, "mse: no values");
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(64, n / 4096));
  std::vector<double> part(size_t(chunks), 0.0);
  const float g = 2.0f * scale / float(n);
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t i0 = n * c / chunks, i1 = n * (c + 1) / chunks;
      double s = 0;
      for (int64_t i = i0; i < i1; ++i) {
        const float d = y[i] - t[i];
        s += double(d) * d;
        if (dy) dy[i] = g * d;
      }
      part[size_t(c)] = s;
    }
  });
  double s = 0;
  for (double v : part) s += v;  // fixed order: the same for any thread count
  return s / double(n);
}

}  // namespace hwaga::train
