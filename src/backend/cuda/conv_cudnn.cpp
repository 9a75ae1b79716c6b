#include "backend/cuda/conv_cudnn.h"

#include <cstdio>
#include <vector>

#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/im2col.cuh"

#pragma GCC diagnostic ignored "-Wdeprecated-declarations"  // the cuDNN 9 legacy conv API

namespace hwaga::cuda {

namespace {
constexpr size_t kMaxWorkspace = size_t(1) << 30;

#ifdef HWAGA_HAVE_CUDNN
// RAII holders for the descriptors of one cuDNN call.
struct Descs {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  Descs() {
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
  }
  ~Descs() {
    cudnnDestroyConvolutionDescriptor(conv);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyTensorDescriptor(x);
  }
};
#endif
}  // namespace

Conv2d::~Conv2d() = default;

Tensor Conv2d::forward(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p) {
  HWAGA_CHECK(x.ndim() == 4 && w.ndim() == 4, "conv2d: expected x [B,Cin,H,W] and w [Cout,Cin,kh,kw], got x ",
              shape_str(x.shape()), " and w ", shape_str(w.shape()));
  const int64_t B = x.dim(0), Cin = x.dim(1), H = x.dim(2), W = x.dim(3);
  const int64_t Cout = w.dim(0), kh = w.dim(2), kw = w.dim(3);
  HWAGA_CHECK(w.dim(1) == Cin, "conv2d: weight ", shape_str(w.shape()), " expects ", w.dim(1),
              " input channels, x ", shape_str(x.shape()), " has ", Cin);
  HWAGA_CHECK(!b.defined() || (b.ndim() == 1 && b.dim(0) == Cout), "conv2d: bias ", shape_str(b.shape()),
              " does not match ", Cout, " output channels");
  HWAGA_CHECK(p.stride >= 1 && p.pad_top >= 0 && p.pad_bottom >= 0 && p.pad_left >= 0 && p.pad_right >= 0,
              "conv2d: bad stride/padding");
  const int64_t Hp = H + p.pad_top + p.pad_bottom, Wp = W + p.pad_left + p.pad_right;
  HWAGA_CHECK(Hp >= kh && Wp >= kw, "conv2d: padded input ", Hp, "x", Wp, " smaller than the kernel ", kh, "x",
              kw);
  const int64_t Ho = (Hp - kh) / p.stride + 1, Wo = (Wp - kw) / p.stride + 1;
  Tensor y = ctx_.empty({B, Cout, Ho, Wo});
  flops += 2.0 * double(B) * double(Cout) * double(Ho * Wo) * double(Cin * kh * kw);
  if (y.numel() == 0) return y;

  // cuDNN pads symmetrically; the taming Downsample pads only bottom/right, so pad explicitly then.
  Tensor src = x;
  int ph = p.pad_top, pw = p.pad_left;
  int64_t Hs = H, Ws = W;
  if (p.pad_top != p.pad_bottom || p.pad_left != p.pad_right) {
    src = ctx_.empty({B, Cin, Hp, Wp});
    pad2d_f32(x.ptr<float>(), src.ptr<float>(), B * Cin, int(H), int(W), p.pad_top, p.pad_bottom, p.pad_left,
              p.pad_right, ctx_.stream);
    ph = pw = 0;
    Hs = Hp;
    Ws = Wp;
  }
  const float* bias = b.defined() ? b.ptr<float>() : nullptr;

#ifdef HWAGA_HAVE_CUDNN
  if (ctx_.dnn && !cudnn_broken_) try {
    if (w.dtype() == DType::F32) {
      Key key{int(DType::F32), B, Cin, Hs, Ws, Cout, kh, kw, ph, pw, p.stride};
      run_cudnn(key, src.data(), w.data(), y.data());
      if (bias) add_bias_nchw_f32(y.ptr<float>(), bias, B, Cout, Ho * Wo, ctx_.stream);
      return y;
    }
    HWAGA_CHECK(w.dtype() == DType::BF16, "conv2d: weight dtype ", dtype_name(w.dtype()),
                " not supported (f32 or bf16)");
    // bf16 NHWC: x -> bf16 [B,Hs,Ws,Cin]; y bf16 [B,Ho,Wo,Cout] -> f32 NCHW + bias in one pass.
    std::shared_ptr<void> xh = ctx_.scratch(size_t(B * Hs * Ws * Cin) * 2);
    transpose_f32_to_bf16(src.ptr<float>(), static_cast<uint16_t*>(xh.get()), B, Cin, Hs * Ws, ctx_.stream);
    std::shared_ptr<void> yh = ctx_.scratch(size_t(B * Ho * Wo * Cout) * 2);
    Key key{int(DType::BF16), B, Cin, Hs, Ws, Cout, kh, kw, ph, pw, p.stride};
    run_cudnn(key, xh.get(), weight_krsc(w), yh.get());
    transpose_bf16_to_f32_bias(static_cast<const uint16_t*>(yh.get()), y.ptr<float>(), bias, B, Ho * Wo, Cout,
                               ctx_.stream);
    return y;
  } catch (const Error& e) {
    // One shot on a machine we cannot test on: rather than lose every conv net, fall back to
    // the im2col path (correct, slower) and say so loudly, once.
    std::fprintf(stderr, "hwaga: WARNING: cuDNN convolution failed, using im2col + cuBLAS from now on: %s\n",
                 e.what());
    cudnn_broken_ = true;
    fallbacks++;
  }
#endif
  run_im2col(src.ptr<float>(), w, y.ptr<float>(), B, Cin, Hs, Ws, Cout, kh, kw, ph, pw, p.stride, Ho, Wo);
  if (bias) add_bias_nchw_f32(y.ptr<float>(), bias, B, Cout, Ho * Wo, ctx_.stream);
  return y;
}

const void* Conv2d::weight_krsc(const Tensor& w) {
  auto it = krsc_.find(w.data());
  if (it != krsc_.end() && it->second.src.shape() == w.shape()) return it->second.krsc.data();
  Tensor k = ctx_.empty(w.shape(), DType::BF16);  // holds [Cout, kh, kw, Cin]
  transpose_bf16(w.ptr<uint16_t>(), k.ptr<uint16_t>(), w.dim(0), w.dim(1), w.dim(2) * w.dim(3), ctx_.stream);
  krsc_[w.data()] = Krsc{w, k};  // keeping `w` alive keeps its address from being reused
  return k.data();
}

void Conv2d::run_cudnn(const Key& key, const void* x, const void* w, void* y) {
#ifdef HWAGA_HAVE_CUDNN
  auto [dt, B, Cin, H, W, Cout, kh, kw, ph, pw, stride] = key;
  const bool bf16 = dt == int(DType::BF16);
  const cudnnDataType_t t = bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
  const cudnnTensorFormat_t f = bf16 ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
  const int64_t Ho = (H + 2 * ph - kh) / stride + 1, Wo = (W + 2 * pw - kw) / stride + 1;
  HWAGA_CHECK(B < (int64_t(1) << 31) && Cin * H * W < (int64_t(1) << 31) && Cout * Ho * Wo < (int64_t(1) << 31),
              "conv2d: tensor too large for cuDNN's 32-bit descriptors");
  Descs d;
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(d.x, f, t, int(B), int(Cin), int(H), int(W)));
  CUDNN_CHECK(cudnnSetFilter4dDescriptor(d.w, t, f, int(Cout), int(Cin), int(kh), int(kw)));
  CUDNN_CHECK(cudnnSetConvolution2dDescriptor(d.conv, ph, pw, stride, stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                              CUDNN_DATA_FLOAT));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(d.y, f, t, int(B), int(Cout), int(Ho), int(Wo)));
  // f32: FMA math only (CUDNN_DEFAULT_MATH would allow TF32 on A100/H100).
  const cudnnMathType_t want = bf16 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
  CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv, want));
  const float alpha = 1.0f, beta = 0.0f;

  auto it = algos_.find(key);
  if (it != algos_.end()) {
    const Choice& c = it->second;
    CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv, cudnnMathType_t(c.math)));
    std::shared_ptr<void> ws = c.workspace ? ctx_.scratch(c.workspace) : nullptr;
    CUDNN_CHECK(cudnnConvolutionForward(ctx_.dnn, &alpha, d.x, x, d.w, w, d.conv, cudnnConvolutionFwdAlgo_t(c.algo),
                                        ws.get(), c.workspace, &beta, d.y, y));
    return;
  }

  // First time this shape is seen: rank the algorithms, then take the first one that runs.
  std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(CUDNN_CONVOLUTION_FWD_ALGO_COUNT);
  int n = 0;
  bool found = false;
  if (find_) {
    std::shared_ptr<void> ws = ctx_.scratch(kMaxWorkspace);
    cudnnStatus_t st = cudnnFindConvolutionForwardAlgorithmEx(ctx_.dnn, d.x, x, d.w, w, d.conv, d.y, y,
                                                              int(perf.size()), &n, perf.data(), ws.get(),
                                                              kMaxWorkspace);
    found = st == CUDNN_STATUS_SUCCESS && n > 0;
  }
  if (!found) CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(ctx_.dnn, d.x, d.w, d.conv, d.y,
                                                                 int(perf.size()), &n, perf.data()));
  std::string tried;
  for (int i = 0; i < n; ++i) {
    const auto& pr = perf[size_t(i)];
    if (pr.status != CUDNN_STATUS_SUCCESS) continue;
    if (!bf16 && (pr.mathType == CUDNN_TENSOR_OP_MATH || pr.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION))
      continue;  // would round the f32 inputs to TF32
    cudnnMathType_t math = bf16 ? pr.mathType : CUDNN_FMA_MATH;
    if (cudnnSetConvolutionMathType(d.conv, math) != CUDNN_STATUS_SUCCESS) continue;
    size_t wsb = 0;
    if (cudnnGetConvolutionForwardWorkspaceSize(ctx_.dnn, d.x, d.w, d.conv, d.y, pr.algo, &wsb) !=
            CUDNN_STATUS_SUCCESS || wsb > kMaxWorkspace)
      continue;
    std::shared_ptr<void> ws = wsb ? ctx_.scratch(wsb) : nullptr;
    cudnnStatus_t st = cudnnConvolutionForward(ctx_.dnn, &alpha, d.x, x, d.w, w, d.conv, pr.algo, ws.get(), wsb,
                                               &beta, d.y, y);
    if (st == CUDNN_STATUS_SUCCESS) {
      algos_[key] = Choice{int(pr.algo), int(math), wsb};
      return;
    }
    tried += std::string(" algo ") + std::to_string(int(pr.algo)) + ": " + cudnnGetErrorString(st) + ";";
  }
  fail("conv2d: cuDNN found no working algorithm for x [", B, ",", Cin, ",", H, ",", W, "] w [", Cout, ",", Cin,
       ",", kh, ",", kw, "] pad ", ph, ",", pw, " stride ", stride, " (", bf16 ? "bf16 NHWC" : "f32 NCHW", ");",
       tried.empty() ? " no candidates" : tried, " [", __FILE__, ":", __LINE__, "]");
#else
  fail("conv2d: built without cuDNN");
#endif
}

void Conv2d::run_im2col(const float* x, const Tensor& w, float* y, int64_t B, int64_t Cin, int64_t H, int64_t W,
                        int64_t Cout, int64_t kh, int64_t kw, int ph, int pw, int stride, int64_t Ho, int64_t Wo) {
  const int64_t K2 = Cin * kh * kw, P = Ho * Wo;
  HWAGA_CHECK(K2 < (int64_t(1) << 31) && P < (int64_t(1) << 31) && Cout < (int64_t(1) << 31),
              "conv2d: sizes too large for the im2col path");
  const float* wf = w.ptr<float>();
  std::shared_ptr<void> wtmp;
  if (w.dtype() == DType::BF16) {
    wtmp = ctx_.scratch(size_t(w.numel()) * 4);
    bf16_to_f32(w.ptr<uint16_t>(), static_cast<float*>(wtmp.get()), w.numel(), ctx_.stream);
    wf = static_cast<const float*>(wtmp.get());
  } else {
    HWAGA_CHECK(w.dtype() == DType::F32, "conv2d: weight dtype ", dtype_name(w.dtype()), " not supported");
  }
  std::shared_ptr<void> col = ctx_.scratch(size_t(K2 * P) * 4);
  const float alpha = 1.0f, beta = 0.0f;
  for (int64_t b = 0; b < B; ++b) {
    im2col_f32(x + b * Cin * H * W, static_cast<float*>(col.get()), int(Cin), int(H), int(W), int(kh), int(kw), ph,
               pw, stride, int(Ho), int(Wo), ctx_.stream);
    // y_b [Cout,P] row-major = w [Cout,K2] . col [K2,P]: column-major y^T[P,Cout] = col^T . w^T.
    CUBLAS_CHECK(cublasSgemm(ctx_.blas, CUBLAS_OP_N, CUBLAS_OP_N, int(P), int(Cout), int(K2), &alpha,
                             static_cast<const float*>(col.get()), int(P), wf, int(K2), &beta, y + b * Cout * P,
                             int(P)));
  }
}

}  // namespace hwaga::cuda
