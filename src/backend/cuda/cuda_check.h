// Checked calls into CUDA, cuBLAS(Lt) and cuDNN: every failure becomes a hwaga::Error that
// names the call, the library's own error string and the source file:line.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#ifdef HWAGA_HAVE_CUDNN
#include <cudnn.h>
#endif

#include "core/error.h"

#define CUDA_CHECK(call)                                                                       \
  do {                                                                                         \
    cudaError_t err_ = (call);                                                                 \
    if (err_ != cudaSuccess)                                                                   \
      ::hwaga::fail("CUDA error in ", #call, ": ", cudaGetErrorString(err_), " (",            \
                    cudaGetErrorName(err_), ") [", __FILE__, ":", __LINE__, "]");             \
  } while (0)

#define CUBLAS_CHECK(call)                                                                     \
  do {                                                                                         \
    cublasStatus_t st_ = (call);                                                               \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                          \
      ::hwaga::fail("cuBLAS error in ", #call, ": ", cublasGetStatusString(st_),   \
                    " (", int(st_), ") [", __FILE__, ":", __LINE__, "]");                     \
  } while (0)

#ifdef HWAGA_HAVE_CUDNN
#define CUDNN_CHECK(call)                                                                      \
  do {                                                                                         \
    cudnnStatus_t st_ = (call);                                                                \
    if (st_ != CUDNN_STATUS_SUCCESS)                                                           \
      ::hwaga::fail("cuDNN error in ", #call, ": ", cudnnGetErrorString(st_), " (", int(st_),  \
                    ") [", __FILE__, ":", __LINE__, "]");                                     \
  } while (0)
#endif

// After a kernel launch: reports launch-configuration errors at the launch site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
