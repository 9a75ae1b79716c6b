// Images in (JPEG: libjpeg-turbo; PNG, BMP, GIF: stb_image) and PNG out (libpng, tEXt/iTXt).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>

#include "core/tensor.h"

namespace hwaga {

// Loads an image file and prepares it as the tokenizers expect: alpha composited on white,
// short side resized to `size` (bicubic-ish area-correct resampling is fine; a `size`x`size`
// input is used as is), centre-cropped to size x size, pixels mapped to [-1,1] as x/127.5-1.
// Returns f32 [3,size,size]. Throws naming the file if it cannot be decoded.
//
// Exactly:
//   - decode to 8-bit RGB(A) (the first frame of a GIF; EXIF orientation is not applied, as in
//     PIL without exif_transpose); images over kMaxImageSide per side are refused from their
//     header, before decoding; truncated JPEGs are refused (not grey-filled);
//   - composite in float: v = rgb*a + 255*(1-a), a = alpha/255 (opaque pixels stay exact);
//   - a size x size image is used as is; if the short side already equals `size` the image is
//     only cropped (exact values); otherwise the short side becomes `size` and the long side
//     floor(size * long / short) (as torchvision's Resize), resampled with stb_image_resize's
//     Catmull-Rom cubic (PIL's BICUBIC kernel; widened when downsampling so it averages the
//     area), clamped edges, on the 8-bit sRGB values as they are (no linearisation), in float,
//     result clamped to [0,255]; only the cropped window is computed;
//   - centre crop at floor((long' - size) / 2);
//   - out = v / 127.5 - 1.
// Peak memory is about 16 bytes per input pixel.
Tensor load_image_for_model(const std::string& path, int size);

// Writes an RGB image from f32 [3,H,W] in [-1,1] (pixel = round(clamp(x*0.5+0.5,0,1)*255)),
// with the given tEXt chunks (key -> value). Atomic (temporary file + rename).
// Rounding is half up: the clamped value times 255, plus 0.5, truncated (0.0 -> 127.5 -> 128);
// +-inf clamp to the ends; a NaN pixel is an error (it means a broken model, not a colour).
// Keys: UTF-8 strings of 1-79 printable Latin-1 characters (PNG keywords: no leading, trailing
// or doubled spaces), stored in Latin-1. Values: UTF-8 without NUL; ASCII values go in tEXt,
// others in iTXt (uncompressed).
void write_png(const std::string& path, const Tensor& chw, const std::map<std::string, std::string>& text);
// Writes an 8-bit RGB buffer [H][W][3].
void write_png_rgb8(const std::string& path, const uint8_t* rgb, int width, int height,
                    const std::map<std::string, std::string>& text);
// Reads the tEXt chunks of a PNG (for tests and `hwaga info`).
std::map<std::string, std::string> read_png_text(const std::string& path);

// ---- details ----

// Images wider or taller than this are refused before decoding.
inline constexpr int kMaxImageSide = 16384;

// load_image_for_model on encoded bytes already in memory; `path` names them in errors.
Tensor decode_image_for_model(const uint8_t* data, size_t size, int size_px, const std::string& path);
// The same with the crop window chosen by the caller (random crops for training, src/data):
// after the short-side resize the picture is rw x rh (min(rw, rh) == size_px); crop(rw, rh)
// returns the top-left corner {x0, y0} of the size_px x size_px window, which must lie in
// [0, rw - size_px] x [0, rh - size_px]. The centre crop is {(rw - size_px)/2, (rh - size_px)/2}.
using CropChooser = std::function<std::pair<int, int>(int rw, int rh)>;
Tensor decode_image_for_model(const uint8_t* data, size_t size, int size_px, const std::string& path,
                              const CropChooser& crop);
// read_png_text on PNG bytes in memory. tEXt/zTXt values (Latin-1) and keys are returned as
// UTF-8; iTXt values as stored (UTF-8). Also reads chunks after the image data.
std::map<std::string, std::string> parse_png_text(const uint8_t* data, size_t size, const std::string& path);

}  // namespace hwaga
