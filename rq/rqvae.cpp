// RQ-VAE forward passes (see rqvae.h; architecture.md §1.3-1.5).
//   encode: images [B,3,R,R] -> encoder -> quant_conv -> NHWC z_e [B,h,w,E]
//           -> residual quantization, depth D, shared codebook rows [0,K) -> codes [B,h,w,D]
//   decode: codes [B,h,w,D] -> z_q = sum_d codebook[c_d] [B,h,w,E] -> NCHW -> post_quant_conv
//           -> decoder -> [B,3,R,R] in about [-1,1] (not clamped)
#include "rq/rqvae.h"

#include <sstream>

#include "nn/stage1_codec.h"

namespace hwaga {

RQVAE::RQVAE(const Stage1Config& cfg, const TensorMap& tensors, const std::string& source, Backend& backend)
    : cfg_(cfg), be_(backend) {
  HWAGA_CHECK(cfg.is_rq(), source, ": RQVAE built from a '", cfg.type, "' config");
  WeightLoader w(tensors, "stage1.", source, backend);
  net_.load(w, cfg.net);
  // quantizer.codebooks.0.weight [K+1,E]: row K is the padding row and never a candidate.
  const std::string name = "stage1." + stage1_codebook_name(cfg);
  const Tensor& table = get_tensor(tensors, name, source);
  table.expect(Shape{stage1_codebook_rows(cfg), cfg.embed_dim}, source + ": tensor '" + name + "'");
  codebook_ = backend.upload(table.slice0(0, cfg.n_embed), DType::F32);  // [K,E]
  n_params_ = w.num_parameters() + table.numel();
}

Shape RQVAE::code_shape() const { return {cfg_.code_shape[0], cfg_.code_shape[1], cfg_.code_shape[2]}; }

Tensor RQVAE::encode_latent(const Tensor& images) { return stage1::encode(be_, cfg_, net_, codebook_, images, true); }
Tensor RQVAE::encode(const Tensor& images) { return stage1::encode(be_, cfg_, net_, codebook_, images, false); }
Tensor RQVAE::decode(const Tensor& codes) { return stage1::decode(be_, cfg_, net_, codebook_, codes); }

std::string RQVAE::describe() const {
  std::ostringstream os;
  os << "RQ-VAE: " << cfg_.net.resolution << "x" << cfg_.net.resolution << " pictures -> codes "
     << cfg_.code_shape[0] << "x" << cfg_.code_shape[1] << "x" << cfg_.code_shape[2]
     << " (residual quantization of depth " << cfg_.code_shape[2] << " over one shared codebook, K = "
     << cfg_.n_embed << ", vectors of dim " << cfg_.embed_dim << ")\n"
     << stage1::describe_net(cfg_) << "  parameters: " << stage1::format_count(n_params_) << "\n";
  return os.str();
}

}  // namespace hwaga
