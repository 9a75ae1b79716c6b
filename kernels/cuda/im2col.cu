#include "kernels/cuda/im2col.cuh"

#include "backend/cuda/cuda_check.h"

namespace hwaga::cuda {
namespace {

__global__ void im2col_kernel(const float* x, float* col, int C, int H, int W, int kh, int kw, int pad_h,
                              int pad_w, int stride, int Ho, int Wo) {
  int64_t P = int64_t(Ho) * Wo;
  int64_t n = int64_t(C) * kh * kw * P;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t p = i % P;
    int64_t row = i / P;  // (c, ky, kx)
    int kx = int(row % kw);
    int ky = int((row / kw) % kh);
    int c = int(row / (int64_t(kw) * kh));
    int oy = int(p / Wo), ox = int(p % Wo);
    int iy = oy * stride - pad_h + ky, ix = ox * stride - pad_w + kx;
    col[i] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[(int64_t(c) * H + iy) * W + ix] : 0.0f;
  }
}

}  // namespace

void im2col_f32(const float* x, float* col, int C, int H, int W, int kh, int kw, int pad_h, int pad_w,
                int stride, int Ho, int Wo, cudaStream_t s) {
  int64_t n = int64_t(C) * kh * kw * Ho * Wo;
  if (n == 0) return;
  int64_t blocks = (n + 255) / 256;
  if (blocks > 65536 * 16) blocks = 65536 * 16;
  im2col_kernel<<<unsigned(blocks), 256, 0, s>>>(x, col, C, H, W, kh, kw, pad_h, pad_w, stride, Ho, Wo);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hwaga::cuda
