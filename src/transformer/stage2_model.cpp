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
  const RowFilter& f = filters_.at(size_t(d));
  // A backend with its own sampler (CUDA: kernels/cuda/sampler.cu) picks the same codes on the
  // device, and only the n codes come back.
  int64_t nan_dev = 0;
  if (be.sample_rows(logits, n_, R == 2 ? cfg_scale_ : 0.0f, f, rngs_.data(), codes, &nan_dev)) {
    if (nan_dev > 0)
      std::fprintf(stderr, "warning: %lld NaN logits replaced by -inf at depth %d (as the RQ reference does)\n",
                   static_cast<long long>(nan_dev), d);
    return;
  }
  Tensor host = be.download(logits);  // [M,K] f32
  float* L = host.f32();
  if (R == 2) guidance_mix(L, L + n_ * vocab_, cfg_scale_, L, n_ * vocab_);  // rows [0,n) <- u + s(c - u)
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

// ---- CUDA graphs of the per-position step: what capture requires (not done yet) ----
// A step (RQ: one spatial token through the body + D depth tokens through the head + D sampler
// calls; minDALL-E: one token + one sampler call) launches ~10 kernels/cuBLASLt calls per layer,
// and at batch 1-64 the launch gaps are a large share of the step. Replaying a captured graph
// removes them, but capture (cudaStreamBeginCapture .. EndCapture, then cudaGraphLaunch per step)
// records fixed pointers and fixed kernel arguments, and forbids synchronisation, so the step
// code must first be made capture-safe. What stands in the way today, and the change each needs:
//   1. Host <-> device traffic inside the step: embed_sum() and embedding() with device ids
//      read back a bad-id flag with cudaStreamSynchronize; upload() of host ids/codes
//      (spatial_input, depth_input, code_prefix, row_codes in rq_transformer.cpp and
//      mindalle_gpt.cpp) synchronises; StepSampler::pick downloads the codes. Needed: the codes
//      stay on the device (the sampler kernel writes them into a fixed device [M,D] code buffer that
//      the next embedding reads; the range check becomes a device flag read once per image), and
//      only the final [n,h,w,D] codes come back.
//   2. Fresh allocations per op: every op returns a new tensor from the caching allocator, so
//      pointers differ between steps and a graph would read freed blocks. Needed: a per-(batch,
//      model) arena of step buffers allocated once (q/k/v/attn/mlp activations per layer, logits
//      [M,K], sampler work/out), with ops that write into given outputs (an "into" variant of
//      linear/layer_norm/gelu/add/add_rows/embedding on the CUDA backend), and the cuBLASLt
//      workspace (gemm_lt.cpp takes ctx.scratch per call) as one fixed block.
//   3. Position-dependent kernel arguments: attention_step passes cache.len (and the split count
//      from attention_scratch_floats, which depends on len) as kernel arguments, kv_append writes
//      at len, and add_rows reads pos_emb_hw.slice0(p-1, p) / pos_emb_img.slice0(j, j+1), a pointer
//      that moves each step. Needed: len and p read from a device int the graph advances by a tiny
//      kernel at its end (attention with a split count fixed by the cache capacity, not len),
//      and position embeddings indexed by that device position. The depth cache (len 0..D-1 within
//      a position) is the same pattern with d.
//   4. The sampler's per-step inputs: the Philox word position (advanced by one per draw) must come
//      from device memory too (SampleRowsArgs.philox_rows, updated in the graph), and the per-depth
//      filters (top-k/top-p lists) are D fixed launches, which a graph of the whole position holds.
//   5. Host-side checks (HWAGA_CHECK on shapes) are fine during capture; cudaFuncSetAttribute
//      (sampler.cu, rows in shared memory) is not a stream operation and is allowed, but must run
//      before capture starts the first time.
// With 1-4 a graph per (batch M, model) is captured once at the first position and replayed for
// every later one (RQ: one graph holds the body step and the D depth steps; minDALL-E: one step);
// a `--cuda-graphs off` switch would keep the op-by-op path as the reference. Items 1-3 touch
// the backend seam (backend.h "into" ops), cuda_backend.cpp, gpt_block.cpp and both step loops,
// which is why it is left for a change that can be timed and checked on a GPU.

std::vector<int32_t> candidate_rows(int R, int64_t n) {
  std::vector<int32_t> rows;
  rows.reserve(size_t(R * n));
  for (int r = 0; r < R; ++r)
    for (int64_t i = 0; i < n; ++i) rows.push_back(r);
  return rows;
}

}  // namespace hwaga
