// Reads PyTorch checkpoints (torch.save's zip container: <name>/data.pkl + <name>/data/<key>
// storages, optional <name>/byteorder) without Python and without executing anything.
//
// The restricted unpickler rebuilds only tensors (torch._utils._rebuild_tensor_v2 over
// torch.*Storage persistent ids, and _rebuild_parameter) and plain containers (dict,
// OrderedDict, list, tuple, str, int, float, bool, None). Any other global a pickle names
// (optimizer state classes, Lightning/OmegaConf objects...) becomes an opaque placeholder;
// placeholders are allowed anywhere outside the state_dict and are an error inside it.
#pragma once
#include <string>

#include "core/tensor_map.h"

namespace hwaga {

// Loads checkpoint[key] (default "state_dict") as flat name -> tensor (host memory, the stored
// dtype, contiguous; strided/offset views are materialised). Tensors that share a storage
// (the RQ-VAE's four aliased codebook keys) are all returned.
// Throws hwaga::Error naming `path` and what is wrong: not a zip, truncated, a storage missing
// from the archive, a callable outside the allowed set inside the state_dict, no `key` entry, etc.
TensorMap load_torch_state_dict(const std::string& path, const std::string& key = "state_dict");

}  // namespace hwaga
