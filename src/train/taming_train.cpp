// The trainable taming net (see taming_train.h). Forward lines carry shapes; backward runs the
// same modules in reverse. Construction mirrors nn/taming.cpp, so Params are registered in the
// state_dict order that stage1_tensor_specs lists.
#include "train/taming_train.h"

#include <cmath>
#include <cstring>

#include "train/data_parallel.h"
#include "train/train_ops.h"

namespace hwaga::train {

namespace {
cpu::Conv2dShape conv_shape(const TrainConv2d& c, const Tensor& x) {
  HWAGA_CHECK(x.ndim() == 4 && x.dim(1) == c.cin, "conv: expected input [B,", c.cin, ",H,W], found ",
              shape_str(x.shape()));
  return {x.dim(0), c.cin, x.dim(2), x.dim(3), c.cout, c.k, c.k, c.stride,
          c.pad_top, c.pad_left, c.pad_bottom, c.pad_right};
}

TrainOps& ops_of(const ParamSet* ps) {
  HWAGA_CHECK(ps, "taming module used before build()");
  return ps->ops();
}

// y += x on the module's device
void add_to(TrainOps& ops, Tensor& y, const Tensor& x) { ops.add(y.f32(), x.f32(), y.f32(), y.numel()); }
}  // namespace

// ---------------------------------------------------------------------------------------------
// conv, norm

void TrainConv2d::build(ParamSet& ps, const std::string& name, int ci, int co, int kk, int pad) {
  this->ps = &ps;
  cin = ci;
  cout = co;
  k = kk;
  pad_top = pad_left = pad_bottom = pad_right = pad;
  weight = &ps.add(name + ".weight", {co, ci, kk, kk}, ParamKind::weight);
  bias = &ps.add(name + ".bias", {co}, ParamKind::no_decay);
}

Tensor TrainConv2d::forward(const Tensor& in, bool save) {
  cpu::Conv2dShape s = conv_shape(*this, in);
  TrainOps& ops = ops_of(ps);
  Tensor y = ops.empty({s.B, cout, s.Ho(), s.Wo()});
  ops.conv2d_fwd(s, in.f32(), weight->v(), bias->v(), y.f32());
  if (save) x = in;
  return y;
}

Tensor TrainConv2d::backward(const Tensor& dy, bool need_dx) {
  HWAGA_CHECK(x.defined(), "conv backward without a saved forward");
  cpu::Conv2dShape s = conv_shape(*this, x);
  TrainOps& ops = ops_of(ps);
  Tensor dx = need_dx ? ops.empty(x.shape()) : Tensor();
  ops.conv2d_bwd(s, x.f32(), weight->v(), dy.f32(), need_dx ? dx.f32() : nullptr, weight->g(), bias->g());
  x = Tensor();
  return dx;
}

void TrainGroupNorm::build(ParamSet& ps, const std::string& name, int c, bool s) {
  this->ps = &ps;
  C = c;
  silu = s;
  weight = &ps.add(name + ".weight", {c}, ParamKind::no_decay);
  bias = &ps.add(name + ".bias", {c}, ParamKind::no_decay);
}

Tensor TrainGroupNorm::forward(const Tensor& in, bool save) {
  const int64_t B = in.dim(0), N = in.numel() / (B * C);
  TrainOps& ops = ops_of(ps);
  Tensor m = ops.empty({B * kTamingGroups}), r = ops.empty({B * kTamingGroups});
  Tensor y = ops.empty(in.shape());
  ops.group_norm_fwd(in.f32(), weight->v(), bias->v(), y.f32(), m.f32(), r.f32(), B, C, N, kTamingGroups,
                     kTamingGnEps);
  if (save) {
    x = in;
    mean = m;
    rstd = r;
  }
  if (!silu) return y;
  Tensor out = ops.empty(in.shape());
  ops.silu_fwd(y.f32(), out.f32(), y.numel());
  if (save) u = y;
  return out;
}

Tensor TrainGroupNorm::backward(const Tensor& dy) {
  HWAGA_CHECK(x.defined(), "group norm backward without a saved forward");
  const int64_t B = x.dim(0), N = x.numel() / (B * C);
  TrainOps& ops = ops_of(ps);
  Tensor dx = ops.empty(x.shape());
  const float* g = dy.f32();
  if (silu) {
    ops.silu_bwd(u.f32(), dy.f32(), dx.f32(), dx.numel());
    g = dx.f32();
  }
  ops.group_norm_bwd(x.f32(), weight->v(), mean.f32(), rstd.f32(), g, dx.f32(), weight->g(), bias->g(), B, C, N,
                     kTamingGroups);
  x = u = mean = rstd = Tensor();
  return dx;
}

// ---------------------------------------------------------------------------------------------
// blocks

void TrainResnetBlock::build(ParamSet& ps, const std::string& name, int in, int out) {
  in_ch = in;
  out_ch = out;
  norm1.build(ps, name + ".norm1", in, true);
  conv1.build(ps, name + ".conv1", in, out, 3, 1);
  norm2.build(ps, name + ".norm2", out, true);
  conv2.build(ps, name + ".conv2", out, out, 3, 1);
  if (in != out) nin_shortcut.build(ps, name + ".nin_shortcut", in, out, 1, 0);
}

Tensor TrainResnetBlock::forward(const Tensor& x, bool save) {
  Tensor h = norm1.forward(x, save);  // [B,in,H,W] swish(GN)
  h = conv1.forward(h, save);         // [B,out,H,W]
  h = norm2.forward(h, save);         // [B,out,H,W]
  h = conv2.forward(h, save);         // [B,out,H,W]
  TrainOps& ops = ops_of(conv2.ps);
  if (in_ch != out_ch) {
    Tensor y = nin_shortcut.forward(x, save);
    add_to(ops, y, h);
    return y;
  }
  add_to(ops, h, x);
  return h;
}

Tensor TrainResnetBlock::backward(const Tensor& dy) {
  Tensor d = conv2.backward(dy);  // [B,out,H,W]
  d = norm2.backward(d);
  d = conv1.backward(d);          // [B,in,H,W]
  d = norm1.backward(d);
  TrainOps& ops = ops_of(conv2.ps);
  if (in_ch != out_ch) {
    Tensor ds = nin_shortcut.backward(dy);
    add_to(ops, d, ds);
  } else {
    add_to(ops, d, dy);
  }
  return d;
}

void TrainAttnBlock::build(ParamSet& ps, const std::string& name, int C) {
  norm.build(ps, name + ".norm", C, false);
  q.build(ps, name + ".q", C, C, 1, 0);
  k.build(ps, name + ".k", C, C, 1, 0);
  v.build(ps, name + ".v", C, C, 1, 0);
  proj_out.build(ps, name + ".proj_out", C, C, 1, 0);
}

Tensor TrainAttnBlock::forward(const Tensor& x, bool save) {
  const int64_t B = x.dim(0), C = x.dim(1), N = x.dim(2) * x.dim(3);
  TrainOps& ops = ops_of(q.ps);
  Tensor n = norm.forward(x, save);  // [B,C,H,W]
  Tensor qq = q.forward(n, save);    // [B,C,H,W]
  Tensor kk = k.forward(n, save);
  Tensor vv = v.forward(n, save);
  Tensor pp = ops.empty({B, N, N});
  Tensor h = ops.empty(x.shape());
  ops.spatial_attention_fwd(qq.f32(), kk.f32(), vv.f32(), h.f32(), pp.f32(), B, C, N);  // softmax(q^T k / sqrt(C)) over keys
  if (save) {
    qt = qq;
    kt = kk;
    vt = vv;
    p = pp;
  }
  h = proj_out.forward(h, save);  // [B,C,H,W]
  add_to(ops, h, x);
  return h;
}

Tensor TrainAttnBlock::backward(const Tensor& dy) {
  const int64_t B = dy.dim(0), C = dy.dim(1), N = dy.dim(2) * dy.dim(3);
  TrainOps& ops = ops_of(q.ps);
  Tensor dh = proj_out.backward(dy);
  Tensor dq = ops.empty(dy.shape()), dk = ops.empty(dy.shape()), dv = ops.empty(dy.shape());
  ops.spatial_attention_bwd(qt.f32(), kt.f32(), vt.f32(), p.f32(), dh.f32(), dq.f32(), dk.f32(), dv.f32(), B, C, N);
  qt = kt = vt = p = Tensor();
  Tensor dn = q.backward(dq);
  Tensor t = k.backward(dk);
  add_to(ops, dn, t);
  t = v.backward(dv);
  add_to(ops, dn, t);
  Tensor dx = norm.backward(dn);
  add_to(ops, dx, dy);
  return dx;
}

void TrainDownsample::build(ParamSet& ps, const std::string& name, int C) {
  conv.build(ps, name + ".conv", C, C, 3, 0);
  conv.stride = 2;
  conv.pad_bottom = 1;  // zero-pad right and bottom by 1 (F.pad (0,1,0,1))
  conv.pad_right = 1;
}

void TrainUpsample::build(ParamSet& ps, const std::string& name, int C) { conv.build(ps, name + ".conv", C, C, 3, 1); }

Tensor TrainUpsample::forward(const Tensor& x, bool save) {
  const int64_t B = x.dim(0), C = x.dim(1);
  H = x.dim(2);
  W = x.dim(3);
  TrainOps& ops = ops_of(conv.ps);
  Tensor u = ops.empty({B, C, 2 * H, 2 * W});
  ops.upsample2x_fwd(x.f32(), u.f32(), B * C, H, W);  // [B,C,2H,2W]
  return conv.forward(u, save);                               // [B,C,2H,2W]
}

Tensor TrainUpsample::backward(const Tensor& dy) {
  Tensor du = conv.backward(dy);
  const int64_t B = dy.dim(0), C = dy.dim(1);
  TrainOps& ops = ops_of(conv.ps);
  Tensor dx = ops.empty({B, C, H, W});
  ops.upsample2x_bwd(du.f32(), dx.f32(), B * C, H, W);
  return dx;
}

void TrainMid::build(ParamSet& ps, const std::string& name, int C) {
  block_1.build(ps, name + ".block_1", C, C);
  attn_1.build(ps, name + ".attn_1", C);
  block_2.build(ps, name + ".block_2", C, C);
}

Tensor TrainMid::forward(const Tensor& x, bool save) {
  Tensor h = block_1.forward(x, save);
  h = attn_1.forward(h, save);
  return block_2.forward(h, save);
}

Tensor TrainMid::backward(const Tensor& dy) {
  Tensor d = block_2.backward(dy);
  d = attn_1.backward(d);
  return block_1.backward(d);
}

// ---------------------------------------------------------------------------------------------
// encoder, decoder

void TrainEncoder::build(ParamSet& ps, const std::string& prefix, const TamingConfig& c) {
  cfg = c;
  conv_in.build(ps, prefix + "conv_in", c.in_channels, c.ch, 3, 1);
  int block_in = c.ch;
  down.assign(size_t(c.num_levels()), {});
  for (int i = 0; i < c.num_levels(); ++i) {
    TrainLevel& lv = down[size_t(i)];
    const std::string name = prefix + "down." + std::to_string(i);
    const int block_out = c.ch * c.ch_mult[size_t(i)];
    lv.block.resize(size_t(c.num_res_blocks));
    if (c.has_attn(i)) lv.attn.resize(size_t(c.num_res_blocks));
    for (int j = 0; j < c.num_res_blocks; ++j) {
      lv.block[size_t(j)].build(ps, name + ".block." + std::to_string(j), block_in, block_out);
      block_in = block_out;
      if (c.has_attn(i)) lv.attn[size_t(j)].build(ps, name + ".attn." + std::to_string(j), block_in);
    }
    lv.has_resample = i != c.num_levels() - 1;
    if (lv.has_resample) lv.downsample.build(ps, name + ".downsample", block_in);
  }
  mid.build(ps, prefix + "mid", block_in);
  norm_out.build(ps, prefix + "norm_out", block_in, true);
  conv_out.build(ps, prefix + "conv_out", block_in, c.z_channels, 3, 1);
}

Tensor TrainEncoder::forward(const Tensor& x, bool save) {
  Tensor h = conv_in.forward(x, save);  // [B,ch,R,R]
  for (TrainLevel& lv : down) {
    for (size_t j = 0; j < lv.block.size(); ++j) {
      h = lv.block[j].forward(h, save);  // [B,ch*mult_i,R_i,R_i]
      if (!lv.attn.empty()) h = lv.attn[j].forward(h, save);
    }
    if (lv.has_resample) h = lv.downsample.conv.forward(h, save);  // [B,C,R_i/2,R_i/2]
  }
  h = mid.forward(h, save);            // [B,C_top,h,w]
  h = norm_out.forward(h, save);       // [B,C_top,h,w]
  return conv_out.forward(h, save);    // [B,Z,h,w]
}

void TrainEncoder::backward(const Tensor& dz) {
  Tensor d = conv_out.backward(dz);
  d = norm_out.backward(d);
  d = mid.backward(d);
  for (int i = int(down.size()) - 1; i >= 0; --i) {
    TrainLevel& lv = down[size_t(i)];
    if (lv.has_resample) d = lv.downsample.conv.backward(d);
    for (int j = int(lv.block.size()) - 1; j >= 0; --j) {
      if (!lv.attn.empty()) d = lv.attn[size_t(j)].backward(d);
      d = lv.block[size_t(j)].backward(d);
    }
  }
  conv_in.backward(d, false);
}

void TrainDecoder::build(ParamSet& ps, const std::string& prefix, const TamingConfig& c) {
  cfg = c;
  int block_in = c.ch * c.ch_mult.back();
  conv_in.build(ps, prefix + "conv_in", c.z_channels, block_in, 3, 1);
  mid.build(ps, prefix + "mid", block_in);
  up.assign(size_t(c.num_levels()), {});
  for (int i = c.num_levels() - 1; i >= 0; --i) {
    TrainLevel& lv = up[size_t(i)];
    const std::string name = prefix + "up." + std::to_string(i);
    const int block_out = c.ch * c.ch_mult[size_t(i)];
    lv.block.resize(size_t(c.num_res_blocks + 1));
    if (c.has_attn(i)) lv.attn.resize(size_t(c.num_res_blocks + 1));
    for (int j = 0; j < c.num_res_blocks + 1; ++j) {
      lv.block[size_t(j)].build(ps, name + ".block." + std::to_string(j), block_in, block_out);
      block_in = block_out;
      if (c.has_attn(i)) lv.attn[size_t(j)].build(ps, name + ".attn." + std::to_string(j), block_in);
    }
    lv.has_resample = i != 0;
    if (lv.has_resample) lv.upsample.build(ps, name + ".upsample", block_in);
  }
  norm_out.build(ps, prefix + "norm_out", block_in, true);
  conv_out.build(ps, prefix + "conv_out", block_in, c.out_ch, 3, 1);
}

Tensor TrainDecoder::forward(const Tensor& z, bool save) {
  Tensor h = conv_in.forward(z, save);  // [B,C_top,h,w]
  h = mid.forward(h, save);             // [B,C_top,h,w]
  for (int i = int(up.size()) - 1; i >= 0; --i) {
    TrainLevel& lv = up[size_t(i)];
    for (size_t j = 0; j < lv.block.size(); ++j) {
      h = lv.block[j].forward(h, save);  // [B,ch*mult_i,R_i,R_i]
      if (!lv.attn.empty()) h = lv.attn[j].forward(h, save);
    }
    if (lv.has_resample) h = lv.upsample.forward(h, save);  // [B,C,2R_i,2R_i]
  }
  h = norm_out.forward(h, save);     // [B,ch,R,R]
  return conv_out.forward(h, save);  // [B,out_ch,R,R]
}

Tensor TrainDecoder::backward(const Tensor& dy) {
  Tensor d = conv_out.backward(dy);
  d = norm_out.backward(d);
  for (int i = 0; i < int(up.size()); ++i) {
    TrainLevel& lv = up[size_t(i)];
    if (lv.has_resample) d = lv.upsample.backward(d);
    for (int j = int(lv.block.size()) - 1; j >= 0; --j) {
      if (!lv.attn.empty()) d = lv.attn[size_t(j)].backward(d);
      d = lv.block[size_t(j)].backward(d);
    }
  }
  d = mid.backward(d);
  return conv_in.backward(d);
}

// ---------------------------------------------------------------------------------------------
// initialisation, random numbers

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}
}  // namespace

TrainRng::TrainRng(uint64_t seed) {
  for (auto& s : s_) s = splitmix64(seed);
}

uint64_t TrainRng::next() {
  const uint64_t r = rotl(s_[1] * 5, 7) * 9, t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return r;
}

float TrainRng::uniform() { return float(next() >> 40) * (1.0f / 16777216.0f); }
float TrainRng::uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }

float TrainRng::normal() {
  const double u1 = (double(next() >> 11) + 1.0) * (1.0 / 9007199254740992.0);  // (0, 1]
  const double u2 = double(next() >> 11) * (1.0 / 9007199254740992.0);
  return float(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * 3.14159265358979323846 * u2));
}

uint64_t TrainRng::below(uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t r;
  do r = next();
  while (r >= limit);
  return r % n;
}

uint64_t mix_seed(uint64_t seed, const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  uint64_t x = seed ^ h;
  return splitmix64(x);
}

uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b) {
  uint64_t x = seed;
  uint64_t h = splitmix64(x) ^ a;
  h = splitmix64(h) ^ b;
  return splitmix64(h);
}

void init_taming_params(ParamSet& ps, const std::string& prefix, uint64_t seed) {
  for (auto& p : ps.all()) {
    if (p->name.compare(0, prefix.size(), prefix) != 0 || p->kind == ParamKind::buffer) continue;
    TrainRng rng(mix_seed(seed, p->name));
    float* v = p->v();
    const Shape& sh = p->value.shape();
    if (ends_with(p->name, ".weight") && sh.size() == 4) {
      const float bound = 1.0f / std::sqrt(float(sh[1] * sh[2] * sh[3]));  // gain sqrt(1/3) * sqrt(3 / fan_in)
      for (int64_t i = 0; i < p->numel(); ++i) v[i] = rng.uniform(-bound, bound);
    } else if (ends_with(p->name, ".weight")) {  // GroupNorm gain
      for (int64_t i = 0; i < p->numel(); ++i) v[i] = 1.0f;
    } else if (ends_with(p->name, ".bias")) {
      const std::string w = p->name.substr(0, p->name.size() - 4) + "weight";
      const Param* wp = ps.find(w);
      if (wp && wp->value.ndim() == 4) {
        const Shape& ws = wp->value.shape();
        const float bound = 1.0f / std::sqrt(float(ws[1] * ws[2] * ws[3]));  // 1/sqrt(fan_in)
        for (int64_t i = 0; i < p->numel(); ++i) v[i] = rng.uniform(-bound, bound);
      } else {
        std::memset(v, 0, p->value.nbytes());
      }
    }
  }
}

CodeUsage code_usage(const std::vector<int64_t>& hist, DataParallel* dp) {
  std::vector<double> h(hist.begin(), hist.end());
  if (dp && dp->world() > 1) dp->all_reduce_sum(h.data(), int64_t(h.size()));
  double n = 0;
  for (double v : h) n += v;
  CodeUsage u;
  double ent = 0;
  for (double v : h)
    if (v > 0) {
      u.used++;
      ent -= v / n * std::log(v / n);
    }
  u.perplexity = std::exp(ent);
  return u;
}

}  // namespace hwaga::train
