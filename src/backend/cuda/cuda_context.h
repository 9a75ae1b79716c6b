// What the CUDA backend's pieces share: the device, one stream, the library handles bound to
// that stream, and the caching allocator. Owned by the backend (cuda_backend.cpp).
#pragma once
#include <memory>

#include "backend/cuda/cuda_alloc.h"
#include "backend/cuda/cuda_check.h"

namespace hwaga::cuda {

struct Context {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  cublasLtHandle_t lt = nullptr;
#ifdef HWAGA_HAVE_CUDNN
  cudnnHandle_t dnn = nullptr;  // null when cuDNN failed to initialise: convs use im2col + cuBLAS
#endif
  std::shared_ptr<CachingAllocator> alloc;

  Tensor empty(Shape shape, DType dtype = DType::F32) { return alloc->empty(std::move(shape), dtype); }
  // A scratch block of at least `bytes` (kept by the caller for as long as kernels use it).
  std::shared_ptr<void> scratch(size_t bytes) { return alloc->alloc(bytes); }
};

// y [M,N] (row-major, f32) = x [M,K] . w^T with w [N,K] row-major, f32 or bf16 (then x is
// converted to bf16 and the product accumulates in f32). cuBLASLt, no TF32.
void linear_lt(Context& ctx, const float* x, const void* w, DType wtype, float* y, int64_t M, int64_t N,
               int64_t K);
// cuBLASLt D = A.B on n x n matrices of `dtype` (F32 or BF16) for the matrix-rate measurement.
void square_matmul_lt(Context& ctx, const void* a, const void* b, void* d, DType dtype, int n);

}  // namespace hwaga::cuda
