// Training minDALL-E's VQGAN (taming-transformers VQModel, architecture.md §4.1) on the CPU:
//
//   images [B,3,R,R] -> encoder -> quant_conv -> z [B,h,w,E] (NHWC)
//   -> c = argmin_k ||z - e_k||^2 over the K codebook rows (quantize.embedding.weight [K,E])
//   -> straight-through z_q = z + (e_c - z).detach() -> post_quant_conv -> decoder -> x_rec
//   loss = recon(x_rec, x) + w_commit * mean((z - e_c.detach())^2) + w_codebook * mean((z.detach() - e_c)^2)
//
// The codebook is a trainable weight: the gradient of the codebook term (no EMA, no restarts)
// moves each chosen row towards the mean of the vectors that chose it; Adam updates it like every
// other weight. The straight-through estimator gives the recon gradient to z, none to the codebook.
//
// Which term carries beta = 0.25: taming's VectorQuantizer (and VectorQuantizer2 with its default
// legacy=True, which the released vqgan_imagenet_f16_16384 and so minDALL-E's VQGAN were trained
// with) computes
//   loss = mean((z_q.detach() - z)^2) + beta * mean((z_q - z.detach())^2)
// i.e. the encoder's commitment term has weight 1 and the codebook term weight beta, the reverse
// of the VQ-VAE paper (taming calls it a bug kept for backwards compatibility). legacy = true (the
// default) reproduces that: w_commit = 1, w_codebook = beta; legacy = false: w_commit = beta,
// w_codebook = 1.
//
// recon: taming's VQLPIPSWithDiscriminator uses the L1 distance mean(|x - x_rec|) (plus LPIPS and
// the GAN term, which hwaga leaves out); l1 = false uses MSE instead (the RQ-VAE trainer's).
//
// Params (train/param.h) carry the released names in state_dict order: "stage1.encoder.*",
// "stage1.quant_conv.*", "stage1.post_quant_conv.*", "stage1.decoder.*" and
// "stage1.quantize.embedding.weight" [K,E] (ParamKind::no_decay, like an nn.Embedding), exactly
// stage1_tensor_specs of a "vqgan" config.
#pragma once
#include <cstdint>
#include <string>

#include "core/tensor_map.h"
#include "nn/stage1_config.h"
#include "train/data_parallel.h"
#include "train/param.h"
#include "train/stage1_terms.h"
#include "train/taming_train.h"

namespace hwaga::train {

struct VqganTrainOptions {
  float beta = 0.25f;  // taming's beta
  bool legacy = true;  // beta on the codebook term (taming's default); false: on the commitment term
  bool l1 = true;      // recon = mean |x_rec - x| (taming); false: mean (x_rec - x)^2
  // false (gradient checks only): the decoder reads z itself instead of e_c, so that every
  // gradient is the derivative of a loss that finite differences can evaluate.
  bool straight_through = true;

  float commit_weight() const { return legacy ? 1.0f : beta; }
  float codebook_weight() const { return legacy ? beta : 1.0f; }
};

struct VqganStepStats {
  double loss = 0;        // recon + (w_commit + w_codebook) * commitment
  double recon = 0;       // L1 or MSE (options().l1)
  double commitment = 0;  // mean((z - e_c)^2): the value of both quantizer terms before their weights
  int64_t codes_used = 0;  // distinct codes chosen in this batch
  double perplexity = 0;   // exp(entropy) of the batch's code histogram
  Stage1TermStats terms;   // LPIPS and the GAN's generator half (when given)
};

class VqganTrainer {
 public:
  // Builds the params for `cfg` (which must be a vqgan) and initialises them deterministically in
  // `seed`: convs and GroupNorms as init_taming_params (PyTorch's defaults), the codebook
  // U(-1/K, 1/K) as taming's VectorQuantizer does.
  VqganTrainer(const Stage1Config& cfg, uint64_t seed, VqganTrainOptions opt = {});

  const Stage1Config& config() const { return cfg_; }
  VqganTrainOptions& options() { return opt_; }
  const VqganTrainOptions& options() const { return opt_; }
  ParamSet& params() { return ps_; }
  const ParamSet& params() const { return ps_; }

  // One forward and backward pass: gradients are ADDED to the params (zero_grad first); nothing
  // else changes. images: host f32 [B,in_channels,R,R], about [-1,1]. Deterministic. `terms`
  // adds LPIPS and the GAN's generator term (train/stage1_terms.h); the GAN's discriminator half
  // runs after the optimizer step, on last_recon().
  VqganStepStats train_step(const Tensor& images, const Stage1Terms* terms = nullptr);
  // The reconstruction of the last train_step [B,out_ch,R,R].
  const Tensor& last_recon() const { return last_recon_; }

  // Reconstruction with no gradients and no saved activations: [B,out_ch,R,R] (not clamped);
  // codes (int32 [B,h,w,1]) when asked.
  Tensor reconstruct(const Tensor& images, Tensor* codes = nullptr);

  // The stage-1 tensors of a hwaga model file of type vqgan (every param; views, no copy).
  TensorMap model_tensors() const;
  // Loads every param from a model file's tensors (fine-tuning); errors name `source`.
  void load_model_tensors(const TensorMap& m, const std::string& source);

  // Of the last train_step: codes int32 [B,h,w,1].
  const Tensor& last_codes() const { return last_codes_; }
  // Data parallel: only the code histogram behind codes_used/perplexity is shared (the codebook
  // learns by its gradient, which the training loop averages). nullptr: this process alone.
  void set_data_parallel(DataParallel* dp) { dp_ = dp; }

 private:
  Stage1Config cfg_;
  VqganTrainOptions opt_;
  ParamSet ps_;
  TrainEncoder encoder_;
  TrainConv2d quant_conv_;       // 1x1 Z -> E
  TrainConv2d post_quant_conv_;  // 1x1 E -> Z
  TrainDecoder decoder_;
  Param* codebook_ = nullptr;    // [K,E]
  Tensor last_codes_, last_recon_;
  DataParallel* dp_ = nullptr;
};

// "stage1.quantize.embedding.weight"
std::string vqgan_codebook_key();

}  // namespace hwaga::train
