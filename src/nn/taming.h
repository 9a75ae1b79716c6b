// The taming-transformers conv net shared by RQ-VAE (rq/) and minDALL-E's VQGAN (vqgan/):
// ResnetBlock, AttnBlock, Downsample, Upsample, Encoder, Decoder (architecture.md §1.2-1.4, §4.1).
//
// Sub-module names copy the PyTorch module tree, so a weight is found under exactly the key the
// released state_dict uses, e.g. "encoder.down.2.block.0.nin_shortcut.weight".
//
// Shape legend: B batch, C channels, H/W height/width (R = config resolution), Z z_channels,
// E embed_dim (codebook vector dim), h/w latent height/width (R / 2^(levels-1)).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/tensor_map.h"

namespace hwaga {

// The "ddconfig" of the released YAMLs (dropout is training-only and double_z is always false).
struct TamingConfig {
  int ch = 128;                            // base channel count
  std::vector<int> ch_mult = {1, 1, 2, 2, 4, 4};  // channels of level i = ch * ch_mult[i]
  int num_res_blocks = 2;                  // per encoder level (decoder: +1)
  std::vector<int> attn_resolutions = {8}; // levels whose resolution is listed get AttnBlocks
  int in_channels = 3;
  int out_ch = 3;
  int z_channels = 256;
  int resolution = 256;

  int num_levels() const { return int(ch_mult.size()); }
  int latent_resolution() const { return resolution >> (num_levels() - 1); }  // h = w
  int level_resolution(int level) const { return resolution >> level; }
  bool has_attn(int level) const;  // level_resolution(level) in attn_resolutions
};

inline constexpr int kTamingGroups = 32;     // GroupNorm(32, C)
inline constexpr float kTamingGnEps = 1e-6f;  // GroupNorm eps in both VAEs

// ---- loading ----
// Looks tensors up as prefix + name in a file's tensor map and uploads them to the backend as
// f32. Counts the parameters it hands out. Errors name `source` and the tensor.
class WeightLoader {
 public:
  WeightLoader(const TensorMap& tensors, std::string prefix, std::string source, Backend& backend);
  Tensor get(const std::string& name);  // tensors[prefix + name], uploaded as f32
  // A loader for a sub-module: prefix + p. Shares this loader's parameter count.
  WeightLoader sub(const std::string& p) const;
  int64_t num_parameters() const { return *n_params_; }

 private:
  const TensorMap* tensors_;
  std::string prefix_, source_;
  Backend* backend_;
  std::shared_ptr<int64_t> n_params_;
};

// ---- modules (weights live on the backend) ----
struct Conv2d {
  Tensor weight;  // [Cout, Cin, k, k]
  Tensor bias;    // [Cout]
  Conv2dParams p;
  void load(WeightLoader& w, const std::string& name, Conv2dParams params);
  Tensor forward(Backend& be, const Tensor& x) const { return be.conv2d(x, weight, bias, p); }
};

struct GroupNorm {
  Tensor weight, bias;  // [C]
  void load(WeightLoader& w, const std::string& name);
  // silu: y = swish(GN(x)) in one pass
  Tensor forward(Backend& be, const Tensor& x, bool silu) const {
    return be.group_norm(x, weight, bias, kTamingGroups, kTamingGnEps, silu);
  }
};

struct ResnetBlock {
  int in_ch = 0, out_ch = 0;
  GroupNorm norm1;  // [in]
  Conv2d conv1;     // 3x3 in -> out
  GroupNorm norm2;  // [out]
  Conv2d conv2;     // 3x3 out -> out
  Conv2d nin_shortcut;  // 1x1 in -> out, only when in != out
  void load(WeightLoader& w, const std::string& name, int in, int out);
  Tensor forward(Backend& be, const Tensor& x) const;  // [B,in,H,W] -> [B,out,H,W]
};

struct AttnBlock {
  GroupNorm norm;
  Conv2d q, k, v, proj_out;  // 1x1 C -> C
  void load(WeightLoader& w, const std::string& name);
  Tensor forward(Backend& be, const Tensor& x) const;  // [B,C,H,W] -> [B,C,H,W]
};

struct Downsample {  // pad (0,1,0,1) then 3x3 stride 2: [B,C,H,W] -> [B,C,H/2,W/2]
  Conv2d conv;
  void load(WeightLoader& w, const std::string& name);
  Tensor forward(Backend& be, const Tensor& x) const { return conv.forward(be, x); }
};

struct Upsample {  // nearest x2 then 3x3: [B,C,H,W] -> [B,C,2H,2W]
  Conv2d conv;
  void load(WeightLoader& w, const std::string& name);
  Tensor forward(Backend& be, const Tensor& x) const;
};

struct MidBlock {
  ResnetBlock block_1;
  AttnBlock attn_1;
  ResnetBlock block_2;
  void load(WeightLoader& w, const std::string& name, int C);
  Tensor forward(Backend& be, const Tensor& x) const;
};

struct EncoderLevel {  // encoder.down.<i>
  std::vector<ResnetBlock> block;
  std::vector<AttnBlock> attn;  // empty, or one per block
  bool has_downsample = false;
  Downsample downsample;
};

struct Encoder {  // [B,in_channels,R,R] -> [B,Z,h,w]
  TamingConfig cfg;
  Conv2d conv_in;
  std::vector<EncoderLevel> down;
  MidBlock mid;
  GroupNorm norm_out;
  Conv2d conv_out;
  void load(WeightLoader& w, const TamingConfig& cfg);  // names relative to "encoder."
  Tensor forward(Backend& be, const Tensor& x) const;
};

struct DecoderLevel {  // decoder.up.<i>; up.<levels-1> is the lowest-resolution level
  std::vector<ResnetBlock> block;
  std::vector<AttnBlock> attn;
  bool has_upsample = false;
  Upsample upsample;
};

struct Decoder {  // [B,Z,h,w] -> [B,out_ch,R,R]
  TamingConfig cfg;
  Conv2d conv_in;
  MidBlock mid;
  std::vector<DecoderLevel> up;
  GroupNorm norm_out;
  Conv2d conv_out;
  void load(WeightLoader& w, const TamingConfig& cfg);  // names relative to "decoder."
  Tensor forward(Backend& be, const Tensor& z) const;
};

// The tensor names and shapes an Encoder / Decoder built from `cfg` needs, each name prefixed
// with `prefix` (e.g. "encoder."), in module order.
std::vector<TensorSpec> taming_encoder_specs(const TamingConfig& cfg, const std::string& prefix);
std::vector<TensorSpec> taming_decoder_specs(const TamingConfig& cfg, const std::string& prefix);

// Encoder + quant_conv and post_quant_conv + Decoder: the conv half of both tokenizers.
// The quantizer (codebook, depth) is the owner's business.
struct TamingAutoencoder {
  Encoder encoder;
  Conv2d quant_conv;       // 1x1 Z -> E
  Conv2d post_quant_conv;  // 1x1 E -> Z
  Decoder decoder;
  void load(WeightLoader& w, const TamingConfig& cfg);  // w at the stage-1 root ("stage1.")
  // images [B,in,R,R] (backend) -> z_e [B,h,w,E] (backend, NHWC)
  Tensor encode_latent(Backend& be, const Tensor& images) const;
  // z_q [B,h,w,E] (backend, NHWC) -> [B,out_ch,R,R] (backend), not clamped
  Tensor decode_latent(Backend& be, const Tensor& z_q) const;
};

}  // namespace hwaga
