#include "transformer/stage2_model.h"

#include <atomic>
#include <cstdio>

#include "core/error.h"
#include "core/threads.h"

namespace hwaga {

StepSampler::StepSampler(const GenerateOptions& opt, SamplerSemantics semantics, int depth, int vocab, int64_t first,
                         int64_t n)
    : cfg_scale_(opt.cfg_scale), n_(n), vocab_(vocab), semantics_(semantics) {
  SamplerOptions so = opt.sampler;
  if (opt.greedy) so.greedy = true;
  for (int d = 0; d < depth; ++d) filters_.push_back(resolve_row_filter(so, semantics, depth, d, vocab));
  rngs_.reserve(size_t(n));
  for (int64_t i = 0; i < n; ++i) rngs_.emplace_back(opt.seed, uint64_t(first + i));
  scratch_.resize(size_t(std::max(1, num_threads())));
}

void StepSampler::pick(Backend& be, const Tensor& logits, int d, int32_t* codes) {
  const int R = rows_per_candidate();
  HWAGA_CHECK(logits.ndim() == 2 && logits.dim(0) == R * n_ && logits.dim(1) == vocab_, "StepSampler: logits ",
              shape_str(logits.shape()), ", expected [", R * n_, ", ", vocab_, "]");
  Tensor host = be.download(logits);  // [M,K] f32
  float* L = host.f32();
  if (R == 2) guidance_mix(L, L + n_ * vocab_, cfg_scale_, L, n_ * vocab_);  // rows [0,n) <- u + s(c - u)
  const RowFilter& f = filters_.at(size_t(d));
  std::atomic<int64_t> nan_total{0};
  std::atomic<int> slot{0};
  parallel_for(n_, 1, [&](int64_t i0, int64_t i1) {
    SamplerScratch& s = scratch_[size_t(slot.fetch_add(1)) % scratch_.size()];
    int64_t nan = 0;
    for (int64_t i = i0; i < i1; ++i)
      codes[i] = int32_t(sample_row(L + i * vocab_, vocab_, f, rngs_[size_t(i)], s, &nan));
    nan_total += nan;
  });
  if (nan_total > 0)
    std::fprintf(stderr, "warning: %lld NaN logits replaced by -inf at depth %d (as the RQ reference does)\n",
                 static_cast<long long>(nan_total.load()), d);
}

std::vector<int32_t> candidate_rows(int R, int64_t n) {
  std::vector<int32_t> rows;
  rows.reserve(size_t(R * n));
  for (int r = 0; r < R; ++r)
    for (int64_t i = 0; i < n; ++i) rows.push_back(r);
  return rows;
}

}  // namespace hwaga
