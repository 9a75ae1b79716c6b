// The taming-transformers conv net (see taming.h). Forward lines carry shapes; the legend is in
// the header. Module construction mirrors the PyTorch constructors, so the order in which
// tensors are requested is the state_dict order.
#include "nn/taming.h"

#include <algorithm>

namespace hwaga {

bool TamingConfig::has_attn(int level) const {
  const int r = level_resolution(level);
  return std::find(attn_resolutions.begin(), attn_resolutions.end(), r) != attn_resolutions.end();
}

// ---------------------------------------------------------------------------------------------
// loading

WeightLoader::WeightLoader(const TensorMap& tensors, std::string prefix, std::string source, Backend& backend)
    : tensors_(&tensors),
      prefix_(std::move(prefix)),
      source_(std::move(source)),
      backend_(&backend),
      n_params_(std::make_shared<int64_t>(0)) {}

Tensor WeightLoader::get(const std::string& name) {
  const Tensor& t = get_tensor(*tensors_, prefix_ + name, source_);
  *n_params_ += t.numel();
  return backend_->upload(t, DType::F32);
}

WeightLoader WeightLoader::sub(const std::string& p) const {
  WeightLoader w = *this;
  w.prefix_ += p;
  return w;
}

void Conv2d::load(WeightLoader& w, const std::string& name, Conv2dParams params) {
  weight = w.get(name + ".weight");
  bias = w.get(name + ".bias");
  p = params;
}

void GroupNorm::load(WeightLoader& w, const std::string& name) {
  weight = w.get(name + ".weight");
  bias = w.get(name + ".bias");
}

void ResnetBlock::load(WeightLoader& w, const std::string& name, int in, int out) {
  in_ch = in;
  out_ch = out;
  norm1.load(w, name + ".norm1");
  conv1.load(w, name + ".conv1", Conv2dParams::same(1));
  norm2.load(w, name + ".norm2");
  conv2.load(w, name + ".conv2", Conv2dParams::same(1));
  if (in != out) nin_shortcut.load(w, name + ".nin_shortcut", Conv2dParams::same(0));
}

void AttnBlock::load(WeightLoader& w, const std::string& name) {
  norm.load(w, name + ".norm");
  q.load(w, name + ".q", Conv2dParams::same(0));
  k.load(w, name + ".k", Conv2dParams::same(0));
  v.load(w, name + ".v", Conv2dParams::same(0));
  proj_out.load(w, name + ".proj_out", Conv2dParams::same(0));
}

void Downsample::load(WeightLoader& w, const std::string& name) {
  Conv2dParams p;  // asymmetric: zero-pad right and bottom by 1, stride 2, no other padding
  p.stride = 2;
  p.pad_bottom = 1;
  p.pad_right = 1;
  conv.load(w, name + ".conv", p);
}

void Upsample::load(WeightLoader& w, const std::string& name) { conv.load(w, name + ".conv", Conv2dParams::same(1)); }

void MidBlock::load(WeightLoader& w, const std::string& name, int C) {
  block_1.load(w, name + ".block_1", C, C);
  attn_1.load(w, name + ".attn_1");
  block_2.load(w, name + ".block_2", C, C);
}

void Encoder::load(WeightLoader& w, const TamingConfig& c) {
  cfg = c;
  conv_in.load(w, "conv_in", Conv2dParams::same(1));
  int block_in = c.ch;
  down.assign(size_t(c.num_levels()), {});
  for (int i = 0; i < c.num_levels(); ++i) {
    EncoderLevel& lv = down[size_t(i)];
    const std::string name = "down." + std::to_string(i);
    const int block_out = c.ch * c.ch_mult[size_t(i)];
    for (int j = 0; j < c.num_res_blocks; ++j) {
      lv.block.emplace_back().load(w, name + ".block." + std::to_string(j), block_in, block_out);
      block_in = block_out;
      if (c.has_attn(i)) lv.attn.emplace_back().load(w, name + ".attn." + std::to_string(j));
    }
    lv.has_downsample = i != c.num_levels() - 1;
    if (lv.has_downsample) lv.downsample.load(w, name + ".downsample");
  }
  mid.load(w, "mid", block_in);
  norm_out.load(w, "norm_out");
  conv_out.load(w, "conv_out", Conv2dParams::same(1));
}

void Decoder::load(WeightLoader& w, const TamingConfig& c) {
  cfg = c;
  int block_in = c.ch * c.ch_mult.back();
  conv_in.load(w, "conv_in", Conv2dParams::same(1));
  mid.load(w, "mid", block_in);
  up.assign(size_t(c.num_levels()), {});
  for (int i = c.num_levels() - 1; i >= 0; --i) {  // up.<levels-1> is the lowest resolution
    DecoderLevel& lv = up[size_t(i)];
    const std::string name = "up." + std::to_string(i);
    const int block_out = c.ch * c.ch_mult[size_t(i)];
    for (int j = 0; j < c.num_res_blocks + 1; ++j) {
      lv.block.emplace_back().load(w, name + ".block." + std::to_string(j), block_in, block_out);
      block_in = block_out;
      if (c.has_attn(i)) lv.attn.emplace_back().load(w, name + ".attn." + std::to_string(j));
    }
    lv.has_upsample = i != 0;
    if (lv.has_upsample) lv.upsample.load(w, name + ".upsample");
  }
  norm_out.load(w, "norm_out");
  conv_out.load(w, "conv_out", Conv2dParams::same(1));
  // Decoder outputs are pictures: its 3x3 convs may run Winograd (see Conv2dParams).
  auto fast = [](Conv2d& c) { c.p.allow_winograd = true; };
  auto fast_block = [&](ResnetBlock& b) {
    fast(b.conv1);
    fast(b.conv2);
  };
  fast(conv_in);
  fast_block(mid.block_1);
  fast_block(mid.block_2);
  for (DecoderLevel& lv : up) {
    for (ResnetBlock& b : lv.block) fast_block(b);
    if (lv.has_upsample) fast(lv.upsample.conv);
  }
  fast(conv_out);
}

void TamingAutoencoder::load(WeightLoader& w, const TamingConfig& cfg) {
  WeightLoader we = w.sub("encoder.");
  encoder.load(we, cfg);
  quant_conv.load(w, "quant_conv", Conv2dParams::same(0));
  post_quant_conv.load(w, "post_quant_conv", Conv2dParams::same(0));
  WeightLoader wd = w.sub("decoder.");
  decoder.load(wd, cfg);
}

// ---------------------------------------------------------------------------------------------
// forward

Tensor ResnetBlock::forward(Backend& be, const Tensor& x) const {
  Tensor h = norm1.forward(be, x, true);   // [B,in,H,W]  swish(GN)
  h = conv1.forward(be, h);                // [B,out,H,W]
  h = norm2.forward(be, h, true);          // [B,out,H,W] (dropout is a no-op at inference)
  h = conv2.forward(be, h);                // [B,out,H,W]
  Tensor s = in_ch != out_ch ? nin_shortcut.forward(be, x) : x;  // [B,out,H,W]
  return be.add(s, h);
}

Tensor AttnBlock::forward(Backend& be, const Tensor& x) const {
  Tensor n = norm.forward(be, x, false);   // [B,C,H,W]
  Tensor qt = q.forward(be, n);            // [B,C,H,W]
  Tensor kt = k.forward(be, n);            // [B,C,H,W]
  Tensor vt = v.forward(be, n);            // [B,C,H,W]
  Tensor h = be.attention_hw(qt, kt, vt);  // [B,C,H,W] softmax(q^T k / sqrt(C)) over H*W keys
  h = proj_out.forward(be, h);             // [B,C,H,W]
  return be.add(x, h);
}

Tensor Upsample::forward(Backend& be, const Tensor& x) const {
  Tensor h = be.upsample_nearest2x(x);  // [B,C,2H,2W]
  return conv.forward(be, h);           // [B,C,2H,2W]
}

Tensor MidBlock::forward(Backend& be, const Tensor& x) const {
  Tensor h = block_1.forward(be, x);  // [B,C,h,w]
  h = attn_1.forward(be, h);          // [B,C,h,w]
  return block_2.forward(be, h);      // [B,C,h,w]
}

Tensor Encoder::forward(Backend& be, const Tensor& x) const {
  Tensor h = conv_in.forward(be, x);  // [B,ch,R,R]
  for (const EncoderLevel& lv : down) {
    for (size_t j = 0; j < lv.block.size(); ++j) {
      h = lv.block[j].forward(be, h);                  // [B,ch*mult_i,R_i,R_i]
      if (!lv.attn.empty()) h = lv.attn[j].forward(be, h);
    }
    if (lv.has_downsample) h = lv.downsample.forward(be, h);  // [B,C,R_i/2,R_i/2]
  }
  h = mid.forward(be, h);                    // [B,C_top,h,w]
  h = norm_out.forward(be, h, true);         // [B,C_top,h,w]
  return conv_out.forward(be, h);            // [B,Z,h,w]
}

Tensor Decoder::forward(Backend& be, const Tensor& z) const {
  Tensor h = conv_in.forward(be, z);  // [B,C_top,h,w]
  h = mid.forward(be, h);             // [B,C_top,h,w]
  for (int i = int(up.size()) - 1; i >= 0; --i) {
    const DecoderLevel& lv = up[size_t(i)];
    for (size_t j = 0; j < lv.block.size(); ++j) {
      h = lv.block[j].forward(be, h);                  // [B,ch*mult_i,R_i,R_i]
      if (!lv.attn.empty()) h = lv.attn[j].forward(be, h);
    }
    if (lv.has_upsample) h = lv.upsample.forward(be, h);  // [B,C,2R_i,2R_i]
  }
  h = norm_out.forward(be, h, true);  // [B,ch,R,R]
  return conv_out.forward(be, h);     // [B,out_ch,R,R]
}

Tensor TamingAutoencoder::encode_latent(Backend& be, const Tensor& images) const {
  Tensor h = encoder.forward(be, images);  // [B,Z,h,w]
  h = quant_conv.forward(be, h);           // [B,E,h,w]
  return be.nchw_to_nhwc(h);               // [B,h,w,E]
}

Tensor TamingAutoencoder::decode_latent(Backend& be, const Tensor& z_q) const {
  Tensor h = be.nhwc_to_nchw(z_q);     // [B,E,h,w]
  h = post_quant_conv.forward(be, h);  // [B,Z,h,w]
  return decoder.forward(be, h);       // [B,out_ch,R,R]
}

// ---------------------------------------------------------------------------------------------
// tensor specs (the same walk as load(), with shapes)

namespace {
struct SpecList {
  std::vector<TensorSpec>& out;
  std::string prefix;
  void conv(const std::string& n, int64_t cout, int64_t cin, int64_t k) {
    out.push_back({prefix + n + ".weight", {cout, cin, k, k}});
    out.push_back({prefix + n + ".bias", {cout}});
  }
  void norm(const std::string& n, int64_t c) {
    out.push_back({prefix + n + ".weight", {c}});
    out.push_back({prefix + n + ".bias", {c}});
  }
  void resnet(const std::string& n, int64_t in, int64_t o) {
    norm(n + ".norm1", in);
    conv(n + ".conv1", o, in, 3);
    norm(n + ".norm2", o);
    conv(n + ".conv2", o, o, 3);
    if (in != o) conv(n + ".nin_shortcut", o, in, 1);
  }
  void attn(const std::string& n, int64_t c) {
    norm(n + ".norm", c);
    for (const char* m : {".q", ".k", ".v", ".proj_out"}) conv(n + m, c, c, 1);
  }
  void mid(int64_t c) {
    resnet("mid.block_1", c, c);
    attn("mid.attn_1", c);
    resnet("mid.block_2", c, c);
  }
};
}  // namespace

std::vector<TensorSpec> taming_encoder_specs(const TamingConfig& c, const std::string& prefix) {
  std::vector<TensorSpec> out;
  SpecList s{out, prefix};
  s.conv("conv_in", c.ch, c.in_channels, 3);
  int block_in = c.ch;
  for (int i = 0; i < c.num_levels(); ++i) {
    const std::string name = "down." + std::to_string(i);
    const int block_out = c.ch * c.ch_mult[size_t(i)];
    for (int j = 0; j < c.num_res_blocks; ++j) {
      s.resnet(name + ".block." + std::to_string(j), block_in, block_out);
      block_in = block_out;
      if (c.has_attn(i)) s.attn(name + ".attn." + std::to_string(j), block_in);
    }
    if (i != c.num_levels() - 1) s.conv(name + ".downsample.conv", block_in, block_in, 3);
  }
  s.mid(block_in);
  s.norm("norm_out", block_in);
  s.conv("conv_out", c.z_channels, block_in, 3);
  return out;
}

std::vector<TensorSpec> taming_decoder_specs(const TamingConfig& c, const std::string& prefix) {
  std::vector<TensorSpec> out;
  SpecList s{out, prefix};
  int block_in = c.ch * c.ch_mult.back();
  s.conv("conv_in", block_in, c.z_channels, 3);
  s.mid(block_in);
  for (int i = c.num_levels() - 1; i >= 0; --i) {
    const std::string name = "up." + std::to_string(i);
    const int block_out = c.ch * c.ch_mult[size_t(i)];
    for (int j = 0; j < c.num_res_blocks + 1; ++j) {
      s.resnet(name + ".block." + std::to_string(j), block_in, block_out);
      block_in = block_out;
      if (c.has_attn(i)) s.attn(name + ".attn." + std::to_string(j), block_in);
    }
    if (i != 0) s.conv(name + ".upsample.conv", block_in, block_in, 3);
  }
  s.norm("norm_out", block_in);
  s.conv("conv_out", c.out_ch, block_in, 3);
  return out;
}

}  // namespace hwaga
