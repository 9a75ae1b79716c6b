#include "core/tensor_map.h"

#include <set>

namespace hwaga {

void check_tensors(const TensorMap& m, const std::vector<TensorSpec>& specs, const std::string& prefix,
                   const std::string& source) {
  std::set<std::string> wanted;
  for (const TensorSpec& s : specs) {
    wanted.insert(s.name);
    auto it = m.find(s.name);
    if (it == m.end()) fail(source, ": missing tensor '", s.name, "' (expected shape ", shape_str(s.shape), ")");
    const Tensor& t = it->second;
    if (t.shape() != s.shape)
      fail(source, ": tensor '", s.name, "' has shape ", shape_str(t.shape()), ", expected ",
           shape_str(s.shape), " from the config");
    if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
      fail(source, ": tensor '", s.name, "' has dtype ", dtype_name(t.dtype()), ", expected f32, bf16 or f16");
  }
  for (const auto& [name, t] : m) {
    if (name.rfind(prefix, 0) == 0 && !wanted.count(name))
      fail(source, ": unexpected tensor '", name, "' ", shape_str(t.shape()),
           " that the config does not imply");
  }
}

const Tensor& get_tensor(const TensorMap& m, const std::string& name, const std::string& source) {
  auto it = m.find(name);
  if (it == m.end()) fail(source, ": missing tensor '", name, "'");
  return it->second;
}

}  // namespace hwaga
