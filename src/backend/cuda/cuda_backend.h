// The CUDA backend: the same operators as the CPU backend (backend/backend.h), on one GPU.
// Activations are f32 NCHW like on the CPU. Convolutions run on cuDNN (f32 with FMA math, so
// no TF32, for parity with the CPU; or bf16 NHWC with f32 accumulation when the weights are
// bf16), matrix products on cuBLAS / cuBLASLt, and the rest on the kernels in kernels/cuda.
// Device memory comes from a caching allocator (cuda_alloc.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "backend/backend.h"

namespace hwaga {

namespace cuda {
struct Context;  // backend/cuda/cuda_context.h
}

struct CudaBackendOptions {
  int device = 0;
  // upload(host, F32) of a rank-4 float tensor (a conv weight) stores it as bf16, so the
  // convolutions run in bf16 with f32 accumulation. Other tensors keep the dtype asked for.
  bool bf16_conv_weights = false;
  // Pick each convolution's algorithm by timing them (cudnnFindConvolutionForwardAlgorithmEx)
  // instead of by cuDNN's heuristics. Costs a little time the first time a shape is seen.
  bool cudnn_find = false;
};

std::unique_ptr<Backend> make_cuda_backend_with(const CudaBackendOptions& opts, std::string* why);

// Counters of a CUDA backend (fails on any other backend).
struct CudaStats {
  size_t in_use_bytes = 0;        // device memory held by live tensors of this backend
  size_t peak_in_use_bytes = 0;   // high-water mark since the last cuda_reset_stats
  size_t reserved_bytes = 0;      // obtained from the driver (live + cached)
  size_t peak_reserved_bytes = 0;
  double conv_flops = 0;          // 2*MACs of every conv2d since the last reset
  int conv_fallbacks = 0;         // cuDNN failures that switched convs to im2col + cuBLAS
  int64_t graphs_recorded = 0;    // sampling steps recorded as CUDA graphs (capture_end), ever
  int64_t graph_launches = 0;     // replays of recorded steps, ever
  std::string device_name;
};
CudaStats cuda_stats(Backend& be);
void cuda_reset_stats(Backend& be);
// Waits for all work queued by the backend.
void cuda_synchronize(Backend& be);
// The backend's cudaStream_t (as void*, so that this header needs no CUDA headers).
void* cuda_stream(Backend& be);
// The backend's device, stream, library handles and allocator, for components that queue their
// own work on the backend's stream (the CUDA training ops). Valid while the backend lives.
cuda::Context& cuda_context(Backend& be);

// Card measurements for the benchmark: device-to-device copy bandwidth in GB/s (read + write
// bytes counted), and the cuBLASLt n^3 matrix rate in TFLOP/s for F32 (no TF32) or BF16
// (bf16 in/out, f32 accumulation).
double cuda_copy_bandwidth_gbs(Backend& be, size_t bytes, int iters);
double cuda_matmul_tflops(Backend& be, DType dtype, int n, int iters);

}  // namespace hwaga
