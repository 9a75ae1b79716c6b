// The backward passes of src/train/transformer_ops.h against central finite differences of the
// forward (and the forwards against naive double-precision loops).
//
// Every check differentiates the scalar objective f = Σ_i r_i y_i (r fixed random weights) in
// double over f32 forwards. With step h = 1e-2 on inputs of size O(1), the truncation error of a
// central difference is O(h² f''') ~ 1e-4 and the f32 rounding of f (~1e-7 · Σ|r y| ≈ 1e-6)
// divided by 2h adds ~1e-4, so |fd - analytic| <= 2e-3 + 1e-2 |analytic| is a tolerance that holds
// with margin for a correct backward but fails for a wrong sign, index or factor (errors O(|g|)).
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "core/threads.h"
#include "sample/rng.h"
#include "test_util.h"
#include "train/transformer_ops.h"

using namespace hwaga;
using namespace hwaga::train;

namespace {

std::vector<float> rnd(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

double dot(const std::vector<float>& r, const std::vector<float>& y) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += double(r[i]) * y[i];
  return s;
}

// Compares analytic[i] with the central difference of f() in x[i], for every i.
void check_fd(const char* what, std::vector<float>& x, const std::vector<float>& analytic,
              const std::function<double()>& f, float h = 1e-2f, double atol = 2e-3, double rtol = 1e-2) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float x0 = x[i];
    x[i] = x0 + h;
    const double fp = f();
    x[i] = x0 - h;
    const double fm = f();
    x[i] = x0;
    const double fd = (fp - fm) / (2.0 * double(h));
    if (std::abs(fd - analytic[i]) > atol + rtol * std::abs(fd)) {
      if (++bad <= 5) ADD_FAILURE() << what << "[" << i << "]: analytic " << analytic[i] << ", finite difference " << fd;
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

}  // namespace

TEST(TrainOps, LinearForwardAndBackward) {
  const int64_t N = 5, in = 7, out = 6;
  auto x = rnd(size_t(N * in), 1), W = rnd(size_t(out * in), 2, 0.5f), b = rnd(size_t(out), 3), r = rnd(size_t(N * out), 4);
  std::vector<float> y(size_t(N * out));
  linear_fwd(x.data(), W.data(), b.data(), y.data(), N, in, out);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < out; ++o) {
      double s = b[size_t(o)];
      for (int64_t i = 0; i < in; ++i) s += double(x[size_t(n * in + i)]) * W[size_t(o * in + i)];
      ASSERT_NEAR(y[size_t(n * out + o)], s, 1e-5) << n << "," << o;
    }
  auto f = [&] {
    linear_fwd(x.data(), W.data(), b.data(), y.data(), N, in, out);
    return dot(r, y);
  };
  // dW, db accumulate: start them at 1 and subtract it back to check the "+=".
  std::vector<float> dx(x.size(), 7.0f), dW(W.size(), 1.0f), db(b.size(), 1.0f);
  linear_bwd(x.data(), W.data(), r.data(), dx.data(), dW.data(), db.data(), N, in, out);
  for (auto& v : dW) v -= 1.0f;
  for (auto& v : db) v -= 1.0f;
  check_fd("linear dx", x, dx, f);
  check_fd("linear dW", W, dW, f);
  check_fd("linear db", b, db, f);
  // accumulate_dx adds to what is there
  std::vector<float> dx2(x.size(), 1.0f);
  linear_bwd(x.data(), W.data(), r.data(), dx2.data(), nullptr, nullptr, N, in, out, true);
  for (size_t i = 0; i < dx.size(); ++i) ASSERT_NEAR(dx2[i] - 1.0f, dx[i], 1e-6);  // (1 + a) - 1 rounds
}

TEST(TrainOps, LayerNormForwardAndBackward) {
  const int64_t N = 4, C = 9;
  auto x = rnd(size_t(N * C), 5, 2.0f), g = rnd(size_t(C), 6), bt = rnd(size_t(C), 7), r = rnd(size_t(N * C), 8);
  for (int64_t i = 0; i < C; ++i) x[size_t(i)] += 3.0f;  // a row with a large mean
  std::vector<float> y(x.size()), mean(static_cast<size_t>(N)), rstd(static_cast<size_t>(N));
  layer_norm_fwd(x.data(), g.data(), bt.data(), y.data(), mean.data(), rstd.data(), N, C, 1e-5f);
  for (int64_t n = 0; n < N; ++n) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += x[size_t(n * C + c)];
    m /= double(C);
    for (int64_t c = 0; c < C; ++c) v += (x[size_t(n * C + c)] - m) * (x[size_t(n * C + c)] - m);
    v /= double(C);  // biased, as torch.nn.LayerNorm
    for (int64_t c = 0; c < C; ++c)
      ASSERT_NEAR(y[size_t(n * C + c)], (x[size_t(n * C + c)] - m) / std::sqrt(v + 1e-5) * g[size_t(c)] + bt[size_t(c)],
                  1e-5);
  }
  auto f = [&] {
    layer_norm_fwd(x.data(), g.data(), bt.data(), y.data(), mean.data(), rstd.data(), N, C, 1e-5f);
    return dot(r, y);
  };
  f();
  std::vector<float> dx(x.size()), dg(g.size(), 0.0f), db(bt.size(), 0.0f);
  layer_norm_bwd(x.data(), g.data(), mean.data(), rstd.data(), r.data(), dx.data(), dg.data(), db.data(), N, C);
  check_fd("layer_norm dx", x, dx, f, 1e-3f);
  check_fd("layer_norm dgamma", g, dg, f);
  check_fd("layer_norm dbeta", bt, db, f);
}

TEST(TrainOps, GeluBackward) {
  auto x = rnd(64, 9, 2.0f), r = rnd(64, 10);
  std::vector<float> y(64), dx(64);
  gelu_fwd(x.data(), y.data(), 64);
  for (size_t i = 0; i < 64; ++i) ASSERT_NEAR(y[i], 0.5 * x[i] * (1 + std::erf(x[i] / std::sqrt(2.0))), 1e-6);
  gelu_bwd(x.data(), r.data(), dx.data(), 64);
  check_fd("gelu dx", x, dx, [&] {
    gelu_fwd(x.data(), y.data(), 64);
    return dot(r, y);
  });
}

TEST(TrainOps, CausalAttentionForwardAndBackward) {
  const int64_t B = 2, T = 5, H = 2, hd = 3, C = H * hd;
  auto q = rnd(size_t(B * T * C), 11), k = rnd(size_t(B * T * C), 12), v = rnd(size_t(B * T * C), 13),
       r = rnd(size_t(B * T * C), 14);
  std::vector<float> probs(size_t(B * H * T * T)), out(size_t(B * T * C));
  attention_fwd(q.data(), k.data(), v.data(), probs.data(), out.data(), B, T, H, hd);
  // naive double reference
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> s(size_t(i + 1));
        double mx = -1e300, sum = 0;
        for (int64_t j = 0; j <= i; ++j) {
          double d = 0;
          for (int64_t e = 0; e < hd; ++e) d += double(q[size_t((b * T + i) * C + h * hd + e)]) * k[size_t((b * T + j) * C + h * hd + e)];
          s[size_t(j)] = d / std::sqrt(double(hd));
          mx = std::max(mx, s[size_t(j)]);
        }
        for (auto& z : s) sum += (z = std::exp(z - mx));
        for (int64_t e = 0; e < hd; ++e) {
          double o = 0;
          for (int64_t j = 0; j <= i; ++j) o += s[size_t(j)] / sum * v[size_t((b * T + j) * C + h * hd + e)];
          ASSERT_NEAR(out[size_t((b * T + i) * C + h * hd + e)], o, 1e-5);
        }
        for (int64_t j = i + 1; j < T; ++j) ASSERT_EQ(probs[size_t(((b * H + h) * T + i) * T + j)], 0.0f);
      }
  auto f = [&] {
    attention_fwd(q.data(), k.data(), v.data(), probs.data(), out.data(), B, T, H, hd);
    return dot(r, out);
  };
  f();
  std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
  attention_bwd(q.data(), k.data(), v.data(), probs.data(), r.data(), dq.data(), dk.data(), dv.data(), B, T, H, hd);
  check_fd("attention dq", q, dq, f);
  check_fd("attention dk", k, dk, f);
  check_fd("attention dv", v, dv, f);
  // causality: the gradient of output row 0 reaches no later key/value
  std::vector<float> r0(r.size(), 0.0f);
  for (int64_t c = 0; c < C; ++c) r0[size_t(c)] = 1.0f;  // b = 0, i = 0
  attention_bwd(q.data(), k.data(), v.data(), probs.data(), r0.data(), dq.data(), dk.data(), dv.data(), B, T, H, hd);
  for (int64_t t = 1; t < T; ++t)
    for (int64_t c = 0; c < C; ++c) {
      EXPECT_EQ(dk[size_t(t * C + c)], 0.0f);
      EXPECT_EQ(dv[size_t(t * C + c)], 0.0f);
    }
}

TEST(TrainOps, EmbeddingAndPositions) {
  const int64_t V = 4, C = 70, N = 6;  // C > 64: more than one column chunk
  auto table = rnd(size_t(V * C), 15), r = rnd(size_t(N * C), 16);
  std::vector<int32_t> ids = {2, 0, 2, 3, 2, 0};  // repeats: gradients must add up
  std::vector<float> out(size_t(N * C));
  auto f = [&] {
    embedding_fwd(table.data(), ids.data(), out.data(), N, C);
    return dot(r, out);
  };
  std::vector<float> dt(table.size(), 0.0f);
  embedding_bwd(ids.data(), r.data(), dt.data(), N, C);
  check_fd("embedding dtable", table, dt, f);
  for (int64_t c = 0; c < C; ++c) EXPECT_EQ(dt[size_t(1 * C + c)], 0.0f);  // row 1 is never looked up

  const int64_t R = 3;
  auto pos = rnd(size_t(R * C), 17), base = rnd(size_t(N * C), 18);
  auto g = [&] {
    out = base;
    add_pos_fwd(out.data(), pos.data(), N, R, C);
    return dot(r, out);
  };
  std::vector<float> dp(pos.size(), 0.0f);
  add_pos_bwd(r.data(), dp.data(), N, R, C);
  check_fd("positions dpos", pos, dp, g);
}

TEST(TrainOps, WeightedCrossEntropy) {
  const int64_t N = 4, K = 6;
  auto z = rnd(size_t(N * K), 19, 2.0f);
  std::vector<int32_t> t = {1, 5, -1, 0};  // row 2 has weight 0: its target is never read
  std::vector<float> w = {0.5f, 0.25f, 0.0f, 0.25f}, dz(z.size());
  const double loss = cross_entropy(z.data(), t.data(), w.data(), dz.data(), 1.5f, N, K);
  double want = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (w[size_t(n)] == 0) continue;
    double s = 0;
    for (int64_t j = 0; j < K; ++j) s += std::exp(double(z[size_t(n * K + j)]));
    want += w[size_t(n)] * (std::log(s) - z[size_t(n * K + t[size_t(n)])]);
  }
  EXPECT_NEAR(loss, want, 1e-6);
  for (int64_t j = 0; j < K; ++j) EXPECT_EQ(dz[size_t(2 * K + j)], 0.0f);
  check_fd("cross_entropy dz", z, dz, [&] { return 1.5 * cross_entropy(z.data(), t.data(), w.data(), nullptr, 0, N, K); });
  t[0] = K;  // a weighted row with a target out of range
  EXPECT_NE(test::error_of([&] { cross_entropy(z.data(), t.data(), w.data(), nullptr, 1, N, K); }).find("outside [0, 6)"),
            std::string::npos);
}

TEST(TrainOps, DropoutIsDeterministicAndUnbiased) {
  const int64_t n = 100000;
  std::vector<float> a(size_t(n), 1.0f), b(size_t(n), 1.0f), c(size_t(n), 1.0f);
  dropout_apply(a.data(), n, 0.1f, 42, dropout_stream(3, 1));
  const int saved = num_threads();
  set_num_threads(1);  // the mask does not depend on the thread count
  dropout_apply(b.data(), n, 0.1f, 42, dropout_stream(3, 1));
  set_num_threads(saved);
  dropout_apply(c.data(), n, 0.1f, 42, dropout_stream(4, 1));
  int64_t dropped = 0, differ = 0;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(a[size_t(i)], b[size_t(i)]);
    ASSERT_TRUE(a[size_t(i)] == 0.0f || a[size_t(i)] == 1.0f / 0.9f);
    dropped += a[size_t(i)] == 0.0f;
    differ += (a[size_t(i)] == 0.0f) != (c[size_t(i)] == 0.0f);
    sum += a[size_t(i)];
  }
  // Binomial(1e5, 0.1): sd ~95, so ±600 is > 6 sd.
  EXPECT_NEAR(double(dropped), 10000.0, 600.0);
  EXPECT_NEAR(sum / double(n), 1.0, 0.01);  // inverted dropout keeps the mean
  EXPECT_GT(differ, 1000);                  // another step, another mask
  // the mask is the stream's 24-bit floats compared with p
  Rng rng(42, dropout_stream(3, 1));
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(a[size_t(i)] == 0.0f, rng.next_float() < 0.1f) << i;
  // p = 0: untouched
  std::vector<float> d(10, 2.0f);
  dropout_apply(d.data(), 10, 0.0f, 1, 1);
  for (float v : d) EXPECT_EQ(v, 2.0f);
}
