// 2-D convolution on the CPU, NCHW f32:
//   x [B,Cin,H,W], w [Cout,Cin,kh,kw], bias [Cout] or nullptr -> y [B,Cout,Ho,Wo]
//   Ho = (H + pad_top + pad_bottom - kh) / stride + 1, likewise Wo.
#pragma once
#include <cstdint>

namespace hwaga::cpu {

struct Conv2dShape {
  int64_t B, Cin, H, W;     // input
  int64_t Cout, kh, kw;     // weights
  int stride;
  int pad_top, pad_left, pad_bottom, pad_right;
  int64_t Ho() const { return (H + pad_top + pad_bottom - kh) / stride + 1; }
  int64_t Wo() const { return (W + pad_left + pad_right - kw) / stride + 1; }
};

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y);

}  // namespace hwaga::cpu
