#include "kernels/cuda/quantize.cuh"

#include "backend/cuda/cuda_check.h"
#include "kernels/cuda/reduce.cuh"

namespace hwaga::cuda {
namespace {

__global__ void sqnorm_kernel(const float* x, float* out, int64_t E) {
  __shared__ float red[33];
  const float* row = x + int64_t(blockIdx.x) * E;
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < E; i += blockDim.x) s += row[i] * row[i];
  s = block_sum(s, red);
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// (value, index) pair order for argmin: smaller value first, then smaller index; index < 0 means
// "nothing yet" and loses to everything.
__device__ __forceinline__ bool better(float v2, int i2, float v1, int i1) {
  if (i2 < 0) return false;
  if (i1 < 0) return true;
  return v2 < v1 || (v2 == v1 && i2 < i1);
}

constexpr int kArgminThreads = 256;

__global__ void argmin_update_kernel(const float* G, float* rnorm, const float* cnorm, float* r,
                                     const float* codebook, int32_t* codes, int64_t n0, int64_t K,
                                     int64_t E, int D, int d) {
  __shared__ float sv[32];
  __shared__ int si[32];
  __shared__ float red[33];
  __shared__ int chosen;
  int64_t n = n0 + blockIdx.x;
  const float* g = G + int64_t(blockIdx.x) * K;
  float rn = rnorm[n];
  float best = INFINITY;
  int bi = -1;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    float dist = (rn + cnorm[k]) - 2.0f * g[k];
    if (better(dist, int(k), best, bi)) {
      best = dist;
      bi = int(k);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    float v2 = __shfl_xor_sync(0xffffffffu, best, o);
    int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
    if (better(v2, i2, best, bi)) {
      best = v2;
      bi = i2;
    }
  }
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  if (lane == 0) {
    sv[warp] = best;
    si[warp] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float bv = sv[0];
    int b = si[0];
    for (int w = 1; w < nwarps; ++w)
      if (better(sv[w], si[w], bv, b)) {
        bv = sv[w];
        b = si[w];
      }
    if (b < 0) b = 0;  // every distance NaN: fall back to code 0 rather than index out of range
    chosen = b;
    codes[n * D + d] = b;
  }
  __syncthreads();
  const float* e = codebook + int64_t(chosen) * E;
  float* rr = r + n * E;
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < E; i += blockDim.x) {
    float v = rr[i] - e[i];
    rr[i] = v;
    s += v * v;
  }
  s = block_sum(s, red);
  if (threadIdx.x == 0) rnorm[n] = s;
}

__global__ void embed_sum_kernel(const int32_t* codes, const float* codebook, float* out, int* bad, int D,
                                 int64_t K, int64_t E) {
  int64_t n = blockIdx.x;
  for (int64_t i = threadIdx.x; i < E; i += blockDim.x) {
    float s = 0.0f;
    for (int d = 0; d < D; ++d) {
      int32_t c = codes[n * D + d];
      if (c < 0 || c >= K) {
        *bad = 1;
        continue;
      }
      s += codebook[int64_t(c) * E + i];
    }
    out[n * E + i] = s;
  }
}

}  // namespace

void row_sqnorm_f32(const float* x, float* out, int64_t N, int64_t E, cudaStream_t s) {
  if (N == 0) return;
  HWAGA_CHECK(N < (int64_t(1) << 31), "row_sqnorm: too many rows");
  sqnorm_kernel<<<unsigned(N), 128, 0, s>>>(x, out, E);
  CUDA_CHECK_LAUNCH();
}

void argmin_update_f32(const float* G, float* rnorm, const float* cnorm, float* r, const float* codebook,
                       int32_t* codes, int64_t n0, int64_t nc, int64_t K, int64_t E, int D, int d,
                       cudaStream_t s) {
  if (nc == 0) return;
  HWAGA_CHECK(K < (int64_t(1) << 31) && nc < (int64_t(1) << 31), "argmin: sizes too large");
  argmin_update_kernel<<<unsigned(nc), kArgminThreads, 0, s>>>(G, rnorm, cnorm, r, codebook, codes, n0, K, E,
                                                               D, d);
  CUDA_CHECK_LAUNCH();
}

void embed_sum_f32(const int32_t* codes, const float* codebook, float* out, int* bad, int64_t N, int D,
                   int64_t K, int64_t E, cudaStream_t s) {
  if (N == 0) return;
  HWAGA_CHECK(N < (int64_t(1) << 31), "embed_sum: too many rows");
  embed_sum_kernel<<<unsigned(N), 128, 0, s>>>(codes, codebook, out, bad, D, K, E);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hwaga::cuda
