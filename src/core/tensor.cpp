#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

namespace hwaga {

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

static std::shared_ptr<void> host_alloc(size_t bytes) {
  // 64-byte alignment for AVX-512 loads; at least 64 bytes so that empty tensors get an address.
  size_t n = (bytes + 63) / 64 * 64;
  if (n == 0) n = 64;
  void* p = std::aligned_alloc(64, n);
  if (!p) fail("out of memory allocating ", bytes, " bytes");
  return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
}

Tensor Tensor::empty(Shape shape, DType dtype) {
  for (int64_t d : shape) HWAGA_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.storage_ = host_alloc(t.nbytes());
  t.data_ = t.storage_.get();
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype) {
  Tensor t = empty(std::move(shape), dtype);
  std::memset(t.data_, 0, t.nbytes());
  return t;
}

Tensor Tensor::wrap(void* data, Shape shape, DType dtype, std::shared_ptr<void> keepalive,
                    Device device) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::move(keepalive);
  t.data_ = data;
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  if (i < 0) i += n;
  HWAGA_CHECK(i >= 0 && i < n, "dimension ", i, " out of range for shape ", shape_str(shape_));
  return shape_[size_t(i)];
}

float* Tensor::f32() {
  expect(DType::F32, "tensor");
  return static_cast<float*>(data_);
}
const float* Tensor::f32() const {
  expect(DType::F32, "tensor");
  return static_cast<const float*>(data_);
}

Tensor Tensor::reshape(Shape shape) const {
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      HWAGA_CHECK(infer < 0, "reshape: more than one -1 in ", shape_str(shape));
      infer = int(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    HWAGA_CHECK(known > 0 && numel() % known == 0, "reshape: cannot reshape ", shape_str(shape_),
                " into ", shape_str(shape));
    shape[size_t(infer)] = numel() / known;
  }
  HWAGA_CHECK(shape_numel(shape) == numel(), "reshape: cannot reshape ", shape_str(shape_), " into ",
              shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::slice0(int64_t begin, int64_t end) const {
  HWAGA_CHECK(ndim() >= 1 && begin >= 0 && begin <= end && end <= shape_[0], "slice0: [", begin, ", ",
              end, ") out of range for shape ", shape_str(shape_));
  Tensor t = *this;
  int64_t row = numel() / (shape_[0] ? shape_[0] : 1);
  t.data_ = static_cast<char*>(data_) + size_t(begin * row) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::clone() const {
  HWAGA_CHECK(device_ == Device::CPU, "clone: only host tensors can be cloned here");
  Tensor t = empty(shape_, dtype_);
  std::memcpy(t.data_, data_, nbytes());
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  HWAGA_CHECK(device_ == Device::CPU, "to: only host tensors can be converted here");
  Tensor t = empty(shape_, dtype);
  if (dtype == DType::F32) {
    convert_to_f32(data_, dtype_, t.f32(), size_t(numel()));
  } else if (dtype_ == DType::F32) {
    convert_from_f32(static_cast<const float*>(data_), t.data_, dtype, size_t(numel()));
  } else {
    Tensor f = to(DType::F32);
    convert_from_f32(f.f32(), t.data_, dtype, size_t(numel()));
  }
  return t;
}

void Tensor::expect(const Shape& shape, const std::string& what) const {
  if (shape != shape_)
    fail(what, ": expected shape ", shape_str(shape), ", found ", shape_str(shape_));
}

void Tensor::expect(DType dtype, const std::string& what) const {
  if (dtype != dtype_)
    fail(what, ": expected dtype ", dtype_name(dtype), ", found ", dtype_name(dtype_));
}

}  // namespace hwaga
