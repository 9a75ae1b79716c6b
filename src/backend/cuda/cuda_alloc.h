// A caching device allocator. Blocks are rounded up to a size class and, when a tensor dies,
// go back to a free list of their class instead of to cudaFree, so the forward passes that
// allocate the same shapes over and over reach a steady state without driver calls.
// All work runs on one stream per backend, so a block freed by the host can be reused by the
// next kernel on that stream without further synchronisation.
#pragma once
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>

#include "core/tensor.h"

namespace hwaga::cuda {

struct AllocStats {
  size_t in_use = 0;         // bytes held by live tensors (rounded sizes)
  size_t peak_in_use = 0;    // high-water mark of in_use since the last reset_peak()
  size_t reserved = 0;       // bytes obtained from cudaMalloc (in use + cached)
  size_t peak_reserved = 0;
  size_t num_mallocs = 0;    // cudaMalloc calls so far
};

class CachingAllocator : public std::enable_shared_from_this<CachingAllocator> {
 public:
  explicit CachingAllocator(int device) : device_(device) {}
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // A device tensor whose storage returns to this cache when its last alias dies.
  Tensor empty(Shape shape, DType dtype);
  // Raw block of at least `bytes`; the shared_ptr returns it to the cache.
  std::shared_ptr<void> alloc(size_t bytes);

  AllocStats stats() const;
  void reset_peak();
  // Returns every cached (unused) block to the driver.
  void release_cached();

 private:
  void give_back(void* p, size_t rounded);
  static size_t round_size(size_t bytes);

  int device_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_;  // rounded size -> cached block
  AllocStats st_;
};

}  // namespace hwaga::cuda
