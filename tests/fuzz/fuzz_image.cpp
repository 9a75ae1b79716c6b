// Fuzz target: arbitrary bytes as an image file (JPEG via libjpeg-turbo; PNG, BMP, GIF via
// stb_image) for decode_image_for_model, and as a PNG for parse_png_text.
//
// decode_image_for_model runs at two sizes, 16 (seeds of 16 x 16 and 16 x N take the as-is and
// crop-only paths) and 5 (resampling down, or up for the smallest seeds). Either it throws
// hwaga::Error or it returns f32 [3, s, s] with every value finite and in [-1, 1] (x/127.5 - 1 of
// a clamped 0..255 value; the bound allows one float rounding). parse_png_text either throws
// hwaga::Error or returns keys that are non-empty, valid UTF-8 (Latin-1 converted) without NUL.
//
// Inputs whose header claims more than kMaxPixels pixels are not decoded: hwaga allocates
// ~16 bytes per claimed pixel before it can find out the data is truncated (up to kMaxImageSide^2
// by design), which a 2 GB fuzzer memory limit would report on every header mutation. The header
// is read with stb_image's own stbi_info_from_memory (PNG/BMP/GIF, as decode does) or, for JPEG,
// by scanning for the SOF marker.
#include <stb_image.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "io/image.h"
#include "text/normalizer.h"

namespace {

constexpr uint64_t kMaxPixels = uint64_t(1) << 22;  // 4 Mpx: ~64 MB of decode buffers

// Width x height from the first SOFn marker of a JPEG (0 if none is found).
uint64_t jpeg_claimed_pixels(const uint8_t* d, size_t n) {
  size_t i = 2;
  while (i + 4 <= n) {
    if (d[i] != 0xFF) return 0;
    uint8_t m = d[i + 1];
    if (m == 0xFF) {  // fill byte
      ++i;
      continue;
    }
    if (m == 0xD8 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) {  // no length
      i += 2;
      continue;
    }
    size_t len = size_t(d[i + 2]) << 8 | d[i + 3];
    bool sof = m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
    if (sof && i + 9 <= n) return uint64_t(d[i + 5] << 8 | d[i + 6]) * uint64_t(d[i + 7] << 8 | d[i + 8]);
    if (m == 0xDA || len < 2) return 0;
    i += 2 + len;
  }
  return 0;
}

bool too_many_pixels(const uint8_t* d, size_t n) {
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return jpeg_claimed_pixels(d, n) > kMaxPixels;
  int w = 0, h = 0, comp = 0;
  if (n > 0 && n < size_t(1) << 30 && stbi_info_from_memory(d, int(n), &w, &h, &comp))
    return uint64_t(w > 0 ? w : 0) * uint64_t(h > 0 ? h : 0) > kMaxPixels;
  return false;
}

[[noreturn]] void bad(const char* what) {
  std::fprintf(stderr, "fuzz_image: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!too_many_pixels(data, size)) {
    for (int s : {16, 5}) {
      try {
        hwaga::Tensor t = hwaga::decode_image_for_model(data, size, s, "fuzz.img");
        if (t.dtype() != hwaga::DType::F32 || t.shape() != hwaga::Shape{3, s, s}) bad("wrong dtype or shape");
        const float* p = t.f32();
        for (int64_t i = 0; i < 3 * s * s; ++i)
          if (!std::isfinite(p[i]) || p[i] < -1.0f - 1e-6f || p[i] > 1.0f + 1e-6f) bad("pixel outside [-1, 1]");
      } catch (const hwaga::Error&) {
      }
    }
  }
  try {
    auto text = hwaga::parse_png_text(data, size, "fuzz.png");
    for (const auto& [key, value] : text) {
      if (key.empty() || key.find('\0') != std::string::npos) bad("empty key or NUL in a key");
      try {
        (void)hwaga::text::utf8_decode(key, "key");
      } catch (const hwaga::Error&) {
        bad("key is not valid UTF-8");
      }
    }
  } catch (const hwaga::Error&) {
  }
  return 0;
}
