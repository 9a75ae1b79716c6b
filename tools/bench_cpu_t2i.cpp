// CPU benchmark of text-to-image sampling at small batch (not a test). Three modes:
//
//   bench_cpu_t2i membw [--mib 1024]
//       this machine's read bandwidth: sum of a large f32 array with 1 and 2 threads
//       ("RESULT what=membw threads=T gbs=G").
//   bench_cpu_t2i gemv [--threads-list 1,2] [--rows 1,2,4,8,16] [--isa avx2]
//       linear_forward on bf16 [5120,1280] and [1280,5120] weights (a rotation of matrices larger
//       than the L3, so the weights come from memory) at N activation rows
//       ("RESULT what=gemv out=O in=I rows=N threads=T us=U gbs=G kernel=K").
//   bench_cpu_t2i t2i [--model rq-cc3m-654m] [--batches 1,16] [--threads 2] [--positions 64]
//       stage-2 sampling with random bf16 weights (TextToImageModel::random): seconds per
//       picture and the stage-2 weight bytes read per picture / time
//       ("RESULT what=t2i model=M batch=B s_per_pic=S weight_gbs=G positions=P/64").
//       --positions < 64 stops after that many spatial positions (progress callback throws) and
//       extrapolates linearly (said in the positions field).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "core/dtype.h"
#include "core/threads.h"
#include "kernels/cpu/transformer_ops.h"
#include "transformer/presets.h"
#include "transformer/stage2_config.h"
#include "transformer/text_to_image.h"

using namespace hwaga;

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::vector<int> int_list(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ','))
    if (!x.empty()) v.push_back(std::stoi(x));
  return v;
}

std::string arg(int argc, char** argv, const char* name, const char* def) {
  for (int i = 2; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  return def;
}

// ---- membw: sum a large array ----
float sum_range(const float* a, size_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[i + j];  // vectorised by the compiler (-O3, 8 lanes)
  for (; i < n; ++i) s[0] += a[i];
  return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

int run_membw(int argc, char** argv) {
  const size_t n = size_t(std::stoll(arg(argc, argv, "--mib", "1024"))) * 1048576 / 4;
  std::vector<float> a(n, 1.0f);
  for (int T : {1, 2}) {
    double best = 1e30;
    volatile float sink = 0;
    for (int rep = 0; rep < 4; ++rep) {
      std::vector<float> part(static_cast<size_t>(T));
      auto t0 = Clock::now();
      std::vector<std::thread> th;
      for (int t = 0; t < T; ++t)
        th.emplace_back([&, t] { part[size_t(t)] = sum_range(a.data() + n * t / T, n * (t + 1) / T - n * t / T); });
      for (auto& x : th) x.join();
      best = std::min(best, since(t0));
      sink = sink + part[0];
    }
    std::printf("RESULT what=membw threads=%d mib=%zu gbs=%.2f\n", T, n * 4 / 1048576, double(n) * 4 / best / 1e9);
    std::fflush(stdout);
  }
  return 0;
}

// ---- gemv: linear_forward at small N on bf16 weights ----
int run_gemv(int argc, char** argv) {
  const std::vector<int> threads = int_list(arg(argc, argv, "--threads-list", "1,2"));
  const std::vector<int> rows = int_list(arg(argc, argv, "--rows", "1,2,4,8,16"));
  cpu::linear_gemv_force_isa(arg(argc, argv, "--isa", "").c_str());  // e.g. avx2 on an AVX-512 machine
  const std::pair<int64_t, int64_t> shapes[] = {{5120, 1280}, {1280, 5120}};
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> U(-1, 1);
  for (auto [out, in] : shapes) {
    const size_t per = size_t(out * in);
    const int n_mats = int(std::max<size_t>(2, (size_t(1) << 30) / (per * 2)));  // ~1 GiB, over the L3
    std::vector<uint16_t> w(per * size_t(n_mats));
    // bf16 of uniform [-0.05, 0.05) values (no subnormals: they would make the FMAs slow)
    for (size_t i = 0; i < w.size(); ++i) {
      const float v = float(int64_t((i * 2654435761u) % 65536) - 32768) * (0.05f / 32768);
      uint32_t u;
      std::memcpy(&u, &v, 4);
      w[i] = uint16_t(u >> 16);
    }
    std::vector<float> x(static_cast<size_t>(16 * in)), b(static_cast<size_t>(out)), y(static_cast<size_t>(16 * out));
    for (float& v : x) v = U(rng);
    for (float& v : b) v = U(rng);
    for (int T : threads) {
      set_num_threads(T);
      for (int N : rows) {
        cpu::linear_forward(x.data(), w.data(), DType::BF16, b.data(), y.data(), N, in, out);  // warm-up
        const int reps = 2 * n_mats;
        auto t0 = Clock::now();
        for (int r = 0; r < reps; ++r)
          cpu::linear_forward(x.data(), w.data() + size_t(r % n_mats) * per, DType::BF16, b.data(), y.data(), N, in,
                              out);
        const double s = since(t0) / reps;
        std::printf("RESULT what=gemv out=%lld in=%lld rows=%d threads=%d us=%.1f gbs=%.2f kernel=%s\n",
                    (long long)out, (long long)in, N, T, s * 1e6, double(per) * 2 / s / 1e9,
                    N <= cpu::kLinearGemvMaxRows ? cpu::linear_gemv_isa() : "convert+sgemm");
        std::fflush(stdout);
        if (N > cpu::kLinearGemvMaxRows) {  // the GEMV path past its row limit, for comparison
          t0 = Clock::now();
          for (int r = 0; r < reps; ++r)
            cpu::linear_gemv(x.data(), w.data() + size_t(r % n_mats) * per, DType::BF16, b.data(), y.data(), N, in,
                             out);
          const double s2 = since(t0) / reps;
          std::printf("RESULT what=gemv out=%lld in=%lld rows=%d threads=%d us=%.1f gbs=%.2f kernel=%s(forced)\n",
                      (long long)out, (long long)in, N, T, s2 * 1e6, double(per) * 2 / s2 / 1e9,
                      cpu::linear_gemv_isa());
        }
      }
    }
  }
  return 0;
}

// ---- t2i: stage-2 sampling with random bf16 weights ----
bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

// Stage-2 matrix bytes one picture's sampling reads (each matrix once per step for the whole
// batch); embedding tables are gathered row by row and left out.
double weight_bytes_per_run(const Stage2Config& c, double bytes_per_value) {
  double per_step = 0, per_spatial = 0;
  for (const TensorSpec& s : stage2_tensor_specs(c)) {
    if (s.shape.size() != 2 || s.name.find("emb") != std::string::npos || starts_with(s.name, "cond_classifier") ||
        s.name == "head_txt.weight")
      continue;
    const double bytes = double(shape_numel(s.shape)) * bytes_per_value;
    if (c.is_rq() && (starts_with(s.name, "body_transformer") || s.name == "input_mlp.weight")) per_spatial += bytes;
    else per_step += bytes;
  }
  if (c.is_rq()) {
    const double P = double(c.rq.H()) * c.rq.W();
    return per_spatial * P + per_step * P * c.rq.D();
  }
  return per_step * c.gpt.ctx_len_img;
}

struct Stop {};

int run_t2i(int argc, char** argv) {
  const std::string model = arg(argc, argv, "--model", "rq-cc3m-654m");
  const std::vector<int> batches = int_list(arg(argc, argv, "--batches", "1,16"));
  const int threads = std::stoi(arg(argc, argv, "--threads", "2"));
  const int positions = std::stoi(arg(argc, argv, "--positions", "64"));
  set_num_threads(threads);
  auto be = make_cpu_backend();
  auto t0 = Clock::now();
  auto m = TextToImageModel::random(find_preset(model), *be, DType::BF16, 1234);
  const Stage2Config& c2 = m->stage2_config();
  std::printf("# built %s in %.1f s: %s\n", model.c_str(), since(t0), m->describe().c_str());
  const int depth = c2.is_rq() ? c2.rq.D() : 1;
  const int total_pos = c2.is_rq() ? c2.rq.H() * c2.rq.W() : int(c2.gpt.ctx_len_img);
  const double bytes = weight_bytes_per_run(c2, 2.0);
  const ModelPreset& preset = find_preset(model);
  std::vector<int32_t> text(size_t(m->text_length()));
  std::mt19937 rng(5);
  for (int32_t& t : text) t = 1 + int32_t(rng() % uint32_t(std::max(1, m->cond_vocab_size() - 1)));
  for (int B : batches) {
    GenerateOptions opt;
    opt.sampler.temperature = preset.temperature;
    if (preset.top_k > 0) opt.sampler.top_k = {preset.top_k};
    if (preset.top_p > 0) opt.sampler.top_p = {preset.top_p};
    opt.seed = 99;
    opt.n_candidates = B;
    opt.batch = B;
    const int stop_steps = std::min(positions, total_pos) * depth;
    int done = 0;
    opt.progress = [&](int, int) {
      if (++done >= stop_steps && positions < total_pos) throw Stop{};
    };
    auto ts = Clock::now();
    try {
      m->generate_codes(text, opt);
    } catch (const Stop&) {
    }
    const double wall = since(ts), frac = double(std::min(positions, total_pos)) / total_pos;
    const double full = wall / frac;
    std::printf("RESULT what=t2i model=%s batch=%d threads=%d s_per_pic=%.3f wall_s=%.3f weight_gbs=%.2f "
                "positions=%d/%d kernel=%s\n",
                model.c_str(), B, threads, full / B, wall, bytes / full / 1e9, std::min(positions, total_pos),
                total_pos, cpu::linear_gemv_isa());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "membw") return run_membw(argc, argv);
    if (mode == "gemv") return run_gemv(argc, argv);
    if (mode == "t2i") return run_t2i(argc, argv);
    std::fprintf(stderr, "usage: bench_cpu_t2i membw|gemv|t2i [options] (see the top of tools/bench_cpu_t2i.cpp)\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cpu_t2i: %s\n", e.what());
    return 1;
  }
}
