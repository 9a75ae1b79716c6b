// The CPU backend: the readable reference every other backend is checked against.
// Tensors are host f32 (codes int32); weights in bf16/f16 are converted to f32 at upload.
// Every op validates its shapes (a mismatch is a bug in the caller, reported with both shapes)
// and hands the arithmetic to a kernel in kernels/cpu/.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
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
#include "kernels/cpu/transformer_ops.h"

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

// Conv layers packed once (oneDNN's blocked or Winograd weight layout, plans per input size)
// and kept while the backend lives: repacking per call cost ~1-2 ms per 512-channel layer, and
// a Winograd weight transform 5-100 ms. Keyed by the weight/bias storage and the parameters.
// An entry holds its weight and bias tensors, so their memory cannot be reused by another
// tensor while cached; a fingerprint of sampled weight values catches a caller overwriting a
// weight tensor in place (the layer is then repacked). At most kMaxEntries layers are kept.
class ConvCache {
 public:
  std::shared_ptr<const cpu::PackedConv2d> get(const Tensor& w, const Tensor& b, const cpu::Conv2dShape& s,
                                               bool allow_winograd) {
    const Key key{w.data(), b.defined() ? b.data() : nullptr, s.Cin, s.Cout, s.kh, s.kw, s.stride,
                  s.pad_top, s.pad_left, s.pad_bottom, s.pad_right, allow_winograd};
    const uint64_t fp = fingerprint(w, b);
    std::lock_guard<std::mutex> lk(mu_);
    auto it = entries_.find(key);
    if (it != entries_.end() && it->second.fingerprint == fp) return it->second.conv;
    if (it != entries_.end()) entries_.erase(it);
    if (entries_.size() >= kMaxEntries) entries_.clear();
    Entry e{w, b, fp,
            std::make_shared<const cpu::PackedConv2d>(s, w.f32(), b.defined() ? b.f32() : nullptr,
                                                      allow_winograd ? cpu::ConvAlgo::automatic : cpu::ConvAlgo::direct,
                                                      /*borrow=*/true)};
    auto conv = e.conv;
    entries_.emplace(key, std::move(e));
    return conv;
  }

 private:
  static constexpr size_t kMaxEntries = 512;
  using Key = std::tuple<const void*, const void*, int64_t, int64_t, int64_t, int64_t, int, int, int, int, int, bool>;
  struct Entry {
    Tensor w, b;
    uint64_t fingerprint;
    std::shared_ptr<const cpu::PackedConv2d> conv;
  };

  // FNV-1a over the bits of 64 evenly spaced weights and 8 biases.
  static uint64_t fingerprint(const Tensor& w, const Tensor& b) {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&](const float* p, int64_t n, int64_t samples) {
      for (int64_t i = 0; i < samples && n > 0; ++i) {
        uint32_t bits;
        std::memcpy(&bits, p + (n - 1) * i / std::max<int64_t>(1, samples - 1), 4);
        h = (h ^ bits) * 1099511628211ull;
      }
    };
    mix(w.f32(), w.numel(), 64);
    if (b.defined()) mix(b.f32(), b.numel(), 8);
    return h;
  }

  std::mutex mu_;
  std::map<Key, Entry> entries_;
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
  ConvCache convs_;
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
    convs_.get(w, b, s, p.allow_winograd)->forward(s, x.f32(), y.f32());
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
    // f32 weights, or the bf16/f16 matrices upload_weight() keeps (converted in registers).
    HWAGA_CHECK(w.defined() && w.device() == Device::CPU, "linear: weight is not a host tensor");
    HWAGA_CHECK(w.dtype() == DType::F32 || w.dtype() == DType::BF16 || w.dtype() == DType::F16,
                "linear: weight must be f32, bf16 or f16, found ", dtype_name(w.dtype()));
    expect_ndim(w, 2, "linear", "weight");
    HWAGA_CHECK(x.ndim() >= 1 && x.dim(-1) == w.dim(1), "linear: input ", shape_str(x.shape()),
                " does not end in ", w.dim(1), " features (weight ", shape_str(w.shape()), ")");
    const int64_t out_f = w.dim(0), in_f = w.dim(1), N = in_f ? x.numel() / in_f : 0;
    Shape ys = x.shape();
    ys.back() = out_f;
    Tensor y = empty(ys);
    if (b.defined()) {
      expect_f32_host(b, "linear", "bias");
      b.expect(Shape{out_f}, "linear bias");
    }
    // y = x w^T (+ b): a register-tiled GEMV for a few rows (sampling steps), sgemm otherwise.
    if (in_f == 0) {
      for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < out_f; ++o) y.f32()[n * out_f + o] = b.defined() ? b.f32()[o] : 0.0f;
    } else {
      cpu::linear_forward(x.f32(), w.data(), w.dtype(), b.defined() ? b.f32() : nullptr, y.f32(), N, in_f, out_f);
    }
    return y;
  }

  // ---- transformers ----

  Tensor upload_weight(const Tensor& host) override {
    HWAGA_CHECK(host.device() == Device::CPU, "upload_weight: expected a host tensor");
    const DType t = host.dtype();
    if (t != DType::BF16 && t != DType::F16) return upload(host, DType::F32);
    return host;  // read in place by linear()/embedding() (unaligned rows are fine)
  }

  Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps) override {
    expect_f32_host(x, "layer_norm", "input");
    expect_f32_host(gamma, "layer_norm", "weight");
    expect_f32_host(beta, "layer_norm", "bias");
    HWAGA_CHECK(x.ndim() >= 1, "layer_norm: input must have at least one dimension");
    const int64_t C = x.dim(-1);
    gamma.expect(Shape{C}, "layer_norm weight");
    beta.expect(Shape{C}, "layer_norm bias");
    Tensor y = empty(x.shape());
    if (C > 0) cpu::layer_norm_forward(x.f32(), gamma.f32(), beta.f32(), y.f32(), x.numel() / C, C, eps);
    return y;
  }

  Tensor gelu(const Tensor& x) override {
    expect_f32_host(x, "gelu", "input");
    Tensor y = empty(x.shape());
    cpu::gelu_forward(x.f32(), y.f32(), x.numel());
    return y;
  }

  Tensor embedding(const Tensor& table, const Tensor& ids) override {
    HWAGA_CHECK(table.defined() && table.device() == Device::CPU, "embedding: table is not a host tensor");
    HWAGA_CHECK(table.dtype() == DType::F32 || table.dtype() == DType::BF16 || table.dtype() == DType::F16,
                "embedding: table must be f32, bf16 or f16, found ", dtype_name(table.dtype()));
    expect_ndim(table, 2, "embedding", "table");
    HWAGA_CHECK(ids.defined() && ids.dtype() == DType::I32 && ids.device() == Device::CPU,
                "embedding: ids must be a host int32 tensor");
    const int64_t V = table.dim(0), C = table.dim(1), N = ids.numel();
    const int32_t* id = ids.ptr<int32_t>();
    for (int64_t n = 0; n < N; ++n)
      HWAGA_CHECK(id[n] >= 0 && id[n] < V, "embedding: id ", id[n], " at position ", n, " is outside [0, ", V,
                  ") for table ", shape_str(table.shape()));
    Tensor y = empty({N, C});
    cpu::gather_rows_forward(table.data(), table.dtype(), id, y.f32(), N, C);
    return y;
  }

  Tensor add_rows(const Tensor& x, const Tensor& rows) override {
    expect_f32_host(x, "add_rows", "x");
    expect_f32_host(rows, "add_rows", "rows");
    HWAGA_CHECK(x.ndim() >= 1 && rows.ndim() >= 1 && rows.dim(-1) == x.dim(-1), "add_rows: rows ",
                shape_str(rows.shape()), " do not match the channels of x ", shape_str(x.shape()));
    const int64_t C = x.dim(-1), N = C ? x.numel() / C : 0, R = C ? rows.numel() / C : 0;
    HWAGA_CHECK(R >= 1 && N % R == 0, "add_rows: ", N, " rows of x ", shape_str(x.shape()),
                " are not a multiple of the ", R, " rows of ", shape_str(rows.shape()));
    Tensor y = empty(x.shape());
    cpu::add_rows_forward(x.f32(), rows.f32(), y.f32(), N, R, C);
    return y;
  }

  Tensor concat(const std::vector<Tensor>& parts) override {
    HWAGA_CHECK(!parts.empty(), "concat: no tensors");
    Shape s = parts[0].shape();
    HWAGA_CHECK(!s.empty(), "concat: tensors must have at least one dimension");
    int64_t rows = 0;
    for (const Tensor& p : parts) {
      expect_f32_host(p, "concat", "part");
      HWAGA_CHECK(p.ndim() == int(s.size()) && std::equal(s.begin() + 1, s.end(), p.shape().begin() + 1),
                  "concat: ", shape_str(p.shape()), " does not match ", shape_str(parts[0].shape()),
                  " after dimension 0");
      rows += p.dim(0);
    }
    s[0] = rows;
    Tensor y = empty(s);
    char* dst = static_cast<char*>(y.data());
    for (const Tensor& p : parts) {
      if (p.nbytes()) std::memcpy(dst, p.data(), p.nbytes());
      dst += p.nbytes();
    }
    return y;
  }

  KvCache kv_cache_new(int64_t B, int64_t n_head, int64_t T_max, int64_t head_dim) override {
    HWAGA_CHECK(B >= 1 && n_head >= 1 && T_max >= 1 && head_dim >= 1, "kv_cache_new: bad shape B=", B,
                " heads=", n_head, " T_max=", T_max, " hd=", head_dim);
    KvCache c;
    c.k = Tensor::empty({B, n_head, T_max, head_dim});
    c.v = Tensor::empty({B, n_head, T_max, head_dim});
    return c;
  }

  void kv_cache_gather(KvCache& dst, const KvCache& src, const std::vector<int32_t>& rows) override {
    HWAGA_CHECK(dst.k.defined() && src.k.defined(), "kv_cache_gather: undefined cache");
    const int64_t B = dst.k.dim(0), H = dst.k.dim(1), Tm = dst.k.dim(2), hd = dst.k.dim(3);
    HWAGA_CHECK(int64_t(rows.size()) == B, "kv_cache_gather: ", rows.size(), " rows for a cache of batch ", B);
    HWAGA_CHECK(src.k.dim(1) == H && src.k.dim(3) == hd && src.len <= Tm, "kv_cache_gather: source ",
                shape_str(src.k.shape()), " (", src.len, " positions) does not fit ", shape_str(dst.k.shape()));
    const int64_t Ts = src.k.dim(2);
    for (int32_t r : rows)
      HWAGA_CHECK(r >= 0 && r < src.k.dim(0), "kv_cache_gather: row ", r, " outside the source batch ",
                  src.k.dim(0));
    parallel_for(B * H, 4, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t b = j / H, h = j % H;
        const size_t bytes = size_t(src.len * hd) * 4;
        const int64_t so = (rows[size_t(b)] * H + h) * Ts * hd, dof = (b * H + h) * Tm * hd;
        std::memcpy(dst.k.f32() + dof, src.k.f32() + so, bytes);
        std::memcpy(dst.v.f32() + dof, src.v.f32() + so, bytes);
      }
    });
    dst.len = src.len;
  }

  Tensor attention_step(const Tensor& q, const Tensor& k, const Tensor& v, KvCache& cache, int n_head) override {
    expect_f32_host(q, "attention_step", "q");
    expect_f32_host(k, "attention_step", "k");
    expect_f32_host(v, "attention_step", "v");
    expect_ndim(q, 3, "attention_step", "q");
    k.expect(q.shape(), "attention_step: k");
    v.expect(q.shape(), "attention_step: v");
    HWAGA_CHECK(cache.k.defined() && cache.v.defined(), "attention_step: the cache is not allocated");
    const int64_t B = q.dim(0), T = q.dim(1), C = q.dim(2);
    HWAGA_CHECK(n_head >= 1 && C % n_head == 0, "attention_step: ", C, " channels are not divisible into ", n_head,
                " heads");
    const Shape want{B, n_head, cache.capacity(), C / n_head};
    cache.k.expect(want, "attention_step: key cache");
    cache.v.expect(want, "attention_step: value cache");
    HWAGA_CHECK(cache.len >= 0 && cache.len + T <= cache.capacity(), "attention_step: ", T, " new tokens after ",
                cache.len, " overflow the cache of ", cache.capacity(), " positions");
    Tensor out = empty(q.shape());
    cpu::attention_cached_forward(q.f32(), k.f32(), v.f32(), cache.k.f32(), cache.v.f32(), out.f32(), B, T, n_head,
                                  C / n_head, cache.capacity(), cache.len);
    if (cache.len_counter.defined()) {  // the host mirror of a GPU graph's cache length
      HWAGA_CHECK(cache.len_counter.device() == Device::CPU && cache.len_counter.numel() == 1 &&
                      cache.len_counter.ptr<int32_t>()[0] == cache.len,
                  "attention_step: the cache's len_counter does not hold its length ", cache.len);
      cache.len_counter.ptr<int32_t>()[0] += int32_t(T);
    }
    cache.len += T;
    return out;
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace hwaga
