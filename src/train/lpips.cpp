// LPIPS on the CPU (see lpips.h). Legend: B batch, C channels, H/W size, N = H*W positions.
#include "train/lpips.h"

#include <cmath>
#include <cstring>
#include <iterator>

#include "core/error.h"
#include "core/threads.h"
#include "io/safetensors.h"
#include "io/torch_checkpoint.h"
#include "train/conv_ops.h"

namespace hwaga::train {

namespace {

// VGG16's feature layers up to relu5_3: a conv 3x3 (+ ReLU) of that many channels, or -1 for a
// 2x2 max pool.
constexpr int kPlan[] = {64, 64, -1, 128, 128, -1, 256, 256, 256, -1, 512, 512, 512, -1, 512, 512, 512};
constexpr int kConvs = 13;
// torchvision's index in vgg16().features of each conv
constexpr int kTorchIndex[kConvs] = {0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28};
// the convs whose ReLU output LPIPS reads: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
constexpr int kTapConv[5] = {1, 3, 6, 9, 12};
constexpr int kTapChannels[5] = {64, 128, 256, 512, 512};
constexpr float kShift[3] = {-0.030f, -0.088f, -0.188f};
constexpr float kScale[3] = {0.458f, 0.448f, 0.450f};
constexpr double kNormEps = 1e-10;

int lpips_slice(int torch_index) {  // LPIPS's net.slice<k> holding a features index
  return torch_index < 4 ? 1 : torch_index < 9 ? 2 : torch_index < 16 ? 3 : torch_index < 23 ? 4 : 5;
}

cpu::Conv2dShape conv3(const Tensor& x, int64_t cout) {
  return {x.dim(0), x.dim(1), x.dim(2), x.dim(3), cout, 3, 3, 1, 1, 1, 1, 1};
}

// The activations of one picture batch through the plan: ins[i] is op i's input, outs[i] its
// output (after the ReLU for convs).
struct Trace {
  std::vector<Tensor> ins, outs;
  std::array<Tensor, 5> taps;
};

}  // namespace

Lpips Lpips::load(const std::vector<std::string>& files) {
  if (files.empty()) fail("LPIPS: no weight files given");
  TensorMap all;
  for (const std::string& f : files) {
    TensorMap m;
    const bool st = f.size() >= 12 && f.compare(f.size() - 12, 12, ".safetensors") == 0;
    if (st) m = read_safetensors(f).tensors;
    else m = load_torch_state_dict_first_of(f, {"state_dict", ""});
    for (auto& [k, v] : m)
      if (!all.count(k)) all[k] = v;
  }
  std::string src;
  for (const std::string& f : files) src += (src.empty() ? "" : ", ") + f;
  return Lpips(all, src);
}

Lpips::Lpips(const TensorMap& m, const std::string& source) {
  auto find = [&](const std::vector<std::string>& names, const Shape& shape, const std::string& what) {
    for (const std::string& n : names) {
      auto it = m.find(n);
      if (it == m.end()) continue;
      if (it->second.shape() != shape)
        fail(source, ": LPIPS ", what, " ", n, " has shape ", shape_str(it->second.shape()), ", expected ",
             shape_str(shape));
      if (it->second.dtype() != DType::F32 && it->second.dtype() != DType::BF16 && it->second.dtype() != DType::F16)
        fail(source, ": LPIPS ", what, " ", n, " is ", dtype_name(it->second.dtype()), ", expected a float tensor");
      return it->second.to(DType::F32);
    }
    fail(source, ": no LPIPS ", what, " (looked for ", names[0], " or ", names[1],
         "; give torchvision's VGG16 weights and the LPIPS heads, e.g. vgg16-397923af.pth,vgg.pth)");
  };
  int64_t cin = 3;
  int conv = 0;
  for (int p : kPlan) {
    if (p < 0) continue;
    const int t = kTorchIndex[conv];
    const std::string tv = "features." + std::to_string(t);
    const std::string lp = "net.slice" + std::to_string(lpips_slice(t)) + "." + std::to_string(t);
    Conv c;
    c.w = find({tv + ".weight", lp + ".weight"}, {p, cin, 3, 3}, "VGG16 conv weight");
    c.b = find({tv + ".bias", lp + ".bias"}, {p}, "VGG16 conv bias");
    convs_.push_back(c);
    cin = p;
    ++conv;
  }
  for (int k = 0; k < 5; ++k) {
    const std::string l = "lin" + std::to_string(k) + ".model.";
    heads_[size_t(k)] = find({l + "1.weight", l + "0.weight"}, {1, kTapChannels[k], 1, 1}, "head").reshape({kTapChannels[k]});
  }
}

double Lpips::forward_backward(const Tensor& x, const Tensor& target, Tensor* dx, float scale) const {
  HWAGA_CHECK(x.ndim() == 4 && x.dim(1) == 3 && x.shape() == target.shape(), "LPIPS: expected two [B,3,H,W] batches, found ",
              shape_str(x.shape()), " and ", shape_str(target.shape()));
  if (x.dim(2) < 16 || x.dim(3) < 16) fail("LPIPS needs pictures of at least 16x16, found ", x.dim(2), "x", x.dim(3));
  const int64_t B = x.dim(0);

  auto run = [&](const Tensor& in, bool keep) {
    Trace tr;
    Tensor h = Tensor::empty(in.shape());
    const int64_t N = in.dim(2) * in.dim(3);
    for (int64_t b = 0; b < B; ++b)
      for (int c = 0; c < 3; ++c)
        for (int64_t i = 0; i < N; ++i) {
          const int64_t o = (b * 3 + c) * N + i;
          h.f32()[o] = (in.f32()[o] - kShift[c]) / kScale[c];
        }
    int conv = 0, tap = 0;
    for (int p : kPlan) {
      Tensor y;
      if (p < 0) {
        y = Tensor::empty({B, h.dim(1), h.dim(2) / 2, h.dim(3) / 2});
        max_pool2x2_forward(h.f32(), y.f32(), B * h.dim(1), h.dim(2), h.dim(3));
      } else {
        const cpu::Conv2dShape s = conv3(h, p);
        y = Tensor::empty({B, p, s.Ho(), s.Wo()});
        train::conv2d_forward(s, h.f32(), convs_[size_t(conv)].w.f32(), convs_[size_t(conv)].b.f32(), y.f32());
        leaky_relu_forward(y.f32(), y.f32(), y.numel(), 0.0f);
        if (tap < 5 && conv == kTapConv[tap]) tr.taps[size_t(tap++)] = y;
        ++conv;
      }
      if (keep) {
        tr.ins.push_back(h);
        tr.outs.push_back(y);
      }
      h = y;
    }
    return tr;
  };
  const Trace a = run(x, dx != nullptr), t = run(target, false);

  // the distance per picture, and its gradient at each tap of `a`
  std::vector<double> val(size_t(B), 0.0);
  std::array<Tensor, 5> dtap;
  for (int k = 0; k < 5; ++k) {
    const Tensor& f0 = a.taps[size_t(k)];
    const Tensor& f1 = t.taps[size_t(k)];
    const int64_t C = f0.dim(1), N = f0.dim(2) * f0.dim(3);
    const float* w = heads_[size_t(k)].f32();
    std::vector<double> r(size_t(B * N));
    if (dx) dtap[size_t(k)] = Tensor::empty(f0.shape());
    const double g = double(scale) / double(B * N);  // d(loss)/d(r at one position)
    parallel_for(B * N, 16, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t b = q / N, i = q % N;
        const float* p0 = f0.f32() + b * C * N + i;
        const float* p1 = f1.f32() + b * C * N + i;
        double s0 = 0, s1 = 0;
        for (int64_t c = 0; c < C; ++c) {
          s0 += double(p0[c * N]) * p0[c * N];
          s1 += double(p1[c * N]) * p1[c * N];
        }
        const double n0 = std::sqrt(s0), n1 = std::sqrt(s1), d0 = n0 + kNormEps, d1 = n1 + kNormEps;
        double acc = 0, dot = 0;  // dot = sum_c dL/df0_c * t0_c
        for (int64_t c = 0; c < C; ++c) {
          const double diff = p0[c * N] / d0 - p1[c * N] / d1;
          acc += w[c] * diff * diff;
          dot += 2.0 * g * w[c] * diff * p0[c * N];
        }
        r[size_t(q)] = acc;
        if (!dx) continue;
        float* o = dtap[size_t(k)].f32() + b * C * N + i;
        const double corr = n0 > 0 ? dot / (n0 * d0 * d0) : 0.0;
        for (int64_t c = 0; c < C; ++c) {
          const double diff = p0[c * N] / d0 - p1[c * N] / d1;
          o[c * N] = float(2.0 * g * w[c] * diff / d0 - p0[c * N] * corr);
        }
      }
    });
    for (int64_t b = 0; b < B; ++b) {
      double s = 0;
      for (int64_t i = 0; i < N; ++i) s += r[size_t(b * N + i)];
      val[size_t(b)] += s / double(N);
    }
  }
  double loss = 0;
  for (double v : val) loss += v;
  loss /= double(B);
  if (!dx) return loss;

  // backward through the frozen net, adding each tap's gradient where its ReLU output is
  HWAGA_CHECK(dx->shape() == x.shape(), "LPIPS: gradient ", shape_str(dx->shape()), " for ", shape_str(x.shape()));
  Tensor dh = Tensor::zeros(a.outs.back().shape());
  int conv = kConvs, tap = 4;
  for (size_t i = std::size(kPlan); i-- > 0;) {
    const Tensor& in = a.ins[i];
    const Tensor& out = a.outs[i];
    Tensor din = Tensor::empty(in.shape());
    if (kPlan[i] < 0) {
      max_pool2x2_backward(in.f32(), dh.f32(), din.f32(), B * in.dim(1), in.dim(2), in.dim(3));
    } else {
      --conv;
      if (tap >= 0 && conv == kTapConv[tap]) add_inplace(dh.f32(), dtap[size_t(tap--)].f32(), dh.numel());
      leaky_relu_backward(out.f32(), dh.f32(), dh.f32(), dh.numel(), 0.0f);
      train::conv2d_backward(conv3(in, kPlan[i]), in.f32(), convs_[size_t(conv)].w.f32(), dh.f32(), din.f32(), nullptr,
                      nullptr);
    }
    dh = din;
  }
  const int64_t N = x.dim(2) * x.dim(3);
  for (int64_t b = 0; b < B; ++b)
    for (int c = 0; c < 3; ++c)
      for (int64_t i = 0; i < N; ++i) {
        const int64_t o = (b * 3 + c) * N + i;
        dx->f32()[o] += dh.f32()[o] / kScale[c];
      }
  return loss;
}

}  // namespace hwaga::train
