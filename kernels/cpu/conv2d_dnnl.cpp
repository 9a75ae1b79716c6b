// oneDNN direct convolution run slab by slab on hwaga's pool; see conv2d_dnnl.h.
#ifdef HWAGA_HAVE_DNNL
#include "kernels/cpu/conv2d_dnnl.h"

#include <algorithm>
#include <cstdlib>  // aligned_alloc
#include <omp.h>

#include <map>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/gemm_dnnl.h"

namespace hwaga::cpu {

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

struct DnnlWeights {
  memory::desc md;
  memory mem;
};

namespace {

// One slab shape (output rows, effective top/bottom pad) and its three primitives.
struct SlabKind {
  int64_t in_rows = 0;
  dnnl::convolution_forward conv;
  dnnl::reorder to_blocked, to_nchw;
  memory::desc user_src, src, dst, user_dst, weights;
  size_t scratch = 0;  // bytes of conv + reorder scratchpad
  std::string impl;
};

// 64-byte aligned, grow-only per-thread buffer.
struct AlignedBuf {
  void* p = nullptr;
  size_t n = 0;
  ~AlignedBuf() { std::free(p); }
  void* get(size_t bytes) {
    if (bytes > n) {
      std::free(p);
      n = (bytes + 63) / 64 * 64;
      p = std::aligned_alloc(64, n);
      HWAGA_CHECK(p, "conv2d: out of memory allocating ", n, " bytes");
    }
    return p;
  }
};

dnnl::primitive_attr strict_attr() {
  dnnl::primitive_attr a;
  a.set_fpmath_mode(dnnl::fpmath_mode::strict);
  a.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // each thread brings its own
  return a;
}

}  // namespace

struct DnnlConvPlan {
  Conv2dShape s;
  int64_t R = 0, nslab = 0;
  std::vector<int> kind_of_slab;  // index into kinds
  std::vector<SlabKind> kinds;
  std::shared_ptr<DnnlWeights> weights;
  const float* bias = nullptr;
  bool winograd = false;
};

namespace {

// Output rows per slab: the larger of the slab's input and output near a target size, at least
// one slab per thread. Direct: 512 KB (measured best on 2 MB L2; tried 512 KB, 2 MB, whole image).
// Winograd: 2 MB (tried 512 KB to 8 MB: CPU time within noise, 2 MB never worse), and a
// multiple of 4 rows (F(4x4,3x3) output tiles are 4 rows high).
int64_t slab_rows(const Conv2dShape& s, bool winograd) {
  const int64_t Ho = s.Ho(), Wo = s.Wo();
  const double row_bytes = 4.0 * std::max(double(s.Cin) * s.W * s.stride, double(s.Cout) * Wo);
  const int64_t target = int64_t(winograd ? 2048 : 512) << 10;
  int64_t R = std::max<int64_t>(1, int64_t(double(target) / row_bytes));
  const int64_t per_image = (num_threads() + s.B - 1) / s.B;
  R = std::min(R, (Ho + per_image - 1) / per_image);
  if (winograd) R = std::max<int64_t>(4, (R + 3) / 4 * 4);
  return std::min(R, Ho);
}

std::optional<SlabKind> make_kind(const Conv2dShape& s, int64_t out_rows, int pt, int pb, int64_t in_rows,
                                  const memory::desc& wmd, bool with_bias, bool winograd) {
  try {
    auto& eng = dnnl_rt::engine();
    const int64_t Wo = s.Wo();
    memory::dims src_d = {1, s.Cin, in_rows, s.W}, dst_d = {1, s.Cout, out_rows, Wo};
    memory::dims w_d = {s.Cout, s.Cin, s.kh, s.kw}, b_d = {s.Cout};
    auto cd = dnnl::convolution_forward::desc(
        dnnl::prop_kind::forward_inference, winograd ? dnnl::algorithm::convolution_winograd : dnnl::algorithm::convolution_direct,
        memory::desc(src_d, dt::f32, tag::any),
        wmd, with_bias ? memory::desc(b_d, dt::f32, tag::x) : memory::desc(),
        memory::desc(dst_d, dt::f32, tag::any), {s.stride, s.stride}, {pt, s.pad_left}, {pb, s.pad_right});
    dnnl::convolution_forward::primitive_desc pd(cd, strict_attr(), eng);
    SlabKind k;
    k.in_rows = in_rows;
    k.impl = pd.impl_info_str();
    k.src = pd.src_desc();
    k.dst = pd.dst_desc();
    k.weights = pd.weights_desc();
    // The user tensors: a window of rows of the full nchw x / y (strides of the full image).
    k.user_src = memory::desc(src_d, dt::f32, memory::dims{s.Cin * s.H * s.W, s.H * s.W, s.W, 1});
    k.user_dst = memory::desc(dst_d, dt::f32, memory::dims{s.Cout * s.Ho() * Wo, s.Ho() * Wo, Wo, 1});
    dnnl::reorder::primitive_desc r1(eng, k.user_src, eng, k.src, strict_attr());
    dnnl::reorder::primitive_desc r2(eng, k.dst, eng, k.user_dst, strict_attr());
    k.scratch = std::max({pd.scratchpad_desc().get_size(), r1.scratchpad_desc().get_size(),
                          r2.scratchpad_desc().get_size()});
    k.conv = dnnl::convolution_forward(pd);
    k.to_blocked = dnnl::reorder(r1);
    k.to_nchw = dnnl::reorder(r2);
    return k;
  } catch (const dnnl::error&) {
    return std::nullopt;
  }
}

// Input rows [lo, hi) (unclipped) needed by output rows [o0, o1).
void input_window(const Conv2dShape& s, int64_t o0, int64_t o1, int64_t& lo, int64_t& hi) {
  lo = o0 * s.stride - s.pad_top;
  hi = (o1 - 1) * s.stride - s.pad_top + s.kh;
}

}  // namespace

std::shared_ptr<DnnlConvPlan> dnnl_conv_plan(const Conv2dShape& s, const float* w, const float* bias,
                                             std::shared_ptr<DnnlWeights>& packed, bool winograd) {
  auto plan = std::make_shared<DnnlConvPlan>();
  plan->s = s;
  plan->bias = bias;
  const int64_t Ho = s.Ho();
  plan->R = slab_rows(s, winograd);
  plan->winograd = winograd;
  plan->nslab = (Ho + plan->R - 1) / plan->R;

  // Distinct slab shapes: (rows, effective top pad, effective bottom pad) -> kind index.
  std::map<std::tuple<int64_t, int, int>, int> index;
  memory::desc wmd = packed ? packed->md : memory::desc({s.Cout, s.Cin, s.kh, s.kw}, dt::f32, tag::any);
  for (int pass = 0; pass < 2; ++pass) {
    plan->kinds.clear();
    plan->kind_of_slab.clear();
    index.clear();
    bool ok = true;
    for (int64_t i = 0; i < plan->nslab && ok; ++i) {
      const int64_t o0 = i * plan->R, o1 = std::min(Ho, o0 + plan->R);
      int64_t lo, hi;
      input_window(s, o0, o1, lo, hi);
      const int pt = int(std::max<int64_t>(0, -lo)), pb = int(std::max<int64_t>(0, hi - s.H));
      const int64_t in_rows = std::min(hi, s.H) - std::max<int64_t>(lo, 0);
      auto key = std::make_tuple(o1 - o0, pt, pb);
      auto it = index.find(key);
      if (it == index.end()) {
        auto k = make_kind(s, o1 - o0, pt, pb, in_rows, wmd, bias != nullptr, winograd);
        if (!k) {
          ok = false;
          break;
        }
        if (wmd.data.format_kind == dnnl_format_kind_any) wmd = k->weights;  // later slabs share it
        it = index.emplace(key, int(plan->kinds.size())).first;
        plan->kinds.push_back(std::move(*k));
      }
      plan->kind_of_slab.push_back(it->second);
    }
    if (ok) break;
    if (pass == 1 || !packed) return nullptr;
    packed.reset();  // the cached layout does not fit this size: let oneDNN choose again
    wmd = memory::desc({s.Cout, s.Cin, s.kh, s.kw}, dt::f32, tag::any);
  }

  if (!packed || packed->md != wmd) {
    auto& eng = dnnl_rt::engine();
    auto nw = std::make_shared<DnnlWeights>();
    nw->md = wmd;
    nw->mem = memory(wmd, eng);
    memory src(memory::desc({s.Cout, s.Cin, s.kh, s.kw}, dt::f32, tag::oihw), eng, const_cast<float*>(w));
    // Packing runs once per layer, in the first call: the Winograd transform is slow (~100 ms for
    // 512x512 on one thread) and the blocked copy of a 512-channel layer takes ~4.5 ms (mostly
    // first touches of the mapped model file). Here, unlike in the per-call paths (see
    // gemm_dnnl.h), oneDNN runs on an OpenMP team as wide as hwaga's pool: measured 1.7-2x
    // faster packing, and the team's idle spin afterwards (~1 ms) is paid once per layer.
    omp_set_num_threads(num_threads());
    dnnl::reorder(src, nw->mem).execute(dnnl_rt::stream(), src, nw->mem);
    dnnl_rt::stream().wait();
    dnnl_rt::single_thread_here();
    packed = nw;
  }
  plan->weights = packed;
  return plan;
}

void dnnl_conv_run(const DnnlConvPlan& plan, const float* x, float* y) {
  const Conv2dShape& s = plan.s;
  const int64_t Ho = s.Ho(), Wo = s.Wo();
  parallel_for(s.B * plan.nslab, 1, [&](int64_t p0, int64_t p1) {
    dnnl_rt::single_thread_here();
    auto& eng = dnnl_rt::engine();
    auto& st = dnnl_rt::stream();
    thread_local AlignedBuf src_buf, dst_buf, scratch_buf;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / plan.nslab, i = p % plan.nslab;
      const SlabKind& k = plan.kinds[size_t(plan.kind_of_slab[size_t(i)])];
      const int64_t o0 = i * plan.R;
      int64_t lo, hi;
      input_window(s, o0, o0 + 1, lo, hi);
      const int64_t row0 = std::max<int64_t>(lo, 0);
      memory xs(k.user_src, eng, const_cast<float*>(x + (b * s.Cin * s.H + row0) * s.W));
      memory src(k.src, eng, src_buf.get(k.src.get_size()));
      memory dst(k.dst, eng, dst_buf.get(k.dst.get_size()));
      memory ys(k.user_dst, eng, y + (b * s.Cout * Ho + o0) * Wo);
      memory scratch(memory::desc({int64_t(std::max<size_t>(k.scratch, 1))}, dt::u8, tag::x), eng,
                     scratch_buf.get(std::max<size_t>(k.scratch, 1)));
      k.to_blocked.execute(st, {{DNNL_ARG_FROM, xs}, {DNNL_ARG_TO, src}, {DNNL_ARG_SCRATCHPAD, scratch}});
      std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src},
                                              {DNNL_ARG_WEIGHTS, plan.weights->mem},
                                              {DNNL_ARG_DST, dst},
                                              {DNNL_ARG_SCRATCHPAD, scratch}};
      if (plan.bias)
        args.emplace(DNNL_ARG_BIAS,
                     memory(memory::desc({s.Cout}, dt::f32, tag::x), eng, const_cast<float*>(plan.bias)));
      k.conv.execute(st, args);
      k.to_nchw.execute(st, {{DNNL_ARG_FROM, dst}, {DNNL_ARG_TO, ys}, {DNNL_ARG_SCRATCHPAD, scratch}});
    }
    st.wait();
  });
}

std::string dnnl_conv_name(const DnnlConvPlan& plan) {
  return "oneDNN " + plan.kinds.front().impl + " (" + dnnl_rt::isa_name() + "), slabs of " +
         std::to_string(plan.R) + " rows";
}

}  // namespace hwaga::cpu
#endif
