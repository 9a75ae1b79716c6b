// hwaga export --checkpoint WORK/checkpoint.safetensors -o model.safetensors [--dtype f32|bf16|f16]
//              [--stage1 STAGE1.safetensors]
//
// Turns a stage-2 training checkpoint (hwaga train) into one model file that `hwaga generate -m`
// loads: the stage-1 tensors and config copied from the stage-1 model file the run used (its
// path, size and content hash are recorded in the checkpoint; a changed file is refused, and
// --stage1 names its new place when it moved), the trained stage-2 weights (as --dtype), the
// config and the text tokenizer (train/stage2_export.h). The file is written atomically.
//
// Exit codes: 0 written, 1 error (not a stage-2 checkpoint, the stage-1 file missing or changed),
// 2 bad option value.
#include <cstdio>

#include "command.h"
#include "core/error.h"
#include "t2i_options.h"
#include "train/stage2_export.h"

namespace hwaga::cli {
namespace {

struct ExportOptions {
  std::string checkpoint, output, dtype = "f32", stage1;
};

int run_export(const ExportOptions& opt) {
  DType dt;
  try {
    dt = parse_dtype(opt.dtype, "--dtype");
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
  if (dt != DType::F32 && dt != DType::BF16 && dt != DType::F16)
    throw UsageError("--dtype must be f32, bf16 or f16, got " + opt.dtype);
  std::printf("%s\n", train::export_stage2_checkpoint(opt.checkpoint, opt.output, dt, opt.stage1).c_str());
  return 0;
}

Command reg("export", "Write a model file from a stage-2 training checkpoint", [](CLI::App& sub) {
  auto opt = std::make_shared<ExportOptions>();
  sub.add_option("--checkpoint", opt->checkpoint, "WORK/checkpoint.safetensors of hwaga train")->required();
  sub.add_option("-o,--output", opt->output, "the model file to write")->required();
  sub.add_option("--dtype", opt->dtype, "stage-2 weights as f32, bf16 or f16 (default f32)");
  sub.add_option("--stage1", opt->stage1, "the stage-1 model file, if it moved since training");
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
}  // namespace hwaga::cli
