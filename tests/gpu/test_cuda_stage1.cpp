// Whole image tokenizers (RQ-VAE and VQGAN, tiny random models built in memory) on the CUDA
// backend against the same models on the CPU backend: encode (codes) and decode (pictures).
// Tolerances:
//   decode f32: 1e-4 of the largest |pixel|: about 20 convolution / norm / attention layers,
//     each within ~1e-6..2e-5 of the CPU (see test_cuda_ops.cpp), the differences add up;
//   decode with bf16 conv weights: 6e-2 (bf16 rounding of weights and activations at every conv);
//   encode: codes are argmins, so a near-tie can flip under 1e-6 latent differences: at most 3%
//     of the code entries may differ (on random inputs none usually do).
#include <gtest/gtest.h>

#include "gpu_test_util.h"
#include "nn/image_tokenizer.h"
#include "stage1_random.h"

namespace hwaga {
namespace {

using gputest::cpu_backend;
using gputest::random_tensor;
using gputest::rel_err;

Stage1Config tiny_config(const std::string& type) {
  Stage1Config c;
  c.type = type;
  c.net.ch = 32;
  c.net.ch_mult = {1, 2};  // 16x16 -> 8x8, channels 32, 64
  c.net.num_res_blocks = 1;
  c.net.attn_resolutions = {8};
  c.net.in_channels = 3;
  c.net.out_ch = 3;
  c.net.z_channels = 32;
  c.net.resolution = 16;
  c.embed_dim = 16;
  c.n_embed = 37;
  c.code_shape = type == "rq-vae" ? std::vector<int>{8, 8, 4} : std::vector<int>{8, 8, 1};
  c.shared_codebook = true;
  return c;
}

Tensor random_codes(int64_t B, const Shape& code_shape, int K, uint64_t seed) {
  Tensor c = Tensor::empty({B, code_shape[0], code_shape[1], code_shape[2]}, DType::I32);
  std::mt19937_64 rng(seed);
  for (int64_t i = 0; i < c.numel(); ++i) c.ptr<int32_t>()[i] = int32_t(rng() % uint64_t(K));
  return c;
}

void check_tokenizer(const std::string& type, Backend& gpu, double dec_tol, bool check_encode) {
  Stage1Config cfg = tiny_config(type);
  validate_stage1_config(cfg, "tiny " + type);
  SafetensorsFile file = gputest::random_stage1_file(cfg, 123);
  auto cpu_tok = load_image_tokenizer(file, cpu_backend());
  auto gpu_tok = load_image_tokenizer(file, gpu);
  ASSERT_EQ(gpu_tok->kind(), type);
  const int64_t B = 6;  // more than stage1::kMaxBatch, so the batching loop runs twice

  Tensor codes = random_codes(B, gpu_tok->code_shape(), cfg.n_embed, 7);
  Tensor ref = cpu_tok->decode(codes);
  Tensor got = gpu_tok->decode(codes);
  EXPECT_LE(rel_err(got, ref), dec_tol) << type << " decode";

  if (!check_encode) return;
  Tensor images = random_tensor({B, 3, 16, 16}, 8);
  Tensor cref = cpu_tok->encode(images);
  Tensor cgot = gpu_tok->encode(images);
  ASSERT_EQ(shape_str(cgot.shape()), shape_str(cref.shape()));
  int64_t differ = 0;
  for (int64_t i = 0; i < cref.numel(); ++i) differ += cgot.ptr<int32_t>()[i] != cref.ptr<int32_t>()[i];
  EXPECT_LE(double(differ), 0.03 * double(cref.numel())) << type << " encode: " << differ << " of " << cref.numel()
                                                         << " codes differ";
}

TEST(CudaStage1, RqvaeF32) {
  HWAGA_NEED_GPU(gpu, false);
  check_tokenizer("rq-vae", gpu, 1e-4, true);
}

TEST(CudaStage1, VqganF32) {
  HWAGA_NEED_GPU(gpu, false);
  check_tokenizer("vqgan", gpu, 1e-4, true);
}

TEST(CudaStage1, RqvaeBf16ConvWeights) {
  HWAGA_NEED_GPU(gpu, true);
  check_tokenizer("rq-vae", gpu, 6e-2, false);
}

}  // namespace
}  // namespace hwaga
