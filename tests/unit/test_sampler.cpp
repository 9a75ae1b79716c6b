// The sampler (src/sample/sampler.h) and its random streams (src/sample/rng.h):
//  - each filter against hand-computed cases (ties at the k-th value, the crossing token, NaN);
//  - against PyTorch implementations of the two references (tests/parity/torch_ref/sample_ref.py,
//    run once with /usr/bin/python3 on a batch of jobs): surviving-token masks exactly and
//    probabilities within 1e-6 (absolute; the two softmaxes differ in exp() and in summation
//    order, a few f32 ulps of probabilities <= 1);
//  - Philox4x64-10 against NumPy's Philox (known answers below) and the Random123 test vectors;
//  - the multinomial draw: a chi-square test on a fixed seed (cannot flake), identical draws to
//    the Python stream, never a zero-probability token, determinism per (seed, candidate).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "sample/rng.h"
#include "sample/sampler.h"
#include "test_util.h"

using namespace hwaga;
namespace fs = std::filesystem;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> probs_of(std::vector<float> logits, const RowFilter& f) {
  SamplerScratch s;
  std::vector<float> p(logits.size());
  filter_logits(logits.data(), int64_t(logits.size()), f, p.data(), s);
  return p;
}

RowFilter filt(float t, int k, float p, bool rq) {
  RowFilter f;
  f.temperature = t;
  f.top_k = k;
  f.top_p = p;
  f.nan_to_neg_inf = rq;
  return f;
}

using test::TempDir;

template <typename T>
void write_raw(const fs::path& p, const std::vector<T>& v) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), std::streamsize(v.size() * sizeof(T)));
  ASSERT_TRUE(f.good()) << p;
}

template <typename T>
std::vector<T> read_raw(const fs::path& p, size_t n) {
  std::vector<T> v(n);
  std::ifstream f(p, std::ios::binary);
  f.read(reinterpret_cast<char*>(v.data()), std::streamsize(n * sizeof(T)));
  EXPECT_TRUE(f.good()) << "could not read " << n << " values from " << p;
  return v;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// RNG

TEST(Rng, Philox4x64MatchesKnownAnswers) {
  // Random123 kat_vectors: philox4x64_10, counter 0 / key 0 and counter ~0 / key ~0.
  // The same values come from NumPy: np.random.Philox(key=k, counter=c - 1).random_raw(4).
  auto z = philox4x64_10({0, 0, 0, 0}, {0, 0});
  EXPECT_EQ(z[0], 0x16554d9eca36314cull);
  EXPECT_EQ(z[1], 0xdb20fe9d672d0fdcull);
  EXPECT_EQ(z[2], 0xd7e772cee186176bull);
  EXPECT_EQ(z[3], 0x7e68b68aec7ba23bull);
  const uint64_t M = ~0ull;
  auto o = philox4x64_10({M, M, M, M}, {M, M});
  EXPECT_EQ(o[0], 0x87b092c3013fe90bull);
  EXPECT_EQ(o[1], 0x438c3c67be8d0224ull);
  EXPECT_EQ(o[2], 0x9cc7d7c69cd777b6ull);
  EXPECT_EQ(o[3], 0xa09caebf594f0ba0ull);
  // NumPy, key = 123 | 5 << 64, counters 7 and 7 | 2 << 64.
  auto a = philox4x64_10({7, 0, 0, 0}, {123, 5});
  EXPECT_EQ(a[0], 0x75fff4d485ce55c8ull);
  EXPECT_EQ(a[3], 0xd0a580af77508a91ull);
  auto b = philox4x64_10({7, 2, 0, 0}, {123, 5});
  EXPECT_EQ(b[0], 0x5f1ccaf2705407c9ull);
  EXPECT_EQ(b[2], 0x6ce886f6dfd50577ull);
}

TEST(Rng, StreamIsKeyedBySeedAndCandidate) {
  // Stream (123, 5): words 0..3 are block 0, words 28..31 block 7.
  Rng r(123, 5);
  EXPECT_EQ(r.next_u64(), 0x655c43b7046cf6caull);
  EXPECT_EQ(r.next_u64(), 0xca150c1f994d64e6ull);
  r.seek(28);
  EXPECT_EQ(r.next_u64(), 0x75fff4d485ce55c8ull);
  EXPECT_EQ(r.position(), 29u);
  // Different candidates and seeds give different streams; the same pair repeats exactly.
  Rng a(1, 0), b(1, 1), c(2, 0), a2(1, 0);
  uint64_t x = a.next_u64();
  EXPECT_NE(x, b.next_u64());
  EXPECT_NE(x, c.next_u64());
  EXPECT_EQ(x, a2.next_u64());
  for (int i = 0; i < 1000; ++i) {
    double u = a.next_double();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    float f = a.next_float();
    ASSERT_GE(f, 0.0f);
    ASSERT_LT(f, 1.0f);
  }
}

// ---------------------------------------------------------------------------------------------
// each step, by hand

TEST(Sampler, TopKKeepsTiesWithTheKthValue) {
  std::vector<float> x = {1, 3, 3, 2, 3, 0};
  std::vector<float> scratch;
  EXPECT_EQ(top_k_threshold(x.data(), 6, 1, scratch), 3.0f);
  EXPECT_EQ(top_k_threshold(x.data(), 6, 2, scratch), 3.0f);
  EXPECT_EQ(top_k_threshold(x.data(), 6, 4, scratch), 2.0f);
  std::vector<float> y = x;
  EXPECT_EQ(apply_top_k(y.data(), 6, 2, scratch), 3);  // all three 3s survive k = 2
  EXPECT_EQ(y[0], -kInf);
  EXPECT_EQ(y[3], -kInf);
  EXPECT_EQ(y[1], 3.0f);
  EXPECT_EQ(y[4], 3.0f);
  y = x;
  EXPECT_EQ(apply_top_k(y.data(), 6, 4, scratch), 4);
  EXPECT_EQ(y[3], 2.0f);
  EXPECT_EQ(y[0], -kInf);
  y = x;
  EXPECT_EQ(apply_top_k(y.data(), 6, 6, scratch), 6);  // k = K: nothing removed
  EXPECT_EQ(y, x);
  // Probabilities: only the three tied tokens, equally likely.
  auto p = probs_of(x, filt(1.0f, 1, 0.0f, true));
  EXPECT_NEAR(p[1], 1.0 / 3, 1e-7);
  EXPECT_NEAR(p[2], 1.0 / 3, 1e-7);
  EXPECT_EQ(p[3], 0.0f);
}

TEST(Sampler, TopKRanksNanHighestLikeTorchTopk) {
  // torch.topk puts NaN first: for k = 2 the threshold is 3, NaN survives the cutoff and RQ then
  // turns it into -inf, leaving token 3 alone.
  std::vector<float> x = {kNaN, 1, 2, 3};
  std::vector<float> scratch;
  EXPECT_EQ(top_k_threshold(x.data(), 4, 2, scratch), 3.0f);
  EXPECT_TRUE(std::isnan(top_k_threshold(x.data(), 4, 1, scratch)));
  auto p = probs_of(x, filt(1.0f, 2, 1.0f, true));
  EXPECT_EQ(p[0], 0.0f);
  EXPECT_EQ(p[3], 1.0f);
  // k = 1: the threshold is NaN, nothing is cut, NaN -> -inf: softmax over 1, 2, 3.
  p = probs_of(x, filt(1.0f, 1, 0.0f, true));
  EXPECT_EQ(p[0], 0.0f);
  EXPECT_GT(p[1], 0.0f);
  // minDALL-E has no NaN handling: an error, not a silent pick.
  EXPECT_THROW(probs_of(x, filt(1.0f, 2, 0.0f, false)), Error);
}

TEST(Sampler, NanHandlingRq) {
  std::vector<float> x = {0.5f, kNaN, 1.5f, kNaN};
  std::vector<float> y = x;
  EXPECT_EQ(replace_nan_with_neg_inf(y.data(), 4), 2);
  EXPECT_EQ(y[1], -kInf);
  SamplerScratch s;
  std::vector<float> p(4);
  EXPECT_EQ(filter_logits(x.data(), 4, filt(1.0f, 4, 1.0f, true), p.data(), s), 2);
  EXPECT_EQ(p[1], 0.0f);
  EXPECT_EQ(p[3], 0.0f);
  EXPECT_NEAR(p[0], 1.0 / (1.0 + std::exp(1.0)), 1e-7);
  // All NaN: nothing to sample from, for both semantics.
  std::vector<float> nan(5, kNaN);
  EXPECT_THROW(probs_of(nan, filt(1.0f, 5, 1.0f, true)), Error);
  EXPECT_THROW(probs_of(nan, filt(1.0f, 0, 0.0f, false)), Error);
  // +inf (e.g. a tiny temperature on a huge logit) is an error, not NaN probabilities.
  EXPECT_THROW(probs_of({1e38f, 0.0f}, filt(1e-3f, 2, 1.0f, true)), Error);
  // Greedy skips NaN for RQ, refuses it for minDALL-E.
  Rng rng(0, 0);
  RowFilter g = filt(1.0f, 0, 0.0f, true);
  g.greedy = true;
  EXPECT_EQ(sample_row(x.data(), 4, g, rng, s), 2);
  g.nan_to_neg_inf = false;
  EXPECT_THROW(sample_row(x.data(), 4, g, rng, s), Error);
}

TEST(Sampler, TopPKeepsTheCrossingToken) {
  std::vector<int32_t> order;
  // cumsum 0.5, 0.8, 0.95, 1.0: with p = 0.7 the token that crosses (0.3) stays.
  std::vector<float> p = {0.05f, 0.3f, 0.5f, 0.15f};
  EXPECT_EQ(apply_top_p(p.data(), 4, 0.7f, order), 2);
  EXPECT_EQ(p[0], 0.0f);
  EXPECT_EQ(p[3], 0.0f);
  EXPECT_NEAR(p[2], 0.625, 1e-7);
  EXPECT_NEAR(p[1], 0.375, 1e-7);
  // p = 0.5: the first token already reaches it: only it stays (the first token always stays).
  p = {0.05f, 0.3f, 0.5f, 0.15f};
  EXPECT_EQ(apply_top_p(p.data(), 4, 0.5f, order), 1);
  EXPECT_EQ(p[2], 1.0f);
  p = {0.05f, 0.3f, 0.5f, 0.15f};
  EXPECT_EQ(apply_top_p(p.data(), 4, 0.01f, order), 1);
  EXPECT_EQ(p[2], 1.0f);
  // p = 0.96: cumsum before the last token is 0.95 < 0.96: everything stays.
  p = {0.05f, 0.3f, 0.5f, 0.15f};
  EXPECT_EQ(apply_top_p(p.data(), 4, 0.96f, order), 4);
}

TEST(Sampler, TopPAtOneDropsAFloatTailOnLongRows) {
  // §3.2: with p = 1.0 the f32-rounded cumsum reaches 1.0 before the end of a long, peaked row.
  std::mt19937 gen(7);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  const int K = 16384, rows = 20;
  int rows_with_drop = 0;
  int64_t dropped = 0;
  SamplerScratch s;
  std::vector<float> x(K), p(K);
  for (int r = 0; r < rows; ++r) {
    for (float& v : x) v = nd(gen);
    filter_logits(x.data(), K, filt(1.0f, K, 1.0f, true), p.data(), s);
    int64_t kept = 0;
    double sum = 0;
    for (float v : p) {
      kept += v > 0.0f;
      sum += v;
    }
    EXPECT_NEAR(sum, 1.0, 1e-5);
    rows_with_drop += kept < K;
    dropped += K - kept;
  }
  // The reference measured 185 of 200 rows, ~430 tokens each; demand a clear majority.
  EXPECT_GE(rows_with_drop, 14) << "dropped " << dropped << " tokens in total";
  EXPECT_GT(dropped, 20 * rows_with_drop);
}

TEST(Sampler, ArgmaxLowestIndexOnTies) {
  std::vector<float> x = {1, 4, kNaN, 4, 2};
  EXPECT_EQ(argmax_row(x.data(), 5), 1);
  std::vector<float> allnan = {kNaN, kNaN};
  EXPECT_EQ(argmax_row(allnan.data(), 2), -1);
}

TEST(Sampler, GuidanceMix) {
  std::vector<float> c = {1, 2, 3}, u = {0, 2, 5}, out(3);
  guidance_mix(c.data(), u.data(), 3.0f, out.data(), 3);
  EXPECT_EQ(out, (std::vector<float>{3, 2, -1}));
  guidance_mix(c.data(), u.data(), 1.0f, out.data(), 3);
  EXPECT_EQ(out, c);
  EXPECT_THROW(guidance_mix(c.data(), u.data(), kNaN, out.data(), 3), Error);
}

// ---------------------------------------------------------------------------------------------
// options

TEST(Sampler, OptionValidation) {
  using S = SamplerSemantics;
  auto bad = [](SamplerOptions o, S s, int D, int K, const char* needle) {
    try {
      validate_sampler_options(o, s, D, K);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  SamplerOptions o;
  validate_sampler_options(o, S::RqTransformer, 4, 16384);
  o.temperature = 0.0f;
  bad(o, S::RqTransformer, 4, 16384, "--temperature");
  o.temperature = -1.0f;
  bad(o, S::MinDalle, 1, 16384, "--temperature");
  o.temperature = kInf;
  bad(o, S::MinDalle, 1, 16384, "--temperature");
  o = {};
  o.top_p = {0.0f};
  bad(o, S::RqTransformer, 4, 16384, "--top-p");
  o.top_p = {1.5f};
  bad(o, S::RqTransformer, 4, 16384, "--top-p");
  o.top_p = {kNaN};
  bad(o, S::MinDalle, 1, 16384, "--top-p");
  o.top_p = {0.9f, 0.9f, 0.9f};
  bad(o, S::RqTransformer, 4, 16384, "one per depth");
  o = {};
  o.top_k = {0};
  bad(o, S::RqTransformer, 4, 16384, "--top-k");
  o.top_k = {16385};
  bad(o, S::MinDalle, 1, 16384, "exceeds the codebook size");
  o.top_k = {8, 8};
  bad(o, S::MinDalle, 1, 16384, "one per depth");
  o.top_k = {16385};
  validate_sampler_options(o, S::RqTransformer, 4, 16384);  // RQ caps instead
}

TEST(Sampler, ResolveRowFilterPerSemantics) {
  using S = SamplerSemantics;
  SamplerOptions o;
  RowFilter f = resolve_row_filter(o, S::RqTransformer, 4, 0, 2048);
  EXPECT_EQ(f.top_k, 2048);  // None -> K
  EXPECT_EQ(f.top_p, 1.0f);  // None -> 1.0, still applied
  EXPECT_TRUE(f.nan_to_neg_inf);
  f = resolve_row_filter(o, S::MinDalle, 1, 0, 16384);
  EXPECT_EQ(f.top_k, 0);     // skipped
  EXPECT_EQ(f.top_p, 0.0f);  // skipped
  EXPECT_FALSE(f.nan_to_neg_inf);
  o.top_k = {4096};  // capped at K = 2048 for FFHQ
  EXPECT_EQ(resolve_row_filter(o, S::RqTransformer, 4, 2, 2048).top_k, 2048);
  o.top_k = {1024, 512, 256, 128};
  o.top_p = {0.95f};
  o.temperature = 0.7f;
  f = resolve_row_filter(o, S::RqTransformer, 4, 2, 16384);
  EXPECT_EQ(f.top_k, 256);
  EXPECT_EQ(f.top_p, 0.95f);
  EXPECT_EQ(f.temperature, 0.7f);
  EXPECT_THROW(resolve_row_filter(o, S::RqTransformer, 4, 4, 16384), Error);
}

// ---------------------------------------------------------------------------------------------
// the draw

TEST(Sampler, MultinomialFrequenciesChiSquare) {
  // p_i ∝ i for i = 0..9 (p_0 = 0 must never be drawn). 200,000 draws from one fixed stream:
  // chi-square with 8 degrees of freedom must stay below 26.12 (the 0.001 critical value).
  // The seed is fixed, so this is deterministic; it fails only if the draw is biased.
  const int n = 10, N = 200000;
  std::vector<float> p(n);
  double z = 0;
  for (int i = 0; i < n; ++i) z += i;
  for (int i = 0; i < n; ++i) p[i] = float(i / z);
  std::vector<int64_t> count(n, 0);
  Rng rng(20240601, 0);
  for (int t = 0; t < N; ++t) ++count[size_t(draw_from_probs(p.data(), n, rng.next_double()))];
  EXPECT_EQ(count[0], 0);
  double chi2 = 0;
  for (int i = 1; i < n; ++i) {
    double e = N * double(p[i]);
    chi2 += (count[i] - e) * (count[i] - e) / e;
  }
  EXPECT_LT(chi2, 26.12) << "chi-square " << chi2;
  // Edges of u: u = 0 picks the first token with p > 0, u -> 1 the last one.
  EXPECT_EQ(draw_from_probs(p.data(), n, 0.0), 1);
  EXPECT_EQ(draw_from_probs(p.data(), n, std::nextafter(1.0, 0.0)), 9);
  std::vector<float> zeros(3, 0.0f);
  EXPECT_THROW(draw_from_probs(zeros.data(), 3, 0.5), Error);
}

TEST(Sampler, DeterministicPerSeedAndCandidate) {
  // A batch of 6 candidates vs. each candidate alone: the same codes (no dependence on batch
  // size or position in the batch), and different seeds give different codes.
  const int B = 6, K = 500;
  std::mt19937 gen(3);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> logits(size_t(B) * K);
  for (float& v : logits) v = nd(gen);
  RowFilter f = filt(1.0f, 200, 0.95f, true);
  SamplerScratch s;
  for (int step = 0; step < 3; ++step) {
    std::vector<Rng> rngs;
    for (int b = 0; b < B; ++b) rngs.emplace_back(99, b);
    std::vector<int32_t> codes(B);
    for (int t = 0; t <= step; ++t) sample_rows(logits.data(), B, K, f, rngs.data(), codes.data(), s);
    for (int b = B - 1; b >= 0; --b) {  // reverse order, one at a time
      Rng alone(99, uint64_t(b));
      int64_t c = -1;
      for (int t = 0; t <= step; ++t) c = sample_row(logits.data() + size_t(b) * K, K, f, alone, s);
      EXPECT_EQ(c, codes[size_t(b)]) << "candidate " << b << " step " << step;
    }
  }
  int differ = 0;
  for (int b = 0; b < B; ++b) {
    Rng r1(1, uint64_t(b)), r2(2, uint64_t(b));
    differ += sample_row(logits.data() + size_t(b) * K, K, f, r1, s) !=
              sample_row(logits.data() + size_t(b) * K, K, f, r2, s);
  }
  EXPECT_GE(differ, 3);
}

// ---------------------------------------------------------------------------------------------
// against the PyTorch references

TEST(SamplerParity, MatchesTorchReference) {
  const std::string script = std::string(HWAGA_SOURCE_DIR) + "/tests/parity/torch_ref/sample_ref.py";
  ASSERT_TRUE(fs::exists(script)) << script;
  TempDir tmp;
  const int R = 12, K = 2000;
  // Rows: N(0, 2^2) logits; row 1 has ties at many values; row 2 has -inf entries; row 3 is
  // peaked (one big logit); row 4 is flat.
  std::mt19937 gen(11);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> logits(size_t(R) * K);
  for (float& v : logits) v = nd(gen);
  for (int i = 0; i < K; ++i) logits[size_t(1) * K + i] = float(i % 7);
  for (int i = 0; i < K; i += 3) logits[size_t(2) * K + i] = -kInf;
  logits[size_t(3) * K + 17] = 25.0f;
  for (int i = 0; i < K; ++i) logits[size_t(4) * K + i] = 0.5f;
  std::vector<float> logits_nan = logits;  // RQ only: NaN in two rows
  logits_nan[size_t(5) * K + 3] = kNaN;
  for (int i = 0; i < 5; ++i) logits_nan[size_t(6) * K + 100 + i] = kNaN;
  write_raw(tmp.path / "logits.f32", logits);
  write_raw(tmp.path / "logits_nan.f32", logits_nan);

  struct Case {
    std::string name, in;
    SamplerSemantics sem;
    float t;
    int k;      // 0 = unset
    float p;    // 0 = unset
  };
  const std::vector<Case> cases = {
      {"rq_t08_k50_p09", "logits_nan.f32", SamplerSemantics::RqTransformer, 0.8f, 50, 0.9f},
      {"rq_unset", "logits_nan.f32", SamplerSemantics::RqTransformer, 1.0f, 0, 0.0f},
      {"rq_k3_p05", "logits.f32", SamplerSemantics::RqTransformer, 1.7f, 3, 0.5f},
      {"rq_k5000_p07", "logits.f32", SamplerSemantics::RqTransformer, 1.0f, 5000, 0.7f},
      {"md_t13_k100", "logits.f32", SamplerSemantics::MinDalle, 1.3f, 100, 0.0f},
      {"md_p08", "logits.f32", SamplerSemantics::MinDalle, 1.0f, 0, 0.8f},
      {"md_k256_p095", "logits.f32", SamplerSemantics::MinDalle, 0.9f, 256, 0.95f},
  };
  nlohmann::json jobs = nlohmann::json::array();
  std::vector<std::vector<float>> ours;
  SamplerScratch s;
  for (const Case& c : cases) {
    nlohmann::json j = {{"cmd", "filter"}, {"in", (tmp.path / c.in).string()}, {"rows", R},
                        {"out", (tmp.path / (c.name + ".f32")).string()},
                        {"semantics", c.sem == SamplerSemantics::RqTransformer ? "rq" : "mindalle"},
                        {"temperature", c.t}};
    if (c.k) j["top_k"] = c.k;
    if (c.p > 0) j["top_p"] = c.p;
    jobs.push_back(j);
    SamplerOptions o;
    o.temperature = c.t;
    if (c.k) o.top_k = {c.k};
    if (c.p > 0) o.top_p = {c.p};
    RowFilter f = resolve_row_filter(o, c.sem, 1, 0, K);
    const std::vector<float>& in = c.in == "logits.f32" ? logits : logits_nan;
    std::vector<float> pr(size_t(R) * K);
    for (int r = 0; r < R; ++r) filter_logits(in.data() + size_t(r) * K, K, f, pr.data() + size_t(r) * K, s);
    ours.push_back(pr);
  }
  // top-p alone on OUR softmax output of the NaN-free rows at p = 1.0 (the tail-drop rule): the
  // masks must agree exactly, since the inputs are bit-identical.
  std::vector<float> soft(size_t(R) * K);
  for (int r = 0; r < R; ++r) softmax_row(logits.data() + size_t(r) * K, soft.data() + size_t(r) * K, K, "test");
  write_raw(tmp.path / "soft.f32", soft);
  jobs.push_back({{"cmd", "topp"}, {"in", (tmp.path / "soft.f32").string()}, {"rows", R},
                  {"out", (tmp.path / "topp1.f32").string()}, {"top_p", 1.0}});
  jobs.push_back({{"cmd", "topp"}, {"in", (tmp.path / "soft.f32").string()}, {"rows", R},
                  {"out", (tmp.path / "topp09.f32").string()}, {"top_p", 0.9}});
  // draws with hwaga's stream from our rq_t08_k50_p09 probabilities
  write_raw(tmp.path / "draw_in.f32", ours[0]);
  jobs.push_back({{"cmd", "draw"}, {"in", (tmp.path / "draw_in.f32").string()}, {"rows", R},
                  {"out", (tmp.path / "draw.i64").string()}, {"seed", 4242}});
  {
    std::ofstream f(tmp.path / "jobs.json");
    f << jobs.dump();
  }
  const std::string cmd = "/usr/bin/python3 " + script + " jobs --spec " + (tmp.path / "jobs.json").string() +
                          " 2>" + (tmp.path / "stderr.txt").string();
  if (std::system(cmd.c_str()) != 0) {
    std::ifstream err(tmp.path / "stderr.txt");
    std::string text((std::istreambuf_iterator<char>(err)), std::istreambuf_iterator<char>());
    FAIL() << cmd << " failed:\n" << text;
  }

  for (size_t ci = 0; ci < cases.size(); ++ci) {
    auto ref = read_raw<float>(tmp.path / (cases[ci].name + ".f32"), size_t(R) * K);
    int64_t mask_diff = 0;
    double max_err = 0, differing_mass = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      if ((ref[i] > 0) != (ours[ci][i] > 0)) {
        ++mask_diff;
        differing_mass += double(std::max(ref[i], ours[ci][i]));
      }
      max_err = std::max(max_err, double(std::fabs(ref[i] - ours[ci][i])));
    }
    // rq_unset runs top-p at 1.0, whose cut depends on the last ulp of every probability; the
    // two softmaxes differ in those ulps (exp() and summation order: their sums differ from 1 by
    // a few 1e-7), so the cut may fall some tail tokens apart. Those tokens must carry a total
    // probability below 1e-6 per row. Exact agreement on identical probabilities is checked below.
    if (cases[ci].name == "rq_unset") {
      EXPECT_LT(differing_mass, 1e-6 * R) << cases[ci].name << ": " << mask_diff << " tokens differ";
    } else {
      EXPECT_EQ(mask_diff, 0) << cases[ci].name;
    }
    EXPECT_LT(max_err, 1e-6) << cases[ci].name;
  }
  for (auto [name, p] : {std::pair<const char*, float>{"topp1", 1.0f}, {"topp09", 0.9f}}) {
    auto ref = read_raw<float>(tmp.path / (std::string(name) + ".f32"), size_t(R) * K);
    std::vector<float> mine = soft;
    std::vector<int32_t> order;
    int64_t dropped = 0;
    for (int r = 0; r < R; ++r) dropped += K - apply_top_p(mine.data() + size_t(r) * K, K, p, order);
    int64_t mask_diff = 0;
    double max_err = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      mask_diff += (ref[i] > 0) != (mine[i] > 0);
      max_err = std::max(max_err, double(std::fabs(ref[i] - mine[i])));
    }
    EXPECT_EQ(mask_diff, 0) << name << " (" << dropped << " tokens dropped by hwaga)";
    EXPECT_LT(max_err, 1e-6) << name;
  }
  auto codes = read_raw<int64_t>(tmp.path / "draw.i64", R);
  for (int r = 0; r < R; ++r) {
    Rng rng(4242, uint64_t(r));
    EXPECT_EQ(draw_from_probs(ours[0].data() + size_t(r) * K, K, rng.next_double()), codes[size_t(r)])
        << "row " << r;
  }
}
