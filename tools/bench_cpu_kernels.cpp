// Benchmark of the CPU sgemm and conv2d kernels at the shapes the RQ-VAE / VQGAN coders use.
// Prints best-of-N wall time, GFLOP/s and which kernel ran. Not a test.
//   bench_cpu_kernels [--threads N] [--reps N] [--quick] [--convs-only] [--algo direct|automatic|winograd]
// For convs it also prints the least process CPU time of a call divided by the thread count:
// on a loaded machine (other processes taking turns on the cores) that is the steadier number.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <vector>

#include "core/threads.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/gemm.h"

using namespace hwaga;
using namespace hwaga::cpu;

namespace {

double cpu_now() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Best wall seconds of `reps` calls after a warm-up (plans, page faults); *cpu gets the least
// process CPU seconds of a call.
template <typename F>
double best_seconds(int reps, F&& f, double* cpu = nullptr) {
  f();
  double best = 1e30, best_cpu = 1e30;
  for (int i = 0; i < reps; ++i) {
    const double c0 = cpu_now();
    auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    best_cpu = std::min(best_cpu, cpu_now() - c0);
  }
  if (cpu) *cpu = best_cpu;
  return best;
}

std::vector<float> random_vec(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  bool quick = false, convs_only = false;
  ConvAlgo algo = ConvAlgo::automatic;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) set_num_threads(std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--convs-only")) convs_only = true;
    else if (!std::strcmp(argv[i], "--algo") && i + 1 < argc) {
      const char* a = argv[++i];
      algo = !std::strcmp(a, "direct") ? ConvAlgo::direct : !std::strcmp(a, "winograd") ? ConvAlgo::winograd
                                                                                        : ConvAlgo::automatic;
    } else {
      std::fprintf(stderr, "usage: %s [--threads N] [--reps N] [--quick] [--convs-only] [--algo direct|automatic|winograd]\n", argv[0]);
      return 2;
    }
  }
  std::printf("threads: %d\nsgemm kernel: %s\n\n", num_threads(), sgemm_kernel_name());

  struct G { int64_t M, N, K; bool ta, tb; };
  std::vector<G> gs = {{1024, 1024, 1024, false, false}, {4096, 256, 256, false, false}, {256, 4096, 256, false, false},
                       {1024, 1024, 1024, true, true},   {256, 512, 512, false, true},    {1, 4096, 1024, false, true},
                       {64, 64, 64, false, false}};
  std::printf("%-24s %10s %10s\n", "sgemm MxNxK (tA,tB)", "ms", "GFLOP/s");
  for (const G& g : gs) {
    if (convs_only) break;
    auto A = random_vec(size_t(g.M * g.K), 1), B = random_vec(size_t(g.K * g.N), 2);
    std::vector<float> C(size_t(g.M * g.N));
    double t = best_seconds(reps, [&] {
      sgemm(g.ta, g.tb, g.M, g.N, g.K, 1.0f, A.data(), g.ta ? g.M : g.K, B.data(), g.tb ? g.K : g.N, 0.0f,
            C.data(), g.N);
    });
    char label[64];
    std::snprintf(label, sizeof label, "%ldx%ldx%ld (%c,%c)", long(g.M), long(g.N), long(g.K), g.ta ? 'T' : 'N',
                  g.tb ? 'T' : 'N');
    std::printf("%-24s %10.3f %10.1f\n", label, t * 1e3, 2.0 * g.M * g.N * g.K / t * 1e-9);
  }

  struct Cv { const char* what; Conv2dShape s; };
  std::vector<Cv> cs = {
      {"dec conv 128@256 3x3", {1, 128, 256, 256, 128, 3, 3, 1, 1, 1, 1, 1}},
      {"dec conv 256->128@256", {1, 256, 256, 256, 128, 3, 3, 1, 1, 1, 1, 1}},
      {"dec conv 128@128 3x3", {1, 128, 128, 128, 128, 3, 3, 1, 1, 1, 1, 1}},
      {"dec conv 256@128 3x3", {1, 256, 128, 128, 256, 3, 3, 1, 1, 1, 1, 1}},
      {"dec conv 256@64 3x3", {1, 256, 64, 64, 256, 3, 3, 1, 1, 1, 1, 1}},
      {"dec conv 256@32 3x3", {1, 256, 32, 32, 256, 3, 3, 1, 1, 1, 1, 1}},
      {"dec conv 512@16 3x3", {1, 512, 16, 16, 512, 3, 3, 1, 1, 1, 1, 1}},
      {"dec conv 512@32 3x3", {1, 512, 32, 32, 512, 3, 3, 1, 1, 1, 1, 1}},
      {"dec conv 512->256@32", {1, 512, 32, 32, 256, 3, 3, 1, 1, 1, 1, 1}},
      {"dec conv 512@8 3x3", {1, 512, 8, 8, 512, 3, 3, 1, 1, 1, 1, 1}},
      {"enc conv_in 3->128@256", {1, 3, 256, 256, 128, 3, 3, 1, 1, 1, 1, 1}},
      {"dec conv_out 128->3@256", {1, 128, 256, 256, 3, 3, 3, 1, 1, 1, 1, 1}},
      {"nin_shortcut 128->256@128", {1, 128, 128, 128, 256, 1, 1, 1, 0, 0, 0, 0}},
      {"attn qkv 512@16 1x1", {1, 512, 16, 16, 512, 1, 1, 1, 0, 0, 0, 0}},
      {"quant_conv 256@8 1x1", {1, 256, 8, 8, 256, 1, 1, 1, 0, 0, 0, 0}},
      {"downsample 128@256 s2", {1, 128, 256, 256, 128, 3, 3, 2, 0, 0, 1, 1}},
      {"downsample 256@128 s2", {1, 256, 128, 128, 256, 3, 3, 2, 0, 0, 1, 1}},
  };
  if (quick) cs.resize(3);
  std::printf("\n%-26s %9s %8s %9s %8s %8s %8s  %s\n", "conv2d (batch 1)", "ms", "GFLOP/s", "packed ms", "GFLOP/s",
              "cpu ms/t", "pack ms", "kernel (packed)");
  for (const Cv& c : cs) {
    const Conv2dShape& s = c.s;
    auto x = random_vec(size_t(s.B * s.Cin * s.H * s.W), 3), w = random_vec(size_t(s.Cout * s.Cin * s.kh * s.kw), 4),
         b = random_vec(size_t(s.Cout), 5);
    std::vector<float> y(size_t(s.B * s.Cout * s.Ho() * s.Wo()));
    const double flop = 2.0 * s.B * s.Cout * s.Ho() * s.Wo() * s.Cin * s.kh * s.kw;
    double t1 = best_seconds(reps, [&] { conv2d_forward(s, x.data(), w.data(), b.data(), y.data()); });
    const double c0 = cpu_now();
    PackedConv2d packed(s, w.data(), b.data(), algo);
    const double tpack = cpu_now() - c0;
    double cpu = 0;
    double t2 = best_seconds(reps, [&] { packed.forward(s, x.data(), y.data()); }, &cpu);
    std::printf("%-26s %9.3f %8.1f %9.3f %8.1f %8.3f %8.1f  %s\n", c.what, t1 * 1e3, flop / t1 * 1e-9, t2 * 1e3,
                flop / t2 * 1e-9, cpu / num_threads() * 1e3, tpack * 1e3, packed.kernel_name(s).c_str());
  }
  return 0;
}
