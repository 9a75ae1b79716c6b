// The transformer ops of the CPU backend (LayerNorm, GELU, embedding, add_rows, concat, linear
// with f32/bf16/f16 weights on both paths and both ISAs, attention over a KV cache, cache
// gather) against plain double-precision loops written here.
//
// Tolerances:
//  * exact: embedding (a bf16/f16 -> f32 conversion is exact), add_rows (one f32 add, same as
//    the reference rounded to f32), concat, cache gather.
//  * linear, against the double product of the SAME (already rounded) weight values: only f32
//    accumulation error, at most ~in * 2^-24 * sum|x w| for in <= 1283 terms, i.e. < 1e-4 of
//    sum|x w|; we allow 2e-5 * sum|x w| + 1e-6 (summation in a few interleaved lanes is far
//    better than the worst case; an indexing mistake is O(sum|x w|)).
//  * bf16 weights vs the original f32 weights: each weight is rounded to 8 mantissa bits,
//    relative error <= 2^-9, so |y_bf16 - y_f32| <= 2^-9 * sum|x w| (+ f32 accumulation); we check
//    against 2^-9 * sum|x w| * 1.05 + 1e-5, and that the error is not trivially zero.
//  * LayerNorm / GELU / attention: 2e-5 absolute + 1e-5 relative on O(1) values (a few f32
//    roundings per output; attention sums <= 40 softmax-weighted terms).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "core/threads.h"
#include "kernels/cpu/transformer_ops.h"
#include "test_util.h"

using namespace hwaga;

namespace {

using test::expect_close;
using test::randn;

Tensor ids(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty({int64_t(v.size())}, DType::I32);
  std::memcpy(t.data(), v.data(), v.size() * 4);
  return t;
}

class TransformerOps : public ::testing::TestWithParam<int> {  // parameter: thread count
 protected:
  void SetUp() override { set_num_threads(GetParam()); }
  void TearDown() override {
    set_num_threads(0);
    cpu::linear_gemv_force_isa("");
  }
  std::unique_ptr<Backend> be = make_cpu_backend();
};

TEST_P(TransformerOps, LayerNormMatchesDoubleLoop) {
  const int64_t N = 5, C = 1280;
  Tensor x = randn({N, C}, 1, 2.0f, 3.0f), g = randn({C}, 2, 0.2f, 1.0f), b = randn({C}, 3, 0.2f);
  Tensor y = be->layer_norm(x.reshape({1, N, C}), g, b, 1e-5f);
  EXPECT_EQ(y.shape(), (Shape{1, N, C}));
  std::vector<double> want;
  for (int64_t n = 0; n < N; ++n) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += x.f32()[n * C + c];
    m /= C;
    for (int64_t c = 0; c < C; ++c) v += (x.f32()[n * C + c] - m) * (x.f32()[n * C + c] - m);
    v /= C;  // biased variance, as torch.nn.LayerNorm
    for (int64_t c = 0; c < C; ++c)
      want.push_back((x.f32()[n * C + c] - m) / std::sqrt(v + 1e-5) * g.f32()[c] + b.f32()[c]);
  }
  expect_close(y, want, 2e-5, 1e-5, "layer_norm");
  EXPECT_THROW(be->layer_norm(x, randn({C + 1}, 4), b, 1e-5f), Error);
}

TEST_P(TransformerOps, GeluIsExactErf) {
  Tensor x = Tensor::empty({4001});
  for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] = -10.0f + 0.005f * float(i);
  Tensor y = be->gelu(x);
  std::vector<double> want;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double v = x.f32()[i];
    want.push_back(0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))));
  }
  expect_close(y, want, 1e-6, 1e-6, "gelu");
  // Not the tanh approximation: at x = -3 exact GELU is -0.0040497, tanh-GELU -0.0036374.
  Tensor z = be->gelu(Tensor::zeros({1}));
  EXPECT_EQ(z.f32()[0], 0.0f);
  const int64_t i3 = 1400;  // x = -3
  EXPECT_NEAR(y.f32()[i3], -0.0040496, 2e-6);
}

TEST_P(TransformerOps, EmbeddingReadsEveryFloatTypeExactly) {
  const int64_t V = 37, C = 21;
  Tensor t32 = randn({V, C}, 5);
  std::vector<int32_t> idv{3, 0, 36, 3, 17};
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    Tensor table = be->upload_weight(dt == DType::F32 ? t32 : t32.to(dt));
    EXPECT_EQ(table.dtype(), dt) << "upload_weight keeps the dtype on the CPU";
    Tensor y = be->embedding(table, ids(idv));
    ASSERT_EQ(y.shape(), (Shape{5, C}));
    Tensor ref = t32.to(dt).to(DType::F32);
    for (size_t n = 0; n < idv.size(); ++n)
      for (int64_t c = 0; c < C; ++c) EXPECT_EQ(y.f32()[n * C + c], ref.f32()[idv[n] * C + c]) << dtype_name(dt);
  }
  EXPECT_THROW(be->embedding(t32, ids({0, 37})), Error);
  EXPECT_THROW(be->embedding(t32, ids({-1})), Error);
}

TEST_P(TransformerOps, AddRowsAndConcat) {
  Tensor x = randn({2, 3, 5}, 6), r = randn({3, 5}, 7);
  Tensor y = be->add_rows(x, r);
  for (int64_t n = 0; n < 6; ++n)
    for (int64_t c = 0; c < 5; ++c) EXPECT_EQ(y.f32()[n * 5 + c], x.f32()[n * 5 + c] + r.f32()[(n % 3) * 5 + c]);
  Tensor y1 = be->add_rows(x, r.slice0(1, 2));
  for (int64_t n = 0; n < 6; ++n)
    for (int64_t c = 0; c < 5; ++c) EXPECT_EQ(y1.f32()[n * 5 + c], x.f32()[n * 5 + c] + r.f32()[5 + c]);
  EXPECT_THROW(be->add_rows(x, randn({4, 5}, 8)), Error);  // 6 rows are not a multiple of 4
  EXPECT_THROW(be->add_rows(x, randn({3, 4}, 8)), Error);

  Tensor a = randn({2, 4}, 9), b = randn({3, 4}, 10);
  Tensor c = be->concat({a, b});
  ASSERT_EQ(c.shape(), (Shape{5, 4}));
  EXPECT_EQ(0, std::memcmp(c.data(), a.data(), a.nbytes()));
  EXPECT_EQ(0, std::memcmp(c.f32() + 8, b.data(), b.nbytes()));
  EXPECT_THROW(be->concat({a, randn({3, 5}, 11)}), Error);
}

// y = x w^T + b in double from the weights as stored (rounded) -> also returns sum |x w| per output.
void linear_ref(const Tensor& x, const Tensor& w32, const Tensor& b, std::vector<double>& y, std::vector<double>& mag) {
  const int64_t N = x.dim(0), in = x.dim(1), out = w32.dim(0);
  y.assign(size_t(N * out), 0.0);
  mag.assign(size_t(N * out), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < out; ++o) {
      double s = b.defined() ? b.f32()[o] : 0.0, m = 0;
      for (int64_t i = 0; i < in; ++i) {
        const double p = double(x.f32()[n * in + i]) * w32.f32()[o * in + i];
        s += p;
        m += std::fabs(p);
      }
      y[size_t(n * out + o)] = s;
      mag[size_t(n * out + o)] = m;
    }
}

TEST_P(TransformerOps, LinearAllWeightTypesBothPathsBothIsas) {
  struct Shp { int64_t N, in, out; };
  // (AVX2: in % 16 >= 8 takes the 8-wide tail of the bf16 unpack tiles at N <= 4; in > 512 at
  // N > 4 spans several column chunks of tile4_many_avx2.)
  const std::vector<Shp> shapes{{1, 64, 5}, {2, 13, 67}, {3, 1283, 9}, {5, 100, 33}, {8, 48, 17}, {9, 70, 21},
                                {17, 257, 40}, {4, 1304, 12}, {6, 1100, 9}, {16, 5, 7}};
  std::vector<const char*> isas{"avx2"};
  if (std::string(cpu::linear_gemv_isa()) == "avx512") isas.push_back("avx512");
  uint32_t seed = 20;
  for (const Shp& s : shapes)
    for (DType dt : {DType::F32, DType::BF16, DType::F16})
      for (bool bias : {false, true}) {
        Tensor x = randn({s.N, s.in}, seed++), w = randn({s.out, s.in}, seed++, 0.1f), b = randn({s.out}, seed++);
        Tensor wq = dt == DType::F32 ? w : w.to(dt);  // stored weights
        Tensor w32 = wq.to(DType::F32);              // their exact values
        std::vector<double> ref, mag;
        linear_ref(x, w32, bias ? b : Tensor(), ref, mag);
        auto check = [&](const Tensor& y, const std::string& what) {
          ASSERT_EQ(y.numel(), int64_t(ref.size()));
          int bad = 0;
          for (size_t i = 0; i < ref.size(); ++i)
            if (!(std::fabs(y.f32()[i] - ref[i]) <= 2e-5 * mag[i] + 1e-6) && ++bad <= 3)
              ADD_FAILURE() << what << " [" << s.N << "x" << s.in << "->" << s.out << ", " << dtype_name(dt)
                            << (bias ? ", bias" : "") << "] element " << i << ": " << y.f32()[i] << " vs " << ref[i];
          EXPECT_EQ(bad, 0);
        };
        check(be->linear(x, be->upload_weight(wq), bias ? b : Tensor()), "backend linear");
        for (const char* isa : isas) {
          cpu::linear_gemv_force_isa(isa);
          Tensor y = Tensor::empty({s.N, s.out});
          cpu::linear_gemv(x.f32(), wq.data(), dt, bias ? b.f32() : nullptr, y.f32(), s.N, s.in, s.out);
          check(y, std::string("gemv/") + isa);
        }
        cpu::linear_gemv_force_isa("");
        Tensor y = Tensor::empty({s.N, s.out});
        cpu::linear_gemm(x.f32(), wq.data(), dt, bias ? b.f32() : nullptr, y.f32(), s.N, s.in, s.out);
        check(y, "gemm");
      }
}

TEST_P(TransformerOps, Bf16WeightsStayWithinTheirRoundingBound) {
  const int64_t N = 1, in = 1280, out = 300;
  Tensor x = randn({N, in}, 40), w = randn({out, in}, 41, 0.05f), b = randn({out}, 42);
  std::vector<double> ref, mag;
  linear_ref(x, w, b, ref, mag);  // the f32 weights
  Tensor y = be->linear(x, be->upload_weight(w.to(DType::BF16)), b);
  double worst = 0, any = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double e = std::fabs(y.f32()[i] - ref[i]);
    EXPECT_LE(e, std::ldexp(1.0, -9) * mag[i] * 1.05 + 1e-5) << "output " << i;
    worst = std::max(worst, e / mag[i]);
    any += e;
  }
  EXPECT_GT(any, 0.0) << "bf16 weights gave f32 results bit for bit: were they converted at upload?";
  std::printf("bf16 GEMV: worst |error| / sum|x w| = %.3g (bound 2^-9 = %.3g)\n", worst, std::ldexp(1.0, -9));
}

// Full causal multi-head attention in double: q,k,v [B,T,C] -> [B,T,C].
std::vector<double> attention_ref(const Tensor& q, const Tensor& k, const Tensor& v, int H) {
  const int64_t B = q.dim(0), T = q.dim(1), C = q.dim(2), hd = C / H;
  std::vector<double> out(size_t(q.numel()), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> s(size_t(i + 1));
        double mx = -1e300, sum = 0;
        for (int64_t j = 0; j <= i; ++j) {
          double d = 0;
          for (int64_t c = 0; c < hd; ++c)
            d += double(q.f32()[(b * T + i) * C + h * hd + c]) * k.f32()[(b * T + j) * C + h * hd + c];
          s[size_t(j)] = d / std::sqrt(double(hd));
          mx = std::max(mx, s[size_t(j)]);
        }
        for (auto& e : s) sum += (e = std::exp(e - mx));
        for (int64_t j = 0; j <= i; ++j)
          for (int64_t c = 0; c < hd; ++c)
            out[size_t((b * T + i) * C + h * hd + c)] += s[size_t(j)] / sum * v.f32()[(b * T + j) * C + h * hd + c];
      }
  return out;
}

Tensor rows_of(const Tensor& x, int64_t t0, int64_t t1) {  // x [B,T,C] -> [B,t1-t0,C]
  const int64_t B = x.dim(0), T = x.dim(1), C = x.dim(2);
  Tensor y = Tensor::empty({B, t1 - t0, C});
  for (int64_t b = 0; b < B; ++b) std::memcpy(y.f32() + b * (t1 - t0) * C, x.f32() + (b * T + t0) * C, size_t((t1 - t0) * C) * 4);
  return y;
}

TEST_P(TransformerOps, AttentionWithCacheEqualsFullCausalAttention) {
  const int64_t B = 3, T = 11, H = 3, hd = 64, C = H * hd;
  Tensor q = randn({B, T, C}, 50), k = randn({B, T, C}, 51), v = randn({B, T, C}, 52);
  const std::vector<double> want = attention_ref(q, k, v, int(H));
  // all at once (teacher forcing)
  Backend::KvCache full = be->kv_cache_new(B, H, T, hd);
  Tensor y = be->attention_step(q, k, v, full, int(H));
  EXPECT_EQ(full.len, T);
  expect_close(y, want, 2e-5, 1e-5, "attention, one call");
  // prefix of 4, one chunk of 3, then single tokens (sampling)
  Backend::KvCache c = be->kv_cache_new(B, H, T + 2, hd);  // spare capacity is fine
  std::vector<int64_t> cuts{0, 4, 7, 8, 9, 10, 11};
  Tensor got = Tensor::empty({B, T, C});
  for (size_t s = 0; s + 1 < cuts.size(); ++s) {
    const int64_t t0 = cuts[s], t1 = cuts[s + 1];
    Tensor part = be->attention_step(rows_of(q, t0, t1), rows_of(k, t0, t1), rows_of(v, t0, t1), c, int(H));
    EXPECT_EQ(c.len, t1);
    for (int64_t b = 0; b < B; ++b)
      std::memcpy(got.f32() + (b * T + t0) * C, part.f32() + b * (t1 - t0) * C, size_t((t1 - t0) * C) * 4);
  }
  expect_close(got, want, 2e-5, 1e-5, "attention, cached steps");
  // overflow and shape errors
  EXPECT_THROW(be->attention_step(rows_of(q, 0, 3), rows_of(k, 0, 3), rows_of(v, 0, 3), c, int(H)), Error);
  Backend::KvCache small = be->kv_cache_new(B, H, T, hd);
  EXPECT_THROW(be->attention_step(q, k, v, small, 2), Error);  // 192 channels: 2 heads of 96 != cache hd 64
}

TEST_P(TransformerOps, CacheGatherReplicatesAPrefix) {
  // Prefix of 5 tokens for 2 prompts, replicated to rows {1,0,1}; the next token of each row
  // must see exactly its prompt's prefix.
  const int64_t H = 2, hd = 64, C = H * hd, Tp = 5;
  Tensor q = randn({2, Tp + 1, C}, 60), k = randn({2, Tp + 1, C}, 61), v = randn({2, Tp + 1, C}, 62);
  Backend::KvCache pre = be->kv_cache_new(2, H, Tp, hd);
  be->attention_step(rows_of(q, 0, Tp), rows_of(k, 0, Tp), rows_of(v, 0, Tp), pre, int(H));
  Backend::KvCache rep = be->kv_cache_new(3, H, Tp + 1, hd);
  const std::vector<int32_t> rows{1, 0, 1};
  be->kv_cache_gather(rep, pre, rows);
  EXPECT_EQ(rep.len, Tp);
  // new token per row = the prompt's token Tp
  Tensor qn = Tensor::empty({3, 1, C}), kn = Tensor::empty({3, 1, C}), vn = Tensor::empty({3, 1, C});
  for (int r = 0; r < 3; ++r) {
    std::memcpy(qn.f32() + r * C, q.f32() + (rows[r] * (Tp + 1) + Tp) * C, C * 4);
    std::memcpy(kn.f32() + r * C, k.f32() + (rows[r] * (Tp + 1) + Tp) * C, C * 4);
    std::memcpy(vn.f32() + r * C, v.f32() + (rows[r] * (Tp + 1) + Tp) * C, C * 4);
  }
  Tensor y = be->attention_step(qn, kn, vn, rep, int(H));
  const std::vector<double> full = attention_ref(q, k, v, int(H));
  std::vector<double> want;
  for (int r = 0; r < 3; ++r)
    for (int64_t c = 0; c < C; ++c) want.push_back(full[size_t((rows[r] * (Tp + 1) + Tp) * C + c)]);
  expect_close(y, want, 2e-5, 1e-5, "attention after gather");
  EXPECT_THROW(be->kv_cache_gather(rep, pre, {0, 2, 1}), Error);  // row 2 is not in the source
  EXPECT_THROW(be->kv_cache_gather(rep, pre, {0, 1}), Error);     // 2 rows for a batch of 3
}

INSTANTIATE_TEST_SUITE_P(Threads, TransformerOps, ::testing::Values(1, 3));

// A backend that implements only the stage-1 ops: the transformer ops must throw a clear error.
// The sampling-loop ops (backend.h) on host tensors: counters, a table row picked by a counter,
// prefix sums of table rows, and the attention cache length mirrored by a len_counter.
TEST_P(TransformerOps, SamplingLoopOpsOnTheHost) {
  Tensor c = be->counter_new(2);
  be->counter_add(c, 3);
  ASSERT_EQ(c.ptr<int32_t>()[0], 5);
  const Tensor x = randn({3, 4}, 1), table = randn({6, 4}, 2);
  Tensor y = be->add_row_at(x, table, c, -1);  // row 4
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(y.f32()[i], x.f32()[i] + table.f32()[16 + i % 4]);
  EXPECT_THROW(be->add_row_at(x, table, c, 1), Error);  // row 6 of 6

  Tensor codes = Tensor::empty({2, 3}, DType::I32);
  const int32_t cv[6] = {1, 5, 0, 3, 3, 2};
  std::memcpy(codes.data(), cv, sizeof cv);
  Tensor bf = Tensor::empty({6, 4}, DType::BF16);
  for (int64_t i = 0; i < 24; ++i) bf.ptr<uint16_t>()[i] = uint16_t(std::bit_cast<uint32_t>(table.f32()[i]) >> 16);
  for (const Tensor* t : {&table, static_cast<const Tensor*>(&bf)})
    for (int d = 1; d <= 3; ++d) {
      Tensor g = be->gather_sum(*t, codes, d);
      Tensor rows = be->embedding(*t, ids({1, 5, 0, 3, 3, 2}));
      for (int64_t n = 0; n < 2; ++n)
        for (int64_t k = 0; k < 4; ++k) {
          float want = rows.f32()[(n * 3) * 4 + k];
          for (int j = 1; j < d; ++j) want += rows.f32()[(n * 3 + j) * 4 + k];
          EXPECT_EQ(g.f32()[n * 4 + k], want) << dtype_name(t->dtype()) << " d " << d;
        }
    }
  codes.ptr<int32_t>()[4] = 6;
  EXPECT_THROW(be->gather_sum(table, codes, 3), Error);
  EXPECT_NO_THROW(be->gather_sum(table, codes, 1));

  auto cache = be->kv_cache_new(1, 1, 4, 4);
  cache.len_counter = be->counter_new(0);
  const Tensor q = randn({1, 2, 4}, 3);
  be->attention_step(q, q, q, cache, 1);
  EXPECT_EQ(cache.len_counter.ptr<int32_t>()[0], 2);
  be->counter_add(cache.len_counter, 1);  // out of step with cache.len
  EXPECT_THROW(be->attention_step(q, q, q, cache, 1), Error);
}

class Stage1OnlyBackend final : public Backend {
 public:
  Device device() const override { return Device::CPU; }
  std::string name() const override { return "stub"; }
  Tensor upload(const Tensor& h, DType) override { return h; }
  Tensor download(const Tensor& t) override { return t; }
  Tensor conv2d(const Tensor& x, const Tensor&, const Tensor&, const Conv2dParams&) override { return x; }
  Tensor group_norm(const Tensor& x, const Tensor&, const Tensor&, int, float, bool) override { return x; }
  Tensor upsample_nearest2x(const Tensor& x) override { return x; }
  Tensor add(const Tensor& a, const Tensor&) override { return a; }
  Tensor attention_hw(const Tensor& q, const Tensor&, const Tensor&) override { return q; }
  Tensor nchw_to_nhwc(const Tensor& x) override { return x; }
  Tensor nhwc_to_nchw(const Tensor& x) override { return x; }
  Tensor residual_quantize(const Tensor& z, const Tensor&, int) override { return z; }
  Tensor embed_sum(const Tensor& c, const Tensor&) override { return c; }
  Tensor linear(const Tensor& x, const Tensor&, const Tensor&) override { return x; }
};

TEST(TransformerOpsDefaults, UnimplementedOpsThrowNamingTheBackend) {
  Stage1OnlyBackend be;
  Tensor x = Tensor::zeros({2, 4});
  try {
    be.layer_norm(x, x, x, 1e-5f);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "layer_norm is not implemented on stub");
  }
  EXPECT_THROW(be.gelu(x), Error);
  EXPECT_THROW(be.embedding(x, ids({0})), Error);
  EXPECT_THROW(be.add_rows(x, x), Error);
  EXPECT_THROW(be.concat({x}), Error);
  EXPECT_THROW(be.kv_cache_new(1, 1, 1, 1), Error);
  Backend::KvCache c;
  EXPECT_THROW(be.attention_step(x, x, x, c, 1), Error);
  EXPECT_THROW(be.kv_cache_gather(c, c, {}), Error);
  EXPECT_EQ(be.upload_weight(x).data(), x.data());  // default: upload(host, host.dtype())
}

}  // namespace
