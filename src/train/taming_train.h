// The taming encoder / decoder (architecture.md §1.2-1.4) as a trainable net: each module
// registers its Params under the released key names, runs forward saving what its backward
// needs, and backward turns dL/d(output) into dL/d(input) while adding its weight gradients to
// the Params. It runs on the ops of its ParamSet (train/train_ops.h's conv-net section: the CPU's
// train/conv_ops.h, or a GPU after ParamSet::to_device); tensors live on that device.
//
//   ParamSet ps;
//   TrainEncoder enc; enc.build(ps, "stage1.encoder.", cfg);   // registers tensors in state_dict order
//   Tensor z = enc.forward(x);          // [B,3,R,R] -> [B,Z,h,w], activations saved
//   Tensor dx = enc.backward(dz);       // grads accumulated, saved activations released
//
// Every module runs one forward then one backward per step (saved tensors are per module).
// Shape legend: B batch, C channels, H/W size, R resolution, Z z_channels, h/w latent size.
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/taming.h"
#include "train/param.h"

namespace hwaga::train {

struct TrainConv2d {  // weight [Cout,Cin,k,k], bias [Cout]
  ParamSet* ps = nullptr;  // whose ops() run the module
  Param* weight = nullptr;
  Param* bias = nullptr;
  int cin = 0, cout = 0, k = 1, stride = 1, pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  Tensor x;  // saved input
  // pad: same padding on every side (1 for 3x3, 0 for 1x1)
  void build(ParamSet& ps, const std::string& name, int cin, int cout, int k, int pad);
  Tensor forward(const Tensor& x, bool save = true);  // [B,Cin,H,W] -> [B,Cout,Ho,Wo]
  Tensor backward(const Tensor& dy, bool need_dx = true);  // undefined when !need_dx
};

struct TrainGroupNorm {  // GroupNorm(32, C, eps 1e-6), optionally followed by SiLU
  ParamSet* ps = nullptr;
  Param* weight = nullptr;
  Param* bias = nullptr;
  int C = 0;
  bool silu = false;
  Tensor x, u, mean, rstd;  // saved: input, GN output before SiLU, statistics [B*32]
  void build(ParamSet& ps, const std::string& name, int C, bool silu);
  Tensor forward(const Tensor& x, bool save = true);
  Tensor backward(const Tensor& dy);
};

struct TrainResnetBlock {
  int in_ch = 0, out_ch = 0;
  TrainGroupNorm norm1;  // + SiLU
  TrainConv2d conv1;     // 3x3 in -> out
  TrainGroupNorm norm2;  // + SiLU (dropout 0)
  TrainConv2d conv2;     // 3x3 out -> out
  TrainConv2d nin_shortcut;  // 1x1, only when in != out
  void build(ParamSet& ps, const std::string& name, int in, int out);
  Tensor forward(const Tensor& x, bool save = true);
  Tensor backward(const Tensor& dy);
};

struct TrainAttnBlock {
  TrainGroupNorm norm;
  TrainConv2d q, k, v, proj_out;  // 1x1 C -> C
  Tensor qt, kt, vt, p;           // saved: q, k, v [B,C,N], softmax [B,N,N]
  void build(ParamSet& ps, const std::string& name, int C);
  Tensor forward(const Tensor& x, bool save = true);
  Tensor backward(const Tensor& dy);
};

struct TrainDownsample {  // pad (0,1,0,1) then 3x3 stride 2
  TrainConv2d conv;
  void build(ParamSet& ps, const std::string& name, int C);
};

struct TrainUpsample {  // nearest x2 then 3x3
  TrainConv2d conv;
  int64_t H = 0, W = 0;  // input size of the last forward
  void build(ParamSet& ps, const std::string& name, int C);
  Tensor forward(const Tensor& x, bool save = true);
  Tensor backward(const Tensor& dy);
};

struct TrainMid {
  TrainResnetBlock block_1;
  TrainAttnBlock attn_1;
  TrainResnetBlock block_2;
  void build(ParamSet& ps, const std::string& name, int C);
  Tensor forward(const Tensor& x, bool save = true);
  Tensor backward(const Tensor& dy);
};

struct TrainLevel {  // encoder.down.<i> / decoder.up.<i>
  std::vector<TrainResnetBlock> block;
  std::vector<TrainAttnBlock> attn;  // empty, or one per block
  bool has_resample = false;
  TrainDownsample downsample;
  TrainUpsample upsample;
};

struct TrainEncoder {  // [B,in,R,R] -> [B,Z,h,w]
  TamingConfig cfg;
  TrainConv2d conv_in;
  std::vector<TrainLevel> down;
  TrainMid mid;
  TrainGroupNorm norm_out;  // + SiLU
  TrainConv2d conv_out;
  void build(ParamSet& ps, const std::string& prefix, const TamingConfig& cfg);  // prefix "stage1.encoder."
  Tensor forward(const Tensor& x, bool save = true);
  void backward(const Tensor& dz);  // the input (pictures) needs no gradient
};

struct TrainDecoder {  // [B,Z,h,w] -> [B,out,R,R]
  TamingConfig cfg;
  TrainConv2d conv_in;
  TrainMid mid;
  std::vector<TrainLevel> up;  // up[levels-1] is the lowest resolution
  TrainGroupNorm norm_out;     // + SiLU
  TrainConv2d conv_out;
  void build(ParamSet& ps, const std::string& prefix, const TamingConfig& cfg);  // prefix "stage1.decoder."
  Tensor forward(const Tensor& z, bool save = true);
  Tensor backward(const Tensor& dy);
};

// PyTorch's default initialisation of the registered tensors, deterministic in `seed` (each
// tensor draws from its own stream, seeded by `seed` and its name, so the values do not depend on
// the registration order): Conv2d weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
// (kaiming_uniform_ with a = sqrt(5), and the bias rule), GroupNorm weight 1 and bias 0.
// Params named "<module>.weight" of rank 4 are convs, rank 1 norms; "<module>.bias" follows its weight.
void init_taming_params(ParamSet& ps, const std::string& prefix, uint64_t seed);

// Deterministic random numbers for training (no std:: distributions, whose output differs
// between standard libraries): splitmix64-seeded xoshiro256**.
class TrainRng {
 public:
  explicit TrainRng(uint64_t seed);
  uint64_t next();
  float uniform();                    // [0, 1) with 24 random bits
  float uniform(float lo, float hi);  // [lo, hi)
  float normal();                     // N(0, 1), Box-Muller
  uint64_t below(uint64_t n);         // [0, n), unbiased
 private:
  uint64_t s_[4];
};
// A 64-bit hash of a seed and a string / numbers (FNV-1a, then splitmix64), for per-tensor and
// per-step streams.
uint64_t mix_seed(uint64_t seed, const std::string& s);
uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b = 0);

class DataParallel;

// Codebook usage of a batch from its code histogram: the codes used and exp(entropy). With a
// data-parallel `dp`, the histogram is summed over the ranks first (the global batch's).
struct CodeUsage {
  int64_t used = 0;
  double perplexity = 0;
};
CodeUsage code_usage(const std::vector<int64_t>& hist, DataParallel* dp = nullptr);

}  // namespace hwaga::train
