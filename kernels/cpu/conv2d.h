// 2-D convolution on the CPU, NCHW f32:
//   x [B,Cin,H,W], w [Cout,Cin,kh,kw], bias [Cout] or nullptr -> y [B,Cout,Ho,Wo]
//   Ho = (H + pad_top + pad_bottom - kh) / stride + 1, likewise Wo.
// Strict f32 numerics. Threaded over hwaga's pool (num_threads() threads).
//
// Paths (chosen per shape, see conv2d.cpp):
//   pointwise   1x1, stride 1, no pad: one sgemm per image, y[b] = w . x[b]
//   direct      oneDNN's JIT direct convolution, run per slab of output rows on each thread
//   winograd    oneDNN's Winograd F(4x4,3x3) convolution, per slab likewise; only when the caller
//               allows it (ConvAlgo below): its f32 rounding error is larger than a direct sum's
//   im2col      unfold a slab of rows, then sgemm (small Cin, and every k>1 conv without oneDNN)
// Bad shapes or arguments throw hwaga::Error.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace hwaga::cpu {

struct Conv2dShape {
  int64_t B, Cin, H, W;     // input
  int64_t Cout, kh, kw;     // weights
  int stride;
  int pad_top, pad_left, pad_bottom, pad_right;
  int64_t Ho() const { return (H + pad_top + pad_bottom - kh) / stride + 1; }
  int64_t Wo() const { return (W + pad_left + pad_right - kw) / stride + 1; }
};

// Which algorithm a convolution may use.
//   direct     direct sums only: error within ~K eps sum|x w| (K = Cin*kh*kw, eps = 2^-24).
//   automatic  Winograd for the 3x3 stride-1 shapes where it was measured faster (the table in
//              conv2d.cpp), direct elsewhere. For layers whose output tolerates a few times
//              the rounding error (decoders), not for one feeding an argmin (encoders).
//   winograd   Winograd wherever oneDNN has it for the shape (tests, benchmarks).
enum class ConvAlgo { direct, automatic, winograd };

// One-shot convolution: repacks the weights on every call. Layers that run more than once
// should hold a PackedConv2d instead.
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y);

// Which path / oneDNN implementation conv2d_forward takes for this shape (for benchmarks).
std::string conv2d_kernel_name(const Conv2dShape& s);

// Same convolution with the weights copied and repacked once, at construction, and the
// per-input-size execution plans cached. s gives Cin/Cout/kernel/stride/pads; its B, H, W
// are only the first input size to plan for. forward() accepts any B, H, W with the same
// weight fields; it is safe to call from several threads (the plan cache is locked).
// borrow: keep pointers to w and bias instead of copies (they must outlive the object and
// not change).
class PackedConv2d {
 public:
  PackedConv2d(const Conv2dShape& s, const float* w, const float* bias, ConvAlgo algo = ConvAlgo::direct,
               bool borrow = false);
  ~PackedConv2d();
  PackedConv2d(PackedConv2d&&) noexcept;
  PackedConv2d& operator=(PackedConv2d&&) noexcept;

  // x [s.B, Cin, s.H, s.W] -> y [s.B, Cout, s.Ho(), s.Wo()]
  void forward(const Conv2dShape& s, const float* x, float* y) const;
  std::string kernel_name(const Conv2dShape& s) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The im2col + sgemm_portable path, whatever the build: lets tests compare two independent
// implementations on machines with oneDNN. Same contract as conv2d_forward.
void conv2d_forward_portable(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y);

}  // namespace hwaga::cpu
