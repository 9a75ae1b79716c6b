// Training checkpoints: one safetensors file with the parameters (released key names), the
// optimizer moments ("optim.m.*", "optim.v.*"), any extra state tensors, and a JSON "train" entry
// in the metadata (format "hwaga-train", version 1: the stage, the model config, step, optimizer
// step count, data position, RNG seeds, options — whatever the trainer needs to continue exactly).
//
// Written atomically (io/safetensors.h: temporary file, fsync, rename), so a kill or a full disk
// while saving leaves the previous checkpoint intact. Saving keeps the previous file as
// "<path>.prev" only when asked.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "core/tensor_map.h"
#include "train/optim.h"
#include "train/param.h"

namespace hwaga::train {

inline constexpr const char* kTrainFormat = "hwaga-train";
inline constexpr int kTrainFormatVersion = 1;

struct Checkpoint {
  nlohmann::json meta;  // the "train" object
  TensorMap tensors;    // parameters by name, "optim.*", extra state
};

// Writes params + optimizer state + `extra` tensors with `meta` (which must hold "step").
// `meta["optimizer_steps"]` is filled from `opt`.
void save_checkpoint(const std::string& path, const ParamSet& ps, const AdamW* opt, const TensorMap& extra,
                     nlohmann::json meta);

// Reads a checkpoint; refuses a file that is not a hwaga training checkpoint (naming `path`
// and what it found, e.g. "is a hwaga model file, not a training checkpoint; to fine-tune
// from it use --init").
Checkpoint read_checkpoint(const std::string& path);

// Loads params (and, when opt != nullptr, the moments and step count) from a checkpoint.
void restore_checkpoint(const Checkpoint& ck, const std::string& path, ParamSet& ps, AdamW* opt);

}  // namespace hwaga::train
