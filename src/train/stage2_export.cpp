#include "train/stage2_export.h"

#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "train/checkpoint.h"
#include "train/code_cache.h"

namespace hwaga::train {

void write_stage2_model(const std::string& out, const SafetensorsFile& stage1_file, const Stage2Config& stage2,
                        const TensorMap& stage2_tensors, const TextSettings& text, const std::string& tokenizer_json,
                        DType dtype, const std::map<std::string, std::string>& extra_meta) {
  HWAGA_CHECK(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
              "export: --dtype must be f32, bf16 or f16, found ", dtype_name(dtype));
  const nlohmann::json cfg1 = model_config(stage1_file);
  if (!cfg1.contains("stage1")) fail(stage1_file.path, ": no \"stage1\" in its config (not an image tokenizer file)");
  nlohmann::json config = {{"stage1", cfg1["stage1"]}, {"stage2", stage2_config_to_json(stage2)}};
  if (!text.tokenizer.empty())
    config["text"] = {{"tokenizer", text.tokenizer}, {"context_length", text.context_length}};
  TensorMap tensors;
  for (auto& [name, t] : stage1_file.tensors)
    if (name.rfind("stage1.", 0) == 0) tensors[name] = t;
  for (const TensorSpec& s : stage2_tensor_specs(stage2)) {
    const std::string name = "stage2." + s.name;
    const Tensor& t = get_tensor(stage2_tensors, name, "the trained stage 2");
    t.expect(s.shape, "the trained stage 2: " + name);
    tensors[name] = t.dtype() == dtype ? t : t.to(dtype);
  }
  std::map<std::string, std::string> meta = {
      {"format", kModelFormat}, {"version", std::to_string(kModelFormatVersion)}, {"config", config.dump()}};
  if (!tokenizer_json.empty()) meta["tokenizer"] = tokenizer_json;
  for (auto& [k, v] : extra_meta) meta[k] = v;
  write_safetensors(out, tensors, meta);
}

std::string export_stage2_checkpoint(const std::string& checkpoint, const std::string& out, DType dtype,
                                     const std::string& stage1_override, const SamplingDefaults& sampling) {
  Checkpoint ck = read_checkpoint(checkpoint);
  const nlohmann::json& m = ck.meta;
  const std::string stage = m.value("stage", std::string());
  if (stage != kStage2RqTransformer && stage != kStage2MindalleGpt)
    fail(checkpoint, " is a training checkpoint of stage \"", m.value("stage", std::string("?")),
         "\", not of a text-to-image transformer (\"", kStage2RqTransformer, "\" or \"", kStage2MindalleGpt,
         "\"): nothing to export here");
  Stage2Config s2;
  TextSettings text;
  std::string tok;
  FileFingerprint rec;
  try {
    s2 = stage2_config_from_json(m.at("config").at("stage2"), checkpoint + ": train.config.stage2");
    text.tokenizer = m.at("config").at("text").at("tokenizer").get<std::string>();
    text.context_length = m.at("config").at("text").at("context_length").get<int>();
    tok = m.at("tokenizer").get<std::string>();
    rec = fingerprint_from_json(m.at("stage1"), checkpoint + ": train.stage1");
  } catch (const nlohmann::json::exception& e) {
    fail(checkpoint, ": incomplete training metadata (", e.what(), ")");
  }
  const bool rq = s2.is_rq();
  validate_sampling_defaults(sampling, rq ? SamplerSemantics::RqTransformer : SamplerSemantics::MinDalle,
                             rq ? s2.rq.D() : 1, s2.image_vocab_size(), "the sampling options");
  const std::string s1path = stage1_override.empty() ? rec.path : stage1_override;
  if (!std::filesystem::exists(s1path))
    fail("the stage-1 model ", s1path, " that ", checkpoint,
         " was trained with is gone; pass its current location with --stage1");
  FileFingerprint now = fingerprint_file(s1path);
  if (!now.same_file_content(rec))
    fail("the stage-1 model ", s1path, " changed since training (", now.size, " bytes, hash ", now.hash,
         "; the checkpoint recorded ", rec.size, " bytes, hash ", rec.hash,
         "): its codes would not mean what the transformer learned");
  SafetensorsFile s1 = read_model_file(s1path);
  const int64_t step = m.at("step").get<int64_t>();
  std::map<std::string, std::string> meta = {
      {"trained_from", std::filesystem::path(checkpoint).filename().string() + " step " + std::to_string(step)}};
  if (!sampling.empty()) meta["sampling"] = sampling_defaults_to_json_text(sampling);
  write_stage2_model(out, s1, s2, ck.tensors, text, tok, dtype, meta);
  char buf[512];
  std::snprintf(buf, sizeof buf, "wrote %s: %s, trained %lld steps, stage 2 as %s", out.c_str(),
                describe_stage2_config(s2).c_str(), (long long)step, dtype_name(dtype));
  std::string summary = buf;
  if (!sampling.empty()) summary += "; sampling defaults " + describe_sampling_defaults(sampling);
  return summary;
}

}  // namespace hwaga::train
