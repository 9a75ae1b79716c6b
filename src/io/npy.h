// NumPy .npy files (format versions 1.0-3.0, little-endian, C order) for code arrays.
#pragma once
#include <string>

#include "core/tensor.h"

namespace hwaga {

// Reads an .npy of int32 or int64 (converted to int32 with a range check), float32 also allowed.
// Throws naming `path` on a bad magic, header, dtype, Fortran order or truncated data.
Tensor read_npy(const std::string& path);
// Writes int32/float32 tensors; atomic (temporary file + rename).
void write_npy(const std::string& path, const Tensor& t);

}  // namespace hwaga
