// Summing gradients across GPUs with NCCL, for data-parallel training on several GPUs
// (`hwaga train --device cuda --dist-backend nccl`, one process per GPU).
//
// NCCL is loaded when the run starts (dlopen of libnccl.so.2), not linked: hwaga builds
// without NCCL's headers or library (Debian has no package for them), and a machine that trains
// on several GPUs has it (NVIDIA's libnccl2 package, or the copy in PyTorch's wheels; point
// LD_LIBRARY_PATH at it). The few declarations used here are NCCL 2's stable C ABI.
//
// The ranks meet over the TCP connection of train/data_parallel.h first: rank 0 makes the
// 128-byte NCCL id (unique_id) and broadcasts it; then every rank builds its communicator on the
// stream of its CUDA TrainOps. all_reduce_sum queues in-place sums on that stream, so the ops that
// follow (clipping, AdamW) see the summed gradients without a host round trip.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace hwaga::train {

class TrainOps;

// Whether NCCL can be loaded; *why says what is missing when not.
bool nccl_available(std::string* why);

class NcclComm {
 public:
  // Rank 0's id for this run (NCCL_UNIQUE_ID_BYTES = 128 bytes); throws when NCCL is missing.
  static std::string unique_id();
  // Joins the communicator of `world` ranks on the device and stream of `ops` (CUDA TrainOps).
  // Blocks until every rank has joined (NCCL's own timeouts apply). Throws hwaga::Error with
  // NCCL's message.
  NcclComm(int rank, int world, const std::string& id, TrainOps& ops);
  ~NcclComm();
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  // Every buffer (device f32 pointers, counts) <- its sum over the ranks, in place, as one NCCL
  // group on the ops' stream.
  void all_reduce_sum(const std::vector<std::pair<float*, int64_t>>& buffers);

  int rank() const;
  int world() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace hwaga::train
