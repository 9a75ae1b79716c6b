// Element types and conversions between them (bf16/f16 <-> f32, round-to-nearest-even).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace hwaga {

enum class DType : uint8_t { F32, BF16, F16, I32, I64, U8 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // "f32", "bf16", "f16", "i32", "i64", "u8"
// Parses "f32"/"bf16"/"f16" (and the safetensors spellings "F32", "BF16", "F16", "I32", "I64", "U8").
// Throws hwaga::Error naming `what` on an unknown name.
DType parse_dtype(std::string_view name, std::string_view what = "dtype");
const char* safetensors_dtype_name(DType t);  // "F32", "BF16", ...

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                         // round to nearest even
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n elements between float types (F32/BF16/F16) into f32 or from f32.
void convert_to_f32(const void* src, DType src_type, float* dst, size_t n);
void convert_from_f32(const float* src, void* dst, DType dst_type, size_t n);

}  // namespace hwaga
