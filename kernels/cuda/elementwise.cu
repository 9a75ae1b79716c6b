#include "kernels/cuda/elementwise.cuh"

#include <cuda_bf16.h>

#include "backend/cuda/cuda_check.h"

namespace hwaga::cuda {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  return unsigned(b < 65536 * 16 ? (b > 0 ? b : 1) : 65536 * 16);  // grid-stride loops cover the rest
}

__device__ __forceinline__ float load_f(float v) { return v; }
__device__ __forceinline__ float load_f(uint16_t v) {
  return __uint_as_float(uint32_t(v) << 16);
}
__device__ __forceinline__ void store_f(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f(uint16_t* p, float v) {
  __nv_bfloat16 h = __float2bfloat16_rn(v);
  *p = *reinterpret_cast<uint16_t*>(&h);
}

__global__ void add_kernel(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}

__global__ void upsample_kernel(const float* x, float* y, int64_t BC, int H, int W) {
  int64_t n = BC * 4 * H * W;
  int W2 = 2 * W, H2 = 2 * H;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int ox = int(i % W2);
    int64_t t = i / W2;
    int oy = int(t % H2);
    int64_t bc = t / H2;
    y[i] = x[(bc * H + oy / 2) * W + ox / 2];
  }
}

// Tiled transpose of each [R,S] matrix of the batch: 32x32 tiles, 32x8 threads.
template <typename Tin, typename Tout>
__global__ void transpose_kernel(const Tin* x, Tout* y, const float* bias, int64_t R, int64_t S) {
  __shared__ float tile[32][33];
  int64_t b = blockIdx.z;
  const Tin* xb = x + b * R * S;
  Tout* yb = y + b * R * S;
  int64_t s0 = int64_t(blockIdx.x) * 32, r0 = int64_t(blockIdx.y) * 32;
  for (int j = threadIdx.y; j < 32; j += 8) {
    int64_t r = r0 + j, s = s0 + threadIdx.x;
    if (r < R && s < S) tile[j][threadIdx.x] = load_f(xb[r * S + s]);
  }
  __syncthreads();
  for (int j = threadIdx.y; j < 32; j += 8) {
    int64_t s = s0 + j, r = r0 + threadIdx.x;
    if (r < R && s < S) {
      float v = tile[threadIdx.x][j];
      if (bias) v += bias[s];
      store_f(&yb[s * R + r], v);
    }
  }
}

template <typename Tin, typename Tout>
void launch_transpose(const Tin* x, Tout* y, const float* bias, int64_t B, int64_t R, int64_t S,
                      cudaStream_t st) {
  if (B == 0 || R == 0 || S == 0) return;
  HWAGA_CHECK((S + 31) / 32 < (int64_t(1) << 31) && (R + 31) / 32 < 65536,
              "transpose: matrix [", R, ",", S, "] too large for one launch");
  dim3 block(32, 8);
  for (int64_t b0 = 0; b0 < B; b0 += 65535) {
    int64_t nb = B - b0 < 65535 ? B - b0 : 65535;
    dim3 grid(unsigned((S + 31) / 32), unsigned((R + 31) / 32), unsigned(nb));
    transpose_kernel<Tin, Tout><<<grid, block, 0, st>>>(x + b0 * R * S, y + b0 * R * S, bias, R, S);
    CUDA_CHECK_LAUNCH();
  }
}

__global__ void pad_kernel(const float* x, float* y, int64_t BC, int H, int W, int pt, int pl, int Ho,
                           int Wo) {
  int64_t n = BC * Ho * Wo;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int ox = int(i % Wo);
    int64_t t = i / Wo;
    int oy = int(t % Ho);
    int64_t bc = t / Ho;
    int iy = oy - pt, ix = ox - pl;
    y[i] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[(bc * H + iy) * W + ix] : 0.0f;
  }
}

__global__ void bias_nchw_kernel(float* y, const float* bias, int64_t B, int64_t C, int64_t HW) {
  int64_t n = B * C * HW;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += bias[(i / HW) % C];
}

__global__ void bias_rows_kernel(float* y, const float* bias, int64_t N, int64_t C) {
  int64_t n = N * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += bias[i % C];
}

template <typename Tin, typename Tout>
__global__ void convert_kernel(const Tin* x, Tout* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    store_f(&y[i], load_f(x[i]));
}

__global__ void transpose_u16_kernel(const uint16_t* x, uint16_t* y, int64_t R, int64_t S) {
  __shared__ uint16_t tile[32][34];
  int64_t b = blockIdx.z;
  const uint16_t* xb = x + b * R * S;
  uint16_t* yb = y + b * R * S;
  int64_t s0 = int64_t(blockIdx.x) * 32, r0 = int64_t(blockIdx.y) * 32;
  for (int j = threadIdx.y; j < 32; j += 8) {
    int64_t r = r0 + j, s = s0 + threadIdx.x;
    if (r < R && s < S) tile[j][threadIdx.x] = xb[r * S + s];
  }
  __syncthreads();
  for (int j = threadIdx.y; j < 32; j += 8) {
    int64_t s = s0 + j, r = r0 + threadIdx.x;
    if (r < R && s < S) yb[s * R + r] = tile[threadIdx.x][j];
  }
}

}  // namespace

void add_f32(const float* a, const float* b, float* out, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  add_kernel<<<blocks_for(n), kThreads, 0, s>>>(a, b, out, n);
  CUDA_CHECK_LAUNCH();
}

void upsample_nearest2x_f32(const float* x, float* y, int64_t BC, int H, int W, cudaStream_t s) {
  int64_t n = BC * 4 * H * W;
  if (n == 0) return;
  upsample_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, y, BC, H, W);
  CUDA_CHECK_LAUNCH();
}

void transpose_f32(const float* x, float* y, int64_t B, int64_t R, int64_t S, cudaStream_t s) {
  launch_transpose<float, float>(x, y, nullptr, B, R, S, s);
}

void transpose_f32_to_bf16(const float* x, uint16_t* y, int64_t B, int64_t R, int64_t S, cudaStream_t s) {
  launch_transpose<float, uint16_t>(x, y, nullptr, B, R, S, s);
}

void transpose_bf16_to_f32_bias(const uint16_t* x, float* y, const float* bias, int64_t B, int64_t R,
                                int64_t S, cudaStream_t s) {
  launch_transpose<uint16_t, float>(x, y, bias, B, R, S, s);
}

void transpose_bf16(const uint16_t* x, uint16_t* y, int64_t B, int64_t R, int64_t S, cudaStream_t s) {
  if (B == 0 || R == 0 || S == 0) return;
  HWAGA_CHECK(B < 65536 && (R + 31) / 32 < 65536, "transpose_bf16: shape too large");
  dim3 grid(unsigned((S + 31) / 32), unsigned((R + 31) / 32), unsigned(B));
  transpose_u16_kernel<<<grid, dim3(32, 8), 0, s>>>(x, y, R, S);
  CUDA_CHECK_LAUNCH();
}

void pad2d_f32(const float* x, float* y, int64_t BC, int H, int W, int pt, int pb, int pl, int pr,
               cudaStream_t s) {
  int Ho = H + pt + pb, Wo = W + pl + pr;
  int64_t n = BC * Ho * Wo;
  if (n == 0) return;
  pad_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, y, BC, H, W, pt, pl, Ho, Wo);
  CUDA_CHECK_LAUNCH();
}

void add_bias_nchw_f32(float* y, const float* bias, int64_t B, int64_t C, int64_t HW, cudaStream_t s) {
  int64_t n = B * C * HW;
  if (n == 0) return;
  bias_nchw_kernel<<<blocks_for(n), kThreads, 0, s>>>(y, bias, B, C, HW);
  CUDA_CHECK_LAUNCH();
}

void add_bias_rows_f32(float* y, const float* bias, int64_t N, int64_t C, cudaStream_t s) {
  int64_t n = N * C;
  if (n == 0) return;
  bias_rows_kernel<<<blocks_for(n), kThreads, 0, s>>>(y, bias, N, C);
  CUDA_CHECK_LAUNCH();
}

void f32_to_bf16(const float* x, uint16_t* y, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  convert_kernel<float, uint16_t><<<blocks_for(n), kThreads, 0, s>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}

void bf16_to_f32(const uint16_t* x, float* y, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  convert_kernel<uint16_t, float><<<blocks_for(n), kThreads, 0, s>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hwaga::cuda
