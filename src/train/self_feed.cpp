#include "train/self_feed.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "sample/rng.h"

namespace hwaga::train {

namespace {
constexpr uint64_t kSelfFeedSeedMix = 0x73656c6666656431ull;  // "selffed1"
}  // namespace

Tensor self_feed_inputs(const Tensor& inputs, const Tensor& logits, double share, uint64_t seed, int64_t first_row) {
  HWAGA_CHECK(share >= 0 && share < 1, "self-feed: the share must be in [0, 1), got ", share);
  HWAGA_CHECK(inputs.dtype() == DType::I32 && inputs.ndim() == 4, "self-feed: input codes must be int32 [B,h,w,D], found ",
              dtype_name(inputs.dtype()), " ", shape_str(inputs.shape()));
  HWAGA_CHECK(logits.dtype() == DType::F32 && logits.ndim() == 5 && logits.dim(0) == inputs.dim(0) &&
                  logits.dim(1) == inputs.dim(1) && logits.dim(2) == inputs.dim(2) && logits.dim(3) == inputs.dim(3) &&
                  logits.dim(4) >= 1,
              "self-feed: logits must be f32 [", inputs.dim(0), ",", inputs.dim(1), ",", inputs.dim(2), ",",
              inputs.dim(3), ",K], found ", dtype_name(logits.dtype()), " ", shape_str(logits.shape()));
  const int64_t B = inputs.dim(0), per = inputs.dim(1) * inputs.dim(2) * inputs.dim(3), K = logits.dim(4);
  Tensor out = inputs.clone();
  if (share <= 0) return out;
  const uint32_t threshold = uint32_t(std::min(share * 0x1.0p32, 0x1.0p32 - 1));
  parallel_for(B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> e(static_cast<size_t>(K));
    for (int64_t b = b0; b < b1; ++b) {
      Rng rng(seed ^ kSelfFeedSeedMix, uint64_t(first_row + b));
      int32_t* row = out.ptr<int32_t>() + b * per;
      for (int64_t j = 0; j < per; ++j) {
        const uint64_t w = rng.next_u64();
        if (uint32_t(w) >= threshold) continue;
        const float* z = logits.f32() + (b * per + j) * K;
        const float mx = *std::max_element(z, z + K);
        double total = 0;
        for (int64_t k = 0; k < K; ++k) total += (e[size_t(k)] = std::exp(double(z[k] - mx)));
        const double target = double(w >> 40) * 0x1.0p-24 * total;
        int64_t k = 0;
        for (double acc = e[0]; acc <= target && k + 1 < K; acc += e[size_t(k)]) ++k;
        row[j] = int32_t(k);
      }
    }
  });
  return out;
}

}  // namespace hwaga::train
