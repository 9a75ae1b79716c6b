// hwaga encode -m MODEL IMAGE... -o codes.npy [--batch B]
//
// Pictures -> code stacks with the model's stage-1 tokenizer. Pictures are read and encoded in
// batches of B; the codes go to one int32 .npy of shape [N,h,w,D] (RQ-VAE [N,8,8,4], VQGAN
// [N,16,16,1]), in the order given, written (atomically) only when every picture succeeded.
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

namespace hwaga::cli::encode_cmd {  // a namespace per command (unity build)
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

  // codes [N,h,w,D] int32, filled batch by batch; pictures are read per batch so memory stays
  // bounded by --batch. Nothing is written unless every picture was read and encoded.
  Tensor codes = Tensor::empty({N, cs[0], cs[1], cs[2]}, DType::I32);
  const size_t per_code = size_t(shape_numel(cs));
  const size_t per_image = size_t(3) * R * R;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t b0 = 0; b0 < N; b0 += opt.batch) {
    int64_t b1 = std::min<int64_t>(N, b0 + opt.batch);
    Tensor images = Tensor::empty({b1 - b0, 3, R, R});  // [b,3,R,R] in [-1,1]
    for (int64_t i = b0; i < b1; ++i) {
      const std::string& path = opt.images[size_t(i)];
      Tensor im = load_image_for_model(path, R);  // [3,R,R]
      im.expect(Shape{3, R, R}, path);
      std::memcpy(images.f32() + size_t(i - b0) * per_image, im.f32(), per_image * sizeof(float));
    }
    Tensor c = tok->encode(images);  // [b,h,w,D]
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
}  // namespace hwaga::cli::encode_cmd
