// oneDNN plumbing shared by gemm.cpp and conv2d.cpp; see gemm_dnnl.h for the threading rule.
#ifdef HWAGA_HAVE_DNNL
#include "kernels/cpu/gemm_dnnl.h"

#include <omp.h>

#include <memory>

namespace hwaga::cpu::dnnl_rt {

dnnl::engine& engine() {
  static dnnl::engine eng = [] {
    // Strict f32 everywhere: a DNNL_DEFAULT_FPMATH_MODE=bf16 environment must not silently
    // down-convert hwaga's math. (Primitives also set fpmath strict on their attributes.)
    dnnl_set_default_fpmath_mode(dnnl_fpmath_mode_strict);
    return dnnl::engine(dnnl::engine::kind::cpu, 0);
  }();
  return eng;
}

void single_thread_here() {
  if (omp_get_max_threads() != 1) omp_set_num_threads(1);
}

dnnl::stream& stream() {
  thread_local std::unique_ptr<dnnl::stream> s;
  if (!s) s = std::make_unique<dnnl::stream>(engine());
  return *s;
}

const char* isa_name() {
  switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_sse41: return "sse41";
    default: return "generic";
  }
}

}  // namespace hwaga::cpu::dnnl_rt
#endif
