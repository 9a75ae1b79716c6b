// RQ-VAE (rq-vae-transformer stage 1): a 256x256 picture -> 8x8x4 codes by residual
// quantization over one shared codebook, and back (architecture.md §1).
//
// Shape legend: B batch, R resolution, h/w latent size (8), D code depth (4), E embed dim (256),
// K codebook size (16384 or 2048).
#pragma once
#include <memory>

#include "nn/image_tokenizer.h"
#include "nn/stage1_config.h"
#include "nn/taming.h"

namespace hwaga {

class RQVAE final : public ImageTokenizer {
 public:
  // Tensors are looked up as "stage1.<released key>" in `tensors` (already checked against the
  // config by the caller or not: a missing tensor still throws naming `source`).
  RQVAE(const Stage1Config& cfg, const TensorMap& tensors, const std::string& source, Backend& backend);

  std::string kind() const override { return "rq-vae"; }
  Shape code_shape() const override;
  int codebook_size() const override { return cfg_.n_embed; }
  int resolution() const override { return cfg_.net.resolution; }
  Tensor encode(const Tensor& images) override;  // host f32 [B,3,R,R] -> host int32 [B,h,w,D]
  Tensor decode(const Tensor& codes) override;   // host int32 [B,h,w,D] -> host f32 [B,3,R,R]
  std::string describe() const override;
  int64_t num_parameters() const override { return n_params_; }

  // Debugging / tests: z_e before quantization, host f32 [B,h,w,E].
  Tensor encode_latent(const Tensor& images);
  // The codebook rows [0,K) on the backend, [K,E] (the stage-2 RQ-Transformer embeds codes with it).
  const Tensor& codebook() const { return codebook_; }

 private:
  Stage1Config cfg_;
  Backend& be_;
  TamingAutoencoder net_;
  Tensor codebook_;  // [K,E]: rows [0,K) of quantizer.codebooks.0.weight [K+1,E]
  int64_t n_params_ = 0;
};

}  // namespace hwaga
