// NumPy .npy files (format versions 1.0-3.0, little-endian, C order) for code arrays.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace hwaga {

// Reads an .npy of int32 or int64 (converted to int32 with a range check), float32 also allowed.
// Throws naming `path` on a bad magic, header, dtype, Fortran order or truncated data.
Tensor read_npy(const std::string& path);
// Writes int32/float32 tensors; atomic (temporary file + rename).
void write_npy(const std::string& path, const Tensor& t);

// Parses a whole .npy file already in memory (tests, fuzzing); `path` names it in errors.
// The result owns its memory.
Tensor parse_npy(const uint8_t* data, size_t size, const std::string& path);
// What write_npy writes before the data: magic, version (1.0; 2.0 only for a header over
// 64 KiB), header length, the header dict padded with spaces and '\n' to a 64-byte multiple.
std::string npy_preamble(const Tensor& t);

}  // namespace hwaga
