#include "transformer/stage2_model.h"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "core/error.h"

namespace hwaga {

StepSampler::StepSampler(Backend& be, const GenerateOptions& opt, SamplerSemantics semantics, int depth, int vocab,
                         int64_t first, int64_t n, int64_t steps)
    : be_(be), cfg_scale_(opt.cfg_scale), n_(n), vocab_(vocab) {
  SamplerOptions so = opt.sampler;
  if (opt.greedy) so.greedy = true;
  for (int d = 0; d < depth; ++d) filters_.push_back(resolve_row_filter(so, semantics, depth, d, vocab));
  const int64_t M = rows_per_candidate() * n;
  target_.row_codes = be.upload(Tensor::zeros({M, depth}, DType::I32), DType::I32);
  target_.out = be.upload(Tensor::zeros({n, steps, depth}, DType::I32), DType::I32);
  target_.status = be.upload(Tensor::zeros({4}, DType::I32), DType::I32);
  target_.step = be.counter_new(0);
  target_.seed = opt.seed;
  target_.stream0 = uint64_t(first);
  target_.pos0 = 0;
  // Each non-greedy draw takes one word of its candidate's stream.
  for (const RowFilter& f : filters_) target_.pos_per_step += f.greedy ? 0 : 1;
}

void StepSampler::pick(const Tensor& logits, int d) {
  const int R = rows_per_candidate();
  HWAGA_CHECK(logits.ndim() == 2 && logits.dim(0) == R * n_ && logits.dim(1) == vocab_, "StepSampler: logits ",
              shape_str(logits.shape()), ", expected [", R * n_, ", ", vocab_, "]");
  target_.pos_add = 0;
  for (int j = 0; j < d; ++j) target_.pos_add += filters_.at(size_t(j)).greedy ? 0 : 1;
  be_.sample_into(logits, n_, R == 2 ? cfg_scale_ : 0.0f, filters_.at(size_t(d)), d, target_);
}

Tensor StepSampler::finish() {
  const int64_t nan = be_.sample_status(target_.status);
  if (nan > 0)
    std::fprintf(stderr, "warning: %lld NaN logits replaced by -inf (as the RQ reference does)\n",
                 static_cast<long long>(nan));
  return be_.download(target_.out);
}

void run_steps(Backend& be, int64_t first, int64_t steps, bool use_graph, const std::function<void(int64_t)>& run_step,
               const std::function<void(int64_t)>& after_step) {
  const char* env = std::getenv("HWAGA_CUDA_GRAPHS");
  if (env && std::string(env) == "0") use_graph = false;
  std::unique_ptr<Backend::StepGraph> graph;
  for (int64_t s = first; s < steps; ++s) {
    if (graph) {
      graph->launch();
    } else if (use_graph && s == first + 1 && s + 1 < steps && be.capture_begin()) {
      // Record step s (nothing runs while recording), then launch it as the first replay.
      bool ended = false;
      try {
        run_step(s);
        ended = true;
        graph = be.capture_end();
      } catch (const std::exception& e) {
        graph.reset();
        if (!ended) {  // an op failed while recording: stop recording, drop what was recorded
          try {
            be.capture_end();
          } catch (const std::exception&) {
          }
        }
        std::fprintf(stderr, "note: the sampling step could not be recorded as a graph (%s); running op by op\n",
                     e.what());
      }
      if (graph)
        graph->launch();
      else
        run_step(s);
      use_graph = false;
    } else {
      run_step(s);
    }
    if (after_step) after_step(s);
  }
}

std::vector<int32_t> candidate_rows(int R, int64_t n) {
  std::vector<int32_t> rows;
  rows.reserve(size_t(R * n));
  for (int r = 0; r < R; ++r)
    for (int64_t i = 0; i < n; ++i) rows.push_back(r);
  return rows;
}

}  // namespace hwaga
