// hwaga bench --preset NAME --random-weights [--dtype bf16|f32|f16] [-n N] [--steps S] [--decode]
// hwaga bench -m MODEL [-n N] [--steps S] [--decode]
//
// How fast code generation runs: builds the model (random weights of a released shape, or a model
// file), samples N candidates for a fixed fake prompt (text ids, no tokenizer needed) with the
// family's default sampler, and prints
//   - seconds per picture (extrapolated to all h*w*D steps when --steps stops early),
//   - the first step (it includes the text prefix) and the steady steps/s after it,
//   - the weight-read bandwidth: stage-2 weight bytes one sampling step reads (RQ: the depth
//     stack + classifier every step, the spatial stack once per position, i.e. 1/D of the steps;
//     minDALL-E: every block + ln_f + head_img every step; embedding tables only as rows, so
//     not counted) times steps/s,
//   - which kernels ran (the backend's name, the sgemm and the GEMV code),
//   - with --decode, the stage-1 decoder's time per picture.
// Not a test: numbers depend on the machine. Sampling uses fixed seeds, so runs are comparable.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli_util.h"
#include "command.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/transformer_ops.h"
#include "t2i_options.h"
#include "transformer/presets.h"
#include "transformer/stage2_config.h"
#include "transformer/text_to_image.h"

namespace hwaga::cli::bench_cmd {  // a namespace per command (unity build)
namespace {

using Clock = std::chrono::steady_clock;

struct BenchOptions {
  CommonOptions common;
  std::string preset;
  bool random_weights = false;
  std::string model;
  std::string dtype = "bf16";
  int n = 1;
  int steps = 0;
  int batch = 0;
  bool decode = false;
};

struct StopSampling {};  // thrown from the progress callback after --steps steps

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

bool starts_with(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

// Stage-2 weight bytes one sampling step reads on average (see the header comment).
// `bytes(name)` gives a stage-2 tensor's stored size (name without "stage2.").
struct StepBytes {
  double per_step = 0;
  std::string detail;
};
template <typename BytesOf>
StepBytes weight_bytes_per_step(const Stage2Config& c, BytesOf bytes) {
  double every = 0, per_position = 0;
  for (const TensorSpec& t : stage2_tensor_specs(c)) {
    const double b = double(bytes(t.name, t.shape));
    if (c.is_rq()) {
      if (starts_with(t.name, "body_transformer.") || starts_with(t.name, "input_mlp.")) per_position += b;
      else if (starts_with(t.name, "head_transformer.") || starts_with(t.name, "head_mlp.") ||
               starts_with(t.name, "classifier."))
        every += b;
    } else if (starts_with(t.name, "blocks.") || starts_with(t.name, "ln_f.") || starts_with(t.name, "head_img.")) {
      every += b;
    }
  }
  StepBytes r;
  if (c.is_rq()) {
    r.per_step = every + per_position / c.rq.D();
    r.detail = "depth stack + classifier " + human_bytes(uint64_t(every)) + " every step, spatial stack " +
               human_bytes(uint64_t(per_position)) + " every " + std::to_string(c.rq.D()) + " steps";
  } else {
    r.per_step = every;
    r.detail = "blocks + ln_f + head_img every step";
  }
  return r;
}

// A fixed fake prompt: the first half of the ids spread over the text vocabulary, then padding.
std::vector<int32_t> fake_prompt(const TextToImageModel& m) {
  const int L = m.text_length(), V = m.cond_vocab_size();
  std::vector<int32_t> ids(size_t(L), m.pad_id());
  if (m.stage2_config().text_length() == 0) return std::vector<int32_t>(size_t(L), V > 1 ? 1 % V : 0);
  for (int i = 0; i < (L + 1) / 2; ++i) ids[size_t(i)] = int32_t(1 + (int64_t(i) * 7919 + 13) % std::max(V - 1, 1));
  return ids;
}

int run_bench(const BenchOptions& opt) {
  if (opt.model.empty() == opt.preset.empty()) {
    std::fprintf(stderr, "hwaga bench: give either --preset NAME --random-weights or -m MODEL\n");
    return 2;
  }
  if (!opt.preset.empty() && !opt.random_weights) {
    std::fprintf(stderr, "hwaga bench: --preset needs --random-weights (there are no released weights here)\n");
    return 2;
  }
  auto backend = select_backend(opt.common);
  const DType dt = parse_dtype(opt.dtype, "--dtype");

  auto t0 = Clock::now();
  std::unique_ptr<TextToImageModel> model;
  SafetensorsFile file;
  std::string what;
  if (!opt.preset.empty()) {
    model = TextToImageModel::random(find_preset(opt.preset), *backend, dt, 1);
    what = opt.preset + " (random weights, stage 2 " + dtype_name(dt) + ")";
  } else {
    file = read_model_file(opt.model);
    model = TextToImageModel::load(file, *backend);
    what = opt.model;
  }
  const double build_s = since(t0);
  const Stage2Config& c = model->stage2_config();
  StepBytes sb = weight_bytes_per_step(c, [&](const std::string& name, const Shape& shape) -> uint64_t {
    if (!opt.preset.empty()) return uint64_t(shape_numel(shape)) * dtype_size(dt);
    return file.tensors.at("stage2." + name).nbytes();
  });

  SamplingArgs args;
  args.n = opt.n;
  args.batch = opt.batch;
  args.seed = 0, args.seed_given = true;
  const Sampling s = resolve_sampling(args, *model);
  GenerateOptions g = generate_options(s, s.seed);
  const int total = sampling_steps(*model, s);
  const int limit = opt.steps > 0 ? std::min(opt.steps, total) : total;
  int done = 0;
  double t_first = 0, t_last = 0;
  auto ts = Clock::now();
  g.progress = [&](int step, int) {
    done = step;
    // On the GPU the loop queues steps ahead of the device: wait for them at the two clock
    // readings that count.
    if (step == 1 || step >= limit) backend->synchronize();
    t_last = since(ts);
    if (step == 1) t_first = t_last;
    if (step >= limit && limit < total) throw StopSampling{};
  };
  Tensor codes;
  try {
    codes = model->generate_codes(fake_prompt(*model), g);
  } catch (const StopSampling&) {
  }
  const double steady = done > 1 && t_last > t_first ? (done - 1) / (t_last - t_first) : 0.0;
  const double est_total = done >= total ? t_last : t_first + (steady > 0 ? (total - 1) / steady : 0.0);

  const Shape cs = model->code_shape();
  std::printf("model:     %s: %s, %s parameters\n", what.c_str(), model->kind().c_str(),
              human_count(model->num_parameters()).c_str());
  std::printf("backend:   %s\n", backend->name().c_str());
  std::printf("kernels:   sgemm %s, linear gemv %s\n", cpu::sgemm_kernel_name(), cpu::linear_gemv_isa());
  std::printf("build:     %.2f s\n", build_s);
  std::printf("sampling:  %d candidates, %d of %d steps (codes %lldx%lldx%lld), batch %s\n", s.n, done, total,
              (long long)cs[0], (long long)cs[1], (long long)cs[2],
              s.batch > 0 ? std::to_string(s.batch).c_str() : "all");
  std::printf("first:     %.3f s (the text prefix and step 1)\n", t_first);
  std::printf("steps/s:   %.2f after the first step (%.2f ms per step)\n", steady, steady > 0 ? 1e3 / steady : 0.0);
  std::printf("per picture: %.3f s%s\n", est_total / s.n, done < total ? " (extrapolated from the steps run)" : "");
  std::printf("weights:   %s read per step (%s), %.2f GB/s\n", human_bytes(uint64_t(sb.per_step)).c_str(),
              sb.detail.c_str(), sb.per_step * steady / 1e9);

  if (opt.decode) {
    Tensor dc = codes.defined() ? codes : Tensor::zeros({s.n, cs[0], cs[1], cs[2]}, DType::I32);
    auto td = Clock::now();
    Tensor x = model->decode(dc);
    const double dec = since(td);
    std::printf("decode:    %.3f s per picture (%lld pictures %lldx%lld%s)\n", dec / s.n, (long long)s.n,
                (long long)x.dim(2), (long long)x.dim(3), codes.defined() ? "" : ", zero codes");
  }
  return 0;
}

Command reg("bench", "Time text-to-image code generation (random weights of a preset, or a model file)",
            [](CLI::App& sub) {
              auto opt = std::make_shared<BenchOptions>();
              auto* p = sub.add_option("--preset", opt->preset, "a released configuration (hwaga info --list-presets)");
              sub.add_flag("--random-weights", opt->random_weights, "random weights of the preset's shape");
              auto* m = sub.add_option("-m,--model", opt->model, "a model file instead of a preset");
              m->excludes(p);
              sub.add_option("--dtype", opt->dtype, "stage-2 weight dtype for --random-weights")
                  ->check(CLI::IsMember({"f32", "bf16", "f16"}))
                  ->capture_default_str();
              sub.add_option("-n,--n", opt->n, "candidates sampled together")
                  ->check(CLI::Range(1, 4096))
                  ->capture_default_str();
              sub.add_option("--steps", opt->steps, "stop after S sampling steps (0 = all) and extrapolate")
                  ->check(CLI::NonNegativeNumber);
              sub.add_option("--batch", opt->batch, "candidates per batch (0 = all)")->check(CLI::NonNegativeNumber);
              sub.add_flag("--decode", opt->decode, "also time the image decoder");
              add_common_options(sub, opt->common);
              return [opt] { return run_bench(*opt); };
            });

}  // namespace
}  // namespace hwaga::cli::bench_cmd
