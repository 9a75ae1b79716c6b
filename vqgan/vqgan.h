// minDALL-E's VQGAN (stage 1): a 256x256 picture -> 16x16 codes by plain vector quantization,
// and back (architecture.md §4.1). Codes are presented as [B,16,16,1] (depth 1) so both
// tokenizers share one code layout.
//
// Shape legend: B batch, R resolution, h/w latent size (16), E embed dim (256), K codebook size.
#pragma once

#include "nn/image_tokenizer.h"
#include "nn/stage1_config.h"
#include "nn/taming.h"

namespace hwaga {

class VQGAN final : public ImageTokenizer {
 public:
  VQGAN(const Stage1Config& cfg, const TensorMap& tensors, const std::string& source, Backend& backend);

  std::string kind() const override { return "vqgan"; }
  Shape code_shape() const override;
  int codebook_size() const override { return cfg_.n_embed; }
  int resolution() const override { return cfg_.net.resolution; }
  Tensor encode(const Tensor& images) override;  // host f32 [B,3,R,R] -> host int32 [B,h,w,1]
  Tensor decode(const Tensor& codes) override;   // host int32 [B,h,w,1] -> host f32 [B,3,R,R]
  std::string describe() const override;
  int64_t num_parameters() const override { return n_params_; }

  Tensor encode_latent(const Tensor& images);  // host f32 [B,h,w,E]
  const Tensor& codebook() const { return codebook_; }  // [K,E] on the backend

 private:
  Stage1Config cfg_;
  Backend& be_;
  TamingAutoencoder net_;
  Tensor codebook_;  // quantize.embedding.weight [K,E]
  int64_t n_params_ = 0;
};

}  // namespace hwaga
