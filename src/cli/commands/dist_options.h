// The data-parallel options that `hwaga train` and `hwaga train-tokenizer` share
// (--world/--rank/--dist-addr/--dist-timeout, train/data_parallel.h): registration, the checks
// that exit 2, and the fingerprint that every rank's command line must share.
#pragma once
#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "train/data_parallel.h"

namespace hwaga::cli {

struct DistCliOptions {
  int world = 1, rank = 0;
  std::string addr;
  double timeout = 1800;
};

void add_dist_options(CLI::App& sub, DistCliOptions& o);

// Exits 2 (usage_fail) on a bad world/rank/address/timeout, or a batch that W ranks cannot share.
void check_dist_options(const DistCliOptions& o, int64_t batch);

train::DataParallelOptions data_parallel_options(const DistCliOptions& o);

// A hash of the options given on the command line, less those a rank may set on its own
// (--rank, --threads, --dist-timeout), and of the hwaga version: rank 0 refuses a rank whose
// fingerprint differs.
uint64_t command_fingerprint(const CLI::App& sub);

// The exit status of a rank other than 0 once its loop ended at `step`: 128+signal when it was
// interrupted itself, 130 (with a line on stderr) when another rank was, else 0.
int follower_exit(const char* prefix, int64_t step, bool peer_stopped);

}  // namespace hwaga::cli
