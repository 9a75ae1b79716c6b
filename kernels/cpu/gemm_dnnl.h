// Shared oneDNN plumbing for the CPU gemm / conv2d kernels (only built with HWAGA_HAVE_DNNL).
//
// Threading: Debian's oneDNN uses the OpenMP runtime. We never let it fork an OpenMP team:
// after each OpenMP region libgomp's idle workers spin for milliseconds, which starves
// hwaga's own pool on a 2-core machine (measured: a 0.9 ms sgemm followed by a 9 ms
// parallel_for took 13 ms instead of 9.7). Instead every oneDNN call runs single-threaded
// on a hwaga pool thread, and the work is split over hwaga::parallel_for, so the thread
// count is exactly hwaga::num_threads(). Exception: a conv layer's one-time weight packing
// (conv2d_dnnl.cpp) runs on an OpenMP team, where the later spin costs far less than it saves.
#pragma once
#ifdef HWAGA_HAVE_DNNL
#include <oneapi/dnnl/dnnl.hpp>

namespace hwaga::cpu::dnnl_rt {

// The process-wide CPU engine; also pins oneDNN's default float math to strict f32.
dnnl::engine& engine();
// Makes oneDNN calls made from the current thread run on this thread alone (no OpenMP team).
void single_thread_here();
// A stream for the current thread (streams are not shared between threads).
dnnl::stream& stream();
// "avx512_core_amx" etc.: the widest ISA oneDNN's JIT uses on this CPU.
const char* isa_name();

}  // namespace hwaga::cpu::dnnl_rt
#endif
