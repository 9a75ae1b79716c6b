// im2col for the convolution fallback that runs when cuDNN is unavailable:
// x [C,H,W] (one image) -> col [C*kh*kw, Ho*Wo], zero outside the (symmetrically padded) input.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace hwaga::cuda {

void im2col_f32(const float* x, float* col, int C, int H, int W, int kh, int kw, int pad_h, int pad_w,
                int stride, int Ho, int Wo, cudaStream_t s);

}  // namespace hwaga::cuda
