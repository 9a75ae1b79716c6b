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

// Turns each step's logits into one code per candidate, on the backend: the CFG mix, then the
// reference sampler (sample/sampler.h) row by row with candidate (first+i)'s Philox stream
// (seed, first+i). The codes stay on the backend (Backend::SampleTarget): each draw writes its
// column of row_codes(), which the next step's embedding reads, and its slot of the output,
// which finish() brings back once. The result does not depend on the thread count or on how
// candidates are batched.
//
// A step loop runs S steps of D draws each (RQ: S = h*w positions, D = depth; minDALL-E: S = h*w,
// D = 1): pick(logits, d) for d in [0,D), then next_step(). Draws are numbered by the step
// counter on the backend, so a captured step (Backend::capture_begin) replays correctly.
class StepSampler {
 public:
  StepSampler(Backend& be, const GenerateOptions& opt, SamplerSemantics semantics, int depth, int vocab,
              int64_t first, int64_t n, int64_t steps);
  int rows_per_candidate() const { return cfg_scale_ != 0.0f ? 2 : 1; }
  // logits [M,K] on the backend (M = rows_per_candidate()*n) at depth d of the current step.
  void pick(const Tensor& logits, int d);
  void next_step() { be_.counter_add(target_.step, 1); }
  const Tensor& row_codes() const { return target_.row_codes; }  // int32 [M,D] on the backend
  const Tensor& step_counter() const { return target_.step; }
  // The codes of all steps -> host int32 [n,S,D]; throws the sampler's error for a failed draw.
  Tensor finish();

 private:
  Backend& be_;
  std::vector<RowFilter> filters_;  // one per depth
  Backend::SampleTarget target_;
  float cfg_scale_ = 0.0f;
  int64_t n_ = 0;
  int vocab_ = 0;
};

// Runs a sampling loop's steps [first, steps), with a CUDA graph where the backend records one:
// step `first` runs op by op (it also warms the allocator's cache), step first+1 is recorded,
// and the later steps replay it. `run_step(s)` issues step s's ops, reading every value that
// changes from step to step from the backend (counters, KV caches with a len_counter), and sets
// any host state it needs from s alone (a failed recording is retried op by op). `after_step(s)`
// is host work run after each step (progress). With `use_graph` false, or HWAGA_CUDA_GRAPHS=0
// in the environment, every step runs op by op.
void run_steps(Backend& be, int64_t first, int64_t steps, bool use_graph, const std::function<void(int64_t)>& run_step,
               const std::function<void(int64_t)>& after_step);

// rows {0 x n, 1 x n, ...}: which prefix row each of the M = R*n rows continues.
std::vector<int32_t> candidate_rows(int R, int64_t n);

}  // namespace hwaga
