// Shared by the GPU tests: the CUDA backend (or a visible skip), the CPU reference backend,
// random tensors and the comparison metric.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "train/train_ops.h"

namespace hwaga::gputest {

// Creates the backend once per options; `why` says what is missing when there is none.
inline Backend* cuda_backend(bool bf16_conv, std::string* why) {
  static std::unique_ptr<Backend> be[2];
  static std::string reason[2];
  static bool tried[2] = {false, false};
  int i = bf16_conv ? 1 : 0;
  if (!tried[i]) {
    tried[i] = true;
    CudaBackendOptions o;
    o.bf16_conv_weights = bf16_conv;
    be[i] = make_cuda_backend_with(o, &reason[i]);
  }
  *why = reason[i];
  return be[i].get();
}

inline Backend& cpu_backend() {
  static std::unique_ptr<Backend> be = make_cpu_backend();
  return *be;
}

// What a GPU test does without its GPU: a failure when HWAGA_REQUIRE_GPU=1 (device_check.sh),
// else a visible skip that says why.
#define HWAGA_GPU_MISSING_(why)                                                        \
  do {                                                                                 \
    const char* req = std::getenv("HWAGA_REQUIRE_GPU");                                \
    if (req && std::string(req) == "1") FAIL() << "HWAGA_REQUIRE_GPU=1 but " << (why); \
    if ((why).rfind("no CUDA device", 0) == 0) GTEST_SKIP() << (why);                  \
    GTEST_SKIP() << "no CUDA device: " << (why);                                       \
  } while (0)

// Skips visibly when no GPU is found; fails instead when HWAGA_REQUIRE_GPU=1 (device runs), so
// that a backend that cannot start on a machine with a GPU is not mistaken for a pass.
#define HWAGA_NEED_GPU(var, bf16)                                                         \
  std::string why_##var;                                                                  \
  Backend* var##_ptr = ::hwaga::gputest::cuda_backend(bf16, &why_##var);                  \
  if (!var##_ptr) HWAGA_GPU_MISSING_(why_##var);                                          \
  Backend& var = *var##_ptr

// The CUDA training ops (train/train_ops.h), created once; `why` says what is missing when there
// are none.
inline train::TrainOps* cuda_train_ops(std::string* why) {
  static std::unique_ptr<train::TrainOps> ops;
  static std::string reason;
  static bool tried = false;
  if (!tried) {
    tried = true;
    ops = train::make_cuda_train_ops(0, &reason);
  }
  *why = reason;
  return ops.get();
}

// Like HWAGA_NEED_GPU, for the training ops: a visible skip without a GPU, a failure when
// HWAGA_REQUIRE_GPU=1.
#define HWAGA_NEED_CUDA_TRAIN_OPS(var)                                                       \
  std::string why_##var;                                                                    \
  ::hwaga::train::TrainOps* var##_ptr = ::hwaga::gputest::cuda_train_ops(&why_##var);       \
  if (!var##_ptr) HWAGA_GPU_MISSING_(why_##var);                                            \
  ::hwaga::train::TrainOps& var = *var##_ptr

inline Tensor random_tensor(const Shape& s, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  Tensor t = Tensor::empty(s);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = u(rng);
  return t;
}

// Integer-valued f32 tensor in [lo, hi]: sums and products of these are exact in f32.
inline Tensor int_tensor(const Shape& s, uint64_t seed, int lo, int hi) {
  Tensor t = Tensor::empty(s);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> u(lo, hi);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = float(u(rng));
  return t;
}

// max |a-b| / max |b| over all elements (b the CPU reference); shapes must agree.
inline double rel_err(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(shape_str(a.shape()), shape_str(b.shape()));
  if (a.shape() != b.shape()) return 1e30;
  const float* pa = a.f32();
  const float* pb = b.f32();
  double md = 0, mb = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    double d = std::fabs(double(pa[i]) - double(pb[i]));
    if (std::isnan(pa[i]) != std::isnan(pb[i])) d = 1e30;
    md = std::max(md, d);
    mb = std::max(mb, std::fabs(double(pb[i])));
  }
  return md / std::max(mb, 1e-30);
}

// Rounds every element to bf16 and back (what the GPU sees of bf16 weights).
inline Tensor round_bf16(const Tensor& t) { return t.to(DType::BF16).to(DType::F32); }

}  // namespace hwaga::gputest
