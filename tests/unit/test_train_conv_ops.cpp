// Backward passes of train/conv_ops.h against central finite differences of the forward passes
// (conv, GroupNorm, BatchNorm, SiLU, LeakyReLU, upsampling, max pooling, attention, MSE).
//
// Each check builds a scalar L = sum_i r_i * y_i (r fixed random weights, the sum in double) from
// the op's f32 forward, and compares dL/dv from the backward (fed dy = r) with
// (L(v + eps) - L(v - eps)) / (2 eps) for every element of small tensors (or a random sample of
// 40 elements of larger ones).
//
// Tolerances: eps = 1e-2 on values of size ~1. The linear ops (conv, upsample, the weight
// gradients) have no truncation error; the nonlinear ones (GroupNorm, SiLU, softmax) have
// eps^2 |f'''| / 6 ~ 1e-5 relative. The f32 forward rounds each output by ~6e-8 relative, so L
// carries an error of about sqrt(#outputs) * 6e-8 * |y| ~ 1e-5, i.e. ~5e-4 after dividing by
// 2 eps, relative to max|g| ~ 1-10. Measured: at most 3.4e-5 * max|g| (attention dk). Hence
// |fd - g| <= 3e-4 * max|g| + 3e-3 * |g|: a wrong index, sign, missing term or factor of 2 gives
// errors of the size of g itself and fails.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "core/threads.h"
#include "kernels/cpu/attention_hw.h"
#include "kernels/cpu/norm.h"
#include "train/conv_ops.h"

using namespace hwaga;
using namespace hwaga::train;

namespace {

std::vector<float> rnd(size_t n, uint32_t seed, float scale = 1.0f, float offset = 0.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = offset + scale * d(g);
  return v;
}

double dot(const std::vector<float>& r, const std::vector<float>& y) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += double(r[i]) * y[i];
  return s;
}

// Checks g = dL/dv against central differences of L (which reads v).
void check_grad(const std::string& what, std::vector<float>& v, const std::vector<float>& g,
                const std::function<double()>& L, float eps = 1e-2f, uint32_t seed = 7) {
  ASSERT_EQ(v.size(), g.size()) << what;
  std::vector<size_t> idx;
  if (v.size() <= 60) {
    for (size_t i = 0; i < v.size(); ++i) idx.push_back(i);
  } else {
    std::mt19937 r(seed);
    for (int i = 0; i < 40; ++i) idx.push_back(r() % v.size());
  }
  double gmax = 0;
  for (float x : g) gmax = std::max(gmax, double(std::fabs(x)));
  ASSERT_GT(gmax, 0.0) << what << ": all-zero gradient";
  double worst = 0;
  for (size_t i : idx) {
    const float keep = v[i];
    v[i] = keep + eps;
    const double lp = L();
    v[i] = keep - eps;
    const double lm = L();
    v[i] = keep;
    const double fd = (lp - lm) / (2.0 * double(eps));
    const double err = std::fabs(fd - g[i]);
    worst = std::max(worst, err / gmax);
    EXPECT_LE(err, 3e-4 * gmax + 3e-3 * std::fabs(g[i])) << what << "[" << i << "]: backward " << g[i] << ", finite difference " << fd;
  }
  std::printf("  %-28s max |fd - g| / max|g| = %.2e over %zu elements\n", what.c_str(), worst, idx.size());
}

struct ConvCase {
  int64_t B, Cin, H, W, Cout, k;
  int stride, pt, pl, pb, pr;
};

void run_conv_case(const ConvCase& c) {
  cpu::Conv2dShape s{c.B, c.Cin, c.H, c.W, c.Cout, c.k, c.k, c.stride, c.pt, c.pl, c.pb, c.pr};
  const int64_t ny = s.B * s.Cout * s.Ho() * s.Wo();
  std::vector<float> x = rnd(static_cast<size_t>(s.B * s.Cin * s.H * s.W), 1), w = rnd(static_cast<size_t>(s.Cout * s.Cin * s.kh * s.kw), 2, 0.3f),
                     b = rnd(static_cast<size_t>(s.Cout), 3), r = rnd(static_cast<size_t>(ny), 4), y(static_cast<size_t>(ny));
  auto L = [&] {
    train::conv2d_forward(s, x.data(), w.data(), b.data(), y.data());
    return dot(r, y);
  };
  std::vector<float> dx(x.size()), dw(w.size(), 0.5f), db(b.size(), -0.25f);  // dw/db accumulate onto these
  conv2d_backward(s, x.data(), w.data(), r.data(), dx.data(), dw.data(), db.data());
  // no dx: the parameter gradients must come out the same bits
  std::vector<float> dw2(w.size(), 0.5f), db2(b.size(), -0.25f);
  conv2d_backward(s, x.data(), w.data(), r.data(), nullptr, dw2.data(), db2.data());
  EXPECT_EQ(dw, dw2);
  EXPECT_EQ(db, db2);
  for (float& v : dw) v -= 0.5f;
  for (float& v : db) v += 0.25f;
  const std::string name = "conv " + std::to_string(c.k) + "x" + std::to_string(c.k) + "/s" + std::to_string(c.stride) +
                           " " + std::to_string(c.H) + "x" + std::to_string(c.W);
  check_grad(name + " dx", x, dx, L);
  check_grad(name + " dw", w, dw, L);
  check_grad(name + " db", b, db, L);
}

}  // namespace

TEST(TrainConvOps, Conv2dBackward3x3Same) { run_conv_case({2, 5, 7, 6, 4, 3, 1, 1, 1, 1, 1}); }
TEST(TrainConvOps, Conv2dBackwardPointwise) { run_conv_case({3, 6, 4, 5, 7, 1, 1, 0, 0, 0, 0}); }
// the taming Downsample: pad right/bottom by 1, 3x3 stride 2 (odd and even sizes)
TEST(TrainConvOps, Conv2dBackwardDownsample) {
  run_conv_case({2, 4, 8, 8, 4, 3, 2, 0, 0, 1, 1});
  run_conv_case({1, 3, 7, 9, 2, 3, 2, 0, 0, 1, 1});
}
TEST(TrainConvOps, Conv2dBackward4x4Stride2) { run_conv_case({2, 3, 9, 8, 5, 4, 2, 1, 1, 1, 1}); }
// large images: one image per chunk (several chunks), 3 input channels like conv_in
TEST(TrainConvOps, Conv2dBackwardSeveralChunks) { run_conv_case({3, 3, 48, 48, 4, 3, 1, 1, 1, 1, 1}); }

TEST(TrainConvOps, GroupNormForwardMatchesKernel) {
  const int64_t B = 2, C = 64, N = 9, G = 32;
  std::vector<float> x = rnd(static_cast<size_t>(B * C * N), 11, 2.0f, 3.0f), g = rnd(static_cast<size_t>(C), 12, 0.5f, 1.0f),
                     b = rnd(static_cast<size_t>(C), 13), y(x.size()), y2(x.size()), m(static_cast<size_t>(B * G)), rs(static_cast<size_t>(B * G));
  group_norm_forward(x.data(), g.data(), b.data(), y.data(), m.data(), rs.data(), B, C, N, G, 1e-6f);
  cpu::group_norm_forward(x.data(), g.data(), b.data(), y2.data(), B, C, N, G, 1e-6f, false);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], y2[i], 1e-5f * (1 + std::fabs(y2[i]))) << i;
}

TEST(TrainConvOps, GroupNormBackward) {
  for (int64_t N : {2, 5, 16}) {
    const int64_t B = 2, C = 64, G = 32;
    std::vector<float> x = rnd(static_cast<size_t>(B * C * N), 21, 1.5f, 0.5f), g = rnd(static_cast<size_t>(C), 22, 0.5f, 1.0f),
                       b = rnd(static_cast<size_t>(C), 23), r = rnd(x.size(), 24), y(x.size()), m(static_cast<size_t>(B * G)), rs(static_cast<size_t>(B * G));
    auto L = [&] {
      group_norm_forward(x.data(), g.data(), b.data(), y.data(), m.data(), rs.data(), B, C, N, G, 1e-6f);
      return dot(r, y);
    };
    L();
    std::vector<float> dx(x.size()), dg(static_cast<size_t>(C), 0.0f), db(static_cast<size_t>(C), 0.0f);
    group_norm_backward(x.data(), g.data(), m.data(), rs.data(), r.data(), dx.data(), dg.data(), db.data(), B, C, N, G);
    const std::string n = "group norm N=" + std::to_string(N);
    check_grad(n + " dx", x, dx, L);
    check_grad(n + " dgamma", g, dg, L);
    check_grad(n + " dbeta", b, db, L);
  }
}

TEST(TrainConvOps, GroupNormBackwardInPlace) {  // dx may alias dy
  const int64_t B = 1, C = 32, N = 6, G = 32;
  std::vector<float> x = rnd(static_cast<size_t>(B * C * N), 31), g = rnd(static_cast<size_t>(C), 32), b = rnd(static_cast<size_t>(C), 33), r = rnd(x.size(), 34),
                     y(x.size()), m(static_cast<size_t>(G)), rs(static_cast<size_t>(G));
  group_norm_forward(x.data(), g.data(), b.data(), y.data(), m.data(), rs.data(), B, C, N, G, 1e-6f);
  std::vector<float> dx(x.size()), dg(static_cast<size_t>(C)), db(static_cast<size_t>(C)), d2 = r;
  group_norm_backward(x.data(), g.data(), m.data(), rs.data(), r.data(), dx.data(), dg.data(), db.data(), B, C, N, G);
  group_norm_backward(x.data(), g.data(), m.data(), rs.data(), d2.data(), d2.data(), dg.data(), db.data(), B, C, N, G);
  for (size_t i = 0; i < dx.size(); ++i) ASSERT_EQ(dx[i], d2[i]) << i;
}

TEST(TrainConvOps, SiluBackward) {
  std::vector<float> x = rnd(50, 41, 3.0f), r = rnd(50, 42), y(50), dx(50);
  auto L = [&] {
    silu_forward(x.data(), y.data(), 50);
    return dot(r, y);
  };
  silu_backward(x.data(), r.data(), dx.data(), 50);
  check_grad("silu dx", x, dx, L);
}

TEST(TrainConvOps, UpsampleBackward) {
  const int64_t P = 3, H = 3, W = 4;
  std::vector<float> x = rnd(static_cast<size_t>(P * H * W), 51), r = rnd(static_cast<size_t>(P * 4 * H * W), 52), y(r.size()), dx(x.size());
  auto L = [&] {
    upsample_nearest2x_forward(x.data(), y.data(), P, H, W);
    return dot(r, y);
  };
  upsample_nearest2x_backward(r.data(), dx.data(), P, H, W);
  check_grad("upsample dx", x, dx, L);
}

TEST(TrainConvOps, AttentionForwardMatchesKernel) {
  const int64_t B = 2, C = 16, N = 12;
  std::vector<float> q = rnd(static_cast<size_t>(B * C * N), 61), k = rnd(q.size(), 62), v = rnd(q.size(), 63), o(q.size()),
                     o2(q.size()), p(static_cast<size_t>(B * N * N));
  attention_forward(q.data(), k.data(), v.data(), o.data(), p.data(), B, C, N);
  cpu::attention_hw_forward(q.data(), k.data(), v.data(), o2.data(), B, C, N);
  for (size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(o[i], o2[i], 1e-5f * (1 + std::fabs(o2[i]))) << i;
  for (int64_t i = 0; i < B * N; ++i) {  // probability rows
    double s = 0;
    for (int64_t j = 0; j < N; ++j) s += p[size_t(i * N + j)];
    ASSERT_NEAR(s, 1.0, 1e-5);
  }
}

TEST(TrainConvOps, AttentionBackward) {
  const int64_t B = 2, C = 8, N = 6;
  std::vector<float> q = rnd(static_cast<size_t>(B * C * N), 71), k = rnd(q.size(), 72), v = rnd(q.size(), 73), r = rnd(q.size(), 74),
                     o(q.size()), p(static_cast<size_t>(B * N * N));
  auto L = [&] {
    attention_forward(q.data(), k.data(), v.data(), o.data(), p.data(), B, C, N);
    return dot(r, o);
  };
  L();
  std::vector<float> dq(q.size()), dk(q.size()), dv(q.size());
  attention_backward(q.data(), k.data(), v.data(), p.data(), r.data(), dq.data(), dk.data(), dv.data(), B, C, N);
  check_grad("attention dq", q, dq, L);
  check_grad("attention dk", k, dk, L);
  check_grad("attention dv", v, dv, L);
}

TEST(TrainConvOps, Mse) {
  std::vector<float> y = rnd(40, 81), t = rnd(40, 82), dy(40);
  const double l = mse_forward_backward(y.data(), t.data(), dy.data(), 40, 0.5f);
  double want = 0;
  for (int i = 0; i < 40; ++i) want += double(y[i] - t[i]) * (y[i] - t[i]);
  EXPECT_NEAR(l, want / 40, 1e-12 * want);
  auto L = [&] { return 0.5 * mse_forward_backward(y.data(), t.data(), nullptr, 40, 1.0f); };
  check_grad("mse dy (scale 0.5)", y, dy, L);
}

TEST(TrainConvOps, Conv2dBackwardSameForAnyThreadCount) {
  // Checkpoints resume bit for bit on the same thread count; across counts sums may reorder, but
  // one thread count must give the same bits on every call.
  cpu::Conv2dShape s{4, 8, 10, 10, 8, 3, 3, 1, 1, 1, 1, 1};
  std::vector<float> x = rnd(static_cast<size_t>(4 * 8 * 100), 91), w = rnd(static_cast<size_t>(8 * 8 * 9), 92), r = rnd(static_cast<size_t>(4 * 8 * 100), 93);
  std::vector<float> dx1(x.size()), dw1(w.size(), 0), db1(8, 0), dx2(x.size()), dw2(w.size(), 0), db2(8, 0);
  conv2d_backward(s, x.data(), w.data(), r.data(), dx1.data(), dw1.data(), db1.data());
  conv2d_backward(s, x.data(), w.data(), r.data(), dx2.data(), dw2.data(), db2.data());
  EXPECT_EQ(dx1, dx2);
  EXPECT_EQ(dw1, dw2);
  EXPECT_EQ(db1, db2);
}

TEST(TrainConvOps, Conv2dBackwardWithoutWeightGradient) {  // a frozen net (LPIPS's VGG) asks dx only
  cpu::Conv2dShape s{2, 3, 6, 6, 4, 3, 3, 1, 1, 1, 1, 1};
  std::vector<float> x = rnd(2 * 3 * 36, 94), w = rnd(4 * 3 * 9, 95), r = rnd(2 * 4 * 36, 96);
  std::vector<float> dx1(x.size()), dw(w.size(), 0), dx2(x.size());
  conv2d_backward(s, x.data(), w.data(), r.data(), dx1.data(), dw.data(), nullptr);
  conv2d_backward(s, x.data(), w.data(), r.data(), dx2.data(), nullptr, nullptr);
  EXPECT_EQ(dx1, dx2);
}

TEST(TrainConvOps, BatchNormTrainBackward) {
  const int64_t B = 3, C = 4, N = 5;
  std::vector<float> x = rnd(size_t(B * C * N), 101, 1.5f, 0.3f), g = rnd(size_t(C), 102, 0.3f, 1.0f),
                     be = rnd(size_t(C), 103, 0.2f), r = rnd(size_t(B * C * N), 104);
  std::vector<float> y(x.size()), mean(static_cast<size_t>(C)), rstd(static_cast<size_t>(C)), var(static_cast<size_t>(C));
  auto L = [&] {
    batch_norm_train_forward(x.data(), g.data(), be.data(), y.data(), mean.data(), rstd.data(), nullptr, B, C, N,
                             1e-5f);
    return dot(r, y);
  };
  batch_norm_train_forward(x.data(), g.data(), be.data(), y.data(), mean.data(), rstd.data(), var.data(), B, C, N,
                           1e-5f);
  // statistics over B and N per channel; the unbiased variance for the running statistics
  for (int64_t c = 0; c < C; ++c) {
    double s = 0, q = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < N; ++i) s += x[size_t((b * C + c) * N + i)];
    const double m = s / double(B * N);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < N; ++i) q += std::pow(x[size_t((b * C + c) * N + i)] - m, 2);
    EXPECT_NEAR(mean[size_t(c)], m, 1e-6);
    EXPECT_NEAR(var[size_t(c)], q / double(B * N - 1), 1e-5);
    EXPECT_NEAR(rstd[size_t(c)], 1.0 / std::sqrt(q / double(B * N) + 1e-5), 1e-5);
  }
  std::vector<float> dx(x.size()), dg(static_cast<size_t>(C), 0.0f), db(static_cast<size_t>(C), 0.0f);
  batch_norm_train_backward(x.data(), g.data(), mean.data(), rstd.data(), r.data(), dx.data(), dg.data(), db.data(), B,
                            C, N);
  check_grad("batch norm dx", x, dx, L);
  check_grad("batch norm dgamma", g, dg, L);
  check_grad("batch norm dbeta", be, db, L);
  // dx may alias dy
  std::vector<float> d2 = r, dg2(static_cast<size_t>(C), 0.0f), db2(static_cast<size_t>(C), 0.0f);
  L();
  batch_norm_train_backward(x.data(), g.data(), mean.data(), rstd.data(), d2.data(), d2.data(), dg2.data(), db2.data(),
                            B, C, N);
  EXPECT_EQ(d2, dx);
}

TEST(TrainConvOps, LeakyReluBackward) {
  // values kept 0.05 away from the kink, so that +-eps never crosses it
  std::vector<float> x = rnd(50, 111), r = rnd(50, 112), y(50), dx(50);
  for (float& v : x) v += v >= 0 ? 0.05f : -0.05f;
  auto L = [&] {
    leaky_relu_forward(x.data(), y.data(), 50, 0.2f);
    return dot(r, y);
  };
  L();
  leaky_relu_backward(y.data(), r.data(), dx.data(), 50, 0.2f);
  check_grad("leaky relu dx", x, dx, L);
  L();  // y of the unperturbed x
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(y[i], x[i] > 0 ? x[i] : 0.2f * x[i]);
}

TEST(TrainConvOps, MaxPool2x2Backward) {
  // distinct values 0.1 apart (no ties within +-eps); odd sizes drop the last row and column
  const int64_t P = 2, H = 5, W = 7;
  std::vector<float> x(size_t(P * H * W));
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.1f * float((i * 37) % x.size());
  std::vector<float> r = rnd(size_t(P * 2 * 3), 121), y(size_t(P * 2 * 3)), dx(x.size());
  auto L = [&] {
    max_pool2x2_forward(x.data(), y.data(), P, H, W);
    return dot(r, y);
  };
  L();
  max_pool2x2_backward(x.data(), r.data(), dx.data(), P, H, W);
  check_grad("max pool dx", x, dx, L);
  for (int64_t p = 0; p < P; ++p)  // the dropped row and column get no gradient
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j)
        if (i == H - 1 || j == W - 1) EXPECT_EQ(dx[size_t((p * H + i) * W + j)], 0.0f);
}
