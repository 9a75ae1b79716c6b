// GPU benchmark of the image tokenizers on the CUDA backend: decode (codes on the device ->
// pictures on the device) and encode (pictures -> codes) of a full-size RQ-VAE (ImageNet config:
// K 16384, attention at 8) and minDALL-E's VQGAN, random weights built in-process, at batch 1
// and 64, with f32 weights (FMA convs, no TF32) and bf16 conv weights (f32 accumulation).
// Also measures the card: device-to-device copy bandwidth and the cuBLASLt 8192^3 rate.
//
// Every measurement prints one line "RESULT key=value ..." at once (flushed), so a run cut short
// by a timeout still leaves what it measured; tests/gpu/device_check.sh turns them into a table.
//
//   bench_gpu_stage1 [--models rqvae,vqgan] [--batches 1,64] [--dtypes f32,bf16] [--iters 3] [--no-card]
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "nn/stage1_config.h"
#include "nn/taming.h"
#include "tests/gpu/stage1_random.h"

using namespace hwaga;

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) if (!item.empty()) out.push_back(item);
  return out;
}

Stage1Config full_config(const std::string& model) {
  Stage1Config c;
  c.net.ch = 128;
  c.net.num_res_blocks = 2;
  c.net.in_channels = 3;
  c.net.out_ch = 3;
  c.net.z_channels = 256;
  c.net.resolution = 256;
  c.embed_dim = 256;
  c.n_embed = 16384;
  if (model == "rqvae") {  // architecture.md §1.1, ImageNet
    c.type = "rq-vae";
    c.net.ch_mult = {1, 1, 2, 2, 4, 4};
    c.net.attn_resolutions = {8};
    c.code_shape = {8, 8, 4};
  } else {  // §4.1, minDALL-E
    c.type = "vqgan";
    c.net.ch_mult = {1, 1, 2, 2, 4};
    c.net.attn_resolutions = {16};
    c.code_shape = {16, 16, 1};
  }
  validate_stage1_config(c, "bench " + model);
  return c;
}

struct Timer {
  cudaEvent_t a, b;
  cudaStream_t s;
  explicit Timer(void* stream) : s(static_cast<cudaStream_t>(stream)) {
    cudaEventCreate(&a);
    cudaEventCreate(&b);
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  void start() { cudaEventRecord(a, s); }
  float stop_ms() {
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    return ms;
  }
};

void result(const std::string& line) {
  std::printf("RESULT %s\n", line.c_str());
  std::fflush(stdout);
}

void bench_model(const std::string& model, const std::vector<int>& batches, const std::vector<std::string>& dtypes,
                 int iters) {
  const Stage1Config cfg = full_config(model);
  auto t0 = std::chrono::steady_clock::now();
  SafetensorsFile file = gputest::random_stage1_file(cfg, 42);
  std::printf("# %s: random weights built in %.1f s\n", model.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  const int64_t h = cfg.code_shape[0], w = cfg.code_shape[1], D = cfg.code_shape[2], E = cfg.embed_dim,
                K = cfg.n_embed, R = cfg.net.resolution;
  for (const std::string& dt : dtypes) {
    CudaBackendOptions opts;
    opts.bf16_conv_weights = dt == "bf16";
    opts.cudnn_find = dt == "bf16";  // time the tensor-core algorithms; f32 FMA uses the heuristics
    std::string why;
    auto be = make_cuda_backend_with(opts, &why);
    if (!be) {
      std::printf("# no CUDA backend: %s\n", why.c_str());
      return;
    }
    std::printf("# backend: %s\n", be->name().c_str());
    WeightLoader loader(file.tensors, "stage1.", file.path, *be);
    TamingAutoencoder net;
    net.load(loader, cfg.net);
    const Tensor& table = file.tensors.at("stage1." + stage1_codebook_name(cfg));
    Tensor codebook = be->upload(table.slice0(0, K), DType::F32);  // [K,E]
    Timer timer(cuda_stream(*be));
    for (int B : batches) {
      for (const char* op : {"decode", "encode"}) {
        try {
          Tensor input;
          std::mt19937_64 rng(uint64_t(B) * 7 + 1);
          if (std::strcmp(op, "decode") == 0) {
            Tensor codes = Tensor::empty({B * h * w, D}, DType::I32);
            for (int64_t i = 0; i < codes.numel(); ++i) codes.ptr<int32_t>()[i] = int32_t(rng() % uint64_t(K));
            input = be->upload(codes, DType::I32);
          } else {
            Tensor img = Tensor::empty({B, 3, R, R});
            std::uniform_real_distribution<float> u(-1.0f, 1.0f);
            for (int64_t i = 0; i < img.numel(); ++i) img.f32()[i] = u(rng);
            input = be->upload(img, DType::F32);
          }
          auto run = [&]() -> Tensor {
            if (std::strcmp(op, "decode") == 0) {
              Tensor zq = be->embed_sum(input, codebook).reshape({B, h, w, E});  // [B,h,w,E]
              return net.decode_latent(*be, zq);                                // [B,3,R,R]
            }
            Tensor z = net.encode_latent(*be, input);                              // [B,h,w,E]
            return be->residual_quantize(z.reshape({B * h * w, E}), codebook, int(D));  // [B*h*w,D]
          };
          cuda_reset_stats(*be);
          timer.start();
          { Tensor out = run(); }
          float first_ms = timer.stop_ms();  // includes choosing the conv algorithms
          const double flops = cuda_stats(*be).conv_flops;
          cuda_reset_stats(*be);
          timer.start();
          for (int i = 0; i < iters; ++i) { Tensor out = run(); }
          const float ms = timer.stop_ms() / float(iters);
          CudaStats st = cuda_stats(*be);
          char line[512];
          std::snprintf(line, sizeof line,
                        "impl=hwaga model=%s op=%s dtype=%s batch=%d ms=%.3f ms_per_pic=%.4f pics_per_s=%.1f "
                        "conv_gflop_per_pic=%.2f tflops=%.2f peak_mib=%.0f first_ms=%.1f conv_fallbacks=%d",
                        model.c_str(), op, dt.c_str(), B, ms, ms / B, 1000.0 * B / ms, flops / B / 1e9,
                        flops / (ms * 1e-3) / 1e12, double(st.peak_in_use_bytes) / (1 << 20), first_ms,
                        st.conv_fallbacks);
          result(line);
        } catch (const std::exception& e) {
          std::printf("# FAILED %s %s %s batch %d: %s\n", model.c_str(), op, dt.c_str(), B, e.what());
          std::fflush(stdout);
        }
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> models = {"rqvae", "vqgan"}, dtypes = {"f32", "bf16"};
  std::vector<int> batches = {1, 64};
  int iters = 3;
  bool card = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) fail("bench_gpu_stage1: ", a, " needs a value");
      return argv[++i];
    };
    if (a == "--models") models = split(next());
    else if (a == "--dtypes") dtypes = split(next());
    else if (a == "--batches") {
      batches.clear();
      for (auto& s : split(next())) batches.push_back(std::stoi(s));
    } else if (a == "--iters") iters = std::max(1, std::stoi(next()));
    else if (a == "--no-card") card = false;
    else {
      std::fprintf(stderr, "usage: bench_gpu_stage1 [--models rqvae,vqgan] [--batches 1,64] [--dtypes f32,bf16] "
                           "[--iters N] [--no-card]\n");
      return 2;
    }
  }
  try {
    std::string why;
    auto be = make_cuda_backend(&why);
    if (!be) {
      std::printf("# %s\n", why.c_str());
      return 3;
    }
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    std::printf("# %s, %.1f GiB total, %.1f GiB free\n", be->name().c_str(), total_b / 1073741824.0,
                free_b / 1073741824.0);
    if (card) {
      char line[256];
      double gbs = cuda_copy_bandwidth_gbs(*be, size_t(1) << 30, 10);
      std::snprintf(line, sizeof line, "impl=card what=d2d_copy gbs=%.1f", gbs);
      result(line);
      for (DType t : {DType::BF16, DType::F32}) {
        try {
          double tf = cuda_matmul_tflops(*be, t, 8192, t == DType::BF16 ? 20 : 3);
          std::snprintf(line, sizeof line, "impl=card what=matmul_8192 dtype=%s tflops=%.1f", dtype_name(t), tf);
          result(line);
        } catch (const std::exception& e) {
          std::printf("# FAILED matmul %s: %s\n", dtype_name(t), e.what());
        }
      }
    }
    be.reset();
    for (const std::string& m : models) bench_model(m, batches, dtypes, iters);
  } catch (const std::exception& e) {
    std::printf("# FAILED: %s\n", e.what());
    return 1;
  }
  return 0;
}
