// Images in (stb_image: PNG, JPEG, BMP, GIF, ...) and PNG out (libpng, with tEXt chunks).
#pragma once
#include <map>
#include <string>

#include "core/tensor.h"

namespace hwaga {

// Loads an image file and prepares it as the tokenizers expect: alpha composited on white,
// short side resized to `size` (bicubic-ish area-correct resampling is fine; a `size`x`size`
// input is used as is), centre-cropped to size x size, pixels mapped to [-1,1] as x/127.5-1.
// Returns f32 [3,size,size]. Throws naming the file if it cannot be decoded.
Tensor load_image_for_model(const std::string& path, int size);

// Writes an RGB image from f32 [3,H,W] in [-1,1] (pixel = round(clamp(x*0.5+0.5,0,1)*255)),
// with the given tEXt chunks (key -> value). Atomic (temporary file + rename).
void write_png(const std::string& path, const Tensor& chw, const std::map<std::string, std::string>& text);
// Writes an 8-bit RGB buffer [H][W][3].
void write_png_rgb8(const std::string& path, const uint8_t* rgb, int width, int height,
                    const std::map<std::string, std::string>& text);
// Reads the tEXt chunks of a PNG (for tests and `hwaga info`).
std::map<std::string, std::string> read_png_text(const std::string& path);

}  // namespace hwaga
