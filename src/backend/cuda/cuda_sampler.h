// The CUDA backend's sampling steps. Backend::sample_rows: checks, Philox positions, one launch of
// kernels/cuda/sampler.cu, one download of n x 4 int32 (codes, statuses), and the host sampler's
// errors and warnings from the statuses. Backend::sample_into / sample_status: the same draw
// with the codes and statuses kept on the device (a sampling loop's state), read back once.
#pragma once
#include <cstdint>

#include "backend/backend.h"
#include "backend/cuda/cuda_context.h"
#include "core/tensor.h"

namespace hwaga {
struct RowFilter;
class Rng;
}  // namespace hwaga

namespace hwaga::cuda {

// logits: f32 [M,K] on this device (see Backend::sample_rows for the contract). Always returns true.
bool sample_rows(Context& ctx, const Tensor& logits, int64_t n, float cfg_scale, const RowFilter& f, Rng* rngs,
                 int32_t* codes, int64_t* nan_replaced);
void sample_into(Context& ctx, const Tensor& logits, int64_t n, float cfg_scale, const RowFilter& f, int d,
                 Backend::SampleTarget& t);
// status: int32 [4] on the device (see SampleScatterArgs). Throws for a failed draw; returns the NaN count.
int64_t sample_status(Context& ctx, const Tensor& status);

}  // namespace hwaga::cuda
