// Backend::conv2d on the GPU. With cuDNN: f32 NCHW with FMA math (no TF32, so results match the
// CPU to f32 rounding), or, for bf16 weights, bf16 NHWC tensors with f32 accumulation on tensor
// cores. Without cuDNN (not linked, or its handle failed to open): im2col + cuBLAS SGEMM.
// Algorithms are chosen once per shape and cached.
#pragma once
#include <map>
#include <memory>
#include <tuple>
#include <unordered_map>

#include "backend/backend.h"
#include "backend/cuda/cuda_context.h"

namespace hwaga::cuda {

class Conv2d {
 public:
  explicit Conv2d(Context& ctx, bool find) : ctx_(ctx), find_(find) {}
  ~Conv2d();
  // x f32 [B,Cin,H,W], w f32|bf16 [Cout,Cin,kh,kw], b f32 [Cout] or undefined -> f32 [B,Cout,Ho,Wo]
  Tensor forward(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p);
  double flops = 0;   // 2*MACs of every call, for the benchmark's TFLOP/s
  int fallbacks = 0;  // times cuDNN failed and im2col took over (then for good)

 private:
  // (dtype, B, Cin, H, W, Cout, kh, kw, pad_h, pad_w, stride) of a padded-symmetric conv
  using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int>;
  struct Choice {
    int algo = -1;
    int math = 0;
    size_t workspace = 0;
  };
  void run_cudnn(const Key& key, const void* x, const void* w, void* y);
  void run_im2col(const float* x, const Tensor& w, float* y, int64_t B, int64_t Cin, int64_t H, int64_t W,
                  int64_t Cout, int64_t kh, int64_t kw, int ph, int pw, int stride, int64_t Ho, int64_t Wo);
  const void* weight_krsc(const Tensor& w);  // bf16 KCRS -> KRSC, cached per weight

  Context& ctx_;
  bool find_;
  bool cudnn_broken_ = false;
  std::map<Key, Choice> algos_;
  struct Krsc {
    Tensor src, krsc;
  };
  std::unordered_map<const void*, Krsc> krsc_;
};

}  // namespace hwaga::cuda
