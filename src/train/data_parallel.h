// Data-parallel training over TCP: W processes (ranks) each run the same training loop on their
// own slice of every global batch; after each backward pass the gradients are summed over the
// ranks, so that every rank takes the same optimizer step and the parameters stay identical.
//
// Topology: a star around rank 0. Rank 0 listens on --dist-addr HOST:PORT, ranks 1..W-1 connect
// to it (retrying until the timeout while rank 0 starts). A sum is gathered at rank 0, added in
// rank order (0, 1, ..., W-1, so the result is deterministic for a given W) and sent back, so every
// rank holds the same bytes. That suits a few CPU machines or processes; its cost grows with W.
//
// The first message of each connection carries a fingerprint of the run's settings (the caller's
// hash of options, data and model); rank 0 refuses a rank whose fingerprint, world size or rank
// does not fit, and the refused rank reports rank 0's reason.
//
// A peer that closes its connection or stays silent past the timeout makes the call throw
// hwaga::Error naming the rank. Signals are not handled here: the training loop sums an
// "interrupted" flag with the gradients, so that all ranks stop at the same step.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/param.h"

namespace hwaga::train {

class NcclComm;

struct DataParallelOptions {
  int rank = 0;
  int world = 1;
  std::string addr;          // HOST:PORT of rank 0 (needed when world > 1)
  double timeout_s = 1800;   // longest wait for a peer (rank 0 may be encoding the code cache)
};

// Parses "HOST:PORT" (HOST a name or IPv4 address; PORT 1..65535); throws naming `what`.
std::pair<std::string, int> parse_dist_addr(const std::string& s, const std::string& what);

class DataParallel {
 public:
  // Connects the ranks (nothing to do when world == 1). Throws on a bad rank/world, when the
  // address cannot be bound or reached, or when a rank's fingerprint differs from rank 0's.
  DataParallel(const DataParallelOptions& opt, uint64_t fingerprint);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int rank() const { return opt_.rank; }
  int world() const { return opt_.world; }
  bool leader() const { return opt_.rank == 0; }

  // x <- the sum of every rank's x (same n on all ranks), identical bytes on every rank.
  void all_reduce_sum(float* x, int64_t n);
  void all_reduce_sum(double* x, int64_t n);
  // Every gradient of `ps` <- scale x its sum over the ranks (one message for all of them).
  // `extra` (n_extra values, e.g. losses and flags) rides along and is summed unscaled. With
  // NCCL attached the gradients are summed on the GPUs by NCCL instead (extra still over TCP).
  void all_reduce_grads(ParamSet& ps, float scale, double* extra = nullptr, int64_t n_extra = 0);
  // Rank 0: out <- every rank's x (n values each) in rank order; the others send theirs.
  void gather(const float* x, int64_t n, std::vector<float>* out);
  // x <- rank 0's x.
  void broadcast(float* x, int64_t n);
  void broadcast(std::string& s);
  // Returns when every rank has called it.
  void barrier();
  // Sums the gradients with `comm` from now on (not owned; null: over TCP again).
  void set_nccl(NcclComm* comm) { nccl_ = comm; }

 private:
  template <class T>
  void reduce_impl(T* x, int64_t n);
  // timeout_s < 0: the options' timeout
  void send_all(int fd, const void* p, size_t n, int peer, double timeout_s = -1);
  void recv_all(int fd, void* p, size_t n, int peer, double timeout_s = -1);
  void wait_fd(int fd, short events, int peer, double timeout_s);

  DataParallelOptions opt_;
  std::vector<int> peers_;  // rank 0: fds of ranks 1..W-1 (index r-1); others: [fd of rank 0]
  std::vector<char> scratch_;
  std::vector<float> grads_;
  NcclComm* nccl_ = nullptr;
};

}  // namespace hwaga::train
