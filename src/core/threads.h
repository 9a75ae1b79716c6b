// A small fixed pool of worker threads and parallel_for over an index range.
// The thread count is process-wide: set_num_threads(n) (the CLI's --threads), default = cores.
#pragma once
#include <cstdint>
#include <functional>

namespace hwaga {

void set_num_threads(int n);  // n <= 0 means the number of cores
int num_threads();

// Calls fn(begin, end) on disjoint chunks covering [0, n), on up to num_threads() threads,
// each chunk at least `grain` long. Blocks until all chunks are done. Exceptions thrown by fn
// are rethrown in the caller (the first one). Nested calls run serially in the calling thread.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace hwaga
