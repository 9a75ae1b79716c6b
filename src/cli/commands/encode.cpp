// hwaga encode -m MODEL IMAGE... -o codes.npy [--batch B]
//
// Pictures -> code stacks with the model's stage-1 tokenizer. Every picture is read and prepared
// first (so a bad file fails before any work), then encoded in batches of B; the codes go to one
// int32 .npy of shape [N,h,w,D] (RQ-VAE [N,8,8,4], VQGAN [N,16,16,1]), in the order given.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cli_util.h"
#include "command.h"
#include "core/error.h"
#include "io/image.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "nn/image_tokenizer.h"

namespace hwaga::cli {
namespace {

struct EncodeOptions {
  CommonOptions common;
  std::string model;
  std::vector<std::string> images;
  std::string output;
  int batch = 4;
};

int run_encode(const EncodeOptions& opt) {
  check_output_dir(opt.output, "-o");
  auto backend = select_backend(opt.common);
  SafetensorsFile file = read_model_file(opt.model);
  auto tok = load_image_tokenizer(file, *backend);
  const int R = tok->resolution();
  const Shape cs = tok->code_shape();  // {h,w,D}
  const int64_t N = int64_t(opt.images.size());

  // images [N,3,R,R] in [-1,1]
  Tensor images = Tensor::empty({N, 3, R, R});
  const size_t per_image = size_t(3) * R * R;
  for (int64_t i = 0; i < N; ++i) {
    Tensor im = load_image_for_model(opt.images[size_t(i)], R);  // [3,R,R]
    im.expect(Shape{3, R, R}, opt.images[size_t(i)]);
    std::memcpy(images.f32() + size_t(i) * per_image, im.f32(), per_image * sizeof(float));
  }

  // codes [N,h,w,D] int32
  Tensor codes = Tensor::empty({N, cs[0], cs[1], cs[2]}, DType::I32);
  const size_t per_code = size_t(shape_numel(cs));
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t b0 = 0; b0 < N; b0 += opt.batch) {
    int64_t b1 = std::min<int64_t>(N, b0 + opt.batch);
    Tensor c = tok->encode(images.slice0(b0, b1));  // [b,h,w,D]
    c.expect(Shape{b1 - b0, cs[0], cs[1], cs[2]}, "encoder output");
    c.expect(DType::I32, "encoder output");
    std::memcpy(codes.ptr<int32_t>() + size_t(b0) * per_code, c.ptr<int32_t>(), c.nbytes());
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "hwaga encode: %lld/%lld pictures, %.3f s/picture\n", (long long)b1, (long long)N,
                 s / double(b1));
  }
  write_npy(opt.output, codes);
  std::printf("wrote %s: int32 %s codes (K=%d) for %lld picture%s\n", opt.output.c_str(),
              shape_str(codes.shape()).c_str(), tok->codebook_size(), (long long)N, N == 1 ? "" : "s");
  return 0;
}

Command reg("encode", "Encode pictures into code stacks (.npy) with a model's image tokenizer", [](CLI::App& sub) {
  auto opt = std::make_shared<EncodeOptions>();
  sub.add_option("-m,--model", opt->model, "hwaga model file (.safetensors)")->required();
  sub.add_option("images", opt->images, "pictures (PNG, JPEG, BMP, ...)")->required();
  sub.add_option("-o,--output", opt->output, "output .npy (int32 [N,h,w,D])")->required();
  sub.add_option("--batch", opt->batch, "pictures per batch")->check(CLI::Range(1, 1024))->capture_default_str();
  add_common_options(sub, opt->common);
  return [opt] { return run_encode(*opt); };
});

}  // namespace
}  // namespace hwaga::cli
