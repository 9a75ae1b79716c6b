// Linked when the CUDA backend sources are absent: the CUDA backend reports itself unavailable.
#include "backend/backend.h"

namespace hwaga {
std::unique_ptr<Backend> make_cuda_backend(std::string* why) {
  if (why) *why = "the CUDA backend is not part of this build";
  return nullptr;
}
}  // namespace hwaga
