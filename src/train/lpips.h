// LPIPS, the perceptual term of stage-1 training (architecture.md §6.1), on the CPU, f32:
// VGG16's convolutional features of both pictures at relu1_2, relu2_2, relu3_3, relu4_3 and
// relu5_3, each normalised over its channels (x / (||x|| + 1e-10)); the squared difference
// weighted per channel by a learned 1x1 head (no bias), averaged over the positions and summed
// over the five layers; the mean over the batch is the loss. Pictures in [-1,1] are first
// scaled as the reference does: (x - shift) / scale, shift (-.030, -.088, -.188),
// scale (.458, .448, .450).
//
// The weights are the user's (hwaga downloads nothing): VGG16's features — torchvision's
// vgg16 state dict ("features.<i>.weight|bias", i in 0,2,5,7,10,12,14,17,19,21,24,26,28) or a
// saved LPIPS module ("net.slice<k>.<i>.weight|bias") — and the five heads [1,C_k,1,1]
// ("lin<k>.model.1.weight" as in taming's vgg.pth, or "lin<k>.model.0.weight"), from one or more
// PyTorch (.pth/.pt/.ckpt) or safetensors files. Only the picture being trained gets gradients;
// the net is frozen.
#pragma once
#include <array>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "core/tensor_map.h"

namespace hwaga::train {

class Lpips {
 public:
  // Reads the weights from `files` (the first file that has a tensor wins); errors name the
  // files and the missing or misshapen tensor.
  static Lpips load(const std::vector<std::string>& files);
  // From tensors already read (tests); `source` names them in errors.
  Lpips(const TensorMap& weights, const std::string& source);

  // LPIPS(x, target) averaged over the batch; x, target [B,3,H,W] (H, W >= 16: four poolings).
  // When dx is given, adds scale * dLPIPS/dx to it (x is the picture being trained).
  double forward_backward(const Tensor& x, const Tensor& target, Tensor* dx, float scale) const;

 private:
  struct Conv {
    Tensor w, b;  // [Cout,Cin,3,3], [Cout]
  };
  std::vector<Conv> convs_;            // the 13 convs in order
  std::array<Tensor, 5> heads_;        // [C_k] per layer
};

}  // namespace hwaga::train
