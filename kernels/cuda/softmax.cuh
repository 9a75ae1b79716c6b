// Row softmax in place: x [rows, n] -> softmax over each row (f32, max-subtracted).
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace hwaga::cuda {

void softmax_rows_f32(float* x, int64_t rows, int64_t n, cudaStream_t s);

}  // namespace hwaga::cuda
