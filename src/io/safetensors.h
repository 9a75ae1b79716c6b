// hwaga's model file: one .safetensors file (8-byte little-endian header length, a JSON header,
// then raw tensor bytes). Its "__metadata__" holds string values:
//   "format"  = "hwaga"            (refused otherwise)
//   "version" = "1"                (unknown versions refused)
//   "config"  = JSON text: {"stage1": {...}, "stage2": {...}?}, the architecture
//   "tokenizer" = JSON text, text models only (see src/text/)
// Tensors are named "stage1.<released key>" and "stage2.<released key>". See docs/MODEL_FORMAT.md.
#pragma once
#include <map>
#include <memory>
#include <string>

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

// read_safetensors + checks that format/version name a hwaga model file of a known version.
SafetensorsFile read_model_file(const std::string& path);

}  // namespace hwaga
