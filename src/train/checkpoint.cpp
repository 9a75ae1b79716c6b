#include "train/checkpoint.h"

#include "io/safetensors.h"

namespace hwaga::train {

void save_checkpoint(const std::string& path, const ParamSet& ps, const AdamW* opt, const TensorMap& extra,
                     nlohmann::json meta) {
  if (!meta.contains("step")) throw Error("save_checkpoint: the metadata has no \"step\"");
  TensorMap all = ps.host_values();
  if (opt) {
    opt->save_state(ps, all);
    meta["optimizer_steps"] = opt->steps();
  }
  for (auto& [k, t] : extra) {
    if (all.count(k)) throw Error("save_checkpoint: extra tensor " + k + " clashes with a parameter");
    all[k] = t;
  }
  write_safetensors(path, all,
                    {{"format", kTrainFormat}, {"version", std::to_string(kTrainFormatVersion)}, {"train", meta.dump()}});
}

Checkpoint read_checkpoint(const std::string& path) {
  SafetensorsFile f = read_safetensors(path);
  auto fmt = f.metadata.find("format");
  if (fmt == f.metadata.end())
    throw Error(path + " is not a hwaga training checkpoint (no \"format\" in its metadata)");
  if (fmt->second == kModelFormat)
    throw Error(path + " is a hwaga model file, not a training checkpoint; to start from its weights use --init");
  if (fmt->second != kTrainFormat)
    throw Error(path + " is not a hwaga training checkpoint (format \"" + fmt->second + "\", expected \"" +
                kTrainFormat + "\")");
  auto ver = f.metadata.find("version");
  if (ver == f.metadata.end() || ver->second != std::to_string(kTrainFormatVersion))
    throw Error(path + ": training checkpoint version " + (ver == f.metadata.end() ? "missing" : ver->second) +
                ", this hwaga reads version " + std::to_string(kTrainFormatVersion));
  auto tr = f.metadata.find("train");
  if (tr == f.metadata.end()) throw Error(path + ": training checkpoint without its \"train\" metadata");
  Checkpoint ck;
  try {
    ck.meta = nlohmann::json::parse(tr->second);
  } catch (const std::exception& e) {
    throw Error(path + ": the \"train\" metadata is not valid JSON (" + e.what() + ")");
  }
  if (!ck.meta.is_object() || !ck.meta.contains("step") || !ck.meta["step"].is_number_integer())
    throw Error(path + ": the \"train\" metadata has no integer \"step\"");
  ck.tensors = std::move(f.tensors);
  return ck;
}

void restore_checkpoint(const Checkpoint& ck, const std::string& path, ParamSet& ps, AdamW* opt) {
  ps.load_values(ck.tensors, path);
  if (opt) {
    int64_t steps = ck.meta.value("optimizer_steps", int64_t(0));
    opt->load_state(ps, ck.tensors, steps, path);
  }
}

}  // namespace hwaga::train
