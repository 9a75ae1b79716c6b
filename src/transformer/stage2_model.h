// The face the two stage-2 transformers (rq/rq_transformer.h, transformer/mindalle_gpt.h) show to
// TextToImageModel, and the per-step sampler they share.
//
// Row layout of a sampling batch of n candidates: M = R*n rows, R = 1, or R = 2 with
// classifier-free guidance (rows [0,n) see the text, rows [n,2n) the unconditional all-PAD text);
// the code sampled for candidate i is fed to both of its rows.
//
// Shape legend: n candidates in this batch, M rows, L condition length, K codebook size,
// h/w code grid, D code depth.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "sample/rng.h"
#include "sample/sampler.h"
#include "transformer/text_to_image.h"

namespace hwaga {

class Stage2Model {
 public:
  virtual ~Stage2Model() = default;
  // cond: host int32 [R,L] (R = 1, or 2 with CFG: row 1 is the unconditional text).
  // Samples candidates [first, first+n) -> host int32 [n,h,w,D]. `step_done(s)` after step s.
  virtual Tensor sample(const Tensor& cond, int64_t first, int64_t n, const GenerateOptions& opt,
                        const std::function<void(int)>& step_done) = 0;
  // cond host int32 [B,L], codes host int32 [B,h,w,D] -> host f32 logits [B,h,w,D,K].
  virtual Tensor logits_teacher_forced(const Tensor& cond, const Tensor& codes) = 0;
  virtual int sampling_steps() const = 0;  // h*w*D
};

// Turns one step's logits into one code per candidate: download, CFG mix, then the reference
// sampler (sample/sampler.h) row by row with candidate (first+i)'s Philox stream (seed, first+i).
// Rows are independent, so they are spread over the thread pool; the result does not depend on
// the thread count or on how candidates are batched.
class StepSampler {
 public:
  StepSampler(const GenerateOptions& opt, SamplerSemantics semantics, int depth, int vocab, int64_t first,
              int64_t n);
  int rows_per_candidate() const { return cfg_scale_ != 0.0f ? 2 : 1; }
  // logits [M,K] on the backend (M = rows_per_candidate()*n) at depth d -> codes[i], i < n.
  void pick(Backend& be, const Tensor& logits, int d, int32_t* codes);

 private:
  std::vector<RowFilter> filters_;  // one per depth
  std::vector<Rng> rngs_;           // one per candidate
  std::vector<SamplerScratch> scratch_;
  float cfg_scale_ = 0.0f;
  int64_t n_ = 0;
  int vocab_ = 0;
  SamplerSemantics semantics_;
};

// rows {0 x n, 1 x n, ...}: which prefix row each of the M = R*n rows continues.
std::vector<int32_t> candidate_rows(int R, int64_t n);

}  // namespace hwaga
