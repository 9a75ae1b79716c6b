// NcclComm in a build without CUDA (the real one is src/backend/cuda/nccl_comm.cpp): NCCL is
// never available, and asking for it says so.
#ifndef HWAGA_HAVE_CUDA
#include "core/error.h"
#include "train/nccl_comm.h"

namespace hwaga::train {

struct NcclComm::Impl {};

bool nccl_available(std::string* why) {
  if (why) *why = "hwaga was built without CUDA (nvcc was not found at configure time)";
  return false;
}

std::string NcclComm::unique_id() { fail("--dist-backend nccl: hwaga was built without CUDA"); }
NcclComm::NcclComm(int, int, const std::string&, TrainOps&) { fail("--dist-backend nccl: hwaga was built without CUDA"); }
NcclComm::~NcclComm() = default;
void NcclComm::all_reduce_sum(const std::vector<std::pair<float*, int64_t>>&) {}
int NcclComm::rank() const { return 0; }
int NcclComm::world() const { return 1; }

}  // namespace hwaga::train
#endif
