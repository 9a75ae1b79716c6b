// A stage-1 model (RQ-VAE or VQGAN) with random weights, built in memory: the tensors that
// stage1_tensor_specs(cfg) names, initialised like PyTorch's defaults (weights uniform in
// +-1/sqrt(fan_in), small biases, GroupNorm gains near 1) so activations stay O(1) through the
// net. Used by tests/gpu/test_cuda_stage1.cpp and tools/bench_gpu_stage1.cpp.
#pragma once
#include <cmath>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "nn/stage1_config.h"

namespace hwaga::gputest {

inline void fill_uniform(Tensor& t, std::mt19937_64& rng, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = u(rng);
}

inline SafetensorsFile random_stage1_file(const Stage1Config& cfg, uint64_t seed) {
  SafetensorsFile f;
  f.path = "random-" + cfg.type + "-model";
  f.metadata["format"] = kModelFormat;
  f.metadata["version"] = std::to_string(kModelFormatVersion);
  nlohmann::json config;
  config["stage1"] = stage1_config_to_json(cfg);
  f.metadata["config"] = config.dump();
  std::mt19937_64 rng(seed);
  for (const TensorSpec& s : stage1_tensor_specs(cfg)) {
    Tensor t = Tensor::empty(s.shape);
    const std::string& n = s.name;
    const bool is_norm = n.find("norm") != std::string::npos;
    if (s.shape.size() >= 2) {
      double fan_in = 1;
      for (size_t i = 1; i < s.shape.size(); ++i) fan_in *= double(s.shape[i]);
      const bool codebook = s.shape.size() == 2;  // the only rank-2 stage-1 tensor
      float a = codebook ? 0.5f : float(1.0 / std::sqrt(fan_in));
      fill_uniform(t, rng, -a, a);
    } else if (is_norm && n.size() > 7 && n.compare(n.size() - 7, 7, ".weight") == 0) {
      fill_uniform(t, rng, 0.9f, 1.1f);
    } else {
      fill_uniform(t, rng, -0.1f, 0.1f);
    }
    f.tensors["stage1." + n] = t;
  }
  return f;
}

}  // namespace hwaga::gputest
