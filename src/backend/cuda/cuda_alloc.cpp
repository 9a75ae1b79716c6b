#include "backend/cuda/cuda_alloc.h"

#include "backend/cuda/cuda_check.h"

namespace hwaga::cuda {

CachingAllocator::~CachingAllocator() {
  // Live tensors keep the allocator alive (their deleters hold a shared_ptr), so at this point
  // only cached blocks remain.
  for (auto& [size, p] : free_) cudaFree(p);
}

size_t CachingAllocator::round_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes <= (1u << 20)) return (bytes + 511) / 512 * 512;           // small: 512 B steps
  if (bytes <= (64u << 20)) return (bytes + (1u << 20) - 1) >> 20 << 20;  // 1 MiB steps
  return (bytes + (8u << 20) - 1) >> 23 << 23;                          // 8 MiB steps
}

std::shared_ptr<void> CachingAllocator::alloc(size_t bytes) {
  size_t n = round_size(bytes);
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lk(mu_);
    // Exact size class first; a block at most 25% larger is also fine.
    auto it = free_.lower_bound(n);
    if (it != free_.end() && it->first <= n + n / 4) {
      n = it->first;
      p = it->second;
      free_.erase(it);
    }
  }
  if (!p) {
    CUDA_CHECK(cudaSetDevice(device_));
    cudaError_t e = cudaMalloc(&p, n);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the sticky-free error state and retry after emptying the cache
      release_cached();
      e = cudaMalloc(&p, n);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail("CUDA out of memory: cudaMalloc of ", n, " bytes failed (", cudaGetErrorString(e),
           "); device has ", free_b >> 20, " MiB free of ", total_b >> 20, " MiB, this backend holds ",
           stats().in_use >> 20, " MiB in live tensors");
    }
    std::lock_guard<std::mutex> lk(mu_);
    st_.reserved += n;
    st_.num_mallocs++;
    if (st_.reserved > st_.peak_reserved) st_.peak_reserved = st_.reserved;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    st_.in_use += n;
    if (st_.in_use > st_.peak_in_use) st_.peak_in_use = st_.in_use;
  }
  std::shared_ptr<CachingAllocator> self = shared_from_this();
  return std::shared_ptr<void>(p, [self, n](void* q) { self->give_back(q, n); });
}

void CachingAllocator::give_back(void* p, size_t rounded) {
  std::lock_guard<std::mutex> lk(mu_);
  st_.in_use -= rounded;
  free_.emplace(rounded, p);
}

Tensor CachingAllocator::empty(Shape shape, DType dtype) {
  for (int64_t d : shape) HWAGA_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
  size_t bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  std::shared_ptr<void> block = alloc(bytes);
  void* p = block.get();
  return Tensor::wrap(p, std::move(shape), dtype, std::move(block), Device::CUDA);
}

AllocStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return st_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lk(mu_);
  st_.peak_in_use = st_.in_use;
  st_.peak_reserved = st_.reserved;
}

void CachingAllocator::release_cached() {
  std::multimap<size_t, void*> blocks;
  {
    std::lock_guard<std::mutex> lk(mu_);
    blocks.swap(free_);
    for (auto& [size, p] : blocks) st_.reserved -= size;
  }
  if (blocks.empty()) return;
  cudaDeviceSynchronize();  // cached blocks may still be read by queued kernels
  for (auto& [size, p] : blocks) cudaFree(p);
}

}  // namespace hwaga::cuda
