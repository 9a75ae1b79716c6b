// The sampling-loop ops of backend.h ("the sampling loop on the backend") on host tensors: the
// CPU backend's versions, and the reference the CUDA ones are tested against. The loop that calls
// them is StepSampler (transformer/stage2_model.cpp) with the step loops of rq_transformer.cpp
// and mindalle_gpt.cpp.
#include <algorithm>
#include <atomic>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "core/threads.h"
#include "sample/rng.h"
#include "sample/sampler.h"

namespace hwaga {

namespace {

int32_t* host_counter(const Tensor& c, const char* op) {
  HWAGA_CHECK(c.defined() && c.device() == Device::CPU && c.dtype() == DType::I32 && c.numel() == 1, op,
              ": counter must be a host int32 [1] tensor (counter_new), found ", dtype_name(c.dtype()), " ",
              shape_str(c.shape()));
  return const_cast<int32_t*>(c.ptr<int32_t>());
}

}  // namespace

Tensor Backend::counter_new(int32_t value) {
  Tensor c = Tensor::empty({1}, DType::I32);
  c.ptr<int32_t>()[0] = value;
  return c;
}

void Backend::counter_add(Tensor& counter, int32_t delta) { *host_counter(counter, "counter_add") += delta; }

Tensor Backend::add_row_at(const Tensor& x, const Tensor& table, const Tensor& counter, int32_t offset) {
  HWAGA_CHECK(table.defined() && table.ndim() == 2, "add_row_at: table must be [R,C]");
  const int64_t row = int64_t(*host_counter(counter, "add_row_at")) + offset;
  HWAGA_CHECK(row >= 0 && row < table.dim(0), "add_row_at: row ", row, " outside the ", table.dim(0),
              " rows of the table");
  return add_rows(x, table.slice0(row, row + 1));
}

Tensor Backend::gather_sum(const Tensor& table, const Tensor& ids, int d) {
  HWAGA_CHECK(ids.defined() && ids.device() == Device::CPU && ids.dtype() == DType::I32 && ids.ndim() == 2,
              "gather_sum: ids must be host int32 [N,D], found ", dtype_name(ids.dtype()), " ", shape_str(ids.shape()));
  const int64_t N = ids.dim(0), D = ids.dim(1);
  HWAGA_CHECK(d >= 1 && d <= D, "gather_sum: ", d, " columns of ids ", shape_str(ids.shape()));
  if (table.dtype() == DType::F32) {  // a codebook: embed_sum of the first d columns (it checks each id)
    Tensor prefix = Tensor::empty({N, d}, DType::I32);
    for (int64_t n = 0; n < N; ++n)
      for (int j = 0; j < d; ++j) prefix.ptr<int32_t>()[n * d + j] = ids.ptr<int32_t>()[n * D + j];
    return embed_sum(prefix, table);
  }
  // Column by column through embedding() (which checks each id), summed in column order.
  Tensor col = Tensor::empty({N}, DType::I32);
  Tensor sum;
  for (int j = 0; j < d; ++j) {
    for (int64_t n = 0; n < N; ++n) col.ptr<int32_t>()[n] = ids.ptr<int32_t>()[n * D + j];
    Tensor e = embedding(table, col);
    sum = j == 0 ? e : add(sum, e);
  }
  return sum;
}

void Backend::sample_into(const Tensor& logits, int64_t n, float cfg_scale, const RowFilter& f, int d,
                          SampleTarget& t) {
  const int R = cfg_scale != 0.0f ? 2 : 1;
  Tensor host = download(logits);  // [M,K] f32
  HWAGA_CHECK(host.dtype() == DType::F32 && host.ndim() == 2 && host.dim(0) == R * n, "sample_into: logits ",
              shape_str(host.shape()), " for ", n, " candidates");
  const int64_t K = host.dim(1), M = R * n;
  HWAGA_CHECK(t.row_codes.device() == Device::CPU && t.row_codes.ndim() == 2 && t.row_codes.dim(0) == M &&
                  d >= 0 && d < t.row_codes.dim(1),
              "sample_into: row codes ", shape_str(t.row_codes.shape()), " for ", M, " rows at depth ", d);
  const int64_t D = t.row_codes.dim(1);
  HWAGA_CHECK(t.out.device() == Device::CPU && t.out.ndim() == 3 && t.out.dim(0) == n && t.out.dim(2) == D,
              "sample_into: output ", shape_str(t.out.shape()), " for ", n, " candidates of depth ", D);
  const int64_t step = *host_counter(t.step, "sample_into");
  HWAGA_CHECK(step >= 0 && step < t.out.dim(1), "sample_into: step ", step, " outside the ", t.out.dim(1),
              " steps of the output");
  float* L = host.f32();
  if (R == 2) guidance_mix(L, L + n * K, cfg_scale, L, n * K);  // rows [0,n) <- u + s(c - u)
  const uint64_t pos = t.pos0 + uint64_t(step * t.pos_per_step + t.pos_add);
  std::vector<int32_t> picked(static_cast<size_t>(n));
  std::vector<SamplerScratch> scratch(size_t(std::max(1, num_threads())));
  std::atomic<int64_t> nan_total{0};
  std::atomic<int> slot{0};
  parallel_for(n, 1, [&](int64_t i0, int64_t i1) {
    SamplerScratch& s = scratch[size_t(slot.fetch_add(1)) % scratch.size()];
    int64_t nan = 0;
    for (int64_t i = i0; i < i1; ++i) {
      Rng rng(t.seed, t.stream0 + uint64_t(i));
      rng.seek(pos);
      picked[size_t(i)] = int32_t(sample_row(L + i * K, K, f, rng, s, &nan));
    }
    nan_total += nan;
  });
  int32_t* st = host_counter(t.status.defined() ? t.status.slice0(3, 4) : Tensor(), "sample_into: status");
  *st += int32_t(nan_total.load());
  int32_t* rc = t.row_codes.ptr<int32_t>();
  for (int64_t m = 0; m < M; ++m) rc[m * D + d] = picked[size_t(m % n)];
  const int64_t S = t.out.dim(1);
  int32_t* out = t.out.ptr<int32_t>();
  for (int64_t i = 0; i < n; ++i) out[(i * S + step) * D + d] = picked[size_t(i)];
}

int64_t Backend::sample_status(const Tensor& status) {
  Tensor s = download(status);
  HWAGA_CHECK(s.dtype() == DType::I32 && s.numel() == 4, "sample_status: status must be int32 [4]");
  // The host sampler throws at the failed draw itself, so only the NaN count is left here.
  return s.ptr<int32_t>()[3];
}

std::unique_ptr<Backend::StepGraph> Backend::capture_end() {
  fail("capture_end: ", name(), " does not record steps (capture_begin returned false)");
}

}  // namespace hwaga
