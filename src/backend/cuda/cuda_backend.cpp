// The CUDA backend (see cuda_backend.h). Each operator checks its inputs, allocates its output
// from the caching allocator, and launches the kernels of kernels/cuda on the backend's stream.
#include "backend/cuda/cuda_backend.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "backend/cuda/conv_cudnn.h"
#include "backend/cuda/cuda_context.h"
#include "backend/cuda/cuda_sampler.h"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/group_norm.cuh"
#include "kernels/cuda/quantize.cuh"
#include "kernels/cuda/softmax.cuh"
#include "kernels/cuda/transformer_ops.cuh"

namespace hwaga {
namespace {

bool is_float(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

// A recorded sampling step (Backend::capture_end). Destroying it while launches are still queued
// is allowed: CUDA frees the executable graph once they finish.
class CudaStepGraph final : public Backend::StepGraph {
 public:
  CudaStepGraph(cudaGraphExec_t exec, cudaStream_t stream, int64_t* launches)
      : exec_(exec), stream_(stream), launches_(launches) {}
  ~CudaStepGraph() override { cudaGraphExecDestroy(exec_); }
  void launch() override {
    CUDA_CHECK(cudaGraphLaunch(exec_, stream_));
    ++*launches_;
  }

 private:
  cudaGraphExec_t exec_;
  cudaStream_t stream_;
  int64_t* launches_;  // the backend's counter (the backend outlives its graphs)
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& opts) : opts_(opts) {
    ctx_.device = opts.device;
    CUDA_CHECK(cudaSetDevice(opts.device));
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, opts.device));
    gpu_name_ = prop.name;
    sm_ = prop.major * 10 + prop.minor;
    num_sms_ = prop.multiProcessorCount;
    CUDA_CHECK(cudaStreamCreateWithFlags(&ctx_.stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&ctx_.blas));
    CUBLAS_CHECK(cublasSetStream(ctx_.blas, ctx_.stream));
    CUBLAS_CHECK(cublasSetMathMode(ctx_.blas, CUBLAS_DEFAULT_MATH));  // f32 stays f32: no TF32
    CUBLAS_CHECK(cublasLtCreate(&ctx_.lt));
#ifdef HWAGA_HAVE_CUDNN
    cudnnStatus_t st = cudnnCreate(&ctx_.dnn);
    if (st == CUDNN_STATUS_SUCCESS) {
      CUDNN_CHECK(cudnnSetStream(ctx_.dnn, ctx_.stream));
      size_t v = cudnnGetVersion();
      dnn_note_ = "cuDNN " + std::to_string(v / 10000) + "." + std::to_string((v % 10000) / 100);
    } else {
      ctx_.dnn = nullptr;
      dnn_note_ = std::string("no cuDNN (") + cudnnGetErrorString(st) + "): im2col convs";
    }
#else
    dnn_note_ = "no cuDNN: im2col convs";
#endif
    ctx_.alloc = std::make_shared<cuda::CachingAllocator>(opts.device);
    conv_ = std::make_unique<cuda::Conv2d>(ctx_, opts.cudnn_find);
  }

  ~CudaBackend() override {
    cudaStreamSynchronize(ctx_.stream);
    conv_.reset();
#ifdef HWAGA_HAVE_CUDNN
    if (ctx_.dnn) cudnnDestroy(ctx_.dnn);
#endif
    cublasLtDestroy(ctx_.lt);
    cublasDestroy(ctx_.blas);
    cudaStreamDestroy(ctx_.stream);
    // The allocator lives on in the deleters of tensors that outlive the backend; their blocks
    // are freed with it.
  }

  Device device() const override { return Device::CUDA; }
  std::string name() const override {
    std::string s = "cuda (" + gpu_name_ + ", sm_" + std::to_string(sm_) + ", " + dnn_note_;
    if (opts_.bf16_conv_weights) s += ", bf16 conv weights";
    if (conv_ && conv_->fallbacks) s += ", cuDNN FAILED: im2col convs";
    return s + ")";
  }

  Tensor upload(const Tensor& host, DType dtype) override {
    HWAGA_CHECK(host.defined() || host.numel() == 0, "upload: undefined tensor");
    if (opts_.bf16_conv_weights && dtype == DType::F32 && host.ndim() == 4 && is_float(host.dtype()))
      dtype = DType::BF16;
    if (host.device() == Device::CUDA) {
      if (host.dtype() == dtype) return host;
      return host.dtype() == DType::F32 && dtype == DType::BF16 ? to_bf16(host) : to_f32(host);
    }
    Tensor src = host;
    if (host.dtype() != dtype) {
      HWAGA_CHECK(is_float(host.dtype()) && is_float(dtype), "upload: cannot convert ", dtype_name(host.dtype()),
                  " to ", dtype_name(dtype));
      src = host.to(dtype);
    }
    Tensor d = ctx_.empty(src.shape(), dtype);
    if (d.nbytes()) {
      CUDA_CHECK(cudaMemcpyAsync(d.data(), src.data(), d.nbytes(), cudaMemcpyHostToDevice, ctx_.stream));
      CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));  // `src` may be a temporary
    }
    return d;
  }

  Tensor download(const Tensor& t) override {
    if (t.device() == Device::CPU) return t;
    Tensor h = Tensor::empty(t.shape(), t.dtype());
    if (h.nbytes()) CUDA_CHECK(cudaMemcpyAsync(h.data(), t.data(), h.nbytes(), cudaMemcpyDeviceToHost, ctx_.stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    return h;
  }

  Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p) override {
    Tensor xd = act(x, "conv2d: x");
    Tensor wd = dev(w);
    if (wd.dtype() != DType::F32 && wd.dtype() != DType::BF16) wd = to_f32(wd);
    Tensor bd = b.defined() ? act(b, "conv2d: bias") : Tensor();
    return conv_->forward(xd, wd, bd, p);
  }

  Tensor group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps,
                    bool silu) override {
    Tensor xd = act(x, "group_norm: x");
    HWAGA_CHECK(xd.ndim() >= 2, "group_norm: x ", shape_str(xd.shape()), " needs at least [B,C]");
    const int64_t B = xd.dim(0), C = xd.dim(1), HW = xd.numel() / (B * C > 0 ? B * C : 1);
    HWAGA_CHECK(groups > 0 && C % groups == 0, "group_norm: ", C, " channels do not split into ", groups,
                " groups");
    Tensor g = act(gamma, "group_norm: gamma"), bt = act(beta, "group_norm: beta");
    HWAGA_CHECK(g.numel() == C && bt.numel() == C, "group_norm: gamma/beta ", shape_str(g.shape()), "/",
                shape_str(bt.shape()), " do not match ", C, " channels");
    Tensor y = ctx_.empty(xd.shape());
    cuda::group_norm_f32(xd.ptr<float>(), g.ptr<float>(), bt.ptr<float>(), y.ptr<float>(), B, C, HW, groups, eps,
                         silu, ctx_.stream);
    return y;
  }

  Tensor upsample_nearest2x(const Tensor& x) override {
    Tensor xd = act(x, "upsample_nearest2x: x");
    HWAGA_CHECK(xd.ndim() == 4, "upsample_nearest2x: x ", shape_str(xd.shape()), " is not [B,C,H,W]");
    Tensor y = ctx_.empty({xd.dim(0), xd.dim(1), 2 * xd.dim(2), 2 * xd.dim(3)});
    cuda::upsample_nearest2x_f32(xd.ptr<float>(), y.ptr<float>(), xd.dim(0) * xd.dim(1), int(xd.dim(2)),
                                 int(xd.dim(3)), ctx_.stream);
    return y;
  }

  Tensor add(const Tensor& a, const Tensor& b) override {
    Tensor ad = act(a, "add: a"), bd = act(b, "add: b");
    HWAGA_CHECK(ad.shape() == bd.shape(), "add: shapes differ: ", shape_str(ad.shape()), " vs ",
                shape_str(bd.shape()));
    Tensor y = ctx_.empty(ad.shape());
    cuda::add_f32(ad.ptr<float>(), bd.ptr<float>(), y.ptr<float>(), ad.numel(), ctx_.stream);
    return y;
  }

  Tensor attention_hw(const Tensor& q, const Tensor& k, const Tensor& v) override {
    Tensor qd = act(q, "attention_hw: q"), kd = act(k, "attention_hw: k"), vd = act(v, "attention_hw: v");
    HWAGA_CHECK(qd.ndim() == 4 && kd.shape() == qd.shape() && vd.shape() == qd.shape(),
                "attention_hw: q, k, v must share one [B,C,H,W] shape, got ", shape_str(qd.shape()), ", ",
                shape_str(kd.shape()), ", ", shape_str(vd.shape()));
    const int64_t B = qd.dim(0), C = qd.dim(1), N = qd.dim(2) * qd.dim(3);
    Tensor out = ctx_.empty(qd.shape());
    if (out.numel() == 0) return out;
    HWAGA_CHECK(N < (int64_t(1) << 31) && C < (int64_t(1) << 31) && B < (int64_t(1) << 31),
                "attention_hw: sizes too large");
    std::shared_ptr<void> S = ctx_.scratch(size_t(B * N * N) * 4);  // scores [B, N_i, N_j]
    float* s = static_cast<float*>(S.get());
    const float scale = 1.0f / std::sqrt(float(C)), one = 1.0f, zero = 0.0f;
    // Column-major: S^T[j,i] = sum_c k[c,j] q[c,i], i.e. S^T = K . Q^T with K, Q stored N x C (ld N).
    CUBLAS_CHECK(cublasSgemmStridedBatched(ctx_.blas, CUBLAS_OP_N, CUBLAS_OP_T, int(N), int(N), int(C), &scale,
                                           kd.ptr<float>(), int(N), C * N, qd.ptr<float>(), int(N), C * N, &zero, s,
                                           int(N), N * N, int(B)));
    cuda::softmax_rows_f32(s, B * N, N, ctx_.stream);
    // out[c,i] = sum_j P[i,j] v[c,j]: column-major O[i,c] = (P stored N_j x N_i)^T . V (N x C).
    CUBLAS_CHECK(cublasSgemmStridedBatched(ctx_.blas, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(C), int(N), &one, s,
                                           int(N), N * N, vd.ptr<float>(), int(N), C * N, &zero, out.ptr<float>(),
                                           int(N), C * N, int(B)));
    return out;
  }

  Tensor nchw_to_nhwc(const Tensor& x) override {
    Tensor xd = act(x, "nchw_to_nhwc: x");
    HWAGA_CHECK(xd.ndim() == 4, "nchw_to_nhwc: x ", shape_str(xd.shape()), " is not [B,C,H,W]");
    const int64_t B = xd.dim(0), C = xd.dim(1), H = xd.dim(2), W = xd.dim(3);
    Tensor y = ctx_.empty({B, H, W, C});
    cuda::transpose_f32(xd.ptr<float>(), y.ptr<float>(), B, C, H * W, ctx_.stream);
    return y;
  }

  Tensor nhwc_to_nchw(const Tensor& x) override {
    Tensor xd = act(x, "nhwc_to_nchw: x");
    HWAGA_CHECK(xd.ndim() == 4, "nhwc_to_nchw: x ", shape_str(xd.shape()), " is not [B,H,W,C]");
    const int64_t B = xd.dim(0), H = xd.dim(1), W = xd.dim(2), C = xd.dim(3);
    Tensor y = ctx_.empty({B, C, H, W});
    cuda::transpose_f32(xd.ptr<float>(), y.ptr<float>(), B, H * W, C, ctx_.stream);
    return y;
  }

  Tensor residual_quantize(const Tensor& z, const Tensor& codebook, int depth) override {
    Tensor zd = act(z, "residual_quantize: z"), cb = act(codebook, "residual_quantize: codebook");
    HWAGA_CHECK(cb.ndim() == 2 && zd.ndim() >= 1 && zd.dim(-1) == cb.dim(1),
                "residual_quantize: z ", shape_str(zd.shape()), " and codebook ", shape_str(cb.shape()),
                " must be [N,E] and [K,E]");
    HWAGA_CHECK(depth >= 1, "residual_quantize: depth ", depth, " must be >= 1");
    const int64_t E = cb.dim(1), K = cb.dim(0), N = E ? zd.numel() / E : 0;
    HWAGA_CHECK(K >= 1 && K < (int64_t(1) << 31), "residual_quantize: codebook has ", K, " rows");
    Tensor codes = ctx_.empty({N, depth}, DType::I32);
    if (N == 0) return codes;
    Tensor r = ctx_.empty({N, E});
    CUDA_CHECK(cudaMemcpyAsync(r.data(), zd.data(), r.nbytes(), cudaMemcpyDeviceToDevice, ctx_.stream));
    Tensor rnorm = ctx_.empty({N}), cnorm = ctx_.empty({K});
    cuda::row_sqnorm_f32(cb.ptr<float>(), cnorm.ptr<float>(), K, E, ctx_.stream);
    cuda::row_sqnorm_f32(r.ptr<float>(), rnorm.ptr<float>(), N, E, ctx_.stream);
    // Distances for a chunk of rows at a time: at most 256 MiB of r.e products.
    int64_t chunk = std::max<int64_t>(1, (int64_t(256) << 20) / (4 * K));
    chunk = std::min(chunk, N);
    std::shared_ptr<void> G = ctx_.scratch(size_t(chunk * K) * 4);
    const float one = 1.0f, zero = 0.0f;
    for (int d = 0; d < depth; ++d) {
      for (int64_t n0 = 0; n0 < N; n0 += chunk) {
        const int64_t nc = std::min(chunk, N - n0);
        // Row-major G[nc,K] = r[n0:n0+nc] . cb^T: column-major G^T[K,nc] = (cb stored E x K)^T . (r stored E x nc).
        CUBLAS_CHECK(cublasSgemm(ctx_.blas, CUBLAS_OP_T, CUBLAS_OP_N, int(K), int(nc), int(E), &one, cb.ptr<float>(),
                                 int(E), r.ptr<float>() + n0 * E, int(E), &zero, static_cast<float*>(G.get()),
                                 int(K)));
        cuda::argmin_update_f32(static_cast<const float*>(G.get()), rnorm.ptr<float>(), cnorm.ptr<float>(),
                                r.ptr<float>(), cb.ptr<float>(), codes.ptr<int32_t>(), n0, nc, K, E, depth, d,
                                ctx_.stream);
      }
    }
    return codes;
  }

  Tensor embed_sum(const Tensor& codes, const Tensor& codebook) override {
    Tensor cb = act(codebook, "embed_sum: codebook");
    HWAGA_CHECK(codes.defined() && codes.dtype() == DType::I32 && codes.ndim() >= 1,
                "embed_sum: codes must be int32 [N,D], got ", dtype_name(codes.dtype()), " ",
                shape_str(codes.shape()));
    HWAGA_CHECK(cb.ndim() == 2, "embed_sum: codebook ", shape_str(cb.shape()), " is not [K,E]");
    const int64_t K = cb.dim(0), E = cb.dim(1), D = codes.dim(-1), N = D ? codes.numel() / D : 0;
    if (codes.device() == Device::CPU) {  // check on the host, where the error can name the code
      const int32_t* c = codes.ptr<int32_t>();
      for (int64_t i = 0; i < codes.numel(); ++i)
        HWAGA_CHECK(c[i] >= 0 && c[i] < K, "embed_sum: code ", c[i], " at index ", i, " is outside [0, ", K, ")");
    }
    Tensor cd = dev(codes);
    Tensor out = ctx_.empty({N, E});
    if (out.numel() == 0) return out;
    std::shared_ptr<void> bad = ctx_.scratch(sizeof(int));
    CUDA_CHECK(cudaMemsetAsync(bad.get(), 0, sizeof(int), ctx_.stream));
    cuda::embed_sum_f32(cd.ptr<int32_t>(), cb.ptr<float>(), out.ptr<float>(), static_cast<int*>(bad.get()), N,
                        int(D), K, E, ctx_.stream);
    int flag = 0;
    CUDA_CHECK(cudaMemcpyAsync(&flag, bad.get(), sizeof(int), cudaMemcpyDeviceToHost, ctx_.stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    HWAGA_CHECK(flag == 0, "embed_sum: a code is outside [0, ", K, ")");
    return out;
  }

  Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) override {
    Tensor xd = act(x, "linear: x");
    Tensor wd = dev(w);
    HWAGA_CHECK(is_float(wd.dtype()), "linear: weight must be f32, bf16 or f16, found ", dtype_name(wd.dtype()));
    HWAGA_CHECK(wd.ndim() == 2 && xd.ndim() >= 1 && xd.dim(-1) == wd.dim(1), "linear: x ", shape_str(xd.shape()),
                " does not match weight ", shape_str(wd.shape()), " [out,in]");
    const int64_t in = wd.dim(1), out = wd.dim(0), N = in ? xd.numel() / in : 0;
    Shape ys = xd.shape();
    ys.back() = out;
    Tensor y = ctx_.empty(ys);
    if (y.numel() == 0) return y;
    cuda::linear_lt(ctx_, xd.ptr<float>(), wd.data(), wd.dtype(), y.ptr<float>(), N, out, in);
    if (b.defined()) {
      Tensor bd = act(b, "linear: bias");
      HWAGA_CHECK(bd.numel() == out, "linear: bias ", shape_str(bd.shape()), " does not match ", out, " outputs");
      cuda::add_bias_rows_f32(y.ptr<float>(), bd.ptr<float>(), N, out, ctx_.stream);
    }
    return y;
  }

  // ---- transformers (kernels/cuda/transformer_ops.cuh) ----

  // Weight matrices and embedding tables keep their float dtype (bf16 stays bf16: half the
  // memory and memory traffic of f32); anything else is uploaded as it is.
  Tensor upload_weight(const Tensor& host) override {
    HWAGA_CHECK(host.defined() || host.numel() == 0, "upload_weight: undefined tensor");
    if (host.device() == Device::CUDA) return host;
    return upload(host, host.dtype());
  }

  Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps) override {
    Tensor xd = act(x, "layer_norm: x");
    HWAGA_CHECK(xd.ndim() >= 1, "layer_norm: x must have at least one dimension");
    const int64_t C = xd.dim(-1), N = C ? xd.numel() / C : 0;
    Tensor g = act(gamma, "layer_norm: weight"), bt = act(beta, "layer_norm: bias");
    HWAGA_CHECK(g.numel() == C && bt.numel() == C, "layer_norm: weight/bias ", shape_str(g.shape()), "/",
                shape_str(bt.shape()), " do not match ", C, " channels of x ", shape_str(xd.shape()));
    Tensor y = ctx_.empty(xd.shape());
    cuda::layer_norm_f32(xd.ptr<float>(), g.ptr<float>(), bt.ptr<float>(), y.ptr<float>(), N, C, eps, ctx_.stream);
    return y;
  }

  Tensor gelu(const Tensor& x) override {
    Tensor xd = act(x, "gelu: x");
    Tensor y = ctx_.empty(xd.shape());
    cuda::gelu_f32(xd.ptr<float>(), y.ptr<float>(), xd.numel(), ctx_.stream);
    return y;
  }

  Tensor embedding(const Tensor& table, const Tensor& ids) override {
    HWAGA_CHECK(table.defined(), "embedding: table is undefined");
    Tensor td = dev(table);
    HWAGA_CHECK(is_float(td.dtype()), "embedding: table must be f32, bf16 or f16, found ", dtype_name(td.dtype()));
    HWAGA_CHECK(td.ndim() == 2, "embedding: table ", shape_str(td.shape()), " is not [V,C]");
    HWAGA_CHECK(ids.defined() || ids.numel() == 0, "embedding: ids are undefined");
    HWAGA_CHECK(ids.dtype() == DType::I32, "embedding: ids must be int32, found ", dtype_name(ids.dtype()));
    const int64_t V = td.dim(0), C = td.dim(1), N = ids.numel();
    if (ids.device() == Device::CPU) {  // check on the host, where the error can name the id
      const int32_t* id = ids.ptr<int32_t>();
      for (int64_t n = 0; n < N; ++n)
        HWAGA_CHECK(id[n] >= 0 && id[n] < V, "embedding: id ", id[n], " at position ", n, " is outside [0, ", V,
                    ") for table ", shape_str(td.shape()));
    }
    Tensor out = ctx_.empty({N, C});
    if (out.numel() == 0) return out;
    Tensor idd = dev(ids);
    std::shared_ptr<void> bad = ctx_.scratch(sizeof(int));
    CUDA_CHECK(cudaMemsetAsync(bad.get(), 0, sizeof(int), ctx_.stream));
    cuda::gather_rows_f32(td.data(), td.dtype(), idd.ptr<int32_t>(), out.ptr<float>(), static_cast<int*>(bad.get()),
                          N, V, C, ctx_.stream);
    if (ids.device() == Device::CUDA) {  // device ids: one flag read back
      int flag = 0;
      CUDA_CHECK(cudaMemcpyAsync(&flag, bad.get(), sizeof(int), cudaMemcpyDeviceToHost, ctx_.stream));
      CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
      HWAGA_CHECK(flag == 0, "embedding: an id is outside [0, ", V, ") for table ", shape_str(td.shape()));
    }
    return out;
  }

  Tensor add_rows(const Tensor& x, const Tensor& rows) override {
    Tensor xd = act(x, "add_rows: x"), rd = act(rows, "add_rows: rows");
    HWAGA_CHECK(xd.ndim() >= 1 && rd.ndim() >= 1 && rd.dim(-1) == xd.dim(-1), "add_rows: rows ",
                shape_str(rd.shape()), " do not match the channels of x ", shape_str(xd.shape()));
    const int64_t C = xd.dim(-1), N = C ? xd.numel() / C : 0, R = C ? rd.numel() / C : 0;
    HWAGA_CHECK(C == 0 || (R >= 1 && N % R == 0), "add_rows: ", N, " rows of x ", shape_str(xd.shape()),
                " are not a multiple of the ", R, " rows of ", shape_str(rd.shape()));
    Tensor y = ctx_.empty(xd.shape());
    cuda::add_rows_f32(xd.ptr<float>(), rd.ptr<float>(), y.ptr<float>(), N, R, C, ctx_.stream);
    return y;
  }

  Tensor concat(const std::vector<Tensor>& parts) override {
    HWAGA_CHECK(!parts.empty(), "concat: no tensors");
    std::vector<Tensor> pd;
    pd.reserve(parts.size());
    for (const Tensor& p : parts) pd.push_back(act(p, "concat: part"));
    Shape s = pd[0].shape();
    HWAGA_CHECK(!s.empty(), "concat: tensors must have at least one dimension");
    int64_t rows = 0;
    for (const Tensor& p : pd) {
      HWAGA_CHECK(p.ndim() == int(s.size()) && std::equal(s.begin() + 1, s.end(), p.shape().begin() + 1), "concat: ",
                  shape_str(p.shape()), " does not match ", shape_str(pd[0].shape()), " after dimension 0");
      rows += p.dim(0);
    }
    s[0] = rows;
    Tensor y = ctx_.empty(s);
    char* dst = static_cast<char*>(y.data());
    for (const Tensor& p : pd) {
      if (p.nbytes())
        CUDA_CHECK(cudaMemcpyAsync(dst, p.data(), p.nbytes(), cudaMemcpyDeviceToDevice, ctx_.stream));
      dst += p.nbytes();
    }
    return y;
  }

  KvCache kv_cache_new(int64_t B, int64_t n_head, int64_t T_max, int64_t head_dim) override {
    HWAGA_CHECK(B >= 1 && n_head >= 1 && T_max >= 1 && head_dim >= 1, "kv_cache_new: bad shape B=", B,
                " heads=", n_head, " T_max=", T_max, " hd=", head_dim);
    KvCache c;
    c.k = ctx_.empty({B, n_head, T_max, head_dim});
    c.v = ctx_.empty({B, n_head, T_max, head_dim});
    // Zeroed so that a bug reading past `len` shows as zeros, not as another tensor's data.
    CUDA_CHECK(cudaMemsetAsync(c.k.data(), 0, c.k.nbytes(), ctx_.stream));
    CUDA_CHECK(cudaMemsetAsync(c.v.data(), 0, c.v.nbytes(), ctx_.stream));
    return c;
  }

  void kv_cache_gather(KvCache& dst, const KvCache& src, const std::vector<int32_t>& rows) override {
    HWAGA_CHECK(dst.k.defined() && dst.v.defined() && src.k.defined() && src.v.defined(),
                "kv_cache_gather: undefined cache");
    for (const Tensor* t : std::initializer_list<const Tensor*>{&dst.k, &dst.v, &src.k, &src.v})
      HWAGA_CHECK(t->device() == Device::CUDA && t->dtype() == DType::F32 && t->ndim() == 4,
                  "kv_cache_gather: caches must be f32 [B,heads,T_max,hd] on the GPU (kv_cache_new), found ",
                  dtype_name(t->dtype()), " ", shape_str(t->shape()), " on ", device_name(t->device()));
    const int64_t B = dst.k.dim(0), H = dst.k.dim(1), Tm = dst.k.dim(2), hd = dst.k.dim(3);
    HWAGA_CHECK(int64_t(rows.size()) == B, "kv_cache_gather: ", rows.size(), " rows for a cache of batch ", B);
    HWAGA_CHECK(src.k.dim(1) == H && src.k.dim(3) == hd && src.len >= 0 && src.len <= Tm && src.len <= src.k.dim(2),
                "kv_cache_gather: source ", shape_str(src.k.shape()), " (", src.len, " positions) does not fit ",
                shape_str(dst.k.shape()));
    HWAGA_CHECK(dst.k.data() != src.k.data(), "kv_cache_gather: source and destination are the same cache");
    const int64_t Ts = src.k.dim(2);
    for (int32_t r : rows)
      HWAGA_CHECK(r >= 0 && r < src.k.dim(0), "kv_cache_gather: row ", r, " outside the source batch ",
                  src.k.dim(0));
    if (src.len > 0) {
      // Per destination row: H heads of len*hd floats, source pitch Ts*hd, destination pitch Tm*hd.
      const size_t width = size_t(src.len * hd) * 4, spitch = size_t(Ts * hd) * 4, dpitch = size_t(Tm * hd) * 4;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t so = int64_t(rows[size_t(b)]) * H * Ts * hd, dof = b * H * Tm * hd;
        CUDA_CHECK(cudaMemcpy2DAsync(dst.k.ptr<float>() + dof, dpitch, src.k.ptr<float>() + so, spitch, width,
                                     size_t(H), cudaMemcpyDeviceToDevice, ctx_.stream));
        CUDA_CHECK(cudaMemcpy2DAsync(dst.v.ptr<float>() + dof, dpitch, src.v.ptr<float>() + so, spitch, width,
                                     size_t(H), cudaMemcpyDeviceToDevice, ctx_.stream));
      }
    }
    dst.len = src.len;
  }

  Tensor attention_step(const Tensor& q, const Tensor& k, const Tensor& v, KvCache& cache, int n_head) override {
    Tensor qd = act(q, "attention_step: q"), kd = act(k, "attention_step: k"), vd = act(v, "attention_step: v");
    HWAGA_CHECK(qd.ndim() == 3 && kd.shape() == qd.shape() && vd.shape() == qd.shape(),
                "attention_step: q, k, v must share one [B,T,C] shape, got ", shape_str(qd.shape()), ", ",
                shape_str(kd.shape()), ", ", shape_str(vd.shape()));
    HWAGA_CHECK(cache.k.defined() && cache.v.defined(), "attention_step: the cache is not allocated");
    const int64_t B = qd.dim(0), T = qd.dim(1), C = qd.dim(2);
    HWAGA_CHECK(n_head >= 1 && C % n_head == 0, "attention_step: ", C, " channels are not divisible into ", n_head,
                " heads");
    const int64_t hd = C / n_head;
    const Shape want{B, n_head, cache.capacity(), hd};
    for (const Tensor* t : {&cache.k, &cache.v})
      HWAGA_CHECK(t->device() == Device::CUDA && t->dtype() == DType::F32 && t->shape() == want,
                  "attention_step: cache ", dtype_name(t->dtype()), " ", shape_str(t->shape()), " on ",
                  device_name(t->device()), ", expected f32 ", shape_str(want), " on the GPU");
    HWAGA_CHECK(cache.len >= 0 && cache.len + T <= cache.capacity(), "attention_step: ", T, " new tokens after ",
                cache.len, " overflow the cache of ", cache.capacity(), " positions");
    Tensor out = ctx_.empty(qd.shape());
    if (out.numel() == 0) {
      cache.len += T;
      return out;
    }
    // With a len_counter the kernels read the length on the device (a recorded step replays at
    // the current length) and the key split is sized for the longest the cache can hold.
    const int32_t* len_dev = nullptr;
    int64_t len_bound = cache.len;
    if (cache.len_counter.defined()) {
      const Tensor& lc = cache.len_counter;
      HWAGA_CHECK(lc.device() == Device::CUDA && lc.dtype() == DType::I32 && lc.numel() == 1,
                  "attention_step: len_counter must be a counter on the GPU (counter_new)");
      len_dev = lc.ptr<int32_t>();
      len_bound = cache.capacity() - T;
    }
    cuda::kv_append_f32(kd.ptr<float>(), vd.ptr<float>(), cache.k.ptr<float>(), cache.v.ptr<float>(), B, T, n_head,
                        hd, cache.capacity(), cache.len, ctx_.stream, len_dev);
    const int64_t nf = cuda::attention_scratch_floats(B, T, n_head, hd, len_bound, num_sms_);
    std::shared_ptr<void> part = nf ? ctx_.scratch(size_t(nf) * 4) : nullptr;
    cuda::attention_cached_f32(qd.ptr<float>(), cache.k.ptr<float>(), cache.v.ptr<float>(), out.ptr<float>(),
                               static_cast<float*>(part.get()), B, T, n_head, hd, cache.capacity(), len_bound,
                               num_sms_, ctx_.stream, len_dev);
    if (len_dev) cuda::counter_add_i32(cache.len_counter.ptr<int32_t>(), int32_t(T), ctx_.stream);
    cache.len += T;
    return out;
  }

  void synchronize() override { CUDA_CHECK(cudaStreamSynchronize(ctx_.stream)); }

  // ---- the sampling loop on the device (backend.h; kernels/cuda/transformer_ops.cuh, sampler.cuh) ----
  Tensor counter_new(int32_t value) override {
    Tensor h = Tensor::empty({1}, DType::I32);
    h.ptr<int32_t>()[0] = value;
    return upload(h, DType::I32);
  }

  void counter_add(Tensor& counter, int32_t delta) override {
    HWAGA_CHECK(counter.defined() && counter.device() == Device::CUDA && counter.dtype() == DType::I32 &&
                    counter.numel() == 1,
                "counter_add: not a counter on the GPU (counter_new)");
    cuda::counter_add_i32(counter.ptr<int32_t>(), delta, ctx_.stream);
  }

  Tensor add_row_at(const Tensor& x, const Tensor& table, const Tensor& counter, int32_t offset) override {
    Tensor xd = act(x, "add_row_at: x"), td = act(table, "add_row_at: table");
    HWAGA_CHECK(td.ndim() == 2 && xd.ndim() >= 1 && xd.dim(-1) == td.dim(1), "add_row_at: table ",
                shape_str(td.shape()), " does not match the channels of x ", shape_str(xd.shape()));
    HWAGA_CHECK(counter.defined() && counter.device() == Device::CUDA && counter.dtype() == DType::I32 &&
                    counter.numel() == 1,
                "add_row_at: not a counter on the GPU (counter_new)");
    const int64_t C = td.dim(1), N = C ? xd.numel() / C : 0;
    Tensor y = ctx_.empty(xd.shape());
    cuda::add_row_at_f32(xd.ptr<float>(), td.ptr<float>(), counter.ptr<int32_t>(), offset, y.ptr<float>(), N,
                         td.dim(0), C, ctx_.stream);
    return y;
  }

  Tensor gather_sum(const Tensor& table, const Tensor& ids, int d) override {
    HWAGA_CHECK(table.defined(), "gather_sum: table is undefined");
    Tensor td = dev(table);
    HWAGA_CHECK(is_float(td.dtype()) && td.ndim() == 2, "gather_sum: table must be f32/bf16/f16 [V,C], found ",
                dtype_name(td.dtype()), " ", shape_str(td.shape()));
    HWAGA_CHECK(ids.defined() && ids.device() == Device::CUDA && ids.dtype() == DType::I32 && ids.ndim() == 2,
                "gather_sum: ids must be int32 [N,D] on the GPU (a sampling loop's row codes), found ",
                dtype_name(ids.dtype()), " ", shape_str(ids.shape()), " on ", device_name(ids.device()));
    const int64_t N = ids.dim(0), D = ids.dim(1);
    HWAGA_CHECK(d >= 1 && d <= D, "gather_sum: ", d, " columns of ids ", shape_str(ids.shape()));
    Tensor out = ctx_.empty({N, td.dim(1)});
    cuda::gather_sum_f32(td.data(), td.dtype(), ids.ptr<int32_t>(), out.ptr<float>(), N, int(D), d, td.dim(0),
                         td.dim(1), ctx_.stream);
    return out;
  }

  void sample_into(const Tensor& logits, int64_t n, float cfg_scale, const RowFilter& f, int d,
                   SampleTarget& t) override {
    cuda::sample_into(ctx_, act(logits, "sample_into: logits"), n, cfg_scale, f, d, t);
  }

  int64_t sample_status(const Tensor& status) override { return cuda::sample_status(ctx_, status); }

  // ---- CUDA graphs of a sampling step ----
  // Recording in relaxed mode: the caching allocator may still call cudaMalloc while recording
  // (a first use of a size), which the stricter modes forbid. A synchronising op (a download, a
  // device-id check) fails the recording, and run_steps then runs the step op by op.
  bool capture_begin() override {
    if (cudaStreamBeginCapture(ctx_.stream, cudaStreamCaptureModeRelaxed) == cudaSuccess) return true;
    cudaGetLastError();  // cannot record here: the loop runs op by op
    return false;
  }

  std::unique_ptr<StepGraph> capture_end() override {
    cudaGraph_t g = nullptr;
    const cudaError_t e = cudaStreamEndCapture(ctx_.stream, &g);
    if (e != cudaSuccess || !g) {
      cudaGetLastError();  // not sticky: clear it so that the next call does not report it
      if (g) cudaGraphDestroy(g);
      fail("CUDA graph capture of the sampling step failed: ", cudaGetErrorString(e));
    }
    cudaGraphExec_t x = nullptr;
    const cudaError_t ie = cudaGraphInstantiate(&x, g, 0);
    cudaGraphDestroy(g);
    if (ie != cudaSuccess) {
      cudaGetLastError();
      fail("CUDA graph instantiation of the sampling step failed: ", cudaGetErrorString(ie));
    }
    ++graphs_recorded_;
    return std::make_unique<CudaStepGraph>(x, ctx_.stream, &graph_launches_);
  }

  // ---- sampling: kernels/cuda/sampler.cu, so that only the codes come back (cuda_sampler.h) ----
  bool sample_rows(const Tensor& logits, int64_t n, float cfg_scale, const RowFilter& f, Rng* rngs, int32_t* codes,
                   int64_t* nan_replaced) override {
    return cuda::sample_rows(ctx_, act(logits, "sample_rows: logits"), n, cfg_scale, f, rngs, codes, nan_replaced);
  }

  // ---- for cuda_backend.h's helpers ----
  cuda::Context& ctx() { return ctx_; }
  CudaStats stats() {
    auto a = ctx_.alloc->stats();
    CudaStats s;
    s.in_use_bytes = a.in_use;
    s.peak_in_use_bytes = a.peak_in_use;
    s.reserved_bytes = a.reserved;
    s.peak_reserved_bytes = a.peak_reserved;
    s.conv_flops = conv_->flops;
    s.conv_fallbacks = conv_->fallbacks;
    s.graphs_recorded = graphs_recorded_;
    s.graph_launches = graph_launches_;
    s.device_name = gpu_name_;
    return s;
  }
  void reset_stats() {
    CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    ctx_.alloc->reset_peak();
    conv_->flops = 0;
  }

 private:
  // A tensor of this device (host tensors are uploaded as they are).
  Tensor dev(const Tensor& t) {
    HWAGA_CHECK(t.defined() || t.numel() == 0, "undefined tensor passed to the CUDA backend");
    return t.device() == Device::CUDA ? t : upload(t, t.dtype());
  }
  // An f32 activation on this device.
  Tensor act(const Tensor& t, const char* what) {
    HWAGA_CHECK(t.defined() || t.numel() == 0, what, " is undefined");
    Tensor d = dev(t);
    if (d.dtype() == DType::F32) return d;
    HWAGA_CHECK(is_float(d.dtype()), what, " has dtype ", dtype_name(d.dtype()), ", expected f32");
    return to_f32(d);
  }
  Tensor to_f32(const Tensor& d) {
    if (d.dtype() == DType::F32) return d;
    HWAGA_CHECK(d.dtype() == DType::BF16 || d.dtype() == DType::F16, "CUDA backend: cannot convert ",
                dtype_name(d.dtype()), " to f32");
    Tensor y = ctx_.empty(d.shape());
    if (d.dtype() == DType::BF16) cuda::bf16_to_f32(d.ptr<uint16_t>(), y.ptr<float>(), d.numel(), ctx_.stream);
    else cuda::f16_to_f32(d.ptr<uint16_t>(), y.ptr<float>(), d.numel(), ctx_.stream);
    return y;
  }
  Tensor to_bf16(const Tensor& d) {
    Tensor y = ctx_.empty(d.shape(), DType::BF16);
    cuda::f32_to_bf16(d.ptr<float>(), y.ptr<uint16_t>(), d.numel(), ctx_.stream);
    return y;
  }

  CudaBackendOptions opts_;
  cuda::Context ctx_;
  std::unique_ptr<cuda::Conv2d> conv_;
  std::string gpu_name_, dnn_note_;
  int sm_ = 0, num_sms_ = 1;
  int64_t graphs_recorded_ = 0, graph_launches_ = 0;
};

CudaBackend& as_cuda(Backend& be) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  HWAGA_CHECK(c, "backend '", be.name(), "' is not the CUDA backend");
  return *c;
}

}  // namespace

std::unique_ptr<Backend> make_cuda_backend_with(const CudaBackendOptions& opts, std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    cudaGetLastError();
    if (why)
      *why = e != cudaSuccess ? std::string("no CUDA device: ") + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")"
                              : std::string("no CUDA device: the driver reports 0 GPUs");
    return nullptr;
  }
  if (opts.device < 0 || opts.device >= n) {
    if (why) *why = "CUDA device " + std::to_string(opts.device) + " requested, " + std::to_string(n) + " present";
    return nullptr;
  }
  try {
    return std::make_unique<CudaBackend>(opts);
  } catch (const std::exception& ex) {
    if (why) *why = std::string("CUDA backend failed to start: ") + ex.what();
    return nullptr;
  }
}

std::unique_ptr<Backend> make_cuda_backend(std::string* why) {
  return make_cuda_backend_with(CudaBackendOptions{}, why);
}

CudaStats cuda_stats(Backend& be) { return as_cuda(be).stats(); }
void cuda_reset_stats(Backend& be) { as_cuda(be).reset_stats(); }
void cuda_synchronize(Backend& be) { CUDA_CHECK(cudaStreamSynchronize(as_cuda(be).ctx().stream)); }
void* cuda_stream(Backend& be) { return as_cuda(be).ctx().stream; }
cuda::Context& cuda_context(Backend& be) { return as_cuda(be).ctx(); }

double cuda_copy_bandwidth_gbs(Backend& be, size_t bytes, int iters) {
  cuda::Context& ctx = as_cuda(be).ctx();
  std::shared_ptr<void> a = ctx.scratch(bytes), b = ctx.scratch(bytes);
  CUDA_CHECK(cudaMemsetAsync(a.get(), 1, bytes, ctx.stream));
  CUDA_CHECK(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, ctx.stream));  // warm-up
  cudaEvent_t t0, t1;
  CUDA_CHECK(cudaEventCreate(&t0));
  CUDA_CHECK(cudaEventCreate(&t1));
  CUDA_CHECK(cudaEventRecord(t0, ctx.stream));
  for (int i = 0; i < iters; ++i)
    CUDA_CHECK(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, ctx.stream));
  CUDA_CHECK(cudaEventRecord(t1, ctx.stream));
  CUDA_CHECK(cudaEventSynchronize(t1));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, t0, t1));
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  return 2.0 * double(bytes) * iters / (double(ms) * 1e-3) / 1e9;
}

double cuda_matmul_tflops(Backend& be, DType dtype, int n, int iters) {
  cuda::Context& ctx = as_cuda(be).ctx();
  size_t bytes = size_t(n) * n * dtype_size(dtype);
  std::shared_ptr<void> a = ctx.scratch(bytes), b = ctx.scratch(bytes), d = ctx.scratch(bytes);
  // Small values (0x3c3c as bf16 is ~0.0115; as f32 0x3c3c3c3c ~0.0115) keep the sums finite.
  CUDA_CHECK(cudaMemsetAsync(a.get(), 0x3c, bytes, ctx.stream));
  CUDA_CHECK(cudaMemsetAsync(b.get(), 0x3c, bytes, ctx.stream));
  cuda::square_matmul_lt(ctx, a.get(), b.get(), d.get(), dtype, n);  // warm-up, picks the algorithm
  cudaEvent_t t0, t1;
  CUDA_CHECK(cudaEventCreate(&t0));
  CUDA_CHECK(cudaEventCreate(&t1));
  CUDA_CHECK(cudaEventRecord(t0, ctx.stream));
  for (int i = 0; i < iters; ++i) cuda::square_matmul_lt(ctx, a.get(), b.get(), d.get(), dtype, n);
  CUDA_CHECK(cudaEventRecord(t1, ctx.stream));
  CUDA_CHECK(cudaEventSynchronize(t1));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, t0, t1));
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  return 2.0 * double(n) * n * n * iters / (double(ms) * 1e-3) / 1e12;
}

}  // namespace hwaga
