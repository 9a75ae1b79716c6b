// hwaga decode -m MODEL codes.npy -o out_%03d.png [--batch B]
//
// Code stacks -> pictures with the model's stage-1 tokenizer. The codes must be [N,h,w,D] with
// the model's code shape and every value in [0,K). One PNG per picture, named by the -o pattern
// (one %d field, e.g. out_%03d.png; a plain name is allowed for N = 1). Each PNG carries tEXt
// chunks with the model file, the codes file, the index and the settings that made it.
// An -o ending in .npy writes the decoder's raw float32 output [N,3,R,R] (before clamping and
// rounding to 8 bits) to one file instead: that is what the parity tests compare.
//
// Nothing is left behind on failure: outputs go to temporary names and are renamed into place
// only after every picture was written (OutputSet).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
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

namespace hwaga::cli::decode_cmd {  // a namespace per command (unity build)
namespace {

struct DecodeOptions {
  CommonOptions common;
  std::string model;
  std::string codes;
  std::string output;
  int batch = 4;
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// codes [N,h,w,D] int32: shape against the model's code shape, values against [0,K).
void check_codes(const Tensor& codes, const Shape& cs, int K, const std::string& path) {
  const Shape& s = codes.shape();
  std::string expected = "[N, " + std::to_string(cs[0]) + ", " + std::to_string(cs[1]) + ", " +
                         std::to_string(cs[2]) + "]";
  if (codes.dtype() != DType::I32)
    fail(path, ": expected integer codes, found dtype ", dtype_name(codes.dtype()));
  if (s.size() != 4 || s[1] != cs[0] || s[2] != cs[1] || s[3] != cs[2])
    fail(path, ": codes have shape ", shape_str(s), ", but this model expects ", expected);
  if (s[0] < 1) fail(path, ": no code stacks in the file (shape ", shape_str(s), ")");
  const int32_t* c = codes.ptr<int32_t>();
  for (int64_t i = 0; i < codes.numel(); ++i) {
    if (c[i] < 0 || c[i] >= K) {
      int64_t per = cs[0] * cs[1] * cs[2];
      int64_t n = i / per, r = i % per;
      fail(path, ": code ", c[i], " at [", n, ", ", r / (cs[1] * cs[2]), ", ", (r / cs[2]) % cs[1], ", ",
           r % cs[2], "] is out of range (expected 0 <= code < K = ", K, ")");
    }
  }
}

std::string settings_line(const DecodeOptions& opt) {
  std::vector<std::string> args = {"hwaga", "decode", "-m", base_name(opt.model), base_name(opt.codes),
                                   "-o", base_name(opt.output), "--batch", std::to_string(opt.batch),
                                   "--device", opt.common.device};
  return join_command_line(args);
}

int run_decode(const DecodeOptions& opt) {
  const bool raw = ends_with(opt.output, ".npy");
  check_output_dir(raw ? opt.output : expand_pattern(opt.output, 0), "-o");
  Tensor codes = read_npy(opt.codes);  // [N,h,w,D]
  auto backend = select_backend(opt.common);
  SafetensorsFile file = read_model_file(opt.model);
  auto tok = load_image_tokenizer(file, *backend);
  const Shape cs = tok->code_shape();
  check_codes(codes, cs, tok->codebook_size(), opt.codes);
  const int64_t N = codes.dim(0);
  const int R = tok->resolution();

  OutputSet outs(raw ? std::vector<std::string>{opt.output} : expand_outputs(opt.output, N));
  Tensor all;  // [N,3,R,R] raw decoder output, only for a .npy output
  if (raw) all = Tensor::empty({N, 3, R, R});
  const size_t per_image = size_t(3) * R * R;
  const std::string settings = settings_line(opt);

  auto t0 = std::chrono::steady_clock::now();
  for (int64_t b0 = 0; b0 < N; b0 += opt.batch) {
    int64_t b1 = std::min<int64_t>(N, b0 + opt.batch);
    Tensor x = tok->decode(codes.slice0(b0, b1));  // [b,3,R,R], not clamped
    x.expect(Shape{b1 - b0, 3, R, R}, "decoder output");
    for (int64_t i = b0; i < b1; ++i) {
      const float* src = x.f32() + size_t(i - b0) * per_image;
      if (raw) {
        std::memcpy(all.f32() + size_t(i) * per_image, src, per_image * sizeof(float));
        continue;
      }
      std::map<std::string, std::string> text = {
          {"Software", software_string()},
          {"hwaga.model", base_name(opt.model)},
          {"hwaga.codes", base_name(opt.codes)},
          {"hwaga.index", std::to_string(i)},
          {"hwaga.backend", backend->name()},
          {"hwaga.settings", settings},
      };
      try {
        write_png(outs.temp_for(size_t(i)), x.slice0(i - b0, i - b0 + 1).reshape({3, R, R}), text);
      } catch (const Error& e) {
        fail("cannot write picture ", i, " to '", outs.final_name(size_t(i)), "': ", e.what());
      }
      outs.written(size_t(i));
    }
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "hwaga decode: %lld/%lld pictures, %.3f s/picture\n", (long long)b1, (long long)N,
                 s / double(b1));
  }
  if (raw) {
    write_npy(outs.temp_for(0), all);
    outs.written(0);
  }
  outs.commit();
  if (raw)
    std::printf("wrote %s: float32 %s decoder output\n", opt.output.c_str(), shape_str(all.shape()).c_str());
  else
    std::printf("wrote %lld picture%s: %s%s\n", (long long)N, N == 1 ? "" : "s", outs.final_name(0).c_str(),
                N > 1 ? (" ... " + outs.final_name(size_t(N - 1))).c_str() : "");
  return 0;
}

Command reg("decode", "Decode code stacks (.npy) into pictures with a model's image tokenizer", [](CLI::App& sub) {
  auto opt = std::make_shared<DecodeOptions>();
  sub.add_option("-m,--model", opt->model, "hwaga model file (.safetensors)")->required();
  sub.add_option("codes", opt->codes, "int32/int64 .npy of shape [N,h,w,D]")->required();
  sub.add_option("-o,--output", opt->output,
                 "PNG name pattern with one %d field (out_%03d.png), or a .npy for the raw float output")
      ->required();
  sub.add_option("--batch", opt->batch, "pictures per batch")->check(CLI::Range(1, 1024))->capture_default_str();
  add_common_options(sub, opt->common);
  return [opt] { return run_decode(*opt); };
});

}  // namespace
}  // namespace hwaga::cli::decode_cmd
