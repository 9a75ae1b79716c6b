// Tensor: a dense, contiguous, row-major block of one dtype on one device, with a shape.
// Storage is shared (std::shared_ptr): copies of a Tensor alias the same memory, like a view.
// Weights loaded from a model file are views into the mapped file; activations own their memory.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace hwaga {

enum class Device : uint8_t { CPU, CUDA };
const char* device_name(Device d);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3, 4]"
int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;

  // New zero-filled host tensor.
  static Tensor zeros(Shape shape, DType dtype = DType::F32);
  // New uninitialised host tensor.
  static Tensor empty(Shape shape, DType dtype = DType::F32);
  // Wraps memory owned elsewhere; `keepalive` holds the owner (e.g. a file mapping) alive.
  static Tensor wrap(void* data, Shape shape, DType dtype, std::shared_ptr<void> keepalive,
                     Device device = Device::CPU);

  bool defined() const { return data_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return int(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }

  void* data() { return data_; }
  const void* data() const { return data_; }
  template <typename T> T* ptr() { return static_cast<T*>(data_); }
  template <typename T> const T* ptr() const { return static_cast<const T*>(data_); }
  // Typed f32 access with a dtype check (throws on a mismatch).
  float* f32();
  const float* f32() const;

  // Same storage, new shape with the same element count; one dimension may be -1.
  Tensor reshape(Shape shape) const;
  // Rows [begin, end) along dimension 0 (no copy).
  Tensor slice0(int64_t begin, int64_t end) const;
  // Deep copy (host), optionally converting between float dtypes.
  Tensor clone() const;
  Tensor to(DType dtype) const;

  // Throws with `what` naming the tensor if shape/dtype differ from the expectation.
  void expect(const Shape& shape, const std::string& what) const;
  void expect(DType dtype, const std::string& what) const;

 private:
  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
  Shape shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
};

}  // namespace hwaga
