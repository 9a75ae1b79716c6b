// Bits the commands share: the version string, backend selection (and the one line that says
// which backend runs), output-name patterns like out_%03d.png, the all-or-nothing writer that
// keeps a failed run from leaving partial outputs behind, and small formatting helpers.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>
#include <vector>

#include "backend/backend.h"
#include "command.h"

namespace hwaga::cli {

#ifdef HWAGA_VERSION
inline constexpr const char* kVersion = HWAGA_VERSION;
#else
inline constexpr const char* kVersion = "0.1.0";
#endif

// "hwaga 0.1.0": the PNG Software chunk and the --version line.
std::string software_string();

// Applies --threads, builds the --device backend and prints "hwaga: using <backend name>" on
// stderr (e.g. "hwaga: using cpu (2 threads, oneDNN)").
std::unique_ptr<Backend> select_backend(const CommonOptions& opt);

// ---- output names ----
// A pattern holds at most one printf-style integer field (%d, %03d, %5d; "%%" is a literal %).
// Anything else after a % (%s, %x, a second field) is refused with an error naming the pattern.
bool pattern_has_field(const std::string& pattern);
// The pattern with its field replaced by `index` (the pattern itself when it has no field).
std::string expand_pattern(const std::string& pattern, int64_t index);
// Names for `n` outputs; throws when n > 1 and the pattern has no field.
std::vector<std::string> expand_outputs(const std::string& pattern, int64_t n);

// Checks, before any work is done, that the folder an output goes into exists and is writable,
// so that a bad -o fails at once and names the path.
void check_output_dir(const std::string& path, const std::string& what);

// All-or-nothing output set: each file is first written to a temporary name next to its final
// name (temp_for(i)); commit() renames them all into place. If the object is destroyed without
// commit() (an error on the way), every temporary written so far is removed, so a failed run
// leaves no outputs behind and does not touch files that were there before.
class OutputSet {
 public:
  explicit OutputSet(std::vector<std::string> finals);
  ~OutputSet();
  OutputSet(const OutputSet&) = delete;
  OutputSet& operator=(const OutputSet&) = delete;

  size_t size() const { return finals_.size(); }
  const std::string& final_name(size_t i) const { return finals_[i]; }
  // The temporary name for output i; the caller writes it, then calls written(i).
  const std::string& temp_for(size_t i) const { return temps_[i]; }
  void written(size_t i) { done_[i] = true; }
  // Renames every temporary to its final name (all outputs must have been written).
  void commit();

 private:
  std::vector<std::string> finals_, temps_;
  std::vector<bool> done_;
  bool committed_ = false;
};

// ---- formatting ----
std::string human_bytes(uint64_t n);   // "385.2 MiB"
std::string human_count(int64_t n);    // "104.40M"
std::string base_name(const std::string& path);
// The shard files of a spec (data::expand_shards: folder, list, range or glob), each made
// absolute and normal, as the training checkpoints record them.
std::vector<std::string> absolute_shards(const std::string& spec);
// A --config JSON file: the object itself, or its `section` ("stage1"/"stage2") when the file is
// a model file's config that holds one. Errors name the file.
nlohmann::json read_config_json(const std::string& path, const char* section);
uint64_t file_size_or_zero(const std::string& path);
// argv joined into one line with shell quoting where needed (for the PNG settings chunk).
std::string join_command_line(const std::vector<std::string>& args);

}  // namespace hwaga::cli
