#include "nn/stage1_codec.h"

#include <cstring>
#include <sstream>

namespace hwaga::stage1 {

namespace {
std::string list_str(const std::vector<int>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}
}  // namespace

Tensor encode(Backend& be, const Stage1Config& cfg, const TamingAutoencoder& net, const Tensor& codebook,
              const Tensor& images, bool latent_only) {
  const int64_t R = cfg.net.resolution, C = cfg.net.in_channels;
  if (images.dtype() != DType::F32 || images.ndim() != 4 || images.dim(1) != C || images.dim(2) != R ||
      images.dim(3) != R)
    fail(cfg.type, " encode: expected f32 pictures [B, ", C, ", ", R, ", ", R, "], found ",
         dtype_name(images.dtype()), " ", shape_str(images.shape()));
  const int64_t B = images.dim(0), h = cfg.code_shape[0], w = cfg.code_shape[1], D = cfg.code_shape[2];
  const int64_t E = cfg.embed_dim;
  Tensor out = latent_only ? Tensor::empty({B, h, w, E}) : Tensor::empty({B, h, w, D}, DType::I32);
  const size_t per_item = out.nbytes() / size_t(B ? B : 1);
  for (int64_t b0 = 0; b0 < B; b0 += kMaxBatch) {
    const int64_t b1 = std::min(B, b0 + kMaxBatch), nb = b1 - b0;
    Tensor x = be.upload(images.slice0(b0, b1), DType::F32);  // [nb,C,R,R]
    Tensor z = net.encode_latent(be, x);                      // [nb,h,w,E]
    z.expect(Shape{nb, h, w, E}, "encoder output");
    Tensor r = latent_only ? z : be.residual_quantize(z.reshape({nb * h * w, E}), codebook, int(D));  // [nb*h*w,D]
    Tensor host = be.download(r);
    std::memcpy(static_cast<char*>(out.data()) + size_t(b0) * per_item, host.data(), size_t(nb) * per_item);
  }
  return out;
}

Tensor decode(Backend& be, const Stage1Config& cfg, const TamingAutoencoder& net, const Tensor& codebook,
              const Tensor& codes) {
  const int64_t h = cfg.code_shape[0], w = cfg.code_shape[1], D = cfg.code_shape[2], K = cfg.n_embed;
  const int64_t E = cfg.embed_dim, R = cfg.net.resolution, Co = cfg.net.out_ch;
  if (codes.dtype() != DType::I32 || codes.ndim() != 4 || codes.dim(1) != h || codes.dim(2) != w ||
      codes.dim(3) != D)
    fail(cfg.type, " decode: expected int32 codes [B, ", h, ", ", w, ", ", D, "], found ", dtype_name(codes.dtype()),
         " ", shape_str(codes.shape()));
  const int32_t* c = codes.ptr<int32_t>();
  for (int64_t i = 0; i < codes.numel(); ++i)
    if (c[i] < 0 || c[i] >= K) {
      const int64_t d = i % D, x = (i / D) % w, y = (i / D / w) % h, b = i / D / w / h;
      fail(cfg.type, " decode: code ", c[i], " at [", b, ", ", y, ", ", x, ", ", d,
           "] is outside the codebook range [0, ", K, ")");
    }
  const int64_t B = codes.dim(0);
  Tensor out = Tensor::empty({B, Co, R, R});
  const size_t per_item = size_t(Co * R * R) * sizeof(float);
  for (int64_t b0 = 0; b0 < B; b0 += kMaxBatch) {
    const int64_t b1 = std::min(B, b0 + kMaxBatch), nb = b1 - b0;
    Tensor cd = be.upload(codes.slice0(b0, b1).reshape({nb * h * w, D}), DType::I32);  // [nb*h*w,D]
    Tensor z_q = be.embed_sum(cd, codebook).reshape({nb, h, w, E});                 // [nb,h,w,E]
    Tensor y = net.decode_latent(be, z_q);                                            // [nb,Co,R,R]
    y.expect(Shape{nb, Co, R, R}, "decoder output");
    Tensor host = be.download(y);
    std::memcpy(static_cast<char*>(out.data()) + size_t(b0) * per_item, host.data(), size_t(nb) * per_item);
  }
  return out;
}

std::string describe_net(const Stage1Config& cfg) {
  const TamingConfig& n = cfg.net;
  std::ostringstream os;
  os << "  encoder/decoder: ch " << n.ch << ", ch_mult " << list_str(n.ch_mult) << " (" << n.num_levels()
     << " levels, " << n.resolution << " -> " << n.latent_resolution() << "), " << n.num_res_blocks
     << " res blocks per encoder level (" << n.num_res_blocks + 1 << " in the decoder), attention at "
     << list_str(n.attn_resolutions) << " + mid, z_channels " << n.z_channels << ", in/out channels "
     << n.in_channels << "/" << n.out_ch << "\n";
  return os.str();
}

std::string format_count(int64_t n) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(2);
  os << double(n) / 1e6 << "M (" << n << ")";
  return os.str();
}

}  // namespace hwaga::stage1
