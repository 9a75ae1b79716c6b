// hwaga export --checkpoint WORK/checkpoint.safetensors -o model.safetensors [--dtype f32|bf16|f16]
//              [--stage1 STAGE1.safetensors] [--top-k K] [--top-p P] [--temperature T] [--cfg S]
//              [--rerank M]
//
// Turns a stage-2 training checkpoint (hwaga train) into one model file that `hwaga generate -m`
// loads: the stage-1 tensors and config copied from the stage-1 model file the run used (its
// path, size and content hash are recorded in the checkpoint; a changed file is refused, and
// --stage1 names its new place when it moved), the trained stage-2 weights (as --dtype), the
// config and the text tokenizer (train/stage2_export.h). The file is written atomically.
// --top-k/--top-p/--temperature/--cfg/--rerank store the sampling settings the model is best drawn with
// (metadata "sampling"); generate and gallery use them for the options their user leaves out.
//
// Exit codes: 0 written, 1 error (not a stage-2 checkpoint, the stage-1 file missing or changed),
// 2 bad option value.
#include <cmath>
#include <cstdio>
#include <optional>

#include "command.h"
#include "core/error.h"
#include "t2i_options.h"
#include "train/stage2_export.h"

namespace hwaga::cli::export_cmd {  // a namespace per command (unity build)
namespace {

struct ExportOptions {
  std::string checkpoint, output, dtype = "f32", stage1;
  std::string top_k, top_p;       // "" = not recommended
  std::optional<double> temperature, cfg;
  std::optional<int> rerank;
};

SamplingDefaults sampling_of(const ExportOptions& opt) {
  SamplingDefaults d;
  if (!opt.top_k.empty()) d.top_k = parse_top_k(opt.top_k);
  if (!opt.top_p.empty()) d.top_p = parse_top_p(opt.top_p);
  if (opt.temperature) {
    if (!(std::isfinite(*opt.temperature) && *opt.temperature > 0))
      throw UsageError("--temperature must be a finite number > 0");
    d.temperature = float(*opt.temperature);
  }
  if (opt.cfg) {
    if (!std::isfinite(*opt.cfg)) throw UsageError("--cfg must be a finite number");
    d.cfg = float(*opt.cfg);
  }
  if (opt.rerank) {
    if (*opt.rerank < 0 || *opt.rerank > 100000) throw UsageError("--rerank must be in [0, 100000] (0 = off)");
    d.rerank = *opt.rerank;
  }
  return d;
}

int run_export(const ExportOptions& opt) {
  DType dt;
  try {
    dt = parse_dtype(opt.dtype, "--dtype");
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
  if (dt != DType::F32 && dt != DType::BF16 && dt != DType::F16)
    throw UsageError("--dtype must be f32, bf16 or f16, got " + opt.dtype);
  const SamplingDefaults sampling = sampling_of(opt);
  std::printf("%s\n", train::export_stage2_checkpoint(opt.checkpoint, opt.output, dt, opt.stage1, sampling).c_str());
  return 0;
}

Command reg("export", "Write a model file from a stage-2 training checkpoint", [](CLI::App& sub) {
  auto opt = std::make_shared<ExportOptions>();
  sub.add_option("--checkpoint", opt->checkpoint, "WORK/checkpoint.safetensors of hwaga train")->required();
  sub.add_option("-o,--output", opt->output, "the model file to write")->required();
  sub.add_option("--dtype", opt->dtype, "stage-2 weights as f32, bf16 or f16 (default f32)");
  sub.add_option("--stage1", opt->stage1, "the stage-1 model file, if it moved since training");
  sub.add_option("--top-k", opt->top_k, "recommended top-k: K, K0,..,K3 (RQ), or none (stored in the file)");
  sub.add_option("--top-p", opt->top_p, "recommended top-p: P, P0,..,P3 (RQ), or none (stored in the file)");
  sub.add_option("--temperature", opt->temperature, "recommended temperature > 0 (stored in the file)");
  sub.add_option("--cfg", opt->cfg, "recommended classifier-free guidance scale (stored in the file)");
  sub.add_option("--rerank", opt->rerank, "recommended candidate pool per prompt for reranking (stored in the file)");
  return [opt] {
    try {
      return run_export(*opt);
    } catch (const UsageError& e) {
      std::fprintf(stderr, "hwaga export: error: %s\n", e.what());
      return 2;
    }
  };
});

}  // namespace
}  // namespace hwaga::cli::export_cmd
