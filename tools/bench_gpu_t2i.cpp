// GPU benchmark of text-to-image code generation (stage 2 only: the codes, not the stage-1
// decode, which bench_gpu_stage1 measures): the released shapes (rq-3.9b, mindalle-1.3b) with
// random bf16 weights (TextToImageModel::random), the presets' sampling settings (top-k/top-p),
// at batch 1 and 64 and, when the time budget allows, a larger batch.
//
// Every measurement prints one line "RESULT key=value ..." at once (flushed), so a run cut short
// by its time limit still reports what it measured:
//   RESULT impl=hwaga what=build model=M dtype=bf16 seconds=S params_m=P weight_gib=G
//   RESULT impl=hwaga what=generate model=M dtype=bf16 batch=B wall_s=W s_per_pic=X pics_per_s=Y
//          eager_s_per_pic=Z graph_launches=G weight_gbs=R peak_mib=P
// The loop records one sampling step as a CUDA graph and replays it (graph_launches replays);
// at batch 1, eager_s_per_pic times the same generation op by op (0 at other batches). weight_gbs = stage-2 matrix bytes the sampling loop must read (every layer
// once per step for the batch) / wall time: against the card's copy rate it says how close a
// batch-1 run is to the memory bound.
//
// usage: bench_gpu_t2i [--models rq-3.9b,mindalle-1.3b] [--batches 1,64] [--extra-batch 256]
//                      [--budget SECONDS]   (default 140: stops starting new work after that)
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "transformer/presets.h"
#include "transformer/stage2_config.h"
#include "transformer/text_to_image.h"

using namespace hwaga;

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ','))
    if (!x.empty()) v.push_back(x);
  return v;
}

void result(const std::string& line) {
  std::printf("RESULT %s\n", line.c_str());
  std::fflush(stdout);
}

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

// Bytes of stage-2 weight matrices one sampling run reads (bf16 matrices: 2 bytes per value;
// embedding tables are gathered row by row and left out).
double weight_bytes_per_run(const Stage2Config& c, double bytes_per_value) {
  double per_step = 0, per_spatial = 0;  // RQ: head + classifier per depth step, body per position
  for (const TensorSpec& s : stage2_tensor_specs(c)) {
    if (s.shape.size() != 2 || s.name.find("emb") != std::string::npos || starts_with(s.name, "cond_classifier") ||
        s.name == "head_txt.weight")
      continue;
    const double b = double(shape_numel(s.shape)) * bytes_per_value;
    if (c.is_rq() && (starts_with(s.name, "body_transformer") || s.name == "input_mlp.weight")) per_spatial += b;
    else per_step += b;
  }
  if (c.is_rq()) {
    const double P = double(c.rq.H()) * c.rq.W();
    return per_spatial * P + per_step * P * c.rq.D();
  }
  return per_step * c.gpt.ctx_len_img;
}

struct Budget {
  Clock::time_point t0 = Clock::now();
  double seconds = 140;
  double left() const { return seconds - since(t0); }
};

// One model on its own backend, kept until the end so that the extra batch can run last.
struct Loaded {
  std::string name;
  std::unique_ptr<Backend> be;  // declared first: destroyed after the model
  std::unique_ptr<TextToImageModel> m;
  GenerateOptions opt;
  std::vector<int32_t> text;
  double bytes = 0;  // weight bytes one sampling run reads
  double last_wall = 0;
  int last_batch = 0;
};

std::unique_ptr<Loaded> build_model(const std::string& name) {
  const ModelPreset& preset = find_preset(name);
  auto L = std::make_unique<Loaded>();
  L->name = name;
  std::string why;
  L->be = make_cuda_backend(&why);
  if (!L->be) fail("no CUDA backend: ", why);
  auto t0 = Clock::now();
  L->m = TextToImageModel::random(preset, *L->be, DType::BF16, 1234);
  cuda_synchronize(*L->be);
  const double build_s = since(t0);
  const Stage2Config& c2 = L->m->stage2_config();
  const double params = double(stage2_num_parameters(c2));
  char line[512];
  std::snprintf(line, sizeof line,
                "impl=hwaga what=build model=%s dtype=bf16 seconds=%.1f params_m=%.1f weight_gib=%.2f in_use_gib=%.2f",
                name.c_str(), build_s, params / 1e6, params * 2 / 1073741824.0,
                cuda_stats(*L->be).in_use_bytes / 1073741824.0);
  result(line);
  std::printf("# %s\n", L->m->describe().c_str());
  std::fflush(stdout);
  std::mt19937 rng(5);
  L->text.resize(size_t(L->m->text_length()));
  for (int32_t& t : L->text) t = 1 + int32_t(rng() % uint32_t(std::max(1, L->m->cond_vocab_size() - 1)));
  L->opt.sampler.temperature = preset.temperature;
  if (preset.top_k > 0) L->opt.sampler.top_k = {preset.top_k};
  if (preset.top_p > 0) L->opt.sampler.top_p = {preset.top_p};
  L->opt.seed = 99;
  L->bytes = weight_bytes_per_run(c2, 2.0);
  return L;
}

// One timed generation of B pictures; returns the wall time (the loop keeps its codes on the GPU,
// so only the end synchronises).
double time_generate(Loaded& L, const GenerateOptions& opt) {
  cuda_synchronize(*L.be);
  const auto ts = Clock::now();
  Tensor codes = L.m->generate_codes(L.text, opt);
  cuda_synchronize(*L.be);
  return since(ts);
}

void run_batch(Loaded& L, int B) {
  GenerateOptions opt = L.opt;
  opt.n_candidates = B;
  opt.batch = B;
  try {
    cuda_reset_stats(*L.be);
    const int64_t launches0 = cuda_stats(*L.be).graph_launches;
    const double wall = time_generate(L, opt);
    const int64_t launches = cuda_stats(*L.be).graph_launches - launches0;
    const double peak_mib = cuda_stats(*L.be).peak_in_use_bytes / 1048576.0;
    // At batch 1 the kernels are small and launch gaps count: the same run op by op shows what
    // the CUDA graph of the step saves.
    double eager = 0;
    if (B == 1) {
      GenerateOptions e = opt;
      e.step_graphs = false;
      eager = time_generate(L, e);
    }
    char line[512];
    std::snprintf(line, sizeof line,
                  "impl=hwaga what=generate model=%s dtype=bf16 batch=%d wall_s=%.3f s_per_pic=%.4f pics_per_s=%.2f "
                  "eager_s_per_pic=%.4f graph_launches=%lld weight_gbs=%.0f peak_mib=%.0f",
                  L.name.c_str(), B, wall, wall / B, B / wall, eager / B, static_cast<long long>(launches),
                  L.bytes / wall / 1e9, peak_mib);
    result(line);
    L.last_wall = wall;
    L.last_batch = B;
  } catch (const std::exception& e) {
    std::printf("# FAILED %s batch %d: %s\n", L.name.c_str(), B, e.what());
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> models = {"rq-3.9b", "mindalle-1.3b"};
  std::vector<int> batches = {1, 64};
  int extra_batch = 256;
  Budget budget;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) fail("bench_gpu_t2i: ", a, " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--models") models = split(next());
      else if (a == "--batches") {
        batches.clear();
        for (auto& s : split(next())) batches.push_back(std::stoi(s));
      } else if (a == "--extra-batch") extra_batch = std::stoi(next());
      else if (a == "--budget") budget.seconds = std::stod(next());
      else throw std::invalid_argument(a);
    } catch (const std::exception&) {
      std::fprintf(stderr,
                   "usage: bench_gpu_t2i [--models rq-3.9b,mindalle-1.3b] [--batches 1,64] [--extra-batch 256 (0: "
                   "none)] [--budget SECONDS]\n");
      return 2;
    }
  }
  try {
    std::string why;
    {
      auto be = make_cuda_backend(&why);
      if (!be) {
        std::printf("# %s\n", why.c_str());
        return 3;
      }
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      std::printf("# %s, %.1f GiB total, %.1f GiB free, budget %.0f s\n", be->name().c_str(),
                  total_b / 1073741824.0, free_b / 1073741824.0, budget.seconds);
      std::fflush(stdout);
    }
    // Every model's main batches first, the extra batch last (when its estimated time fits).
    std::vector<std::unique_ptr<Loaded>> loaded;
    for (const std::string& m : models) {
      if (budget.left() < 20) {
        std::printf("# %s skipped, the time budget is spent\n", m.c_str());
        continue;
      }
      try {
        loaded.push_back(build_model(m));
      } catch (const std::exception& e) {
        std::printf("# FAILED %s: %s\n", m.c_str(), e.what());
        std::fflush(stdout);
        continue;
      }
      for (int B : batches) {
        if (budget.left() < 5) {
          std::printf("# %s batch %d skipped, the time budget is spent\n", m.c_str(), B);
          continue;
        }
        run_batch(*loaded.back(), B);
      }
    }
    for (auto& L : loaded) {
      if (extra_batch <= 0) break;
      const double est = L->last_batch ? L->last_wall * double(extra_batch) / L->last_batch * 1.2 : 1e9;
      if (est > budget.left() - 5) {
        std::printf("# %s: batch %d skipped (estimated %.0f s, %.0f s of the budget left)\n", L->name.c_str(),
                    extra_batch, est, budget.left());
        continue;
      }
      run_batch(*L, extra_batch);
    }
  } catch (const std::exception& e) {
    std::printf("# FAILED: %s\n", e.what());
    return 1;
  }
  return 0;
}
