#include "dist_options.h"

#include <cstdio>
#include <sstream>

#include "cli_util.h"
#include "progress.h"
#include "core/error.h"
#include "t2i_options.h"

namespace hwaga::cli {

void add_dist_options(CLI::App& sub, DistCliOptions& o) {
  sub.add_option("--world", o.world,
                 "data parallel: the number of processes (ranks) training together (default 1); each takes "
                 "batch/world rows of every batch and the gradients are summed over TCP");
  sub.add_option("--rank", o.rank, "data parallel: this process's rank, 0..world-1 (rank 0 writes the work dir)");
  sub.add_option("--dist-addr", o.addr, "data parallel: HOST:PORT where rank 0 listens and the other ranks connect");
  sub.add_option("--dist-timeout", o.timeout,
                 "data parallel: seconds to wait for a rank (default 1800; rank 0 may be encoding the shards)");
}

void check_dist_options(const DistCliOptions& o, int64_t batch) {
  if (o.world < 1) usage_fail("--world must be at least 1, got ", o.world);
  if (o.rank < 0 || o.rank >= o.world)
    usage_fail("--rank ", o.rank, " is outside 0..", o.world - 1, " (--world ", o.world, ")");
  if (o.world == 1) return;
  if (o.addr.empty()) usage_fail("--world ", o.world, " needs --dist-addr HOST:PORT (where rank 0 listens)");
  try {
    train::parse_dist_addr(o.addr, "--dist-addr");
  } catch (const Error& e) {
    usage_fail(e.what());
  }
  if (batch % o.world != 0)
    usage_fail("--batch ", batch, " is not a multiple of --world ", o.world,
               " (each rank trains on batch/world rows of every global batch)");
  if (!(o.timeout > 0)) usage_fail("--dist-timeout must be positive, got ", o.timeout);
}

train::DataParallelOptions data_parallel_options(const DistCliOptions& o) {
  train::DataParallelOptions d;
  d.rank = o.rank;
  d.world = o.world;
  d.addr = o.addr;
  d.timeout_s = o.timeout;
  return d;
}

uint64_t command_fingerprint(const CLI::App& sub) {
  std::istringstream given(sub.config_to_str());  // "name=value" per option given
  std::string line, kept = software_string() + "\n" + sub.get_name() + "\n";
  while (std::getline(given, line))
    if (line.rfind("rank=", 0) != 0 && line.rfind("threads=", 0) != 0 && line.rfind("dist-timeout=", 0) != 0)
      kept += line + "\n";
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : kept) h = (h ^ c) * 1099511628211ull;
  return h;
}

int follower_exit(const char* prefix, int64_t step, bool peer_stopped) {
  if (interrupted()) return 128 + interrupt_signal();
  if (peer_stopped) {
    std::fprintf(stderr, "%sstopped at step %lld with the other ranks (one was interrupted); rank 0 saves\n", prefix,
                 (long long)step);
    return 130;
  }
  return 0;
}

}  // namespace hwaga::cli
