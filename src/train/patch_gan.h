// The adversarial part of stage-1 training (architecture.md §6.1): the patch-GAN discriminator
// of taming-transformers (NLayerDiscriminator) with the hinge loss and VQGAN's adaptive weight,
// as the released RQ-VAE trainer (rqvae/trainers/trainer_rqvae.py) uses them. On the CPU, f32.
//
// Per training step, with x the pictures and xr the reconstruction:
//   generator   loss_gen = -mean D(xr);  g_weight = ||dL_rec/dW|| / (||dL_gen/dW|| + 1e-4),
//               clamped to [0, 1e4], W = decoder.conv_out.weight, L_rec the reconstruction
//               loss (not the commitment); the generator's loss gains g_weight·disc_weight·loss_gen
//   (the generator's optimizer steps)
//   discriminator  loss_disc = 0.5 (mean relu(1 - D(x)) + mean relu(1 + D(xr))) on the same xr,
//               detached; its gradient times disc_weight; Adam (the generator's betas and
//               learning rate schedule) steps the discriminator
// D runs in training mode every time (BatchNorm batch statistics; D(xr) and D(x) are separate
// calls, so each has its own statistics), and each call moves the running statistics
// (momentum 0.1, unbiased variance) as nn.BatchNorm2d does.
//
// The net (in_channels 3, ndf 64, layers 2 in the released configs), all convs 4x4 padding 1:
//   main.0 conv in -> ndf, stride 2, bias;  main.1 LeakyReLU 0.2
//   for n in 1..layers-1: conv -> ndf·min(2^n, 8), stride 2, no bias; BatchNorm; LeakyReLU
//   conv -> ndf·min(2^layers, 8), stride 1, no bias; BatchNorm; LeakyReLU
//   conv -> 1, stride 1, bias                                   (64x64 in -> 14x14 logits)
// Params are named "discriminator.main.<i>.weight|bias" (BatchNorm also running_mean,
// running_var as buffers), the released state_dict names under "discriminator.".
// Init as the reference's weights_init: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02)
// and biases 0; conv biases PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "core/tensor_map.h"
#include "train/data_parallel.h"
#include "train/optim.h"
#include "train/param.h"
#include "train/taming_train.h"

namespace hwaga::train {

struct PatchGanOptions {
  int layers = 2;             // n_layers (conv layers between the first and the last)
  int ndf = 64;               // filters of the first conv
  float disc_weight = 0.75f;  // scales the generator's GAN term and the discriminator's loss
  int64_t start = 0;          // first training step with the GAN (disc_start, here in steps)
};

class PatchDiscriminator {
 public:
  PatchDiscriminator(int in_channels, int ndf, int layers);
  // Logits per side for pictures of side `size` (< 1: too small for `layers`).
  static int64_t logits_size(int64_t size, int layers);
  ParamSet& params() { return ps_; }
  const ParamSet& params() const { return ps_; }
  void init_weights(uint64_t seed);
  // [B,C,H,W] -> logits [B,1,h,w], saving what backward needs; moves the running statistics.
  Tensor forward(const Tensor& x);
  // dlogits -> dx (undefined when !need_dx); parameter gradients are added.
  Tensor backward(const Tensor& dlogits, bool need_dx);

 private:
  struct Layer {
    Param* w = nullptr;
    Param* b = nullptr;  // conv bias (first and last conv)
    Param* bn_w = nullptr;  // BatchNorm (middle convs)
    Param* bn_b = nullptr;
    Param* bn_mean = nullptr;  // running statistics (buffers)
    Param* bn_var = nullptr;
    int cin = 0, cout = 0, stride = 1;
    bool act = false;       // LeakyReLU after (all but the last)
    Tensor x, pre, mean, rstd, out;  // saved: input, conv output (before BatchNorm), statistics, output
  };
  ParamSet ps_;
  std::vector<Layer> layers_;
  int in_channels_ = 0;
};

struct GanStepStats {
  bool active = false;  // the GAN ran this step (step >= start)
  double loss_gen = 0, g_weight = 0, loss_disc = 0, logits_real = 0, logits_fake = 0;
};

// The discriminator, its optimizer and both halves of the step.
class AdversarialLoss {
 public:
  AdversarialLoss(const PatchGanOptions& o, int in_channels, uint64_t seed, AdamWOptions adam);
  const PatchGanOptions& options() const { return opt_; }
  PatchDiscriminator& discriminator() { return d_; }
  AdamW& optimizer() { return adam_; }

  // The generator half: given the reconstruction xr, drec = dL_rec/dxr, and the decoder's last
  // conv `last` (its forward input still saved), adds g_weight·disc_weight·dloss_gen/dxr to drec.
  void generator(const Tensor& xr, Tensor& drec, const TrainConv2d& last, GanStepStats& st);
  // The discriminator half (after the generator's optimizer step): one Adam step of D at `lr`
  // on the hinge loss of D(real) against D(fake). `dump` (optional, --dump-step) receives
  // "disc.grad.*" and "disc.after.*".
  void discriminator_step(const Tensor& real, const Tensor& fake, float lr, GanStepStats& st,
                          TensorMap* dump = nullptr);

  // Checkpoint state: the discriminator's params and buffers by name, its Adam moments
  // ("optim.m.discriminator.*", ...); the optimizer step count travels in the metadata.
  void save(TensorMap& out) const;
  void load(const TensorMap& in, int64_t optimizer_steps, const std::string& source);

  // Data parallel: the discriminator's gradients are averaged over the ranks before its step,
  // and its running statistics are rank 0's after it (as DDP's broadcast_buffers). The
  // generator half's adaptive weight stays each rank's own, as in DDP.
  void set_data_parallel(DataParallel* dp) { dp_ = dp; }

 private:
  PatchGanOptions opt_;
  PatchDiscriminator d_;
  AdamW adam_;
  DataParallel* dp_ = nullptr;
};

}  // namespace hwaga::train
