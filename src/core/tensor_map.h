// Named tensors, as a checkpoint or model file holds them, and the check of a file's tensors
// against the names and shapes that a model's config implies.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace hwaga {

using TensorMap = std::map<std::string, Tensor>;

struct TensorSpec {
  std::string name;
  Shape shape;
};

// Checks that every spec is present in `m` with exactly that shape and a float dtype, and that
// `m` has no tensor under `prefix` that no spec names. Errors name `source` (a file path), the
// tensor, and both shapes.
void check_tensors(const TensorMap& m, const std::vector<TensorSpec>& specs, const std::string& prefix,
                   const std::string& source);

// m.at(name) with an error naming `source` and the missing tensor.
const Tensor& get_tensor(const TensorMap& m, const std::string& name, const std::string& source);

}  // namespace hwaga
