// Training an RQ-VAE (stage 1 of rq-vae-transformer) on the CPU or, after to_device, with its
// encoder and decoder on a GPU (architecture.md §1, §6.1):
//
//   images [B,3,R,R] -> encoder -> quant_conv -> z [B,h,w,E] (NHWC)
//   -> residual quantization over the shared EMA codebook, depth D -> S_D (sum of the D codes)
//   -> straight-through z_q = z + (S_D - z).detach() -> post_quant_conv -> decoder -> x_rec
//   loss = mean((x_rec - x)^2) + 0.25 * mean_d mean((z - S_d.detach())^2)
//
// The codebook is not trained by gradients: per depth d, with that depth's residuals r_d
// (the released VQEmbedding.forward, whose order matters because the codebook is shared):
//   1. c = argmin_k ||r_d - e_k||^2 over rows [0,K) of the current table
//   2. cluster_size_ema = 0.99 cluster_size_ema + 0.01 n_k;  embed_ema = 0.99 embed_ema + 0.01 s_k
//      (n_k how many r_d chose k, s_k their sum)
//   3. restarts: codes with cluster_size_ema < 1 take embed_ema = a random residual of this
//      batch (a random permutation of r_d, tiled with uniform [0, 0.01/sqrt(E)) noise when there
//      are fewer than K of them) and cluster_size_ema = 1
//   4. q_d = table[c] with the table as it was BEFORE this depth's update
//   5. table[0:K) = embed_ema / (n (cluster_size_ema + 1e-5) / (n + K 1e-5)), n = sum cluster_size_ema
//   r_{d+1} = r_d - q_d;  S_d = q_0 + ... + q_d
// so depth d+1 already searches the table updated by depth d. Restart draws come from a stream
// seeded by (the step's seed, d): a run is deterministic, and resuming needs no RNG state.
//
// Params (train/param.h) carry the released names: "stage1.encoder.*", "stage1.quant_conv.*",
// "stage1.post_quant_conv.*", "stage1.decoder.*", and as buffers
// "stage1.quantizer.codebooks.0.weight" [K+1,E] (row K = zero padding row),
// "stage1.quantizer.codebooks.0.cluster_size_ema" [K], "stage1.quantizer.codebooks.0.embed_ema" [K,E].
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor_map.h"
#include "nn/stage1_config.h"
#include "train/data_parallel.h"
#include "train/param.h"
#include "train/stage1_terms.h"
#include "train/taming_train.h"

namespace hwaga::train {

struct RqvaeTrainOptions {
  float commitment_weight = 0.25f;  // latent_loss_weight (beta)
  float decay = 0.99f;              // EMA decay
  float eps = 1e-5f;                // Laplace smoothing of the cluster sizes
  bool restart_unused = true;       // restart codes whose cluster_size_ema < 1
  bool ema = true;                  // false: the codebook stays fixed (evaluation, gradient checks)
  // false (gradient checks only): the decoder reads z itself instead of the quantized sum, which
  // makes the loss differentiable end to end so that finite differences can check every gradient.
  bool straight_through = true;
};

struct RqvaeStepStats {
  double loss = 0, recon = 0, commitment = 0;
  int64_t codes_used = 0;  // distinct codes chosen in this batch, over all depths
  double perplexity = 0;   // exp(entropy) of the batch's code histogram (all depths)
  int64_t restarted = 0;   // codes restarted this step, summed over depths
  Stage1TermStats terms;   // LPIPS and the GAN's generator half (when given)
};

class RqvaeTrainer {
 public:
  // Builds the params for `cfg` (which must be an rq-vae) and initialises them like PyTorch's
  // defaults, deterministic in `seed`: convs as in init_taming_params, GroupNorm 1/0, the
  // codebook N(0,1) with a zero padding row (nn.Embedding with padding_idx), embed_ema a copy of
  // rows [0,K), cluster_size_ema 0.
  RqvaeTrainer(const Stage1Config& cfg, uint64_t seed, RqvaeTrainOptions opt = {});

  const Stage1Config& config() const { return cfg_; }
  RqvaeTrainOptions& options() { return opt_; }
  ParamSet& params() { return ps_; }
  const ParamSet& params() const { return ps_; }

  // One forward and backward pass: gradients are ADDED to the params (zero_grad first), the EMA
  // codebook is updated (options().ema). images: host f32 [B,in_channels,R,R], about [-1,1].
  // step_seed seeds the restart draws. `terms` adds LPIPS and the GAN's generator term
  // (train/stage1_terms.h); the GAN's discriminator half runs after the optimizer step, on
  // last_recon().
  RqvaeStepStats train_step(const Tensor& images, uint64_t step_seed, const Stage1Terms* terms = nullptr);
  // The reconstruction of the last train_step [B,out_ch,R,R], on the trainer's device.
  const Tensor& last_recon() const { return last_recon_; }

  // Runs the encoder and decoder on the device of `ops` (a GPU: make_cuda_train_ops) from now on;
  // call before the optimizer exists (AdamW follows the params). The quantizer and its EMA
  // codebook stay on the host: each step moves z [N,E] down and S_D and the commitment gradient
  // up. Pictures may be passed from the host. The LPIPS and GAN terms stay CPU-only.
  void to_device(TrainOps& ops);

  // Reconstruction with no update and no saved activations: host [B,out_ch,R,R] (not clamped);
  // codes (host int32 [B,h,w,D]) when asked.
  Tensor reconstruct(const Tensor& images, Tensor* codes = nullptr);

  // The stage-1 tensors of a hwaga model file (what `hwaga convert rq-vae` writes): every
  // "stage1.*" param but the EMA buffers. Views of the params (no copy).
  TensorMap model_tensors() const;
  // Loads weights and codebook from a model file's tensors (fine-tuning): the EMA buffers start
  // as embed_ema = codebook rows [0,K), cluster_size_ema = 1 (so no code restarts at once).
  void load_model_tensors(const TensorMap& m, const std::string& source);

  // Of the last train_step (tests, --dump-step): codes int32 [B,h,w,D], and per depth the
  // restart candidates [K,E] (empty without restarts).
  const Tensor& last_codes() const { return last_codes_; }
  const std::vector<Tensor>& last_restart_vectors() const { return last_restart_; }

  // Data parallel (train/data_parallel.h): the EMA statistics n_k and s_k of each depth are
  // summed over the ranks, and the restart candidates are drawn by rank 0 from every rank's
  // residuals (the global batch's, in rank order, as one process with the whole batch draws
  // them) and sent to all, so the codebook stays the same on every rank. The code histogram
  // behind codes_used/perplexity is the global batch's too. nullptr: this process alone.
  void set_data_parallel(DataParallel* dp) { dp_ = dp; }

 private:
  void quantize_train(const float* z, int64_t N, uint64_t step_seed, std::vector<float>& zq, std::vector<float>& dz,
                      RqvaeStepStats& st);

  Stage1Config cfg_;
  RqvaeTrainOptions opt_;
  ParamSet ps_;
  TrainEncoder encoder_;
  TrainConv2d quant_conv_;       // 1x1 Z -> E
  TrainConv2d post_quant_conv_;  // 1x1 E -> Z
  TrainDecoder decoder_;
  Param* codebook_ = nullptr;      // [K+1,E]
  Param* cluster_size_ = nullptr;  // [K]
  Param* embed_ema_ = nullptr;     // [K,E]
  Tensor last_codes_, last_recon_;
  std::vector<Tensor> last_restart_;
  DataParallel* dp_ = nullptr;
};

// "stage1.quantizer.codebooks.0.<what>"
std::string rqvae_codebook_key(const char* what);

}  // namespace hwaga::train
