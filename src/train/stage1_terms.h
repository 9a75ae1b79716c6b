// The optional terms of stage-1 training that act on the reconstruction (architecture.md §6.1):
// LPIPS (train/lpips.h) and the patch-GAN's generator term (train/patch_gan.h). RqvaeTrainer and
// VqganTrainer apply them between their reconstruction loss and the decoder's backward, in the
// reference's order: LPIPS joins the reconstruction loss (L_rec = recon + w·LPIPS), then the GAN
// term with VQGAN's adaptive weight measured against that L_rec.
#pragma once
#include "core/tensor.h"
#include "train/lpips.h"
#include "train/patch_gan.h"
#include "train/taming_train.h"

namespace hwaga::train {

struct Stage1Terms {
  const Lpips* lpips = nullptr;  // the perceptual term (nullptr: none)
  float lpips_weight = 1.0f;     // perceptual_weight
  AdversarialLoss* gan = nullptr;  // the generator half of the GAN (nullptr: none this step)
};

struct Stage1TermStats {
  double lpips = 0;  // LPIPS(x, x_rec), batch mean (0 without the term)
  GanStepStats gan;
};

// x the pictures, xr the reconstruction, drec = dL/dxr of the reconstruction loss on entry; the
// terms' gradients are added to it. `last` is the decoder's last conv with its input saved.
void apply_stage1_terms(const Stage1Terms& t, const Tensor& x, const Tensor& xr, Tensor& drec, const TrainConv2d& last,
                        Stage1TermStats& st);

}  // namespace hwaga::train
