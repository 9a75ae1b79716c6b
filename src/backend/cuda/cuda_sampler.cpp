// Backend::sample_rows on the GPU (see cuda_sampler.h and kernels/cuda/sampler.cuh).
#include "backend/cuda/cuda_sampler.h"

#include <cmath>
#include <vector>

#include "kernels/cuda/sampler.cuh"
#include "sample/rng.h"
#include "sample/sampler.h"

namespace hwaga::cuda {

bool sample_rows(Context& ctx, const Tensor& logits, int64_t n, float cfg_scale, const RowFilter& f, Rng* rngs,
                 int32_t* codes, int64_t* nan_replaced) {
  HWAGA_CHECK(logits.device() == Device::CUDA && logits.dtype() == DType::F32 && logits.ndim() == 2,
              "sample_rows: logits must be f32 [M,K] on the GPU, found ", dtype_name(logits.dtype()), " ",
              shape_str(logits.shape()), " on ", device_name(logits.device()));
  const int64_t M = logits.dim(0), K = logits.dim(1);
  const int64_t want = cfg_scale != 0.0f ? 2 * n : n;
  HWAGA_CHECK(n >= 0 && M == want, "sample_rows: ", M, " logit rows for ", n, " candidates",
              cfg_scale != 0.0f ? " with guidance (expected 2n)" : " (expected n)");
  HWAGA_CHECK(K >= 1 && K < (int64_t(1) << 31) && n < (int64_t(1) << 31), "sample_rows: rows of ", K,
              " logits, ", n, " rows: too large");
  if (!std::isfinite(cfg_scale)) fail("guidance scale must be finite, found ", cfg_scale);  // as guidance_mix
  if (f.top_k < 0 || f.top_k > K)  // as filter_logits
    fail("sampler: top_k ", f.top_k, " outside [1, ", K, "] for a row of ", K, " logits");
  if (n == 0) return true;

  SampleRowsArgs a;
  a.logits = logits.ptr<float>();
  a.n = int(n);
  a.K = int(K);
  a.temperature = f.temperature;
  a.top_k = f.top_k;
  a.top_p = f.top_p;
  a.nan_to_neg_inf = f.nan_to_neg_inf;
  a.greedy = f.greedy;
  a.cfg_scale = cfg_scale;

  // Philox positions: the usual case (candidates first..first+n-1 of one seed, all at the same
  // word) travels in the kernel arguments; anything else as an [n,3] table.
  a.seed = rngs[0].seed();
  a.stream0 = rngs[0].stream();
  a.pos0 = rngs[0].position();
  bool uniform = true;
  for (int64_t i = 1; i < n && uniform; ++i)
    uniform = rngs[i].seed() == a.seed && rngs[i].stream() == a.stream0 + uint64_t(i) && rngs[i].position() == a.pos0;
  std::vector<uint64_t> table;
  std::shared_ptr<void> table_dev;
  if (!uniform && !f.greedy) {
    table.resize(size_t(3 * n));
    for (int64_t i = 0; i < n; ++i) {
      table[size_t(3 * i)] = rngs[i].seed();
      table[size_t(3 * i + 1)] = rngs[i].stream();
      table[size_t(3 * i + 2)] = rngs[i].position();
    }
    table_dev = ctx.scratch(table.size() * sizeof(uint64_t));
    CUDA_CHECK(cudaMemcpyAsync(table_dev.get(), table.data(), table.size() * sizeof(uint64_t),
                               cudaMemcpyHostToDevice, ctx.stream));
    a.philox_rows = static_cast<const uint64_t*>(table_dev.get());
  }

  const size_t work_bytes = sample_rows_work_bytes(a.n, a.K);
  std::shared_ptr<void> work = work_bytes ? ctx.scratch(work_bytes) : nullptr;
  a.work = static_cast<float*>(work.get());
  std::shared_ptr<void> out = ctx.scratch(size_t(4 * n) * sizeof(int32_t));
  a.out = static_cast<int32_t*>(out.get());
  sample_rows_f32(a, ctx.stream);
  std::vector<int32_t> res(size_t(4 * n));
  CUDA_CHECK(cudaMemcpyAsync(res.data(), out.get(), res.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, ctx.stream));
  CUDA_CHECK(cudaStreamSynchronize(ctx.stream));

  // The host sampler's errors (sample/sampler.cpp), for the first bad row.
  for (int64_t i = 0; i < n; ++i) {
    const int32_t status = res[size_t(4 * i + 1)], index = res[size_t(4 * i + 2)];
    switch (status) {
      case kSampleOk: break;
      case kSampleNan: fail("sampler: NaN logit at index ", index, " (the reference's multinomial would fail)");
      case kSamplePosInf:
        fail("sampler: +inf logit at index ", index, " (temperature too small, or a diverged model)");
      case kSampleAllNegInf: fail("sampler: every one of the ", K, " logits is -inf (nothing to sample)");
      case kSampleGreedyNan: fail("sampler: NaN logit at index ", index);
      case kSampleGreedyAllNan: fail("sampler: every one of the ", K, " logits is NaN");
      case kSampleNoMass: fail("draw_from_probs: no token has a probability > 0");
      default: fail("sample_rows: the GPU sampler failed on row ", i, " (status ", status, ")");
    }
  }
  int64_t nan = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t c = res[size_t(4 * i)];
    HWAGA_CHECK(c >= 0 && c < K, "sample_rows: the GPU sampler returned code ", c, " for row ", i);
    codes[i] = c;
    nan += res[size_t(4 * i + 3)];
    if (!f.greedy) rngs[i].seek(rngs[i].position() + 1);
  }
  if (nan_replaced) *nan_replaced += nan;
  return true;
}

}  // namespace hwaga::cuda
