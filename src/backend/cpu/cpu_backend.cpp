// The CPU backend: the readable reference every other backend is checked against.
// Tensors are host f32 (codes int32); weights in bf16/f16 are converted to f32 at upload.
// Every op validates its shapes (a mismatch is a bug in the caller, reported with both shapes)
// and hands the arithmetic to a kernel in kernels/cpu/.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/attention_hw.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/quantize.h"

namespace hwaga {
namespace {

// Activation memory. Each op returns a fresh tensor; with plain malloc, every large block
// (32 MiB for a 128-channel 256x256 activation, above glibc's mmap threshold) would be mapped
// and unmapped per op, and each use would page-fault and zero it again. Freed blocks of 64 KiB
// or more are kept here by exact size and handed out again; the cache holds at most the peak
// working set of a forward pass (capped at kMaxHeld) and frees everything when the backend and
// its last tensor are gone.
class BlockCache : public std::enable_shared_from_this<BlockCache> {
 public:
  ~BlockCache() {
    for (auto& [bytes, blocks] : free_)
      for (void* p : blocks) std::free(p);
  }

  Tensor empty(Shape shape, DType dtype = DType::F32) {
    for (int64_t d : shape) HWAGA_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
    const size_t bytes = std::max<size_t>(64, (size_t(shape_numel(shape)) * dtype_size(dtype) + 63) / 64 * 64);
    if (bytes < kMinCached) return Tensor::empty(std::move(shape), dtype);
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        held_ -= bytes;
      }
    }
    if (!p) p = std::aligned_alloc(64, bytes);
    if (!p) fail("out of memory allocating ", bytes, " bytes for an activation ", shape_str(shape));
    std::shared_ptr<void> owner(p, [self = shared_from_this(), bytes](void* q) { self->give_back(q, bytes); });
    return Tensor::wrap(p, std::move(shape), dtype, std::move(owner));
  }

 private:
  static constexpr size_t kMinCached = size_t(64) << 10;
  static constexpr size_t kMaxHeld = size_t(4) << 30;

  void give_back(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (held_ + bytes <= kMaxHeld) {
        free_[bytes].push_back(p);
        held_ += bytes;
        return;
      }
    }
    std::free(p);
  }

  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t held_ = 0;
};

void expect_f32_host(const Tensor& t, const char* op, const char* what) {
  HWAGA_CHECK(t.defined(), op, ": ", what, " is undefined");
  HWAGA_CHECK(t.device() == Device::CPU, op, ": ", what, " is not a host tensor");
  HWAGA_CHECK(t.dtype() == DType::F32, op, ": ", what, " must be f32, found ", dtype_name(t.dtype()));
}

void expect_ndim(const Tensor& t, int n, const char* op, const char* what) {
  HWAGA_CHECK(t.ndim() == n, op, ": ", what, " must have ", n, " dimensions, found shape ",
              shape_str(t.shape()));
}

class CpuBackend final : public Backend {
  std::shared_ptr<BlockCache> cache_ = std::make_shared<BlockCache>();
  Tensor empty(Shape shape, DType dtype = DType::F32) { return cache_->empty(std::move(shape), dtype); }

 public:
  Device device() const override { return Device::CPU; }
  std::string name() const override {
    return detail::concat("cpu (", num_threads(), " threads, sgemm: ", cpu::sgemm_kernel_name(), ")");
  }

  Tensor upload(const Tensor& host, DType dtype) override {
    HWAGA_CHECK(host.device() == Device::CPU, "upload: expected a host tensor");
    const bool is_float = host.dtype() == DType::F32 || host.dtype() == DType::BF16 ||
                          host.dtype() == DType::F16;
    if (!is_float) return host;  // integer tensors (codes) pass through
    // The CPU computes in f32 whatever dtype is asked for. An aligned f32 tensor (e.g. a view
    // into the mapped model file) is used in place; anything else is converted/copied.
    if (host.dtype() == DType::F32 && reinterpret_cast<uintptr_t>(host.data()) % 64 == 0) return host;
    return host.dtype() == DType::F32 ? host.clone() : host.to(DType::F32);
  }

  Tensor download(const Tensor& t) override {
    HWAGA_CHECK(t.device() == Device::CPU, "download: expected a CPU tensor");
    return t.clone();
  }

  Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p) override {
    expect_f32_host(x, "conv2d", "input");
    expect_f32_host(w, "conv2d", "weight");
    expect_ndim(x, 4, "conv2d", "input");
    expect_ndim(w, 4, "conv2d", "weight");
    HWAGA_CHECK(x.dim(1) == w.dim(1), "conv2d: input ", shape_str(x.shape()), " has ", x.dim(1),
                " channels but weight ", shape_str(w.shape()), " expects ", w.dim(1));
    if (b.defined()) {
      expect_f32_host(b, "conv2d", "bias");
      b.expect(Shape{w.dim(0)}, "conv2d bias");
    }
    cpu::Conv2dShape s{x.dim(0), x.dim(1), x.dim(2), x.dim(3), w.dim(0), w.dim(2), w.dim(3),
                       p.stride, p.pad_top, p.pad_left, p.pad_bottom, p.pad_right};
    HWAGA_CHECK(s.stride >= 1 && s.Ho() >= 1 && s.Wo() >= 1, "conv2d: input ", shape_str(x.shape()),
                " too small for kernel ", shape_str(w.shape()), " with stride ", p.stride);
    Tensor y = empty({s.B, s.Cout, s.Ho(), s.Wo()});
    cpu::conv2d_forward(s, x.f32(), w.f32(), b.defined() ? b.f32() : nullptr, y.f32());
    return y;
  }

  Tensor group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps,
                    bool silu) override {
    expect_f32_host(x, "group_norm", "input");
    expect_ndim(x, 4, "group_norm", "input");
    const int64_t C = x.dim(1);
    HWAGA_CHECK(groups > 0 && C % groups == 0, "group_norm: ", C, " channels are not divisible into ",
                groups, " groups");
    gamma.expect(Shape{C}, "group_norm weight");
    beta.expect(Shape{C}, "group_norm bias");
    Tensor y = empty(x.shape());
    cpu::group_norm_forward(x.f32(), gamma.f32(), beta.f32(), y.f32(), x.dim(0), C, x.dim(2) * x.dim(3),
                            groups, eps, silu);
    return y;
  }

  Tensor upsample_nearest2x(const Tensor& x) override {
    expect_f32_host(x, "upsample_nearest2x", "input");
    expect_ndim(x, 4, "upsample_nearest2x", "input");
    Tensor y = empty({x.dim(0), x.dim(1), 2 * x.dim(2), 2 * x.dim(3)});
    cpu::upsample_nearest2x_forward(x.f32(), y.f32(), x.dim(0) * x.dim(1), x.dim(2), x.dim(3));
    return y;
  }

  Tensor add(const Tensor& a, const Tensor& b) override {
    expect_f32_host(a, "add", "a");
    expect_f32_host(b, "add", "b");
    b.expect(a.shape(), "add: second operand");
    Tensor y = empty(a.shape());
    cpu::add_forward(a.f32(), b.f32(), y.f32(), a.numel());
    return y;
  }

  Tensor attention_hw(const Tensor& q, const Tensor& k, const Tensor& v) override {
    expect_f32_host(q, "attention_hw", "q");
    expect_f32_host(k, "attention_hw", "k");
    expect_f32_host(v, "attention_hw", "v");
    expect_ndim(q, 4, "attention_hw", "q");
    k.expect(q.shape(), "attention_hw: k");
    v.expect(q.shape(), "attention_hw: v");
    Tensor out = empty(q.shape());
    cpu::attention_hw_forward(q.f32(), k.f32(), v.f32(), out.f32(), q.dim(0), q.dim(1), q.dim(2) * q.dim(3));
    return out;
  }

  Tensor nchw_to_nhwc(const Tensor& x) override {
    expect_f32_host(x, "nchw_to_nhwc", "input");
    expect_ndim(x, 4, "nchw_to_nhwc", "input");
    Tensor y = empty({x.dim(0), x.dim(2), x.dim(3), x.dim(1)});
    cpu::nchw_to_nhwc_forward(x.f32(), y.f32(), x.dim(0), x.dim(1), x.dim(2) * x.dim(3));
    return y;
  }

  Tensor nhwc_to_nchw(const Tensor& x) override {
    expect_f32_host(x, "nhwc_to_nchw", "input");
    expect_ndim(x, 4, "nhwc_to_nchw", "input");
    Tensor y = empty({x.dim(0), x.dim(3), x.dim(1), x.dim(2)});
    cpu::nhwc_to_nchw_forward(x.f32(), y.f32(), x.dim(0), x.dim(1) * x.dim(2), x.dim(3));
    return y;
  }

  Tensor residual_quantize(const Tensor& z, const Tensor& codebook, int depth) override {
    expect_f32_host(z, "residual_quantize", "z");
    expect_f32_host(codebook, "residual_quantize", "codebook");
    expect_ndim(z, 2, "residual_quantize", "z");
    expect_ndim(codebook, 2, "residual_quantize", "codebook");
    HWAGA_CHECK(z.dim(1) == codebook.dim(1), "residual_quantize: z ", shape_str(z.shape()),
                " and codebook ", shape_str(codebook.shape()), " differ in vector size");
    HWAGA_CHECK(depth >= 1, "residual_quantize: depth must be at least 1, got ", depth);
    HWAGA_CHECK(codebook.dim(0) >= 1, "residual_quantize: empty codebook");
    Tensor codes = empty({z.dim(0), depth}, DType::I32);
    cpu::residual_quantize_forward(z.f32(), codebook.f32(), codes.ptr<int32_t>(), z.dim(0), codebook.dim(0),
                                   z.dim(1), depth);
    return codes;
  }

  Tensor embed_sum(const Tensor& codes, const Tensor& codebook) override {
    HWAGA_CHECK(codes.defined() && codes.dtype() == DType::I32, "embed_sum: codes must be int32");
    expect_ndim(codes, 2, "embed_sum", "codes");
    expect_f32_host(codebook, "embed_sum", "codebook");
    expect_ndim(codebook, 2, "embed_sum", "codebook");
    Tensor out = empty({codes.dim(0), codebook.dim(1)});
    cpu::embed_sum_forward(codes.ptr<int32_t>(), codebook.f32(), out.f32(), codes.dim(0), codes.dim(1),
                           codebook.dim(0), codebook.dim(1));
    return out;
  }

  Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) override {
    expect_f32_host(x, "linear", "input");
    expect_f32_host(w, "linear", "weight");
    expect_ndim(w, 2, "linear", "weight");
    HWAGA_CHECK(x.ndim() >= 1 && x.dim(-1) == w.dim(1), "linear: input ", shape_str(x.shape()),
                " does not end in ", w.dim(1), " features (weight ", shape_str(w.shape()), ")");
    const int64_t out_f = w.dim(0), in_f = w.dim(1), N = in_f ? x.numel() / in_f : 0;
    Shape ys = x.shape();
    ys.back() = out_f;
    Tensor y = empty(ys);
    float* yp = y.f32();
    if (b.defined()) {
      expect_f32_host(b, "linear", "bias");
      b.expect(Shape{out_f}, "linear bias");
      const float* bp = b.f32();
      for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < out_f; ++o) yp[n * out_f + o] = bp[o];
    }
    // y = x w^T (+ y when there is a bias)
    if (N > 0 && out_f > 0)
      cpu::sgemm(false, true, N, out_f, in_f, 1.0f, x.f32(), in_f, w.f32(), in_f, b.defined() ? 1.0f : 0.0f,
                 yp, out_f);
    return y;
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace hwaga
