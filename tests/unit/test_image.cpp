// Image input (decode, alpha on white, resize + centre crop, [-1,1] mapping) and PNG output with
// text chunks. Independent references: RGBA test images written by stb_image_write (not the
// libpng writer under test), pixels of hwaga's PNGs decoded by stb_image (not libpng), and
// expected values computed by hand (exact paths) or from linear ramps, which the
// Catmull-Rom resampler reproduces exactly away from the image border.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/image.h"
#include "test_util.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb_image_write.h>
#pragma GCC diagnostic pop
#include <stb_image.h>  // the decoder compiled into hwaga_lib (independent of libpng)

namespace fs = std::filesystem;
using namespace hwaga;

namespace {

using test::read_bytes;
using test::write_bytes;

class ImageTest : public test::TempDirTest {
 protected:
  // A w x h PNG with `channels` channels from f(x, y, c), written by stb_image_write.
  std::string make_png(const std::string& name, int w, int h, int channels,
                       const std::function<int(int, int, int)>& f) const {
    std::vector<unsigned char> px(size_t(w) * h * channels);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < channels; ++c) px[(size_t(y) * w + x) * channels + c] = (unsigned char)f(x, y, c);
    std::string path = p(name);
    EXPECT_NE(stbi_write_png(path.c_str(), w, h, channels, px.data(), w * channels), 0);
    return path;
  }
  std::vector<std::string> files() const {
    std::vector<std::string> v;
    for (auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v;
  }
};

std::string error_of(const std::function<void()>& f) { return test::error_of(f, "<no hwaga::Error thrown>"); }

// Output pixel (c, y, x) of a [3, S, S] tensor back in 0..255 units.
float px255(const Tensor& t, int c, int y, int x) {
  const int64_t S = t.dim(2);
  return (t.f32()[(c * t.dim(1) + y) * S + x] + 1.0f) * 127.5f;
}

}  // namespace

TEST_F(ImageTest, WritePngPixelsAndRounding) {
  // Values chosen to hit: the ends, clamping, the exact half (0 -> 127.5 -> 128, half up),
  // ordinary rounding both ways.
  const std::vector<float> vals = {-1.0f, 1.0f, 0.0f, -2.0f, 3.0f, -0.6f, 0.998f, -0.9961f, 0.5f,
                                   -INFINITY, INFINITY, 0.001f};
  auto expect8 = [](float v) {  // reference in double: round half up of clamp(v*0.5+0.5)*255
    double y = std::min(1.0, std::max(0.0, double(v) * 0.5 + 0.5)) * 255.0;
    return int(std::floor(y + 0.5));
  };
  const int H = 2, W = 2;  // 3 channels x 4 pixels = 12 values
  Tensor t = Tensor::empty({3, H, W});
  for (int i = 0; i < 12; ++i) t.f32()[i] = vals[size_t(i)];
  write_png(p("out.png"), t, {});
  const std::string bytes = read_bytes(p("out.png"));
  int w, h, n;
  unsigned char* px = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), int(bytes.size()), &w,
                                            &h, &n, 3);
  ASSERT_NE(px, nullptr);
  ASSERT_EQ(w, W);
  ASSERT_EQ(h, H);
  EXPECT_EQ(n, 3) << "expected an RGB PNG";
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < H * W; ++i) {
      float v = vals[size_t(c * H * W + i)];
      EXPECT_EQ(int(px[i * 3 + c]), expect8(v)) << "value " << v;
    }
  EXPECT_EQ(int(px[2 * 3 + 0]), 128) << "0.0 maps to 127.5, rounded half up";
  stbi_image_free(px);

  t.f32()[5] = NAN;
  std::string msg = error_of([&] { write_png(p("nan.png"), t, {}); });
  EXPECT_NE(msg.find("NaN"), std::string::npos) << msg;
  EXPECT_THROW(write_png(p("bad.png"), Tensor::zeros({4, 2, 2}), {}), Error);
  EXPECT_THROW(write_png(p("bad.png"), Tensor::zeros({3, 2, 2}, DType::I32), {}), Error);
  EXPECT_EQ(files(), std::vector<std::string>{"out.png"});
}

TEST_F(ImageTest, PngTextRoundTrip) {
  const std::map<std::string, std::string> text = {
      {"prompt", "a painting of a cat, 4k"},
      {"seed", "42"},
      {"Comment", "line one\nline two\ttabbed"},
      {"empty", ""},
      {"Gr\xc3\xb6\xc3\x9f" "e", "caf\xc3\xa9 \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac"},  // Latin-1 key, UTF-8 value
      {std::string(79, 'k'), std::string(5000, 'v')},
  };
  Tensor t = Tensor::zeros({3, 4, 5});
  write_png(p("t.png"), t, text);
  EXPECT_EQ(read_png_text(p("t.png")), text);
  // Chunk kinds: ASCII values in tEXt, the non-ASCII one in iTXt.
  const std::string bytes = read_bytes(p("t.png"));
  EXPECT_NE(bytes.find(std::string("tEXtprompt\0a painting", 21)), std::string::npos);
  EXPECT_NE(bytes.find("iTXtGr\xf6\xdf" "e"), std::string::npos) << "key stored in Latin-1, value in iTXt";

  write_png_rgb8(p("plain.png"), std::vector<uint8_t>(3 * 2 * 2, 7).data(), 2, 2, {});
  EXPECT_TRUE(read_png_text(p("plain.png")).empty());
}

TEST_F(ImageTest, PngWriteErrorsLeaveNothing) {
  Tensor t = Tensor::zeros({3, 2, 2});
  const std::string missing = p("no/such/folder/x.png");
  std::string msg = error_of([&] { write_png(missing, t, {}); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;
  const std::vector<std::string> bad_keys = {"", std::string(80, 'k'), " lead", "trail ", "two  spaces",
                                             "\xc4\x80 outside Latin-1", "tab\there", "\xff"};
  for (const std::string& k : bad_keys) {
    SCOPED_TRACE(k);
    msg = error_of([&] { write_png(p("k.png"), t, {{k, "v"}}); });
    EXPECT_NE(msg.find(p("k.png")), std::string::npos) << msg;
    EXPECT_NE(msg.find("key"), std::string::npos) << msg;
  }
  EXPECT_THROW(write_png(p("v.png"), t, {{"k", std::string("bad \xc3 utf8")}}), Error);
  EXPECT_THROW(write_png(p("v.png"), t, {{"k", std::string("nul\0inside", 10)}}), Error);
  EXPECT_TRUE(files().empty()) << "something was left behind";
}

TEST_F(ImageTest, AlphaIsCompositedOnWhite) {
  // 2x2 RGBA: opaque red, fully transparent blue, half-transparent black, 20% opaque colour.
  const int rgba[4][4] = {{255, 0, 0, 255}, {0, 0, 255, 0}, {0, 0, 0, 128}, {100, 200, 50, 51}};
  std::string path = make_png("rgba.png", 2, 2, 4, [&](int x, int y, int c) { return rgba[y * 2 + x][c]; });
  Tensor t = load_image_for_model(path, 2);  // exactly 2x2: no resampling
  ASSERT_EQ(t.shape(), (Shape{3, 2, 2}));
  for (int i = 0; i < 4; ++i)
    for (int c = 0; c < 3; ++c) {
      double a = rgba[i][3] / 255.0;
      double want = rgba[i][c] * a + 255.0 * (1.0 - a);  // out = rgb*a + 255*(1-a)
      // float32 arithmetic on values <= 255: 1e-3 of a level is far below one 8-bit step
      EXPECT_NEAR(px255(t, c, i / 2, i % 2), want, 1e-3) << "pixel " << i << " channel " << c;
    }
  EXPECT_FLOAT_EQ(t.f32()[0], 1.0f);              // opaque red, R = 255 -> +1
  EXPECT_FLOAT_EQ(t.f32()[4 + 0], -1.0f);         // opaque red, G = 0 -> -1
  EXPECT_FLOAT_EQ(t.f32()[1], 1.0f);              // transparent -> white
  // Grey and greyscale+alpha inputs are expanded to RGB.
  std::string ga = make_png("ga.png", 2, 2, 2, [](int x, int y, int c) { return c == 0 ? 60 : 255; });
  Tensor g = load_image_for_model(ga, 2);
  for (int c = 0; c < 3; ++c) EXPECT_NEAR(px255(g, c, 1, 1), 60.0, 1e-3);
}

TEST_F(ImageTest, CropOnlyWhenShortSideMatches) {
  // 20 x 16 -> crop x from (20-16)/2 = 2; 16 x 25 -> crop y from floor(9/2) = 4. Exact values.
  std::string wide = make_png("wide.png", 20, 16, 3, [](int x, int y, int c) { return c == 0 ? x * 10 : c == 1 ? y * 10 : 7; });
  Tensor t = load_image_for_model(wide, 16);
  ASSERT_EQ(t.shape(), (Shape{3, 16, 16}));
  for (int y = 0; y < 16; ++y)
    for (int x = 0; x < 16; ++x) {
      ASSERT_FLOAT_EQ(px255(t, 0, y, x), float((x + 2) * 10));
      ASSERT_FLOAT_EQ(px255(t, 1, y, x), float(y * 10));
      ASSERT_FLOAT_EQ(px255(t, 2, y, x), 7.0f);
    }
  std::string tall = make_png("tall.png", 16, 25, 3, [](int x, int y, int c) { return c == 0 ? x * 10 : y * 10; });
  t = load_image_for_model(tall, 16);
  ASSERT_EQ(t.shape(), (Shape{3, 16, 16}));
  for (int y = 0; y < 16; ++y) ASSERT_FLOAT_EQ(px255(t, 1, y, 3), float((y + 4) * 10));
}

TEST_F(ImageTest, ResizeThenCentreCrop) {
  // Linear ramps: R = 2x + 20 along the long side, G = 3y + 10 along the short side. A cubic
  // interpolating kernel with normalised weights reproduces a linear function exactly wherever
  // its support stays inside the image, so the expected values follow from the geometry alone:
  // output pixel i samples input coordinate (i + offset + 0.5) / scale - 0.5.
  // Tolerance 0.05 of a level: stb_image_resize works in float32 (the 28/30 scale is rounded,
  // weights are accumulated); the largest error seen is about 0.012.
  const float tol = 0.05f;
  {
    // Downscale 64 x 32 -> short side 16: scale 0.5, 32 x 16, crop x offset (32-16)/2 = 8.
    std::string path = make_png("down.png", 64, 32, 3, [](int x, int y, int c) { return c == 0 ? 2 * x + 20 : c == 1 ? 3 * y + 10 : 100; });
    Tensor t = load_image_for_model(path, 16);
    ASSERT_EQ(t.shape(), (Shape{3, 16, 16}));
    for (int y = 0; y < 16; ++y)
      for (int x = 0; x < 16; ++x) {
        const float sx = (x + 8 + 0.5f) / 0.5f - 0.5f, sy = (y + 0.5f) / 0.5f - 0.5f;
        EXPECT_NEAR(px255(t, 0, y, x), 2 * sx + 20, tol) << x << "," << y;  // support inside: 16.5..46.5 +- 4
        if (y >= 2 && y <= 13) EXPECT_NEAR(px255(t, 1, y, x), 3 * sy + 10, tol) << x << "," << y;
        EXPECT_NEAR(px255(t, 2, y, x), 100.0f, tol);
      }
  }
  {
    // Upscale a tall 4 x 8 image to 16: scale 4, 16 x 32, crop y offset (32-16)/2 = 8.
    int checked = 0;
    std::string path = make_png("up.png", 4, 8, 3, [](int x, int y, int c) { return c == 0 ? 20 * y + 30 : c == 1 ? 15 * x + 5 : 0; });
    Tensor t = load_image_for_model(path, 16);
    ASSERT_EQ(t.shape(), (Shape{3, 16, 16}));
    for (int y = 0; y < 16; ++y)
      for (int x = 0; x < 16; ++x) {
        const float sy = (y + 8 + 0.5f) / 4.0f - 0.5f, sx = (x + 0.5f) / 4.0f - 0.5f;
        // Catmull-Rom taps within distance 2 of s must lie inside the image: s in [1, size-2].
        if (sy >= 1 && sy <= 6) EXPECT_NEAR(px255(t, 0, y, x), 20 * sy + 30, tol) << x << "," << y;
        if (sx >= 1 && sx <= 2) EXPECT_NEAR(px255(t, 1, y, x), 15 * sx + 5, tol) << x << "," << y;
        checked += (sy >= 1 && sy <= 6) + (sx >= 1 && sx <= 2);
        EXPECT_NEAR(px255(t, 2, y, x), 0.0f, tol);
      }
    EXPECT_GT(checked, 100);
  }
  {
    // Non-integer ratio: 30 x 17 -> 16: long side floor(16 * 30 / 17) = 28, crop x offset 6.
    std::string path = make_png("odd.png", 30, 17, 3, [](int x, int y, int c) { return c == 0 ? 5 * x + 40 : 90; });
    Tensor t = load_image_for_model(path, 16);
    ASSERT_EQ(t.shape(), (Shape{3, 16, 16}));
    const float scale = 28.0f / 30.0f;
    for (int x = 0; x < 16; ++x) {
      const float sx = (x + 6 + 0.5f) / scale - 0.5f;
      EXPECT_NEAR(px255(t, 0, 8, x), 5 * sx + 40, tol) << x;
      EXPECT_NEAR(px255(t, 1, 8, x), 90.0f, tol) << x;
    }
  }
}

TEST_F(ImageTest, UnreadableAndAbsurdFilesAreRefused) {
  write_bytes(p("garbage.png"), "this is not an image at all");
  std::string msg = error_of([&] { load_image_for_model(p("garbage.png"), 16); });
  EXPECT_NE(msg.find(p("garbage.png")), std::string::npos) << msg;
  EXPECT_NE(msg.find("cannot decode"), std::string::npos) << msg;

  msg = error_of([&] { load_image_for_model(p("missing.png"), 16); });
  EXPECT_NE(msg.find(p("missing.png")), std::string::npos) << msg;

  std::string good = make_png("good.png", 8, 8, 3, [](int x, int y, int c) { return x * y; });
  const std::string bytes = read_bytes(good);
  write_bytes(p("trunc.png"), bytes.substr(0, bytes.size() / 2));
  msg = error_of([&] { load_image_for_model(p("trunc.png"), 8); });
  EXPECT_NE(msg.find(p("trunc.png")), std::string::npos) << msg;
  msg = error_of([&] { read_png_text(p("trunc.png")); });
  EXPECT_NE(msg.find(p("trunc.png")), std::string::npos) << msg;
  msg = error_of([&] { read_png_text(p("garbage.png")); });
  EXPECT_NE(msg.find("not a PNG"), std::string::npos) << msg;

  std::string huge = make_png("huge.png", 16385, 1, 1, [](int, int, int) { return 0; });
  msg = error_of([&] { load_image_for_model(huge, 16); });
  EXPECT_NE(msg.find("16385 x 1"), std::string::npos) << msg;
  EXPECT_THROW(load_image_for_model(good, 0), Error);
  EXPECT_THROW(load_image_for_model(good, 20000), Error);
}

TEST_F(ImageTest, JpegDecodesAndHostileJpegsAreRefused) {
  // Flat colours written by stb_image_write at quality 100 (no chroma subsampling): a flat block
  // survives the DCT almost exactly; 3 levels of tolerance cover quantisation and YCbCr rounding.
  std::vector<unsigned char> px(24 * 16 * 3);
  for (size_t i = 0; i < px.size(); i += 3) px[i] = 200, px[i + 1] = 100, px[i + 2] = 50;
  ASSERT_NE(stbi_write_jpg(p("c.jpg").c_str(), 24, 16, 3, px.data(), 100), 0);
  Tensor t = load_image_for_model(p("c.jpg"), 16);  // short side 16: crop only
  ASSERT_EQ(t.shape(), (Shape{3, 16, 16}));
  for (int y = 0; y < 16; y += 5)
    for (int x = 0; x < 16; x += 5) {
      EXPECT_NEAR(px255(t, 0, y, x), 200.0f, 3.0f);
      EXPECT_NEAR(px255(t, 1, y, x), 100.0f, 3.0f);
      EXPECT_NEAR(px255(t, 2, y, x), 50.0f, 3.0f);
    }
  std::vector<unsigned char> grey(8 * 8, 90);
  ASSERT_NE(stbi_write_jpg(p("g.jpg").c_str(), 8, 8, 1, grey.data(), 100), 0);
  t = load_image_for_model(p("g.jpg"), 8);
  for (int c = 0; c < 3; ++c) EXPECT_NEAR(px255(t, c, 4, 4), 90.0f, 3.0f);

  const std::string bytes = read_bytes(p("c.jpg"));
  write_bytes(p("trunc.jpg"), bytes.substr(0, bytes.size() * 2 / 3));
  std::string msg = error_of([&] { load_image_for_model(p("trunc.jpg"), 16); });
  EXPECT_NE(msg.find(p("trunc.jpg")), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;

  // A Huffman table whose code counts sum to 16 * 255 (stb_image 2.27 would write past its
  // tables on this; libjpeg-turbo refuses it).
  std::string bad = bytes;
  size_t dht = bad.find("\xff\xc4");
  ASSERT_NE(dht, std::string::npos);
  for (int i = 0; i < 16; ++i) bad[dht + 5 + size_t(i)] = char(0xff);
  write_bytes(p("dht.jpg"), bad);
  msg = error_of([&] { load_image_for_model(p("dht.jpg"), 16); });
  EXPECT_NE(msg.find(p("dht.jpg")), std::string::npos) << msg;
  EXPECT_NE(msg.find("JPEG"), std::string::npos) << msg;
}

TEST_F(ImageTest, CorruptPngsNeverCrash) {
  // Every truncation and a sweep of single-byte corruptions of a small PNG with text chunks:
  // each must either parse or throw hwaga::Error (run under ASan/UBSan in CI).
  Tensor t = Tensor::zeros({3, 5, 7});
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = float(i % 11) / 5.0f - 1.0f;
  write_png(p("src.png"), t, {{"prompt", "x"}, {"k\xc3\xa9y", "\xe2\x9c\x93"}});
  const std::string bytes = read_bytes(p("src.png"));
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  int parsed = 0, refused = 0;
  auto attempt = [&](const uint8_t* d, size_t n) {
    try {
      parse_png_text(d, n, "mem.png");
      ++parsed;
    } catch (const Error&) {
      ++refused;
    }
    try {
      decode_image_for_model(d, n, 4, "mem.png");
    } catch (const Error&) {
    }
  };
  for (size_t n = 0; n < bytes.size(); ++n) attempt(data, n);
  for (size_t i = 0; i < bytes.size(); ++i)
    for (uint8_t x : {uint8_t(0x01), uint8_t(0x80), uint8_t(0xff)}) {
      std::string b = bytes;
      b[i] = char(uint8_t(b[i]) ^ x);
      attempt(reinterpret_cast<const uint8_t*>(b.data()), b.size());
    }
  EXPECT_GT(refused, int(bytes.size()));  // every truncation at least
  EXPECT_GT(parsed, 0);                  // the untouched-critical-chunk cases
}

// A top-down BMP (negative height in its header, which stb_image's info call passes through)
// is a valid 4x4 picture: it must decode, not be refused as "4 x -4 pixels".
TEST(ImageBmp, TopDownBmpDecodes) {
  std::string path = std::string(HWAGA_SOURCE_DIR) + "/tests/fuzz/corpus/image/bgra32_topdown_4x4.bmp";
  hwaga::Tensor t = hwaga::load_image_for_model(path, 4);
  EXPECT_EQ(t.shape(), (hwaga::Shape{3, 4, 4}));
  for (int64_t i = 0; i < t.numel(); ++i) {
    EXPECT_GE(t.f32()[i], -1.0f);
    EXPECT_LE(t.f32()[i], 1.0f);
  }
}
