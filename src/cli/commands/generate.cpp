// hwaga generate [-m MODEL] -p PROMPT | --class N [-n N] [--seed S] [--top-k K[,K,K,K]] [--top-p P[,..]]
//                [--temperature T] [--cfg S] [--batch B] [-o out_%02d.png] [--codes-out codes.npy]
//                [--greedy] [--threads N] [--device D]
//
// Class-conditional models (ImageNet presets) take --class N instead of -p, unconditional ones
// (FFHQ, LSUN) neither: the single condition id is the class or 0.
//
// Text -> pictures: the prompt is tokenized with the model's own tokenizer (truncated to its
// context with a warning), the stage-2 transformer samples N code maps (candidate i from the
// random stream (seed, i), so picture i does not depend on N, --batch or the thread count), and
// the stage-1 decoder turns them into PNGs. Every PNG carries the settings in text chunks
// (t2i_options.h: picture_text), including the command that makes it again.
//
// Sampling defaults follow the model family (RQ text models: top-k 1024, top-p 0.95; minDALL-E:
// top-k 256, no top-p; temperature 1). Without --seed a random seed is chosen and printed.
// Without -m the default model samples/models/default.safetensors is used (t2i_options.h).
//
// All or nothing: pictures and codes go to temporary names and are renamed into place only when
// everything was written; an error or Ctrl-C leaves no new file behind. Exit codes: 0 done,
// 1 error (model, prompt encoding, files), 2 bad option value, 128+signal when interrupted.
#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cli_util.h"
#include "command.h"
#include "core/error.h"
#include "io/image.h"
#include "io/npy.h"
#include "progress.h"
#include "t2i_options.h"

namespace hwaga::cli::generate_cmd {  // a namespace per command (unity build)
namespace {

constexpr const char* kPrefix = "hwaga generate: ";

struct GenerateCliOptions {
  CommonOptions common;
  std::string model;
  std::string prompt;
  bool prompt_given = false;
  int class_id = -1;
  std::string output = "out_%02d.png";
  std::string codes_out;
  int decode_batch = 4;
  SamplingArgs sampling;
};

// What the model is drawn from, checked against what it takes.
Condition condition_for(const TextToImageModel& model, const GenerateCliOptions& opt, const std::string& path) {
  const bool text = model.stage2_config().text_length() > 0;
  const bool classes = !text && model.cond_vocab_size() > 1;
  if (text) {
    if (opt.class_id >= 0) usage_fail("--class: ", path, " is a text-to-image model; give a prompt with -p");
    if (!opt.prompt_given) usage_fail("-p PROMPT is needed: ", path, " is a text-to-image model");
    return Condition{opt.prompt};
  }
  if (opt.prompt_given)
    usage_fail("-p: ", path, " takes no text (it is ", classes ? "class-conditional: use --class N" : "unconditional",
               ")");
  if (classes) {
    if (opt.class_id < 0)
      usage_fail("--class N is needed: ", path, " is class-conditional (classes 0..", model.cond_vocab_size() - 1, ")");
    if (opt.class_id >= model.cond_vocab_size())
      usage_fail("--class ", opt.class_id, ": this model has classes 0..", model.cond_vocab_size() - 1);
    return Condition{"", opt.class_id};
  }
  if (opt.class_id >= 0) usage_fail("--class: ", path, " is unconditional; leave --class out");
  return Condition{};
}

int run_generate(const GenerateCliOptions& opt) {
  // ---- everything that can be checked without the model ----
  check_sampling_args(opt.sampling);
  const bool has_prompt = opt.prompt_given;
  if (has_prompt && opt.prompt.find_first_not_of(" \t\r\n\f\v") == std::string::npos)
    usage_fail("-p: the prompt is empty (expected some text to draw)");
  if (has_prompt && opt.class_id >= 0) usage_fail("-p and --class exclude each other");
  std::vector<std::string> names;
  try {
    names = expand_outputs(opt.output, opt.sampling.n);
  } catch (const Error& e) {
    usage_fail("-o: ", e.what());
  }
  check_output_dir(names[0], "-o");
  if (!opt.codes_out.empty()) {
    check_output_dir(opt.codes_out, "--codes-out");
    names.push_back(opt.codes_out);
  }
  OutputSet outs(names);  // checks for duplicate names before any work

  // ---- model and settings ----
  const std::string model_path = resolve_model_path(opt.model);
  auto backend = select_backend(opt.common);
  LoadedModel lm = load_stage2_model(model_path, *backend);
  TextToImageModel& model = *lm.model;
  const Condition cond = condition_for(model, opt, model_path);
  const Sampling s = resolve_sampling(opt.sampling, model);
  // the condition ids: the padded prompt, or the one id of a class-conditional (the class) or
  // unconditional (0) model
  const std::vector<int32_t> ids = opt.prompt_given
                                       ? prompt_ids(model.tokenizer(), opt.prompt, "the prompt", kPrefix)
                                       : std::vector<int32_t>{std::max(cond.class_id, 0)};
  std::fprintf(stderr, "%s%s%s, %d picture%s, seed %llu%s, %s\n", kPrefix, model.kind().c_str(),
               cond.prompt.empty() ? (", " + cond.description()).c_str() : "", s.n,
               s.n == 1 ? "" : "s", (unsigned long long)s.seed, s.seed_random ? " (random; --seed repeats it)" : "",
               s.greedy ? "greedy" : ("top-k " + s.top_k_text + ", top-p " + s.top_p_text + ", temperature " +
                                      s.temperature_text + (s.cfg != 0.0f ? ", cfg " + s.cfg_text : ""))
                                         .c_str());

  // ---- sampling ----
  InterruptGuard guard;
  SampledCodes sc;
  {
    ProgressBar bar(kPrefix, s.rerank > 0 ? "sampling " + std::to_string(s.rerank) + " candidates" : "sampling",
                    sampling_steps(model, s));
    sc = sample_codes(model, ids, s, s.seed, [&](int step, int) {
      bar.update(step);
      throw_if_interrupted();
    });
    bar.finish();
  }
  const Tensor& codes = sc.codes;  // [N,h,w,D]
  if (s.rerank > 0) {
    std::string kept;
    for (size_t i = 0; i < sc.candidate.size(); ++i)
      kept += (i ? ", " : "") + std::to_string(sc.candidate[i]) + " (" + float_text(float(sc.score[i])) + ")";
    std::fprintf(stderr, "%skept candidates %s of %d by prompt score\n", kPrefix, kept.c_str(), s.rerank);
  }

  // ---- decoding and writing ----
  const std::string command_line = join_command_line(process_arguments());
  const int64_t N = codes.dim(0);
  {
    ProgressBar bar(kPrefix, "decoding", int(N), "pictures");
    for (int64_t b0 = 0; b0 < N; b0 += opt.decode_batch) {
      const int64_t b1 = std::min<int64_t>(N, b0 + opt.decode_batch);
      Tensor x = model.decode(codes.slice0(b0, b1));  // [b,3,R,R]
      const int64_t R = x.dim(2);
      for (int64_t i = b0; i < b1; ++i) {
        auto text = picture_text(cond, model_path, s, s.seed, sc.candidate[size_t(i)], command_line);
        if (!sc.score.empty()) text["hwaga.prompt_score"] = float_text(float(sc.score[size_t(i)]));
        try {
          write_png(outs.temp_for(size_t(i)), x.slice0(i - b0, i - b0 + 1).reshape({3, R, x.dim(3)}), text);
        } catch (const Error& e) {
          fail("cannot write picture ", i, " to '", outs.final_name(size_t(i)), "': ", e.what());
        }
        outs.written(size_t(i));
      }
      bar.update(int(b1));
      throw_if_interrupted();
    }
    bar.finish();
  }
  if (!opt.codes_out.empty()) {
    write_npy(outs.temp_for(size_t(N)), codes);
    outs.written(size_t(N));
  }
  throw_if_interrupted();
  outs.commit();
  for (int64_t i = 0; i < N; ++i) std::printf("%s\n", outs.final_name(size_t(i)).c_str());
  if (!opt.codes_out.empty())
    std::printf("%s (codes int32 %s)\n", opt.codes_out.c_str(), shape_str(codes.shape()).c_str());
  return 0;
}

Command reg("generate", "Draw pictures for a text prompt with a text-to-image model", [](CLI::App& sub) {
  auto opt = std::make_shared<GenerateCliOptions>();
  sub.add_option("-m,--model", opt->model,
                 "hwaga model file (default: samples/models/default.safetensors, or $HWAGA_MODEL)");
  sub.add_option_function<std::string>(
      "-p,--prompt", [o = opt.get()](const std::string& v) { o->prompt = v, o->prompt_given = true; },
      "what to draw (UTF-8), for text-to-image models");
  sub.add_option("--class", opt->class_id, "class id to draw, for class-conditional models (ImageNet: 0..999)")
      ->check(CLI::NonNegativeNumber);
  sub.add_option("-o,--output", opt->output, "PNG name pattern; needs a %d field (out_%02d.png) when -n > 1")
      ->capture_default_str();
  sub.add_option("--codes-out", opt->codes_out, "also write the sampled codes, int32 [N,h,w,D] .npy");
  sub.add_option("--decode-batch", opt->decode_batch, "pictures decoded together")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  add_sampling_options(sub, opt->sampling, "pictures to draw");
  add_common_options(sub, opt->common);
  return [opt] { return run_with_exit_codes(kPrefix, [&] { return run_generate(*opt); }); };
});

}  // namespace
}  // namespace hwaga::cli::generate_cmd
