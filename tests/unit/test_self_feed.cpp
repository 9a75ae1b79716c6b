// train/self_feed.h: parallel scheduled sampling's input codes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "test_util.h"
#include "train/self_feed.h"

using namespace hwaga;
using namespace hwaga::train;

namespace {

constexpr int64_t B = 16, H = 2, W = 2, D = 4, K = 8, per = H * W * D;

Tensor ramp_codes() {
  Tensor c = Tensor::empty({B, H, W, D}, DType::I32);
  for (int64_t i = 0; i < c.numel(); ++i) c.ptr<int32_t>()[i] = int32_t(i % K);
  return c;
}

}  // namespace

// Share 0 changes nothing; logits that put all the mass on one code give that code wherever a
// code is replaced, at the requested share; the result is a function of (seed, row position).
TEST(SelfFeed, ReplacesTheShareWithDrawsFromTheLogits) {
  const Tensor codes = ramp_codes();
  Tensor peaked = Tensor::empty({B, H, W, D, K});
  for (int64_t i = 0; i < B * per; ++i)
    for (int64_t k = 0; k < K; ++k) peaked.f32()[i * K + k] = k == 5 ? 40.0f : -40.0f;
  const Tensor same = self_feed_inputs(codes, peaked, 0.0, 1, 0);
  EXPECT_EQ(std::memcmp(same.data(), codes.data(), size_t(codes.nbytes())), 0);

  int64_t replaced = 0;
  for (int64_t first = 0; first < 40 * B; first += B) {
    const Tensor x = self_feed_inputs(codes, peaked, 0.4, 7, first);
    for (int64_t i = 0; i < B * per; ++i) {
      const int32_t c = codes.ptr<int32_t>()[i], v = x.ptr<int32_t>()[i];
      ASSERT_TRUE(v == c || v == 5) << "a replaced code comes from the logits";
      replaced += v != c;
    }
    const Tensor again = self_feed_inputs(codes, peaked, 0.4, 7, first);
    EXPECT_EQ(std::memcmp(again.data(), x.data(), size_t(x.nbytes())), 0);
  }
  // 40 batches x 256 codes, each replaced with p 0.4, 7 in 8 of them visibly (code 5 stays 5):
  // mean 3584, sd 44; +-5 sd
  EXPECT_GT(replaced, 3584 - 220);
  EXPECT_LT(replaced, 3584 + 220);
  // rows at other positions draw other words; the row at position first + i equals row 0 of a
  // batch starting there
  const Tensor a = self_feed_inputs(codes, peaked, 0.4, 7, 0), b = self_feed_inputs(codes, peaked, 0.4, 7, 3);
  EXPECT_NE(std::memcmp(a.data(), b.data(), size_t(a.nbytes())), 0);
  EXPECT_EQ(std::memcmp(a.ptr<int32_t>() + 3 * per, b.ptr<int32_t>(), size_t(per) * sizeof(int32_t)), 0);
}

// The draws follow the softmax: logits log(1..K) give code k with probability (k+1)/36.
TEST(SelfFeed, DrawsFollowTheSoftmax) {
  const Tensor codes = Tensor::zeros({B, H, W, D}, DType::I32);
  Tensor z = Tensor::empty({B, H, W, D, K});
  for (int64_t i = 0; i < B * per; ++i)
    for (int64_t k = 0; k < K; ++k) z.f32()[i * K + k] = std::log(float(k + 1)) + 3.0f;
  std::vector<int64_t> count(K, 0);
  int64_t n = 0;
  for (int64_t first = 0; first < 400 * B; first += B) {
    const Tensor x = self_feed_inputs(codes, z, 0.999, 11, first);
    for (int64_t i = 0; i < B * per; ++i) ++count[size_t(x.ptr<int32_t>()[i])];
    n += B * per;
  }
  for (int64_t k = 0; k < K; ++k) {
    const double p = double(k + 1) / 36.0, mean = p * double(n), sd = std::sqrt(double(n) * p * (1 - p));
    EXPECT_NEAR(double(count[size_t(k)]), mean, 5 * sd + 0.002 * double(n)) << "code " << k;
  }
}

TEST(SelfFeed, BadShapesAndSharesAreRefused) {
  const Tensor codes = ramp_codes();
  const Tensor z = Tensor::zeros({B, H, W, D, K});
  EXPECT_NE(test::error_of([&] { self_feed_inputs(codes, Tensor::zeros({B, H, W, 3, K}), 0.5, 1, 0); })
                .find("logits must be f32 [16,2,2,4,K]"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { self_feed_inputs(Tensor::zeros({B, per}), z, 0.5, 1, 0); })
                .find("input codes must be int32 [B,h,w,D]"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { self_feed_inputs(codes, z, 1.0, 1, 0); }).find("[0, 1)"), std::string::npos);
}
