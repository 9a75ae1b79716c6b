// Reads PyTorch checkpoints (torch.save's zip container: <name>/data.pkl + <name>/data/<key>
// storages, optional <name>/byteorder) without Python and without executing anything.
//
// The restricted unpickler (io/pickle.h) rebuilds only tensors (torch._utils._rebuild_tensor_v2
// over torch.*Storage persistent ids, and _rebuild_parameter) and plain containers (dict,
// OrderedDict, list, tuple, str, int, float, bool, None). Any other global a pickle names
// (optimizer state classes, Lightning/OmegaConf objects, os.system...) becomes an opaque
// placeholder; placeholders are allowed anywhere outside the state_dict and are an error inside it.
//
// The file is mapped read-only. Contiguous tensors of stored, aligned entries (everything
// torch.save writes) are read-only views into the mapping, kept alive by the tensors themselves,
// so a 15 GB checkpoint loads without a copy; strided/offset views and unaligned data are copied.
// Only little-endian files (no <name>/byteorder, or "little") are read.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor_map.h"

namespace hwaga {

struct TorchCheckpointOptions {
  // Check the CRC-32 of every storage that is read (slow for big files: a full read of each).
  // data.pkl's CRC is always checked (it is small), unless the archive stores 0 for it.
  bool verify_crc = false;
};

// An opened checkpoint: the zip directory and the parsed data.pkl; tensors are read on request.
class TorchCheckpoint {
 public:
  // Maps `path` and parses its data.pkl. Throws hwaga::Error naming `path` and what is wrong:
  // not a zip / legacy format, truncated, no data.pkl, a bad pickle opcode at offset N, ...
  static TorchCheckpoint open(const std::string& path, const TorchCheckpointOptions& options = {});
  // The same over a copy of `size` bytes in memory (tests, fuzzing); `name` names it in errors.
  static TorchCheckpoint from_memory(const void* data, size_t size, const std::string& name,
                                     const TorchCheckpointOptions& options = {});

  const std::string& path() const;
  // The string keys of the top-level dict, in file order (empty when the top level is no dict).
  std::vector<std::string> keys() const;
  bool has(const std::string& key) const;
  // One (key, description) per top-level entry, e.g. ("state_dict", "dict of 398 entries
  // (398 tensors)"), ("epoch", "int 50"), ("hyper_parameters", "object built by
  // 'omegaconf.dictconfig.DictConfig' (not executed)"). A top level that is no dict gives one
  // entry with an empty key.
  std::vector<std::pair<std::string, std::string>> summary() const;

  // checkpoint[key] as flat name -> tensor (host memory, the stored dtype: f32/bf16/f16/i64/i32/
  // u8, bool as u8; contiguous; 0-d tensors have shape []). Nested dicts are flattened with '.'.
  // `key` "" means the top-level object itself (torch.save(model.state_dict())). Tensors sharing
  // a storage are all returned. Throws naming the file and the entry: no such key, a placeholder
  // or non-tensor value inside it, an unsupported dtype, a storage missing from the archive, a
  // view outside its storage.
  TensorMap tensors(const std::string& key) const;
  // tensors() of the first of `keys` that the top level holds ("" always matches).
  TensorMap tensors_first_of(const std::vector<std::string>& keys) const;

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

// Loads checkpoint[key] (default "state_dict") as flat name -> tensor (host memory, the stored
// dtype, contiguous; strided/offset views are materialised). Tensors that share a storage
// (the RQ-VAE's four aliased codebook keys) are all returned.
// Throws hwaga::Error naming `path` and what is wrong: not a zip, truncated, a storage missing
// from the archive, a callable outside the allowed set inside the state_dict, no `key` entry, etc.
TensorMap load_torch_state_dict(const std::string& path, const std::string& key = "state_dict");
// The first of `keys` present, e.g. {"state_dict", "model", ""}.
TensorMap load_torch_state_dict_first_of(const std::string& path, const std::vector<std::string>& keys);

}  // namespace hwaga
