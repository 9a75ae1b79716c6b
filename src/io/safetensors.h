// hwaga's model file: one .safetensors file (8-byte little-endian header length, a JSON header,
// then raw tensor bytes). Its "__metadata__" holds string values:
//   "format"  = "hwaga"            (refused otherwise)
//   "version" = "1"                (unknown versions refused)
//   "config"  = JSON text: {"stage1": {...}, "stage2": {...}?}, the architecture
//   "tokenizer" = JSON text, text models only (see src/text/)
// Tensors are named "stage1.<released key>" and "stage2.<released key>". See docs/MODEL_FORMAT.md.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/tensor_map.h"

namespace hwaga {

inline constexpr const char* kModelFormat = "hwaga";
inline constexpr int kModelFormatVersion = 1;

// A parsed safetensors file. Tensors are read-only views into a private read-only mapping
// of the file, kept alive by the tensors themselves.
struct SafetensorsFile {
  std::string path;
  std::map<std::string, std::string> metadata;
  TensorMap tensors;
};

// Reads any safetensors file. Validates the header (length, JSON, dtypes, shapes, offsets inside
// the file, no overlaps) and throws hwaga::Error naming `path` and the field on anything wrong.
SafetensorsFile read_safetensors(const std::string& path);

// Writes tensors (host, any dtype) and metadata. Atomic: writes PATH.tmp-XXXX, fsyncs, renames;
// on failure nothing is left at `path` and the temporary file is removed.
void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata);

// read_safetensors + checks that format/version name a hwaga model file of a known version,
// and that "config" is a JSON object.
SafetensorsFile read_model_file(const std::string& path);

// ---- lower-level entry points (tests, fuzzing, other containers) ----

// Parses a whole safetensors file already in memory. `data` must stay valid while `keepalive`
// lives; the tensors are views into `data` holding `keepalive` (tensors whose offset is not a
// multiple of their element size are copied into aligned memory instead). `path` names the
// source in errors.
SafetensorsFile parse_safetensors(const uint8_t* data, size_t size, std::shared_ptr<void> keepalive,
                                  const std::string& path);
// The model-file checks of read_model_file on an already parsed file.
void check_model_metadata(const SafetensorsFile& file);
// metadata["config"] parsed (a JSON object); errors name the file.
nlohmann::json model_config(const SafetensorsFile& file);

// Limits applied to hostile files.
inline constexpr uint64_t kSafetensorsMaxHeader = 100ull << 20;  // 100 MB of JSON

}  // namespace hwaga
