// What RQ-VAE (rq/) and VQGAN (vqgan/) share around the conv net: input checks, batching, the
// quantize / embed-sum step and the text of `hwaga info`. The two classes differ only in the
// codebook tensor (RQ: K+1 rows with a padding row, VQGAN: K rows) and the code depth.
//
// Shape legend: B batch, R resolution, h/w latent size, D code depth, E embed dim, K codebook size.
#pragma once
#include <string>

#include "backend/backend.h"
#include "nn/stage1_config.h"
#include "nn/taming.h"

namespace hwaga::stage1 {

// Pictures per pass through the conv net; bounds the activation memory (about 160 MiB per
// picture at 256x256 on the CPU) while keeping the batch dimension for the backends.
inline constexpr int64_t kMaxBatch = 4;

// host f32 [B,in_channels,R,R] -> host int32 [B,h,w,D] (or host f32 [B,h,w,E] z_e when latent_only)
Tensor encode(Backend& be, const Stage1Config& cfg, const TamingAutoencoder& net, const Tensor& codebook,
              const Tensor& images, bool latent_only);
// host int32 [B,h,w,D], each in [0,K) -> host f32 [B,out_ch,R,R]
Tensor decode(Backend& be, const Stage1Config& cfg, const TamingAutoencoder& net, const Tensor& codebook,
              const Tensor& codes);

std::string describe_net(const Stage1Config& cfg);  // "  encoder/decoder: ch 128, ..." lines
std::string format_count(int64_t n);                 // 104401024 -> "104.40M (104401024)"

}  // namespace hwaga::stage1
