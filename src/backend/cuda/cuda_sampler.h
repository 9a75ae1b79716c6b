// The CUDA backend's sampling step (Backend::sample_rows): checks, Philox positions, one launch of
// kernels/cuda/sampler.cu, one download of n x 4 int32 (codes, statuses), and the host sampler's
// errors and warnings from the statuses.
#pragma once
#include <cstdint>

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

}  // namespace hwaga::cuda
