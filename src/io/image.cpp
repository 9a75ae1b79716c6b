// Image input (JPEG via libjpeg-turbo; PNG, BMP, GIF via stb_image; alpha on white, resize +
// centre crop) and PNG output with text chunks (libpng).
//
// Choices, documented in image.h: compositing and resampling happen in float on the 8-bit
// sRGB-encoded values as they are (no linearisation), with stb_image_resize's Catmull-Rom cubic
// (the Keys a=-0.5 kernel of PIL's BICUBIC, widened by 1/scale when downsampling so it
// averages the covered area), clamped edges, result clamped to [0,255].
#include "io/image.h"

#include <limits>

#include <algorithm>
#include <climits>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <tuple>
#include <vector>

#include <jpeglib.h>  // after <cstdio>: it needs FILE
#include <jerror.h>
#include <png.h>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/mapped_file.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wall"
#pragma GCC diagnostic ignored "-Wextra"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-function"
// The common formats only: less decoder surface for hostile files. JPEG goes to libjpeg-turbo
// instead: stb_image 2.27 (Debian 12) writes past its Huffman tables on a DHT segment whose
// code counts sum over 256 (fixed upstream in 2.28). TGA is left out: it has no magic number,
// so stb_image would take many non-image files for TGA images. PNM is left out: stb_image 2.27
// overflows a signed int parsing its header (found by fuzzing, UBSan).
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_NO_STDIO  // files are mapped and decoded from memory
// stb_image calls memcpy(NULL, src, 0) on a (legal) zero-length first IDAT chunk, which is
// undefined behaviour that UBSan aborts on; route its memcpy calls through a guard.
#include <string.h>
static inline void* hwaga_stbi_memcpy(void* dst, const void* src, size_t n) {
  return n ? memcpy(dst, src, n) : dst;
}
#define memcpy hwaga_stbi_memcpy
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>
#undef memcpy
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#include <stb_image_resize.h>
#pragma GCC diagnostic pop

namespace hwaga {

// ------------------------------------------------------------------------------------------
// Loading for the model
// ------------------------------------------------------------------------------------------

// stb_image and libpng size their buffers from a chunk's length field before reading the chunk,
// so a 100-byte hostile file can make them allocate gigabytes. Walk the chunks first: each must
// fit in what is left of the file. `what` starts the error message.
static void check_png_chunk_lengths(const uint8_t* data, size_t n, const char* what, const std::string& path) {
  static const uint8_t kSig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (n < 8 || std::memcmp(data, kSig, 8) != 0) return;  // not a PNG: stb decides
  size_t pos = 8;
  while (pos + 12 <= n) {
    const uint64_t len = (uint64_t(data[pos]) << 24) | (uint64_t(data[pos + 1]) << 16) |
                         (uint64_t(data[pos + 2]) << 8) | uint64_t(data[pos + 3]);
    const std::string type(reinterpret_cast<const char*>(data + pos + 4), 4);
    if (len > n - pos - 12)
      fail(what, path, ": corrupt PNG: chunk at byte ", pos, " claims ", len, " bytes, only ",
           n - pos - 12, " remain (truncated file?)");
    pos += 12 + size_t(len);
    if (type == "IEND") return;
  }
}

namespace {

// 8-bit pixels, row-major [h][w][channels]; channels is 3 (RGB) or 4 (RGBA).
struct DecodedImage {
  std::unique_ptr<uint8_t, void (*)(void*)> px{nullptr, std::free};
  int w = 0, h = 0, channels = 0;
};

void check_dims(int w, int h, const std::string& path) {
  if (w < 1 || h < 1 || w > kMaxImageSide || h > kMaxImageSide)
    fail("image ", path, " is ", w, " x ", h, " pixels; hwaga accepts 1 to ", kMaxImageSide, " per side");
}

// ---- JPEG (libjpeg-turbo). Errors longjmp to the setjmp in the *_core functions, which hold
// no C++ objects; the decompressor is destroyed by JpegHolder in the caller. ----

struct JpegErr {
  jpeg_error_mgr mgr;  // first: libjpeg hands back a jpeg_error_mgr*
  jmp_buf jump;
  char msg[JMSG_LENGTH_MAX + 64];
};

void jpeg_on_error(j_common_ptr c) {
  auto* e = reinterpret_cast<JpegErr*>(c->err);
  (*c->err->format_message)(c, e->msg);
  longjmp(e->jump, 1);
}
void jpeg_on_message(j_common_ptr c, int level) {
  // Warnings are ignored (as by most viewers), except a truncated file: libjpeg would fill the
  // missing rows with grey, and a half-grey picture must not be encoded silently.
  if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) {
    auto* e = reinterpret_cast<JpegErr*>(c->err);
    std::snprintf(e->msg, sizeof(e->msg), "truncated JPEG (premature end of data)");
    longjmp(e->jump, 1);
  }
}
void jpeg_on_progress(j_common_ptr c) {
  // A progressive JPEG may hold thousands of tiny scans (a known CPU-exhaustion input).
  auto* d = reinterpret_cast<j_decompress_ptr>(c);
  if (c->is_decompressor && d->input_scan_number > 1000) {
    auto* e = reinterpret_cast<JpegErr*>(c->err);
    std::snprintf(e->msg, sizeof(e->msg), "JPEG has over 1000 scans");
    longjmp(e->jump, 1);
  }
}

struct JpegHolder {
  jpeg_decompress_struct c;
  JpegErr err;
  jpeg_progress_mgr progress;
  JpegHolder() {
    std::memset(&c, 0, sizeof(c));
    std::memset(&err, 0, sizeof(err));
    std::memset(&progress, 0, sizeof(progress));
  }
  ~JpegHolder() { jpeg_destroy_decompress(&c); }  // safe on a zeroed or half-built struct
};

bool jpeg_header_core(JpegHolder* j, const uint8_t* data, size_t n) {
  if (setjmp(j->err.jump)) return false;
  j->c.err = jpeg_std_error(&j->err.mgr);
  j->err.mgr.error_exit = jpeg_on_error;
  j->err.mgr.emit_message = jpeg_on_message;
  jpeg_create_decompress(&j->c);
  j->progress.progress_monitor = jpeg_on_progress;
  j->c.progress = &j->progress;
  j->c.mem->max_memory_to_use = 2048L << 20;  // coefficient buffers of progressive JPEGs
  jpeg_mem_src(&j->c, data, static_cast<unsigned long>(n));
  jpeg_read_header(&j->c, TRUE);
  return true;
}

bool jpeg_pixels_core(JpegHolder* j, uint8_t* out) {
  if (setjmp(j->err.jump)) return false;
  j->c.out_color_space = JCS_RGB;
  jpeg_start_decompress(&j->c);
  if (j->c.output_width != j->c.image_width || j->c.output_height != j->c.image_height ||
      j->c.output_components != 3) {
    std::snprintf(j->err.msg, sizeof(j->err.msg), "unexpected output geometry");
    return false;
  }
  while (j->c.output_scanline < j->c.output_height) {
    JSAMPROW row = out + size_t(j->c.output_scanline) * j->c.output_width * 3;
    jpeg_read_scanlines(&j->c, &row, 1);
  }
  jpeg_finish_decompress(&j->c);
  return true;
}

DecodedImage decode_jpeg(const uint8_t* data, size_t n, const std::string& path) {
  JpegHolder j;
  if (!jpeg_header_core(&j, data, n)) fail("cannot decode image ", path, ": JPEG: ", j.err.msg);
  if (j.c.image_width > unsigned(kMaxImageSide) || j.c.image_height > unsigned(kMaxImageSide))
    fail("image ", path, " is ", j.c.image_width, " x ", j.c.image_height, " pixels; hwaga accepts 1 to ",
         kMaxImageSide, " per side");
  DecodedImage img;
  img.w = int(j.c.image_width);
  img.h = int(j.c.image_height);
  check_dims(img.w, img.h, path);
  img.channels = 3;
  img.px.reset(static_cast<uint8_t*>(std::malloc(size_t(img.w) * size_t(img.h) * 3)));
  if (!img.px) fail("cannot decode image ", path, ": out of memory for ", img.w, " x ", img.h, " pixels");
  if (!jpeg_pixels_core(&j, img.px.get())) fail("cannot decode image ", path, ": JPEG: ", j.err.msg);
  return img;
}

// ---- PNG, BMP, GIF (stb_image) ----

DecodedImage decode_stb(const uint8_t* data, size_t n, const std::string& path) {
  check_png_chunk_lengths(data, n, "cannot decode image ", path);
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(data, int(n), &w, &h, &comp))
    fail("cannot decode image ", path, ": ", stbi_failure_reason(), " (formats: PNG, JPEG, BMP, GIF)");
  // stb_image 2.27 reports top-down BMPs with a negative height (INT_MIN maps to a size that
  // check_dims refuses, since it cannot be negated).
  if (h < 0) h = h == std::numeric_limits<int>::min() ? std::numeric_limits<int>::max() : -h;
  check_dims(w, h, path);  // before decoding
  DecodedImage img;
  img.px = std::unique_ptr<uint8_t, void (*)(void*)>(stbi_load_from_memory(data, int(n), &img.w, &img.h, &comp, 4),
                                                     stbi_image_free);
  if (!img.px) fail("cannot decode image ", path, ": ", stbi_failure_reason());
  if (img.w != w || img.h != h)
    fail("cannot decode image ", path, ": header says ", w, " x ", h, ", pixels are ", img.w, " x ", img.h);
  img.channels = 4;
  return img;
}

}  // namespace

Tensor decode_image_for_model(const uint8_t* data, size_t n, int size, const std::string& path) {
  return decode_image_for_model(data, n, size, path,
                                [size](int rw, int rh) { return std::pair<int, int>((rw - size) / 2, (rh - size) / 2); });
}

Tensor decode_image_for_model(const uint8_t* data, size_t n, int size, const std::string& path,
                              const CropChooser& crop) {
  if (size < 1 || size > kMaxImageSide) fail("load image ", path, ": target size ", size, " must be in [1, ", kMaxImageSide, "]");
  if (n > size_t(INT_MAX)) fail("cannot decode image ", path, ": file of ", n, " bytes is too large");
  const bool jpeg = n >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
  DecodedImage img = jpeg ? decode_jpeg(data, n, path) : decode_stb(data, n, path);
  const int w = img.w, h = img.h, nc = img.channels;

  // Composite on white in float: out = rgb*a + 255*(1-a), a = alpha/255. Opaque pixels keep
  // their exact 8-bit values. [H][W][3]
  std::vector<float> rgb(size_t(w) * size_t(h) * 3);
  {
    const uint8_t* s = img.px.get();
    for (size_t i = 0, np = size_t(w) * size_t(h); i < np; ++i) {
      const float a = nc == 4 ? s[nc * i + 3] / 255.0f : 1.0f;
      for (size_t c = 0; c < 3; ++c) rgb[3 * i + c] = s[nc * i + c] * a + 255.0f * (1.0f - a);
    }
  }
  img.px.reset();

  // Window of the (resized) image that becomes the output: [size, size] at (x0, y0).
  const std::vector<float>* src = &rgb;
  int sw = w, x0 = 0, y0 = 0;
  std::vector<float> resized;
  const int short_side = std::min(w, h), long_side = std::max(w, h);
  if (short_side != size) {
    // Short side -> size, long side -> floor(size * long / short) (as torchvision's Resize),
    // then crop at floor((long' - size) / 2). Only the cropped window is computed:
    // stbir_resize_subpixel samples the full-size resize shifted by the crop offset.
    const int64_t new_long = int64_t(size) * long_side / short_side;
    const int new_w = w >= h ? int(new_long) : size, new_h = w >= h ? size : int(new_long);
    const auto [ox, oy] = crop(new_w, new_h);
    if (ox < 0 || oy < 0 || ox > new_w - size || oy > new_h - size)
      fail("load image ", path, ": crop window at (", ox, ", ", oy, ") does not fit in ", new_w, " x ", new_h);
    resized.resize(size_t(size) * size_t(size) * 3);
    int ok = stbir_resize_subpixel(rgb.data(), w, h, 0, resized.data(), size, size, 0, STBIR_TYPE_FLOAT, 3,
                                   STBIR_ALPHA_CHANNEL_NONE, 0, STBIR_EDGE_CLAMP, STBIR_EDGE_CLAMP,
                                   STBIR_FILTER_CATMULLROM, STBIR_FILTER_CATMULLROM, STBIR_COLORSPACE_LINEAR,
                                   nullptr, float(new_w) / float(w), float(new_h) / float(h), float(ox), float(oy));
    if (!ok) fail("load image ", path, ": resizing ", w, " x ", h, " to ", new_w, " x ", new_h, " failed (out of memory?)");
    for (float& v : resized) v = std::clamp(v, 0.0f, 255.0f);  // the cubic overshoots at edges
    src = &resized;
    sw = size;
  } else {
    std::tie(x0, y0) = crop(w, h);  // crop only ({0, 0} for a size x size input)
    if (x0 < 0 || y0 < 0 || x0 > w - size || y0 > h - size)
      fail("load image ", path, ": crop window at (", x0, ", ", y0, ") does not fit in ", w, " x ", h);
  }

  // [H][W][3] 0..255 -> [3, size, size] in [-1, 1]
  Tensor out = Tensor::empty({3, size, size});
  float* o = out.f32();
  const float* s = src->data();
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < size; ++y)
      for (int x = 0; x < size; ++x)
        o[(size_t(c) * size + y) * size + x] = s[(size_t(y + y0) * sw + (x + x0)) * 3 + c] / 127.5f - 1.0f;
  return out;
}

Tensor load_image_for_model(const std::string& path, int size) {
  std::shared_ptr<MappedFile> m = MappedFile::open(path);
  return decode_image_for_model(m->data(), m->size(), size, path);
}

// ------------------------------------------------------------------------------------------
// Text helpers: UTF-8 <-> Latin-1
// ------------------------------------------------------------------------------------------

namespace {

// Decodes one UTF-8 code point at s[i]; false on malformed input (overlong, surrogate, > U+10FFFF).
bool next_utf8(const std::string& s, size_t& i, uint32_t& cp) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  int len;
  uint32_t min;
  if (c < 0x80) return cp = c, ++i, true;
  if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F, min = 0x80;
  else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F, min = 0x800;
  else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07, min = 0x10000;
  else return false;
  if (i + size_t(len) > s.size()) return false;
  for (int k = 1; k < len; ++k) {
    const unsigned char d = static_cast<unsigned char>(s[i + size_t(k)]);
    if ((d & 0xC0) != 0x80) return false;
    cp = (cp << 6) | (d & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
  i += size_t(len);
  return true;
}

bool is_ascii(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

std::string latin1_to_utf8(const char* s) {
  std::string out;
  for (; *s; ++s) {
    unsigned char c = static_cast<unsigned char>(*s);
    if (c < 0x80) {
      out.push_back(char(c));
    } else {
      out.push_back(char(0xC0 | (c >> 6)));
      out.push_back(char(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

// A PNG keyword: 1-79 printable Latin-1 characters (32-126, 161-255), no leading, trailing or
// doubled spaces. `key` is UTF-8; the result is its Latin-1 encoding.
std::string png_keyword(const std::string& key, const std::string& path) {
  std::string out;
  for (size_t i = 0; i < key.size();) {
    uint32_t cp;
    if (!next_utf8(key, i, cp)) fail("cannot write ", path, ": PNG text key \"", key, "\" is not valid UTF-8");
    if (!((cp >= 32 && cp <= 126) || (cp >= 161 && cp <= 255)))
      fail("cannot write ", path, ": PNG text key \"", key, "\" holds U+", std::hex, cp, std::dec,
           "; keys are printable Latin-1 characters");
    out.push_back(char(cp));
  }
  if (out.empty() || out.size() > 79)
    fail("cannot write ", path, ": PNG text key \"", key, "\" has ", out.size(), " characters; expected 1 to 79");
  if (out.front() == ' ' || out.back() == ' ' || out.find("  ") != std::string::npos)
    fail("cannot write ", path, ": PNG text key \"", key, "\" has leading, trailing or doubled spaces");
  return out;
}

// ------------------------------------------------------------------------------------------
// libpng plumbing. libpng reports errors by longjmp to the setjmp in the *_core functions
// below; those functions hold no C++ objects, and everything that needs freeing is owned by
// RAII holders in their callers, so a longjmp skips no destructor.
// ------------------------------------------------------------------------------------------

struct PngCtx {
  char msg[512] = {0};
  // writing
  AtomicFile* file = nullptr;
  std::string* io_error = nullptr;
  // reading
  const uint8_t* data = nullptr;
  size_t size = 0, pos = 0;
  png_bytep row = nullptr;  // png_malloc'd row buffer (freed by the holder)
};

void hwaga_png_error(png_structp png, png_const_charp msg) {
  auto* ctx = static_cast<PngCtx*>(png_get_error_ptr(png));
  std::snprintf(ctx->msg, sizeof(ctx->msg), "%s", msg ? msg : "unknown libpng error");
  png_longjmp(png, 1);
}
void hwaga_png_warning(png_structp, png_const_charp) {}

void hwaga_png_write(png_structp png, png_bytep data, size_t n) {
  auto* ctx = static_cast<PngCtx*>(png_get_io_ptr(png));
  if (!ctx->file->try_write(data, n, ctx->io_error)) png_error(png, "write failed");
}
void hwaga_png_flush(png_structp) {}

void hwaga_png_read(png_structp png, png_bytep out, size_t n) {
  auto* ctx = static_cast<PngCtx*>(png_get_io_ptr(png));
  if (n > ctx->size - ctx->pos) png_error(png, "unexpected end of file (truncated PNG)");
  std::memcpy(out, ctx->data + ctx->pos, n);
  ctx->pos += n;
}

struct PngWriteHolder {
  png_structp png = nullptr;
  png_infop info = nullptr;
  ~PngWriteHolder() {
    if (png) png_destroy_write_struct(&png, info ? &info : nullptr);
  }
};

struct PngReadHolder {
  png_structp png = nullptr;
  png_infop info = nullptr;
  PngCtx* ctx = nullptr;
  ~PngReadHolder() {
    if (png && ctx && ctx->row) png_free(png, ctx->row);
    if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
  }
};

bool png_write_core(png_structp png, png_infop info, PngCtx* ctx, png_bytepp rows, int w, int h, png_textp texts,
                    int ntext) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_write_fn(png, ctx, hwaga_png_write, hwaga_png_flush);
  png_set_IHDR(png, info, png_uint_32(w), png_uint_32(h), 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (ntext > 0) png_set_text(png, info, texts, ntext);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, info);
  return true;
}

bool png_read_core(png_structp png, png_infop info, PngCtx* ctx) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_read_fn(png, ctx, hwaga_png_read);
  // Hostile-file limits: no single chunk buffer (text, decompressed zTXt/iTXt, iCCP...) above
  // 16 MB (libpng would otherwise allocate whatever a chunk's length field claims), and
  // libpng's default 1,000,000-pixel side limit.
  png_set_chunk_malloc_max(png, 16u << 20);
  png_set_user_limits(png, 1000000, 1000000);
  png_read_info(png, info);
  const int passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const size_t rowbytes = png_get_rowbytes(png, info);
  const png_uint_32 height = png_get_image_height(png, info);
  ctx->row = static_cast<png_bytep>(png_malloc(png, rowbytes ? rowbytes : 1));  // errors by longjmp
  // The rows are decoded and dropped: text chunks may follow the image data.
  for (int pass = 0; pass < passes; ++pass)
    for (png_uint_32 y = 0; y < height; ++y) png_read_row(png, ctx->row, nullptr);
  png_read_end(png, info);
  return true;
}

}  // namespace

// ------------------------------------------------------------------------------------------
// PNG output
// ------------------------------------------------------------------------------------------

void write_png_rgb8(const std::string& path, const uint8_t* rgb, int width, int height,
                    const std::map<std::string, std::string>& text) {
  constexpr int kPngMaxSide = 1000000;  // libpng's default user limit
  if (width < 1 || height < 1 || width > kPngMaxSide || height > kPngMaxSide)
    fail("cannot write ", path, ": image size ", width, " x ", height, " must be 1 to ", kPngMaxSide, " per side");
  if (!rgb) fail("cannot write ", path, ": no pixel data");

  // Text chunks: ASCII values in tEXt; other UTF-8 in iTXt (uncompressed, no language tag).
  std::vector<std::string> keys, values;
  keys.reserve(text.size());
  values.reserve(text.size());
  std::vector<png_text> chunks(text.size());
  size_t k = 0;
  for (const auto& [key, value] : text) {
    keys.push_back(png_keyword(key, path));
    for (size_t i = 0; i < value.size();) {
      uint32_t cp;
      if (!next_utf8(value, i, cp) || cp == 0)
        fail("cannot write ", path, ": PNG text value of \"", key, "\" is not valid UTF-8 or holds a NUL byte");
    }
    values.push_back(value);
    png_text& t = chunks[k++];
    std::memset(&t, 0, sizeof(t));
    t.key = keys.back().data();
    t.text = values.back().data();
    if (is_ascii(value)) {
      t.compression = PNG_TEXT_COMPRESSION_NONE;
      t.text_length = value.size();
    } else {
      t.compression = PNG_ITXT_COMPRESSION_NONE;
      t.itxt_length = value.size();
      t.lang = nullptr;
      t.lang_key = nullptr;
    }
  }
  std::vector<png_bytep> rows(static_cast<size_t>(height));
  for (int y = 0; y < height; ++y) rows[size_t(y)] = const_cast<png_bytep>(rgb + size_t(y) * size_t(width) * 3);

  AtomicFile file(path);
  std::string io_error;
  PngCtx ctx;
  ctx.file = &file;
  ctx.io_error = &io_error;
  PngWriteHolder h;
  h.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ctx, hwaga_png_error, hwaga_png_warning);
  if (!h.png) fail("cannot write ", path, ": libpng could not start (out of memory?)");
  h.info = png_create_info_struct(h.png);
  if (!h.info) fail("cannot write ", path, ": libpng could not start (out of memory?)");
  if (!png_write_core(h.png, h.info, &ctx, rows.data(), width, height, chunks.data(), int(chunks.size()))) {
    file.abandon();
    if (!io_error.empty()) fail("cannot write ", path, ": ", io_error);
    fail("cannot write ", path, ": libpng: ", ctx.msg);
  }
  file.commit();
}

void write_png(const std::string& path, const Tensor& chw, const std::map<std::string, std::string>& text) {
  if (!chw.defined() || chw.device() != Device::CPU || chw.dtype() != DType::F32 || chw.ndim() != 3 ||
      chw.dim(0) != 3)
    fail("cannot write ", path, ": expected a host f32 [3, H, W] image, found ",
         chw.defined() ? std::string(dtype_name(chw.dtype())) + " " + shape_str(chw.shape()) : "an undefined tensor");
  const int64_t H = chw.dim(1), W = chw.dim(2);
  if (H < 1 || W < 1 || H > 1000000 || W > 1000000)
    fail("cannot write ", path, ": image size ", W, " x ", H, " is out of range");
  const float* x = chw.f32();
  std::vector<uint8_t> rgb(size_t(H * W * 3));
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t i = 0; i < H * W; ++i) {
      float v = x[c * H * W + i];
      if (std::isnan(v)) fail("cannot write ", path, ": pixel (c=", c, ", y=", i / W, ", x=", i % W, ") is NaN");
      // round half up: clamp to [0,1], scale, +0.5, truncate
      rgb[size_t(i * 3 + c)] = uint8_t(std::clamp(v * 0.5f + 0.5f, 0.0f, 1.0f) * 255.0f + 0.5f);
    }
  write_png_rgb8(path, rgb.data(), int(W), int(H), text);
}

std::map<std::string, std::string> parse_png_text(const uint8_t* data, size_t size, const std::string& path) {
  if (size < 8 || png_sig_cmp(const_cast<png_bytep>(data), 0, 8) != 0)
    fail("cannot read ", path, ": not a PNG file (bad signature)");
  check_png_chunk_lengths(data, size, "cannot read ", path);
  PngCtx ctx;
  ctx.data = data;
  ctx.size = size;
  PngReadHolder h;
  h.ctx = &ctx;
  h.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, hwaga_png_error, hwaga_png_warning);
  if (!h.png) fail("cannot read ", path, ": libpng could not start (out of memory?)");
  h.info = png_create_info_struct(h.png);
  if (!h.info) fail("cannot read ", path, ": libpng could not start (out of memory?)");
  if (!png_read_core(h.png, h.info, &ctx)) fail("cannot read ", path, ": corrupt PNG: ", ctx.msg);

  std::map<std::string, std::string> out;
  png_textp texts = nullptr;
  int n = 0;
  png_get_text(h.png, h.info, &texts, &n);
  for (int i = 0; i < n; ++i) {
    const png_text& t = texts[i];
    if (!t.key) continue;
    std::string value;
    if (t.text) value = t.compression >= PNG_ITXT_COMPRESSION_NONE ? std::string(t.text) : latin1_to_utf8(t.text);
    out.emplace(latin1_to_utf8(t.key), std::move(value));  // first chunk of a key wins
  }
  return out;
}

std::map<std::string, std::string> read_png_text(const std::string& path) {
  std::shared_ptr<MappedFile> m = MappedFile::open(path);
  return parse_png_text(m->data(), m->size(), path);
}

}  // namespace hwaga
