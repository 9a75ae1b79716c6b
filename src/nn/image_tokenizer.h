// The common face of the two image tokenizers (rq/rqvae.h, vqgan/vqgan.h): pictures in [-1,1]
// to integer code stacks and back. Built from the "stage1" config of a model file.
#pragma once
#include <memory>
#include <string>

#include "backend/backend.h"
#include "io/safetensors.h"

namespace hwaga {

class ImageTokenizer {
 public:
  virtual ~ImageTokenizer() = default;
  virtual std::string kind() const = 0;     // "rq-vae" or "vqgan"
  virtual Shape code_shape() const = 0;     // {8,8,4} for RQ-VAE, {16,16,1} for VQGAN
  virtual int codebook_size() const = 0;    // K
  virtual int resolution() const = 0;       // 256 for the released models
  // images: host f32 [B,3,R,R] in [-1,1] -> host int32 [B,h,w,D]
  virtual Tensor encode(const Tensor& images) = 0;
  // codes: host int32 [B,h,w,D], each in [0,K) (checked) -> host f32 [B,3,R,R], not clamped
  virtual Tensor decode(const Tensor& codes) = 0;
  // Human-readable architecture summary and parameter count for `hwaga info`.
  virtual std::string describe() const = 0;
  virtual int64_t num_parameters() const = 0;
};

// Builds the tokenizer that file.metadata["config"]["stage1"] describes, checks every
// "stage1.*" tensor against the config, and uploads the weights to `backend`.
std::unique_ptr<ImageTokenizer> load_image_tokenizer(const SafetensorsFile& file, Backend& backend);

}  // namespace hwaga
