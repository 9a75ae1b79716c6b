// Whole text-to-image stage-2 models on the CUDA backend against the CPU backend: tiny random
// RQ-Transformer and minDALL-E GPT models (t2i_tiny.h; the same weights on both backends, from
// TextToImageModel::random with one seed) give the same teacher-forced logits, and the GPU's
// greedy codes are what the CPU model would pick after the same prefix.
//
// Tolerances (max|gpu-cpu| / max|cpu| over all logits):
//   f32 weights  1e-4: a dozen f32 ops in a row, each within ~2e-5 (test_cuda_transformer_ops);
//   bf16 weights 6e-2: the GPU also rounds every linear's activations to bf16 (PyTorch autocast
//                does the same) and the error of ~10 such layers adds up; this catches wiring
//                errors (which give O(1) differences), not rounding.
// Greedy codes: a GPU code must be an argmax of the CPU's teacher-forced logits given the GPU's
// own earlier codes, up to a tie margin of that tolerance times max|logit| (near-ties may go
// either way; exact agreement with the CPU's greedy codes is printed, not required).
#include <gtest/gtest.h>

#include <algorithm>
#include <ostream>
#include <random>

#include "backend/cuda/cuda_backend.h"
#include "gpu_test_util.h"
#include "t2i_tiny.h"
#include "transformer/text_to_image.h"

namespace hwaga {
namespace {

using gputest::cpu_backend;
using gputest::rel_err;

std::vector<int32_t> random_ids(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> u(0, vocab - 1);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int32_t& x : v) x = u(rng);
  return v;
}

Tensor random_codes(const Shape& s, int K, uint64_t seed) {
  Tensor t = Tensor::empty(s, DType::I32);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> u(0, K - 1);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<int32_t>()[i] = u(rng);
  return t;
}

struct Case {
  const char* kind;
  DType dtype;
  double tol;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.kind << " " << dtype_name(c.dtype) << " tol " << c.tol; }

class CudaT2I : public ::testing::TestWithParam<Case> {};

TEST_P(CudaT2I, TeacherForcedLogitsAndGreedyCodes) {
  HWAGA_NEED_GPU(gpu, false);
  const Case c = GetParam();
  const ModelPreset preset = std::string(c.kind) == "rq" ? gputest::tiny_rq_preset() : gputest::tiny_gpt_preset();
  auto gm = TextToImageModel::random(preset, gpu, c.dtype, 7);
  auto cm = TextToImageModel::random(preset, cpu_backend(), c.dtype, 7);
  const Shape cs = gm->code_shape();
  const int K = gm->stage2_config().image_vocab_size();
  const std::vector<int32_t> text = random_ids(gm->text_length(), gm->cond_vocab_size(), 11);

  // Teacher forcing: T > 1 attention over the whole sequence, batch 3.
  Tensor codes = random_codes({3, cs[0], cs[1], cs[2]}, K, 12);
  Tensor lg = gm->logits_teacher_forced(text, codes), lc = cm->logits_teacher_forced(text, codes);
  ASSERT_EQ(lg.device(), Device::CPU);
  EXPECT_LE(rel_err(lg, lc), c.tol) << c.kind << " " << dtype_name(c.dtype);

  // Greedy sampling: the prompt prefix, kv_cache_gather to the candidates, T = 1 steps; 3
  // candidates in batches of 2 (so both a full and a partial batch run).
  GenerateOptions opt;
  opt.n_candidates = 3;
  opt.batch = 2;
  opt.greedy = true;
  Tensor g = gm->generate_codes(text, opt);
  Tensor ref = cm->generate_codes(text, opt);
  ASSERT_EQ(shape_str(g.shape()), shape_str(ref.shape()));
  int64_t same = 0;
  for (int64_t i = 0; i < g.numel(); ++i) {
    ASSERT_GE(g.ptr<int32_t>()[i], 0);
    ASSERT_LT(g.ptr<int32_t>()[i], K);
    same += g.ptr<int32_t>()[i] == ref.ptr<int32_t>()[i];
  }
  std::printf("[ %s %s ] greedy codes equal to the CPU's: %lld of %lld\n", c.kind, dtype_name(c.dtype),
              static_cast<long long>(same), static_cast<long long>(g.numel()));
  Tensor chk = cm->logits_teacher_forced(text, g);  // [N,h,w,D,K]
  float mx = 0.0f;
  for (int64_t i = 0; i < chk.numel(); ++i) mx = std::max(mx, std::fabs(chk.f32()[i]));
  const float margin = float(c.tol) * mx;
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < g.numel(); ++i) {
    const float* row = chk.f32() + i * K;
    const float best = *std::max_element(row, row + K);
    if (row[g.ptr<int32_t>()[i]] < best - margin) {
      if (first < 0) first = i;
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0) << c.kind << " " << dtype_name(c.dtype) << ": " << bad
                    << " GPU greedy codes are not the CPU's argmax, first at flat index " << first;
}

// The sampling loop recorded once as a CUDA graph and replayed (GenerateOptions::step_graphs)
// runs the very kernels the op-by-op loop runs, with the same inputs: the codes must be
// identical, bit for bit, with the default sampler, with guidance, and in batches.
TEST_P(CudaT2I, GraphReplayGivesTheOpByOpCodes) {
  HWAGA_NEED_GPU(gpu, false);
  const Case c = GetParam();
  const ModelPreset preset = std::string(c.kind) == "rq" ? gputest::tiny_rq_preset() : gputest::tiny_gpt_preset();
  auto gm = TextToImageModel::random(preset, gpu, c.dtype, 7);
  const std::vector<int32_t> text = random_ids(gm->text_length(), gm->cond_vocab_size(), 11);
  for (float cfg : {0.0f, 3.0f}) {
    GenerateOptions opt;
    opt.n_candidates = 5;
    opt.batch = 3;
    opt.seed = 21;
    opt.cfg_scale = cfg;
    opt.sampler.top_k = {64};
    opt.sampler.top_p = {0.9f};
    opt.step_graphs = false;
    Tensor eager = gm->generate_codes(text, opt);
    opt.step_graphs = true;
    const int64_t launches0 = cuda_stats(gpu).graph_launches;
    Tensor graph = gm->generate_codes(text, opt);
    // 2 batches of the h*w steps (rq: 64, gpt: 16): both loops run steps 0 and 1 op by op,
    // record step 2 and launch it for step 2 and every later step.
    const int64_t want = 2 * (eager.dim(1) * eager.dim(2) - 2);
    EXPECT_EQ(cuda_stats(gpu).graph_launches - launches0, want)
        << "the step was not replayed as a graph (see the note on stderr)";
    ASSERT_EQ(shape_str(graph.shape()), shape_str(eager.shape()));
    int64_t diff = 0;
    for (int64_t i = 0; i < eager.numel(); ++i) diff += graph.ptr<int32_t>()[i] != eager.ptr<int32_t>()[i];
    EXPECT_EQ(diff, 0) << c.kind << " " << dtype_name(c.dtype) << " cfg " << cfg << ": " << diff << " of "
                       << eager.numel() << " codes differ between the graph and the op-by-op loop";
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, CudaT2I,
                         ::testing::Values(Case{"rq", DType::F32, 1e-4}, Case{"gpt", DType::F32, 1e-4},
                                           Case{"rq", DType::BF16, 6e-2}, Case{"gpt", DType::BF16, 6e-2}),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           return std::string(i.param.kind) + "_" + dtype_name(i.param.dtype);
                         });

}  // namespace
}  // namespace hwaga
