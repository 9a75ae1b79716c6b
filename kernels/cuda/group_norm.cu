#include "kernels/cuda/group_norm.cuh"

#include "backend/cuda/cuda_check.h"
#include "kernels/cuda/reduce.cuh"

namespace hwaga::cuda {
namespace {

constexpr int kThreads = 512;

// One block per (b, g): the group's C/G channels x HW positions are contiguous.
__global__ void group_norm_kernel(const float* x, const float* gamma, const float* beta, float* y,
                                  int64_t C, int64_t HW, int groups, float eps, bool silu) {
  __shared__ float red[33];
  int64_t bg = blockIdx.x;
  int g = int(bg % groups);
  int64_t cpg = C / groups;
  int64_t n = cpg * HW;
  const float* xg = x + bg * n;
  float* yg = y + bg * n;

  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += xg[i];
  float mean = block_sum(s, red) / float(n);
  float s2 = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    float d = xg[i] - mean;
    s2 += d * d;
  }
  float var = block_sum(s2, red) / float(n);
  float rstd = 1.0f / sqrtf(var + eps);

  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    int64_t c = int64_t(g) * cpg + i / HW;
    float v = (xg[i] - mean) * rstd * gamma[c] + beta[c];
    if (silu) v = v / (1.0f + expf(-v));
    yg[i] = v;
  }
}

}  // namespace

void group_norm_f32(const float* x, const float* gamma, const float* beta, float* y, int64_t B, int64_t C,
                    int64_t HW, int groups, float eps, bool silu, cudaStream_t s) {
  int64_t nblocks = B * groups;
  if (nblocks == 0 || HW == 0) return;
  HWAGA_CHECK(nblocks < (int64_t(1) << 31), "group_norm: too many groups");
  group_norm_kernel<<<unsigned(nblocks), kThreads, 0, s>>>(x, gamma, beta, y, C, HW, groups, eps, silu);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hwaga::cuda
