// Linked when the CUDA backend sources are absent: the CUDA backend and the CUDA training ops
// report themselves unavailable.
#include "backend/backend.h"
#include "train/train_ops.h"

namespace hwaga {
std::unique_ptr<Backend> make_cuda_backend(std::string* why) {
  if (why) *why = "the CUDA backend is not part of this build";
  return nullptr;
}
}  // namespace hwaga

namespace hwaga::train {
std::unique_ptr<TrainOps> make_cuda_train_ops(int, std::string* why) {
  if (why) *why = "the CUDA training ops are not part of this build";
  return nullptr;
}
}  // namespace hwaga::train
