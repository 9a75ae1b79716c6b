// Placeholder reference convolution (direct loops); the tuned path replaces it.
#include "kernels/cpu/conv2d.h"

#include "core/threads.h"

namespace hwaga::cpu {

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  const int64_t Ho = s.Ho(), Wo = s.Wo();
  parallel_for(s.B * s.Cout, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      int64_t b = i / s.Cout, co = i % s.Cout;
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          float acc = bias ? bias[co] : 0.0f;
          for (int64_t ci = 0; ci < s.Cin; ++ci)
            for (int64_t r = 0; r < s.kh; ++r) {
              int64_t ih = oh * s.stride - s.pad_top + r;
              if (ih < 0 || ih >= s.H) continue;
              for (int64_t c = 0; c < s.kw; ++c) {
                int64_t iw = ow * s.stride - s.pad_left + c;
                if (iw < 0 || iw >= s.W) continue;
                acc += x[((b * s.Cin + ci) * s.H + ih) * s.W + iw] * w[((co * s.Cin + ci) * s.kh + r) * s.kw + c];
              }
            }
          y[((b * s.Cout + co) * Ho + oh) * Wo + ow] = acc;
        }
    }
  });
}

}  // namespace hwaga::cpu
