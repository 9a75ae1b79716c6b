// conv2d: shape checks, path choice, the pointwise and im2col paths, and PackedConv2d.
// The oneDNN direct path lives in conv2d_dnnl.cpp.
//
// Threading: every path splits the output into slabs of rows (per image) and hands slabs to
// hwaga::parallel_for; each slab is computed single-threaded (see gemm_dnnl.h for why oneDNN
// does not run its own OpenMP team; the one exception is the one-time weight packing).
#include "kernels/cpu/conv2d.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/conv2d_dnnl.h"
#include "kernels/cpu/gemm.h"

namespace hwaga::cpu {
namespace {

// Legend: B batch, Cin/Cout channels, H/W input rows/cols, Ho/Wo output rows/cols,
// KK = kh*kw taps, R output rows per slab.

void check_shape(const Conv2dShape& s) {
  if (s.B < 1 || s.Cin < 1 || s.H < 1 || s.W < 1 || s.Cout < 1 || s.kh < 1 || s.kw < 1)
    fail("conv2d: expected positive sizes, found B=", s.B, " Cin=", s.Cin, " H=", s.H, " W=", s.W, " Cout=", s.Cout,
         " kh=", s.kh, " kw=", s.kw);
  if (s.stride < 1) fail("conv2d: expected stride >= 1, found ", s.stride);
  if (s.pad_top < 0 || s.pad_left < 0 || s.pad_bottom < 0 || s.pad_right < 0)
    fail("conv2d: expected pads >= 0, found top=", s.pad_top, " left=", s.pad_left, " bottom=", s.pad_bottom,
         " right=", s.pad_right);
  if (s.H + s.pad_top + s.pad_bottom < s.kh || s.W + s.pad_left + s.pad_right < s.kw)
    fail("conv2d: kernel ", s.kh, "x", s.kw, " is larger than the padded input ", s.H + s.pad_top + s.pad_bottom,
         "x", s.W + s.pad_left + s.pad_right);
}

bool same_weights(const Conv2dShape& a, const Conv2dShape& b) {
  return a.Cin == b.Cin && a.Cout == b.Cout && a.kh == b.kh && a.kw == b.kw && a.stride == b.stride &&
         a.pad_top == b.pad_top && a.pad_left == b.pad_left && a.pad_bottom == b.pad_bottom &&
         a.pad_right == b.pad_right;
}

bool is_pointwise(const Conv2dShape& s) {
  return s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad_top == 0 && s.pad_left == 0 && s.pad_bottom == 0 &&
         s.pad_right == 0;
}

// y[b][co][:] = bias[co] (or 0), for rows [o0, o1) of image b.
void fill_bias(const Conv2dShape& s, const float* bias, float* y, int64_t b, int64_t o0, int64_t o1) {
  const int64_t Ho = s.Ho(), Wo = s.Wo();
  for (int64_t co = 0; co < s.Cout; ++co) {
    float* dst = y + ((b * s.Cout + co) * Ho + o0) * Wo;
    std::fill(dst, dst + (o1 - o0) * Wo, bias ? bias[co] : 0.0f);
  }
}

// Pointwise: y[b] [Cout, H*W] = w [Cout, Cin] . x[b] [Cin, H*W] (+ bias), sgemm threads itself.
void pointwise_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  const int64_t HW = s.H * s.W;
  for (int64_t b = 0; b < s.B; ++b) {
    if (bias) parallel_for(s.Cout, 16, [&](int64_t c0, int64_t c1) {
      for (int64_t co = c0; co < c1; ++co) std::fill(y + (b * s.Cout + co) * HW, y + (b * s.Cout + co + 1) * HW, bias[co]);
    });
    sgemm(false, false, s.Cout, HW, s.Cin, 1.0f, w, s.Cin, x + b * s.Cin * HW, HW, bias ? 1.0f : 0.0f,
          y + b * s.Cout * HW, HW);
  }
}

// im2col: for a slab of output rows [o0, o1) of image b, unfold the input into
// col [Cin*KK, (o1-o0)*Wo] and multiply: y[b][:, o0:o1, :] = w [Cout, Cin*KK] . col (+ bias).
void im2col_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y,
                    bool portable) {
  const int64_t Ho = s.Ho(), Wo = s.Wo(), KK = s.kh * s.kw, CKK = s.Cin * KK;
  // Slab height: keep col near 1 MB, but give every thread at least one slab.
  int64_t R = std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(1, CKK * Wo));
  const int64_t per_image = (num_threads() + s.B - 1) / s.B;
  R = std::min(R, (Ho + per_image - 1) / per_image);
  const int64_t nslab = (Ho + R - 1) / R;
  parallel_for(s.B * nslab, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> col;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / nslab, o0 = (p % nslab) * R, o1 = std::min(Ho, o0 + R), N = (o1 - o0) * Wo;
      col.resize(size_t(CKK * N));
      for (int64_t ci = 0; ci < s.Cin; ++ci)
        for (int64_t r = 0; r < s.kh; ++r)
          for (int64_t c = 0; c < s.kw; ++c) {
            float* dst = col.data() + ((ci * s.kh + r) * s.kw + c) * N;
            for (int64_t oh = o0; oh < o1; ++oh) {
              const int64_t ih = oh * s.stride - s.pad_top + r;
              float* d = dst + (oh - o0) * Wo;
              if (ih < 0 || ih >= s.H) {
                std::fill(d, d + Wo, 0.0f);
                continue;
              }
              const float* src = x + ((b * s.Cin + ci) * s.H + ih) * s.W;
              for (int64_t ow = 0; ow < Wo; ++ow) {
                const int64_t iw = ow * s.stride - s.pad_left + c;
                d[ow] = (iw >= 0 && iw < s.W) ? src[iw] : 0.0f;
              }
            }
          }
      if (bias) fill_bias(s, bias, y, b, o0, o1);
      float* yc = y + (b * s.Cout * Ho + o0) * Wo;
      if (portable)
        sgemm_portable(false, false, s.Cout, N, CKK, 1.0f, w, CKK, col.data(), N, bias ? 1.0f : 0.0f, yc, Ho * Wo);
      else  // nested inside parallel_for: runs on this thread
        sgemm(false, false, s.Cout, N, CKK, 1.0f, w, CKK, col.data(), N, bias ? 1.0f : 0.0f, yc, Ho * Wo);
    }
  });
}

enum class Path { pointwise, direct, im2col };

// Where ConvAlgo::automatic takes Winograd F(4x4,3x3) (oneDNN jit_wino_4x3, per slab like the
// direct path). Measured on 2 threads, avx512_core (Xeon, quiet machine), ms per call, direct /
// Winograd / one-time Winograd weight transform (oneDNN's reorder on 1 thread; on 2, about half):
//   128@256  54 / 27 / 7     128@128  13 / 6.6 / 6   256->128@128  27 / 13.5 / 13
//   256@128  54 / 20 / 24    256@64   12 / 4.9 / 22  256@32  3.0 / 1.4 / 20
//   512@32   12 / 5.2 / 93   512@16  3.0 / 2.5 / 93  512@8   0.9 / 1.8 / 96
// Winograd is 2-2.5x faster from 32x32 up, but its weight transform is paid by the first call,
// i.e. by a one-picture decode. From 128x128 up it pays for itself within that first call; at
// 64x64 it about breaks even there (whole RQ-VAE decode, first call +15 ms, later ones -40 ms);
// below, the gain per call is under a sixth of the transform, so those stay direct.
bool winograd_pays(const Conv2dShape& s) {
  if (s.kh != 3 || s.kw != 3 || s.stride != 1) return false;
  return s.Cin >= 64 && s.Cout >= 64 && s.Cin <= 512 && s.Cout <= 512 && s.Ho() * s.Wo() >= 64 * 64;
}

Path choose_path(const Conv2dShape& s) {
#ifdef HWAGA_HAVE_DNNL
  // Measured: with 3 input channels oneDNN's direct kernel loses to im2col + sgemm (the
  // blocked-layout reorder of a 3-channel input is mostly padding). 1x1 convs also go direct:
  // oneDNN's 1x1 kernel beat one sgemm per image (nin_shortcut 128->256 at 128x128: 106-111
  // vs 78-81 GFLOP/s; wide-N sgemm is a weak shape of oneDNN's sgemm).
  if (s.Cin >= 8) return Path::direct;
#endif
  if (is_pointwise(s)) return Path::pointwise;
  return Path::im2col;
}

}  // namespace

struct PackedConv2d::Impl {
  Conv2dShape s;                        // weight fields; B/H/W of the first plan
  std::vector<float> w_own, bias_own;   // empty when borrowing (conv2d_forward)
  const float* w = nullptr;
  const float* bias = nullptr;
  ConvAlgo algo = ConvAlgo::direct;
  std::mutex mu;
  // oneDNN plans by (B, H, W, threads); nullptr when oneDNN could not plan that size.
  std::map<std::tuple<int64_t, int64_t, int64_t, int>, std::shared_ptr<DnnlConvPlan>> plans;
  // oneDNN's layouts of w, shared by the plans of each algorithm
  std::shared_ptr<DnnlWeights> packed_direct, packed_winograd;

  bool use_winograd(const Conv2dShape& x) const {
    return algo == ConvAlgo::winograd || (algo == ConvAlgo::automatic && winograd_pays(x));
  }

  std::shared_ptr<DnnlConvPlan> plan_for(const Conv2dShape& x) {
    std::lock_guard<std::mutex> lk(mu);
    auto key = std::make_tuple(x.B, x.H, x.W, num_threads());
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    std::shared_ptr<DnnlConvPlan> plan;
    if (use_winograd(x)) plan = dnnl_conv_plan(x, w, bias, packed_winograd, true);
    if (!plan) plan = dnnl_conv_plan(x, w, bias, packed_direct, false);
    plans.emplace(key, plan);
    return plan;
  }

  void forward(const Conv2dShape& x_shape, const float* x, float* y) {
    switch (choose_path(x_shape)) {
      case Path::pointwise: return pointwise_forward(x_shape, x, w, bias, y);
      case Path::direct:
        if (auto plan = plan_for(x_shape)) return dnnl_conv_run(*plan, x, y);
        return im2col_forward(x_shape, x, w, bias, y, false);
      case Path::im2col: return im2col_forward(x_shape, x, w, bias, y, false);
    }
  }

  std::string name(const Conv2dShape& x_shape) {
    switch (choose_path(x_shape)) {
      case Path::pointwise: return std::string("pointwise sgemm [") + sgemm_kernel_name() + "]";
      case Path::direct:
        if (auto plan = plan_for(x_shape)) return dnnl_conv_name(*plan);
        [[fallthrough]];
      case Path::im2col: return std::string("im2col + sgemm [") + sgemm_kernel_name() + "]";
    }
    return "?";
  }
};

PackedConv2d::PackedConv2d(const Conv2dShape& s, const float* w, const float* bias, ConvAlgo algo, bool borrow)
    : impl_(std::make_unique<Impl>()) {
  check_shape(s);
  if (!w) fail("PackedConv2d: null weight pointer");
  impl_->s = s;
  impl_->algo = algo;
  if (borrow) {
    impl_->w = w;
    impl_->bias = bias;
  } else {
    impl_->w_own.assign(w, w + s.Cout * s.Cin * s.kh * s.kw);
    impl_->w = impl_->w_own.data();
    if (bias) {
      impl_->bias_own.assign(bias, bias + s.Cout);
      impl_->bias = impl_->bias_own.data();
    }
  }
  if (choose_path(s) == Path::direct) impl_->plan_for(s);  // pack the weights now
}

PackedConv2d::~PackedConv2d() = default;
PackedConv2d::PackedConv2d(PackedConv2d&&) noexcept = default;
PackedConv2d& PackedConv2d::operator=(PackedConv2d&&) noexcept = default;

void PackedConv2d::forward(const Conv2dShape& s, const float* x, float* y) const {
  check_shape(s);
  if (!same_weights(s, impl_->s))
    fail("PackedConv2d::forward: shape has Cin=", s.Cin, " Cout=", s.Cout, " kernel ", s.kh, "x", s.kw, " stride ",
         s.stride, " but the layer was packed for Cin=", impl_->s.Cin, " Cout=", impl_->s.Cout, " kernel ",
         impl_->s.kh, "x", impl_->s.kw, " stride ", impl_->s.stride, " (pads must match too)");
  if (!x || !y) fail("PackedConv2d::forward: null input or output pointer");
  impl_->forward(s, x, y);
}

std::string PackedConv2d::kernel_name(const Conv2dShape& s) const {
  check_shape(s);
  return impl_->name(s);
}

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  check_shape(s);
  if (!x || !w || !y) fail("conv2d_forward: null input, weight or output pointer");
  PackedConv2d::Impl impl;  // borrows w and bias: no copy
  impl.s = s;
  impl.w = w;
  impl.bias = bias;
  impl.forward(s, x, y);
}

std::string conv2d_kernel_name(const Conv2dShape& s) {
  check_shape(s);
  std::vector<float> w(size_t(s.Cout * s.Cin * s.kh * s.kw), 0.0f);
  PackedConv2d::Impl impl;
  impl.s = s;
  impl.w = w.data();
  return impl.name(s);
}

void conv2d_forward_portable(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  check_shape(s);
  if (!x || !w || !y) fail("conv2d_forward_portable: null input, weight or output pointer");
  im2col_forward(s, x, w, bias, y, true);
}

}  // namespace hwaga::cpu
