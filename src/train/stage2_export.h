// Turning a stage-2 training run into a hwaga model file (io/safetensors.h, docs/MODEL_FORMAT.md)
// that `hwaga generate -m` loads (transformer/text_to_image.h):
//
//   metadata  format "hwaga", version "1",
//             config {"stage1": <the stage-1 file's>, "stage2": <trained config>,
//                     "text": {"tokenizer": "bpe16k" | "spm", "context_length": L_c}},
//             tokenizer <the text tokenizer's JSON>, trained_from <checkpoint name, step>
//   tensors   stage1.*  copied from the stage-1 model file the run was trained with
//             stage2.*  the trained parameters (f32, or converted to bf16/f16)
//
// The training checkpoint records the stage-1 file's path, size and content hash ("stage1" in
// its "train" metadata); export refuses a stage-1 file that changed since (naming both), so the
// codes the model learned still mean the same pictures.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "core/tensor_map.h"
#include "io/safetensors.h"
#include "sample/sampling_defaults.h"
#include "transformer/stage2_config.h"

namespace hwaga::train {

// The model file from its parts: stage-1 tensors and config from `stage1_file` (a hwaga model
// file holding "stage1" in its config), stage2 tensors (names "stage2.*", any float dtype)
// stored as `dtype`, the tokenizer JSON text. `extra_meta` entries are added to the metadata.
void write_stage2_model(const std::string& out, const SafetensorsFile& stage1_file, const Stage2Config& stage2,
                        const TensorMap& stage2_tensors, const TextSettings& text, const std::string& tokenizer_json,
                        DType dtype, const std::map<std::string, std::string>& extra_meta = {});

// Exports a stage-2 training checkpoint (train/checkpoint.h, stage "rq-transformer" or
// "mindalle-gpt") to `out`.
// `stage1_override` (optional) replaces the stage-1 path recorded in the checkpoint (its content
// must still match the recorded size and hash). `sampling` (optional) is stored as the file's
// recommended sampling settings (metadata "sampling", sample/sampling_defaults.h), checked
// against the model first. Returns a one-line summary.
std::string export_stage2_checkpoint(const std::string& checkpoint, const std::string& out, DType dtype,
                                     const std::string& stage1_override = "", const SamplingDefaults& sampling = {});

}  // namespace hwaga::train
