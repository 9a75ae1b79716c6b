#include "kernels/cuda/softmax.cuh"

#include "backend/cuda/cuda_check.h"
#include "kernels/cuda/reduce.cuh"

namespace hwaga::cuda {
namespace {

constexpr int kThreads = 128;

__global__ void softmax_kernel(float* x, int64_t n) {
  __shared__ float red[33];
  float* row = x + int64_t(blockIdx.x) * n;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, row[i]);
  m = block_max(m, red);
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    float e = expf(row[i] - m);
    row[i] = e;
    s += e;
  }
  float inv = 1.0f / block_sum(s, red);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) row[i] *= inv;
}

}  // namespace

void softmax_rows_f32(float* x, int64_t rows, int64_t n, cudaStream_t s) {
  if (rows == 0 || n == 0) return;
  HWAGA_CHECK(rows < (int64_t(1) << 31), "softmax: too many rows");
  softmax_kernel<<<unsigned(rows), kThreads, 0, s>>>(x, n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hwaga::cuda
