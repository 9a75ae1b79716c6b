// Every operator of the CUDA backend against the CPU backend (the reference) on random inputs,
// odd shapes included. Tolerances, as max|gpu-cpu| / max|cpu|:
//   exact (0)  data movement (add, upsample, permutes, upload/download) and integer-valued inputs
//              (residual quantization, embed_sum), where f32 arithmetic is exact in any order;
//   1e-5       group norm (same two-pass statistics, different summation order);
//   2e-5       f32 convolution / attention / linear: sums over up to ~5000 products accumulate in
//              another order (cuDNN FMA math and cuBLAS without TF32 keep full f32 inputs);
//   1.5e-2     bf16 weights: the GPU rounds activations and conv outputs to bf16 (8-bit mantissa,
//              relative step 2^-8 = 3.9e-3) and the CPU gets the same bf16-rounded weights.
#include <gtest/gtest.h>

#include "gpu_test_util.h"

namespace hwaga {
namespace {

using gputest::cpu_backend;
using gputest::int_tensor;
using gputest::random_tensor;
using gputest::rel_err;
using gputest::round_bf16;

constexpr double kTolF32Gemm = 2e-5;
constexpr double kTolNorm = 1e-5;
constexpr double kTolBf16 = 1.5e-2;

Tensor up(Backend& be, const Tensor& t) { return be.upload(t, t.dtype()); }

TEST(CudaOps, NameAndRoundTrip) {
  HWAGA_NEED_GPU(gpu, false);
  EXPECT_NE(gpu.name().find("cuda ("), std::string::npos) << gpu.name();
  EXPECT_EQ(gpu.device(), Device::CUDA);
  Tensor x = random_tensor({3, 5, 7}, 1);
  Tensor d = gpu.upload(x, DType::F32);
  EXPECT_EQ(d.device(), Device::CUDA);
  EXPECT_EQ(rel_err(gpu.download(d), x), 0.0);
  Tensor hb = gpu.download(gpu.upload(x, DType::BF16));
  ASSERT_EQ(hb.dtype(), DType::BF16);
  EXPECT_EQ(rel_err(hb.to(DType::F32), round_bf16(x)), 0.0);
  Tensor codes = Tensor::empty({4, 3}, DType::I32);
  for (int i = 0; i < 12; ++i) codes.ptr<int32_t>()[i] = i * 7 - 20;
  Tensor back = gpu.download(gpu.upload(codes, DType::I32));
  for (int i = 0; i < 12; ++i) EXPECT_EQ(back.ptr<int32_t>()[i], i * 7 - 20);
}

TEST(CudaOps, AddUpsamplePermutesExact) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  Tensor a = random_tensor({3, 5, 7, 9}, 2), b = random_tensor({3, 5, 7, 9}, 3);
  EXPECT_EQ(rel_err(gpu.download(gpu.add(up(gpu, a), up(gpu, b))), cpu.add(a, b)), 0.0);
  for (Shape s : {Shape{2, 3, 5, 7}, Shape{1, 512, 8, 8}, Shape{2, 37, 33, 31}}) {
    Tensor x = random_tensor(s, 4);
    EXPECT_EQ(rel_err(gpu.download(gpu.upsample_nearest2x(up(gpu, x))), cpu.upsample_nearest2x(x)), 0.0)
        << shape_str(s);
    EXPECT_EQ(rel_err(gpu.download(gpu.nchw_to_nhwc(up(gpu, x))), cpu.nchw_to_nhwc(x)), 0.0) << shape_str(s);
    EXPECT_EQ(rel_err(gpu.download(gpu.nhwc_to_nchw(up(gpu, x))), cpu.nhwc_to_nchw(x)), 0.0) << shape_str(s);
  }
}

TEST(CudaOps, GroupNorm) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  struct Case {
    Shape s;
    int groups;
  };
  for (Case c : {Case{{2, 64, 7, 9}, 32}, Case{{1, 128, 64, 64}, 32}, Case{{3, 6, 5, 1}, 3}}) {
    Tensor x = random_tensor(c.s, 5, -2.0f, 3.0f);
    Tensor g = random_tensor({c.s[1]}, 6, 0.5f, 1.5f), bt = random_tensor({c.s[1]}, 7, -0.5f, 0.5f);
    for (bool silu : {false, true}) {
      Tensor ref = cpu.group_norm(x, g, bt, c.groups, 1e-6f, silu);
      Tensor got = gpu.download(gpu.group_norm(up(gpu, x), up(gpu, g), up(gpu, bt), c.groups, 1e-6f, silu));
      EXPECT_LE(rel_err(got, ref), kTolNorm) << shape_str(c.s) << " silu " << silu;
    }
  }
}

struct ConvCase {
  Shape x;
  int cout, k;
  Conv2dParams p;
  bool bias;
};

std::vector<ConvCase> conv_cases() {
  return {
      {{2, 35, 11, 13}, 33, 3, Conv2dParams::same(1), true},       // odd everything
      {{1, 3, 32, 32}, 128, 3, Conv2dParams::same(1), true},       // conv_in
      {{2, 128, 16, 16}, 3, 3, Conv2dParams::same(1), true},       // conv_out
      {{2, 64, 9, 7}, 96, 1, Conv2dParams::same(0), true},         // nin_shortcut / q,k,v
      {{2, 32, 16, 16}, 32, 3, Conv2dParams{2, 0, 0, 1, 1}, true},  // Downsample: pad bottom/right only
      {{1, 16, 15, 17}, 8, 3, Conv2dParams{2, 1, 1, 1, 1}, false}, // stride 2, symmetric, no bias
  };
}

TEST(CudaOps, Conv2dF32) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  uint64_t seed = 10;
  for (const ConvCase& c : conv_cases()) {
    Tensor x = random_tensor(c.x, seed++);
    Tensor w = random_tensor({c.cout, c.x[1], c.k, c.k}, seed++, -0.2f, 0.2f);
    Tensor b = c.bias ? random_tensor({c.cout}, seed++) : Tensor();
    Tensor ref = cpu.conv2d(x, w, b, c.p);
    Tensor got = gpu.download(gpu.conv2d(up(gpu, x), gpu.upload(w, DType::F32), c.bias ? up(gpu, b) : Tensor(), c.p));
    EXPECT_LE(rel_err(got, ref), kTolF32Gemm) << "x " << shape_str(c.x) << " cout " << c.cout << " k " << c.k;
  }
  EXPECT_EQ(cuda_stats(gpu).conv_fallbacks, 0) << "cuDNN failed and the convs fell back to im2col: " << gpu.name();
}

TEST(CudaOps, Conv2dBf16Weights) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  uint64_t seed = 50;
  for (const ConvCase& c : conv_cases()) {
    Tensor x = random_tensor(c.x, seed++);
    Tensor w = random_tensor({c.cout, c.x[1], c.k, c.k}, seed++, -0.2f, 0.2f);
    Tensor b = c.bias ? random_tensor({c.cout}, seed++) : Tensor();
    Tensor ref = cpu.conv2d(x, round_bf16(w), b, c.p);
    Tensor wd = gpu.upload(w, DType::BF16);
    ASSERT_EQ(wd.dtype(), DType::BF16);
    Tensor got = gpu.download(gpu.conv2d(up(gpu, x), wd, c.bias ? up(gpu, b) : Tensor(), c.p));
    EXPECT_LE(rel_err(got, ref), kTolBf16) << "x " << shape_str(c.x) << " cout " << c.cout << " k " << c.k;
  }
  EXPECT_EQ(cuda_stats(gpu).conv_fallbacks, 0) << "cuDNN failed and the convs fell back to im2col: " << gpu.name();
}

TEST(CudaOps, Bf16ConvWeightsOption) {
  HWAGA_NEED_GPU(gpu, true);
  Tensor w = random_tensor({4, 3, 3, 3}, 90);
  EXPECT_EQ(gpu.upload(w, DType::F32).dtype(), DType::BF16);              // conv weights become bf16
  EXPECT_EQ(gpu.upload(random_tensor({4}, 91), DType::F32).dtype(), DType::F32);  // the rest does not
}

TEST(CudaOps, AttentionHW) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  for (Shape s : {Shape{2, 64, 8, 8}, Shape{1, 40, 5, 7}, Shape{3, 512, 4, 4}}) {
    Tensor q = random_tensor(s, 20), k = random_tensor(s, 21), v = random_tensor(s, 22);
    Tensor ref = cpu.attention_hw(q, k, v);
    Tensor got = gpu.download(gpu.attention_hw(up(gpu, q), up(gpu, k), up(gpu, v)));
    EXPECT_LE(rel_err(got, ref), kTolF32Gemm) << shape_str(s);
  }
}

void expect_same_codes(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(shape_str(a.shape()), shape_str(b.shape())) << what;
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (a.ptr<int32_t>()[i] != b.ptr<int32_t>()[i]) {
      if (first < 0) first = i;
      ++bad;
    }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " codes differ, first at " << first << " (gpu "
                    << (first >= 0 ? a.ptr<int32_t>()[first] : 0) << " cpu " << (first >= 0 ? b.ptr<int32_t>()[first] : 0)
                    << ")";
}

TEST(CudaOps, ResidualQuantizeExactWithTies) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  // Integer-valued vectors: distances are exact, so codes must agree exactly, ties included
  // (duplicated codebook rows make ties; the lowest index must win).
  Tensor cb = int_tensor({61, 16}, 30, -3, 3);
  for (int r = 40; r < 61; ++r)
    for (int e = 0; e < 16; ++e) cb.f32()[r * 16 + e] = cb.f32()[(r - 40) * 16 + e];
  Tensor z = int_tensor({123, 16}, 31, -6, 6);
  for (int depth : {1, 4}) {
    Tensor ref = cpu.residual_quantize(z, cb, depth);
    Tensor got = gpu.download(gpu.residual_quantize(up(gpu, z), up(gpu, cb), depth));
    expect_same_codes(got, ref, "depth " + std::to_string(depth));
  }
}

TEST(CudaOps, ResidualQuantizeChunkedLargeK) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  // K = 16384 makes the GPU split the 5000 rows into chunks of 4096 (256 MiB of distances).
  Tensor cb = int_tensor({16384, 8}, 32, -4, 4);
  Tensor z = int_tensor({5000, 8}, 33, -8, 8);
  Tensor ref = cpu.residual_quantize(z, cb, 2);
  Tensor got = gpu.download(gpu.residual_quantize(up(gpu, z), up(gpu, cb), 2));
  expect_same_codes(got, ref, "K 16384");
}

TEST(CudaOps, ResidualQuantizeRandomFloats) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  // Real-valued: the GEMM sums in another order, so a near-tie may flip; allow 1% of rows.
  Tensor cb = random_tensor({512, 64}, 34), z = random_tensor({300, 64}, 35);
  Tensor ref = cpu.residual_quantize(z, cb, 4);
  Tensor got = gpu.download(gpu.residual_quantize(up(gpu, z), up(gpu, cb), 4));
  ASSERT_EQ(shape_str(got.shape()), shape_str(ref.shape()));
  int rows_differ = 0;
  for (int n = 0; n < 300; ++n)
    for (int d = 0; d < 4; ++d)
      if (got.ptr<int32_t>()[n * 4 + d] != ref.ptr<int32_t>()[n * 4 + d]) {
        ++rows_differ;
        break;
      }
  EXPECT_LE(rows_differ, 3);
}

TEST(CudaOps, EmbedSum) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  Tensor cb = random_tensor({37, 24}, 40);
  Tensor codes = Tensor::empty({50, 4}, DType::I32);
  std::mt19937 rng(41);
  for (int i = 0; i < 200; ++i) codes.ptr<int32_t>()[i] = int32_t(rng() % 37);
  Tensor ref = cpu.embed_sum(codes, cb);
  Tensor got = gpu.download(gpu.embed_sum(gpu.upload(codes, DType::I32), up(gpu, cb)));
  EXPECT_LE(rel_err(got, ref), 1e-7);  // the same four additions in the same order
  codes.ptr<int32_t>()[77] = 37;       // out of range: an error, not a wild read
  EXPECT_THROW(gpu.embed_sum(gpu.upload(codes, DType::I32), up(gpu, cb)), Error);
}

TEST(CudaOps, Linear) {
  HWAGA_NEED_GPU(gpu, false);
  Backend& cpu = cpu_backend();
  Tensor x = random_tensor({5, 7, 33}, 60), w = random_tensor({17, 33}, 61), b = random_tensor({17}, 62);
  Tensor ref = cpu.linear(x, w, b);
  Tensor got = gpu.download(gpu.linear(up(gpu, x), gpu.upload(w, DType::F32), up(gpu, b)));
  EXPECT_LE(rel_err(got, ref), kTolF32Gemm);
  Tensor ref_nb = cpu.linear(x, w, Tensor());
  EXPECT_LE(rel_err(gpu.download(gpu.linear(up(gpu, x), gpu.upload(w, DType::F32), Tensor())), ref_nb), kTolF32Gemm);
  Tensor ref_bf = cpu.linear(x, round_bf16(w), b);
  Tensor got_bf = gpu.download(gpu.linear(up(gpu, x), gpu.upload(w, DType::BF16), up(gpu, b)));
  EXPECT_LE(rel_err(got_bf, ref_bf), kTolBf16);
}

TEST(CudaOps, BadInputsThrow) {
  HWAGA_NEED_GPU(gpu, false);
  Tensor x = gpu.upload(random_tensor({1, 4, 5, 5}, 70), DType::F32);
  Tensor w = gpu.upload(random_tensor({2, 3, 3, 3}, 71), DType::F32);  // 3 != 4 input channels
  EXPECT_THROW(gpu.conv2d(x, w, Tensor(), Conv2dParams::same(1)), Error);
  EXPECT_THROW(gpu.add(x, gpu.upload(random_tensor({1, 4, 5, 4}, 72), DType::F32)), Error);
  EXPECT_THROW(gpu.group_norm(x, gpu.upload(random_tensor({4}, 73), DType::F32),
                              gpu.upload(random_tensor({4}, 74), DType::F32), 3, 1e-6f, false),
               Error);
}

}  // namespace
}  // namespace hwaga
