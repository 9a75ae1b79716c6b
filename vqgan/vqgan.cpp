// minDALL-E VQGAN forward passes (see vqgan.h; architecture.md §4.1).
//   encode: images [B,3,R,R] -> encoder -> quant_conv -> NHWC z_e [B,h,w,E]
//           -> nearest codebook row (plain VQ = residual quantization of depth 1) -> codes [B,h,w,1]
//   decode: codes [B,h,w,1] -> codebook lookup [B,h,w,E] -> NCHW -> post_quant_conv -> decoder
#include "vqgan/vqgan.h"

#include <sstream>

#include "nn/stage1_codec.h"

namespace hwaga {

VQGAN::VQGAN(const Stage1Config& cfg, const TensorMap& tensors, const std::string& source, Backend& backend)
    : cfg_(cfg), be_(backend) {
  HWAGA_CHECK(cfg.type == "vqgan", source, ": VQGAN built from a '", cfg.type, "' config");
  WeightLoader w(tensors, "stage1.", source, backend);
  net_.load(w, cfg.net);
  codebook_ = w.get(stage1_codebook_name(cfg));  // quantize.embedding.weight [K,E], no padding row
  codebook_.expect(Shape{cfg.n_embed, cfg.embed_dim}, source + ": tensor 'stage1." + stage1_codebook_name(cfg) + "'");
  n_params_ = w.num_parameters();
}

Shape VQGAN::code_shape() const { return {cfg_.code_shape[0], cfg_.code_shape[1], 1}; }

Tensor VQGAN::encode_latent(const Tensor& images) { return stage1::encode(be_, cfg_, net_, codebook_, images, true); }
Tensor VQGAN::encode(const Tensor& images) { return stage1::encode(be_, cfg_, net_, codebook_, images, false); }
Tensor VQGAN::decode(const Tensor& codes) { return stage1::decode(be_, cfg_, net_, codebook_, codes); }

std::string VQGAN::describe() const {
  std::ostringstream os;
  os << "VQGAN: " << cfg_.net.resolution << "x" << cfg_.net.resolution << " pictures -> codes " << cfg_.code_shape[0]
     << "x" << cfg_.code_shape[1] << " (plain vector quantization, K = " << cfg_.n_embed << ", vectors of dim "
     << cfg_.embed_dim << ")\n"
     << stage1::describe_net(cfg_) << "  parameters: " << stage1::format_count(n_params_) << "\n";
  return os.str();
}

}  // namespace hwaga
