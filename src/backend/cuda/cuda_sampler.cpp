// Backend::sample_rows on the GPU (see cuda_sampler.h and kernels/cuda/sampler.cuh).
#include "backend/cuda/cuda_sampler.h"

#include <cmath>
#include <vector>

#include "kernels/cuda/sampler.cuh"
#include "sample/rng.h"
#include "sample/sampler.h"

namespace hwaga::cuda {

namespace {

// The host sampler's errors (sample/sampler.cpp) for a failed draw's status.
[[noreturn]] void sample_failed(int32_t status, int32_t index, int64_t K, int64_t row) {
  switch (status) {
    case kSampleNan: fail("sampler: NaN logit at index ", index, " (the reference's multinomial would fail)");
    case kSamplePosInf: fail("sampler: +inf logit at index ", index, " (temperature too small, or a diverged model)");
    case kSampleAllNegInf: fail("sampler: every one of the ", K, " logits is -inf (nothing to sample)");
    case kSampleGreedyNan: fail("sampler: NaN logit at index ", index);
    case kSampleGreedyAllNan: fail("sampler: every one of the ", K, " logits is NaN");
    case kSampleNoMass: fail("draw_from_probs: no token has a probability > 0");
    default: fail("sample_rows: the GPU sampler failed on row ", row, " (status ", status, ")");
  }
}

// The checks of sample_rows that do not depend on the Philox streams.
void check_step(const Tensor& logits, int64_t n, float cfg_scale, const RowFilter& f) {
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
}

SampleRowsArgs step_args(const Tensor& logits, int64_t n, float cfg_scale, const RowFilter& f) {
  SampleRowsArgs a;
  a.logits = logits.ptr<float>();
  a.n = int(n);
  a.K = int(logits.dim(1));
  a.temperature = f.temperature;
  a.top_k = f.top_k;
  a.top_p = f.top_p;
  a.nan_to_neg_inf = f.nan_to_neg_inf;
  a.greedy = f.greedy;
  a.cfg_scale = cfg_scale;
  return a;
}

}  // namespace

void sample_into(Context& ctx, const Tensor& logits, int64_t n, float cfg_scale, const RowFilter& f, int d,
                 Backend::SampleTarget& t) {
  check_step(logits, n, cfg_scale, f);
  const int64_t M = logits.dim(0);
  for (const Tensor* x : {&t.row_codes, &t.out, &t.status, &t.step})
    HWAGA_CHECK(x->defined() && x->device() == Device::CUDA && x->dtype() == DType::I32,
                "sample_into: the loop's codes, status and step must be int32 on the GPU");
  HWAGA_CHECK(t.row_codes.ndim() == 2 && t.row_codes.dim(0) == M && d >= 0 && d < t.row_codes.dim(1),
              "sample_into: row codes ", shape_str(t.row_codes.shape()), " for ", M, " rows at depth ", d);
  const int64_t D = t.row_codes.dim(1);
  HWAGA_CHECK(t.out.ndim() == 3 && t.out.dim(0) == n && t.out.dim(2) == D && t.status.numel() == 4 &&
                  t.step.numel() == 1 && t.out.dim(1) < (int64_t(1) << 31),
              "sample_into: output ", shape_str(t.out.shape()), " for ", n, " candidates of depth ", D);
  if (n == 0) return;
  SampleRowsArgs a = step_args(logits, n, cfg_scale, f);
  a.seed = t.seed;
  a.stream0 = t.stream0;
  a.pos0 = t.pos0 + uint64_t(t.pos_add);
  a.step_dev = t.step.ptr<int32_t>();
  a.pos_per_step = t.pos_per_step;
  const size_t work_bytes = sample_rows_work_bytes(a.n, a.K);
  std::shared_ptr<void> work = work_bytes ? ctx.scratch(work_bytes) : nullptr;
  a.work = static_cast<float*>(work.get());
  std::shared_ptr<void> res = ctx.scratch(size_t(4 * n) * sizeof(int32_t));
  a.out = static_cast<int32_t*>(res.get());
  sample_rows_f32(a, ctx.stream);
  SampleScatterArgs sc;
  sc.res = a.out;
  sc.row_codes = t.row_codes.ptr<int32_t>();
  sc.out = t.out.ptr<int32_t>();
  sc.status = t.status.ptr<int32_t>();
  sc.step_dev = t.step.ptr<int32_t>();
  sc.n = int(n);
  sc.M = int(M);
  sc.D = int(D);
  sc.d = d;
  sc.S = int(t.out.dim(1));
  sc.K = a.K;
  sample_scatter(sc, ctx.stream);
}

int64_t sample_status(Context& ctx, const Tensor& status) {
  HWAGA_CHECK(status.device() == Device::CUDA && status.dtype() == DType::I32 && status.numel() == 4,
              "sample_status: status must be int32 [4] on the GPU");
  int32_t s[4] = {0, 0, 0, 0};
  CUDA_CHECK(cudaMemcpyAsync(s, status.data(), sizeof(s), cudaMemcpyDeviceToHost, ctx.stream));
  CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  if (s[0] != kSampleOk) sample_failed(s[0], s[1], s[2], -1);
  return s[3];
}

bool sample_rows(Context& ctx, const Tensor& logits, int64_t n, float cfg_scale, const RowFilter& f, Rng* rngs,
                 int32_t* codes, int64_t* nan_replaced) {
  check_step(logits, n, cfg_scale, f);
  const int64_t K = logits.dim(1);
  if (n == 0) return true;

  SampleRowsArgs a = step_args(logits, n, cfg_scale, f);

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
    if (status != kSampleOk) sample_failed(status, index, K, i);
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
