// hwaga train-tokenizer --shards SPEC (--config stage1.json | --preset emoji64 | --init MODEL)
//                       --work-dir DIR --steps N [--batch 8] [--lr 4e-5] [--warmup 0] [--min-lr LR]
//                       [--beta1 0.5] [--beta2 0.9] [--seed S] [--save-every N] [--sample-every N]
//                       [--eval-shards SPEC] [--eval-count 16] [--no-flip] [--shuffle-buffer 1000]
//                       [--lpips VGG16.pth,LPIPS_HEADS.pth [--lpips-weight 1]]
//                       [--gan [--disc-weight 0.75] [--disc-layers 2] [--disc-ndf 64] [--disc-start 0]]
//                       [--stop-after K] [--resume] [-o model.safetensors] [--export-only] [--threads N]
//                       [--device cpu|cuda] [--world W --rank R --dist-addr HOST:PORT [--dist-timeout S]]
//
// Trains an image tokenizer (stage 1) from tar shards: an RQ-VAE (architecture.md
// §1.6, §6.1; train/rqvae_trainer.h) or, when the config's type is "vqgan", minDALL-E's VQGAN
// (§4.1; train/vqgan_trainer.h). Pictures resized on the short side to the config's resolution,
// random crop, horizontal flip, in [-1,1]. RQ-VAE: loss = MSE + 0.25 commitment; EMA codebook
// with restarts of dead codes. VQGAN: loss = L1 + commitment + 0.25 codebook term (taming's
// legacy weighting), the codebook trained by its gradient. Both: Adam (β 0.5/0.9, no decay) with
// linear warm-up, then constant (the reference's "cosine to min_lr = lr"; --min-lr below --lr
// gives a real cosine to --steps); the default lr 4e-5 serves both (taming's VQGAN rule,
// 4.5e-6 x batch, gives 3.6e-5 at batch 8).
//
// --matmul bf16 runs the convolutions' matrix products with bf16 inputs and f32 accumulation
// (cpu::gemm_bf16); everything else stays f32. CPU only.
//
// --device cuda trains the RQ-VAE's encoder and decoder on the GPU (the same trainer over
// train/train_ops.h's CUDA ops: convolutions as im2col + cuBLAS, f32); the quantizer and its EMA
// codebook stay on the host, so a checkpoint, a resume and the export are the CPU's. One process,
// MSE + commitment only (no --gan/--lpips, no --world > 1), no --matmul bf16. "auto" means the
// CPU until the GPU loop has run against it on a lent GPU (tests/gpu/test_cuda_train_stage1.cpp).
//
// --lpips FILES adds the perceptual term (train/lpips.h) with --lpips-weight (1.0): VGG16's
// features and LPIPS's heads from the user's weight files (nothing is downloaded).
//
// --gan adds the released recipe's adversarial term (architecture.md §6.1, train/patch_gan.h):
// a patch-GAN discriminator (--disc-layers, --disc-ndf) trained with the hinge loss by its own
// Adam (the same betas and learning rate schedule), and the generator term -mean D(x_rec) times
// VQGAN's adaptive weight and --disc-weight, from step --disc-start on. The discriminator and
// its moments travel in the checkpoint (not in the exported model).
//
// WORK holds checkpoint.safetensors (every --save-every steps, at the end, and on SIGINT/SIGTERM,
// then exit 130/143; written atomically), train.jsonl (one line per step: loss, recon,
// commitment, codebook usage and perplexity, restarts, lr, img/s) and samples/stepNNNNNNN.png
// (every --sample-every steps: the first eval pictures over their reconstructions). With
// --eval-shards, the reconstruction PSNR of the first --eval-count pictures (centre crops, read
// in order) is printed and logged at every checkpoint.
//
// --resume continues WORK/checkpoint.safetensors exactly (weights, Adam moments and step, EMA
// codebook, data position; the restart draws are seeded by (seed, step)): a resumed run is bit
// for bit the run that was never stopped, on the same thread count. -o writes a normal hwaga
// stage-1 model file (as `hwaga convert rq-vae` does) at the end; --export-only writes it from
// the checkpoint without training.
//
// --world W --rank R --dist-addr HOST:PORT: data parallel (train/data_parallel.h), the same
// command once per rank. Every rank reads the same global batch and trains on its B/W pictures;
// the gradients (and the discriminator's) are averaged over the ranks, the RQ-VAE's EMA
// statistics summed, and its restart candidates drawn by rank 0 from the global batch's
// residuals, so a W-rank run follows the one-process run to float rounding (the GAN's adaptive
// weight and BatchNorm statistics are each rank's own, as with PyTorch's DDP). Rank 0 writes the
// work dir.
//
// Exit codes: 0 done, 1 error (files, data, config), 2 bad option value, 128+signal when
// interrupted (after saving).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "cli_util.h"
#include "command.h"
#include "dist_options.h"
#include "core/error.h"
#include "core/threads.h"
#include "data/shard_dataset.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "nn/stage1_config.h"
#include "progress.h"
#include "t2i_options.h"
#include "train/checkpoint.h"
#include "train/optim.h"
#include "train/rqvae_trainer.h"
#include "train/tokenizer_trainer.h"
#include "train/train_ops.h"
#include "train/train_log.h"
#include "train/transformer_ops.h"
#include "kernels/cpu/gemm.h"
#include "train/vqgan_trainer.h"

namespace hwaga::cli::train_tokenizer_cmd {  // a namespace per command (unity build)
namespace {

namespace fs = std::filesystem;
using namespace hwaga::train;

constexpr const char* kPrefix = "hwaga train-tokenizer: ";
// A checkpoint's "stage" is the config's type: "rq-vae" or "vqgan".
bool is_tokenizer_stage(const std::string& s) { return s == "rq-vae" || s == "vqgan"; }

struct TokOptions {
  CommonOptions common;
  std::string shards, eval_shards, config, preset, init, work_dir, output, dump_step;
  int64_t steps = 0, stop_after = 0, save_every = 0, sample_every = 0, warmup = 0;
  int batch = 8, eval_count = 16, shuffle_buffer = 1000;
  double lr = 4e-5, min_lr = -1, beta1 = 0.5, beta2 = 0.9;
  uint64_t seed = 0;
  bool resume = false, export_only = false, no_flip = false;
  bool gan = false;  // the patch-GAN term (train/patch_gan.h)
  std::string lpips;  // LPIPS weight files, comma-separated (train/lpips.h)
  double lpips_weight = 1.0;
  std::string matmul = "f32";  // the convolutions' matrix products: f32 or bf16 (train/transformer_ops.h)
  PatchGanOptions disc;
  DistCliOptions dist;  // data parallel (train/data_parallel.h)
  CLI::App* app = nullptr;
  bool given(const char* name) const { return app && app->count(name) > 0; }
};

bool g_quiet = false;  // ranks 1..W-1 of a data-parallel run leave the talking to rank 0

void say(const std::string& s) {
  if (!g_quiet) std::fprintf(stderr, "%s%s\n", kPrefix, s.c_str());
}

// ---- configs ----

// The small RQ-VAE of hwaga's default emoji model: 64x64 -> 8x8x4 codes, K = 512.
Stage1Config preset_config(const std::string& name) {
  Stage1Config c;
  c.type = "rq-vae";
  if (name == "emoji64") {
    c.net.ch = 64;
    c.net.ch_mult = {1, 2, 2, 4};
    c.net.num_res_blocks = 1;
    c.net.attn_resolutions = {8};
    c.net.z_channels = 64;
    c.net.resolution = 64;
    c.embed_dim = 64;
    c.n_embed = 512;
    c.code_shape = {8, 8, 4};
  } else {
    usage_fail("--preset ", name, ": unknown (known: emoji64)");
  }
  validate_stage1_config(c, "--preset " + name);
  return c;
}

// A stage-1 JSON config: the "stage1" object of a model file's config, or that object itself;
// type (rq-vae), in_channels/out_ch (3) and shared_codebook (true) may be left out, and a
// vqgan's code_shape ([h, w, 1] of the latent).
Stage1Config read_config_file(const std::string& path) {
  nlohmann::json j = read_config_json(path, "stage1");
  if (!j.is_object()) fail(path, ": expected a JSON object with the stage-1 config, found ", j.dump());
  for (auto [k, v] : {std::pair<const char*, nlohmann::json>{"type", "rq-vae"}, {"in_channels", 3}, {"out_ch", 3},
                      {"shared_codebook", true}})
    if (!j.contains(k)) j[k] = v;
  if (j["type"] == "vqgan" && !j.contains("code_shape") && j.value("resolution", nlohmann::json()).is_number_integer() &&
      j.value("ch_mult", nlohmann::json()).is_array() && !j["ch_mult"].empty()) {
    const int h = j["resolution"].get<int>() >> (int(j["ch_mult"].size()) - 1);
    j["code_shape"] = {h, h, 1};
  }
  return stage1_config_from_json(j, path);  // its type is checked there: "rq-vae" or "vqgan"
}

std::string describe(const Stage1Config& c, int64_t params) {
  std::string mult;
  for (int m : c.net.ch_mult) mult += (mult.empty() ? "" : ",") + std::to_string(m);
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s %dx%d -> %dx%dx%d codes, K %d, E %d, ch %d x [%s], %d res blocks, %s parameters",
                c.is_rq() ? "RQ-VAE" : "VQGAN", c.net.resolution, c.net.resolution, c.code_shape[0], c.code_shape[1], c.code_shape[2], c.n_embed,
                c.embed_dim, c.net.ch, mult.c_str(), c.net.num_res_blocks, human_count(params).c_str());
  return buf;
}

// ---- fixed pictures (samples, eval) ----

// The first n pictures of `shards` in read order, centre crops: [n',3,R,R] (n' <= n when the
// shards hold fewer).
Tensor fixed_pictures(const std::vector<std::string>& shards, int n, int R) {
  data::ShardOptions o;
  o.shards = shards;
  o.image_size = R;
  o.random_crop = false;
  o.flip = false;
  o.shuffle_shards = false;
  o.shuffle_buffer = 1;
  data::ShardDataset ds(o);
  std::vector<data::Sample> s = ds.next_batch(n);  // crosses into epoch 1 if there are fewer
  std::vector<data::Sample> keep;
  for (auto& x : s)
    if (x.epoch == 0) keep.push_back(std::move(x));
  Tensor t = Tensor::empty({int64_t(keep.size()), 3, R, R});
  for (size_t i = 0; i < keep.size(); ++i)
    std::memcpy(t.f32() + int64_t(i) * 3 * R * R, keep[i].image.f32(), size_t(3 * R * R) * sizeof(float));
  return t;
}

Tensor reconstruct_all(TokenizerTrainer& tr, const Tensor& x) {
  Tensor out = Tensor::empty(x.shape());
  const int64_t n = x.dim(0), per = x.numel() / std::max<int64_t>(1, n);
  for (int64_t b = 0; b < n; b += 8) {
    const int64_t e = std::min(n, b + 8);
    Tensor r = tr.reconstruct(x.slice0(b, e));
    std::memcpy(out.f32() + b * per, r.f32(), r.nbytes());
  }
  return out;
}

// PSNR of the clamped reconstructions, pixels in [0,1].
double psnr(const Tensor& x, const Tensor& r) {
  double se = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double a = std::clamp(double(x.f32()[i]), -1.0, 1.0) * 0.5, b = std::clamp(double(r.f32()[i]), -1.0, 1.0) * 0.5;
    se += (a - b) * (a - b);
  }
  const double mse = se / double(x.numel());
  return mse > 0 ? 10.0 * std::log10(1.0 / mse) : 99.0;
}

// The pictures over their reconstructions: [3, 2R, n R].
void write_sample_grid(const std::string& path, const Tensor& x, const Tensor& r, int64_t step) {
  const int64_t n = x.dim(0), R = x.dim(2);
  Tensor g = Tensor::empty({3, 2 * R, n * R});
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t row = 0; row < 2; ++row)
      for (int64_t i = 0; i < n; ++i) {
        const float* src = (row == 0 ? x : r).f32() + (i * 3 + c) * R * R;
        for (int64_t y = 0; y < R; ++y)
          std::memcpy(g.f32() + (c * 2 * R + row * R + y) * n * R + i * R, src + y * R, size_t(R) * sizeof(float));
      }
  write_png(path, g, {{"Software", software_string()}, {"Description", "top: pictures, bottom: reconstructions"},
                      {"hwaga.step", std::to_string(step)}});
}

void export_model(const std::string& path, const Stage1Config& cfg, const TokenizerTrainer& tr, int64_t step) {
  nlohmann::json config = {{"stage1", stage1_config_to_json(cfg)}};
  write_safetensors(path, tr.model_tensors(),
                    {{"format", kModelFormat},
                     {"version", std::to_string(kModelFormatVersion)},
                     {"config", config.dump()},
                     {"trained_steps", std::to_string(step)},
                     {"software", software_string()}});
}

// ---- the command ----

int run_train_tokenizer(TokOptions opt) {
  if (opt.work_dir.empty()) usage_fail("--work-dir is required");
  const std::string work = opt.work_dir;
  const std::string ckpt_path = (fs::path(work) / "checkpoint.safetensors").string();
  Checkpoint resumed;
  nlohmann::json rmeta;
  const bool from_ckpt = opt.resume || opt.export_only;
  if (from_ckpt) {
    if (!fs::exists(ckpt_path))
      fail(opt.resume ? "--resume" : "--export-only", ": there is no checkpoint in ", work, " (", ckpt_path, ")");
    resumed = read_checkpoint(ckpt_path);
    rmeta = resumed.meta;
    if (!is_tokenizer_stage(rmeta.value("stage", std::string())))
      fail(ckpt_path, ": a checkpoint of stage \"", rmeta.value("stage", std::string("?")),
           "\", not of an image tokenizer (\"rq-vae\" or \"vqgan\"; hwaga train writes stage-2 checkpoints)");
    if (opt.given("--config") || opt.given("--preset") || opt.given("--init"))
      usage_fail("--config/--preset/--init cannot change the model of a checkpoint (start a new --work-dir)");
  }
  if (opt.export_only) {
    if (opt.output.empty()) usage_fail("--export-only needs -o model.safetensors");
    check_output_dir(opt.output, "-o");
    apply_common(opt.common);
    const Stage1Config cfg = stage1_config_from_json(rmeta.at("config").at("stage1"), ckpt_path + ": train.config.stage1");
    std::unique_ptr<TokenizerTrainer> trp = make_tokenizer_trainer(cfg, 0);
    TokenizerTrainer& tr = *trp;
    restore_checkpoint(resumed, ckpt_path, tr.params(), nullptr);
    const int64_t step = rmeta.at("step").get<int64_t>();
    export_model(opt.output, cfg, tr, step);
    std::printf("wrote %s: %s, step %lld\n", opt.output.c_str(), describe(cfg, tr.params().num_trainable()).c_str(),
                (long long)step);
    return 0;
  }
  if (opt.resume) {
    const nlohmann::json& o = rmeta.at("options");
    auto take = [&](const char* flag, const char* key, auto& v) {
      if (!opt.given(flag) && o.contains(key)) v = o[key].get<std::decay_t<decltype(v)>>();
    };
    take("--steps", "steps", opt.steps);
    take("--lr", "lr", opt.lr);
    take("--min-lr", "min_lr", opt.min_lr);
    take("--warmup", "warmup", opt.warmup);
    take("--beta1", "beta1", opt.beta1);
    take("--beta2", "beta2", opt.beta2);
    take("--save-every", "save_every", opt.save_every);
    take("--sample-every", "sample_every", opt.sample_every);
    take("--eval-count", "eval_count", opt.eval_count);
    for (auto [flag, key] : {std::pair{"--batch", "batch"}, std::pair{"--seed", "seed"},
                             std::pair{"--shuffle-buffer", "shuffle_buffer"}, std::pair{"--no-flip", "no_flip"}}) {
      const std::string k = key;
      const bool same = k == "batch"            ? o.value(key, 0) == opt.batch
                        : k == "seed"           ? o.value(key, uint64_t(0)) == opt.seed
                        : k == "shuffle_buffer" ? o.value(key, 0) == opt.shuffle_buffer
                                                : o.value(key, false) == opt.no_flip;
      if (opt.given(flag) && !same)
        usage_fail(flag, " differs from the checkpoint's (", o[key].dump(),
                   "); a resumed run keeps it (start a new --work-dir to change it)");
    }
    if (opt.given("--gan") && !o.value("gan", false))
      usage_fail("--gan: the checkpoint's run has no discriminator; start a new --work-dir (or --init from its "
                 "export) to train with one, or use --disc-start to begin it later in a run");
    opt.gan = o.value("gan", false);
    take("--lpips", "lpips", opt.lpips);
    take("--lpips-weight", "lpips_weight", opt.lpips_weight);
    take("--matmul", "matmul", opt.matmul);
    if (opt.gan) {
      for (const char* f : {"--disc-layers", "--disc-ndf"})
        if (opt.given(f)) usage_fail(f, ": a resumed run keeps its discriminator (start a new --work-dir to change it)");
      opt.disc.layers = o.value("disc_layers", opt.disc.layers);
      opt.disc.ndf = o.value("disc_ndf", opt.disc.ndf);
      take("--disc-weight", "disc_weight", opt.disc.disc_weight);
      take("--disc-start", "disc_start", opt.disc.start);
    }
    opt.batch = o.value("batch", opt.batch);
    opt.seed = o.value("seed", opt.seed);
    opt.shuffle_buffer = o.value("shuffle_buffer", opt.shuffle_buffer);
    opt.no_flip = o.value("no_flip", opt.no_flip);
  } else {
    if (opt.shards.empty()) usage_fail("--shards is required (or --resume)");
    const int sources = int(!opt.config.empty()) + int(!opt.preset.empty()) + int(!opt.init.empty());
    if (sources == 0) usage_fail("give the model: --config stage1.json, --preset emoji64 or --init model.safetensors");
    if (!opt.config.empty() && !opt.preset.empty()) usage_fail("--config and --preset cannot both be given");
    if (fs::exists(ckpt_path))
      usage_fail(work, " already holds a checkpoint; continue it with --resume or choose another --work-dir");
  }
  if (opt.steps < 1) usage_fail("--steps must be at least 1, got ", opt.steps);
  if (opt.batch < 1) usage_fail("--batch must be at least 1, got ", opt.batch);
  check_dist_options(opt.dist, opt.batch);
  if (!(opt.lr > 0) || !std::isfinite(opt.lr)) usage_fail("--lr must be positive, got ", opt.lr);
  if (opt.min_lr < 0) opt.min_lr = opt.lr;  // the reference: constant after the warm-up
  if (!(opt.min_lr <= opt.lr)) usage_fail("--min-lr must be in [0, --lr], got ", opt.min_lr);
  if (opt.warmup < 0) usage_fail("--warmup must be >= 0, got ", opt.warmup);
  if (!(opt.beta1 >= 0 && opt.beta1 < 1) || !(opt.beta2 >= 0 && opt.beta2 < 1))
    usage_fail("--beta1 and --beta2 must be in [0, 1), got ", opt.beta1, " and ", opt.beta2);
  if (opt.save_every < 0 || opt.sample_every < 0 || opt.stop_after < 0)
    usage_fail("--save-every, --sample-every and --stop-after must be >= 0");
  if (opt.eval_count < 1 || opt.eval_count > 256) usage_fail("--eval-count must be in [1, 256], got ", opt.eval_count);
  if (opt.shuffle_buffer < 0) usage_fail("--shuffle-buffer must be >= 0, got ", opt.shuffle_buffer);
  try {
    set_matmul_precision(parse_matmul_precision(opt.matmul, "--matmul"));
  } catch (const Error& e) {
    usage_fail(e.what());
  }
  if (opt.lpips.empty() && opt.given("--lpips-weight")) usage_fail("--lpips-weight needs --lpips FILES");
  if (!(opt.lpips_weight >= 0) || !std::isfinite(opt.lpips_weight))
    usage_fail("--lpips-weight must be a finite number >= 0, got ", opt.lpips_weight);
  if (!opt.gan)
    for (const char* f : {"--disc-weight", "--disc-layers", "--disc-ndf", "--disc-start"})
      if (opt.given(f)) usage_fail(f, " needs --gan");
  if (!(opt.disc.disc_weight >= 0) || !std::isfinite(opt.disc.disc_weight))
    usage_fail("--disc-weight must be a finite number >= 0, got ", opt.disc.disc_weight);
  if (opt.disc.layers < 1 || opt.disc.layers > 6) usage_fail("--disc-layers must be in [1, 6], got ", opt.disc.layers);
  if (opt.disc.ndf < 1 || opt.disc.ndf > 1024) usage_fail("--disc-ndf must be in [1, 1024], got ", opt.disc.ndf);
  if (opt.disc.start < 0) usage_fail("--disc-start must be >= 0, got ", opt.disc.start);
  if (!opt.output.empty()) check_output_dir(opt.output, "-o");
  apply_common(opt.common);
  // "auto" stays on the CPU until the GPU loop has been measured against it on a lent GPU
  // (tests/gpu/test_cuda_train.cpp), as in hwaga train; --device cuda asks for it.
  if (opt.common.device == "auto") opt.common.device = "cpu";
  std::unique_ptr<TrainOps> gpu_ops;  // --device cuda: the encoder and decoder run on the GPU
  if (opt.common.device == "cuda") {
    if (opt.gan || !opt.lpips.empty())
      usage_fail("--device cuda: the GAN and LPIPS terms train on the CPU only; drop --gan/--lpips or use --device cpu");
    if (opt.dist.world > 1) usage_fail("--device cuda: train-tokenizer runs one process; --world must be 1");
    if (opt.matmul != "f32") usage_fail("--matmul ", opt.matmul, ": the GPU's stage-1 products are f32 only");
    if (!opt.dump_step.empty()) usage_fail("--dump-step needs --device cpu");
    std::string why;
    gpu_ops = make_cuda_train_ops(0, &why);
    if (!gpu_ops) fail("--device cuda: the training ops are not available: ", why);
    say("training on " + gpu_ops->name() + " (the quantizer and its EMA codebook on the host)");
  }

  // ---- model ----
  Stage1Config cfg;
  TensorMap init_tensors;
  std::shared_ptr<SafetensorsFile> init_file;
  if (opt.resume) {
    cfg = stage1_config_from_json(rmeta.at("config").at("stage1"), ckpt_path + ": train.config.stage1");
  } else if (!opt.init.empty()) {
    init_file = std::make_shared<SafetensorsFile>(read_model_file(opt.init));
    const nlohmann::json mc = model_config(*init_file);
    if (!mc.contains("stage1")) fail(opt.init, ": not an image tokenizer file (no config.stage1)");
    const Stage1Config fc = stage1_config_from_json(mc["stage1"], opt.init + ": config.stage1");
    cfg = opt.config.empty() ? (opt.preset.empty() ? fc : preset_config(opt.preset)) : read_config_file(opt.config);
    if (stage1_config_to_json(cfg) != stage1_config_to_json(fc))
      fail(opt.init, ": its stage-1 config differs from the one given with --config/--preset");
  } else {
    cfg = opt.config.empty() ? preset_config(opt.preset) : read_config_file(opt.config);
  }
  std::unique_ptr<TokenizerTrainer> trp = make_tokenizer_trainer(cfg, opt.seed);
  TokenizerTrainer& tr = *trp;
  if (gpu_ops) tr.to_device(*gpu_ops);  // before the optimizer state exists: AdamW follows the params
  AdamW adam(AdamWOptions{float(opt.beta1), float(opt.beta2), 1e-8f, 0.0f});
  std::unique_ptr<Lpips> lpips;
  if (!opt.lpips.empty()) {
    std::vector<std::string> files;
    for (size_t a = 0; a <= opt.lpips.size();) {
      const size_t b = std::min(opt.lpips.find(',', a), opt.lpips.size());
      if (b > a) files.push_back(opt.lpips.substr(a, b - a));
      a = b + 1;
    }
    lpips = std::make_unique<Lpips>(Lpips::load(files));
    if (cfg.net.resolution < 16) usage_fail("--lpips needs pictures of at least 16x16; this model's are ", cfg.net.resolution);
  }
  std::unique_ptr<AdversarialLoss> gan;
  if (opt.gan) {
    const int64_t L = PatchDiscriminator::logits_size(cfg.net.resolution, opt.disc.layers);
    if (L < 1)
      usage_fail("--disc-layers ", opt.disc.layers, ": the discriminator's convolutions leave no logits of ",
                 cfg.net.resolution, "x", cfg.net.resolution, " pictures (use fewer layers)");
    gan = std::make_unique<AdversarialLoss>(opt.disc, cfg.net.out_ch, mix_seed(opt.seed, "discriminator"),
                                            AdamWOptions{float(opt.beta1), float(opt.beta2), 1e-8f, 0.0f});
  }
  int64_t start = 0;
  if (opt.resume) {
    restore_checkpoint(resumed, ckpt_path, tr.params(), &adam);
    if (gan) gan->load(resumed.tensors, rmeta.value("disc_optimizer_steps", int64_t(0)), ckpt_path);
    start = rmeta.at("step").get<int64_t>();
  } else if (init_file) {
    tr.load_model_tensors(init_file->tensors, opt.init);
    init_file.reset();
  }

  // ---- data ----
  std::vector<std::string> shards, eval_shards;
  if (opt.resume) {
    shards = rmeta.at("shards").get<std::vector<std::string>>();
    if (!opt.shards.empty() && absolute_shards(opt.shards) != shards)
      fail("--shards ", opt.shards, " lists other files than the checkpoint was trained on (", shards.size(),
           " shards, first ", shards.empty() ? "" : shards[0], "); start a new --work-dir for other data");
    eval_shards = opt.eval_shards.empty() ? rmeta.value("eval_shards", std::vector<std::string>{})
                                          : absolute_shards(opt.eval_shards);
  } else {
    shards = absolute_shards(opt.shards);
    if (!opt.eval_shards.empty()) eval_shards = absolute_shards(opt.eval_shards);
  }
  const int R = cfg.net.resolution;
  data::ShardOptions dopt;
  dopt.shards = shards;
  dopt.image_size = R;
  dopt.random_crop = true;
  dopt.flip = !opt.no_flip;
  dopt.shuffle_buffer = opt.shuffle_buffer;
  dopt.seed = opt.seed;
  data::ShardDataset ds(dopt);
  if (opt.resume) {
    const nlohmann::json& d = rmeta.at("data");
    ds.restore({d.at("epoch").get<int64_t>(), d.at("consumed").get<int64_t>()});
  }
  // the fixed pictures for samples and PSNR: the eval shards, else the first training pictures
  Tensor fixed;
  if (!eval_shards.empty() || opt.sample_every > 0)
    fixed = fixed_pictures(eval_shards.empty() ? shards : eval_shards, eval_shards.empty() ? 8 : opt.eval_count, R);
  fs::create_directories(work);

  // ---- data parallel: rank 0 listens, the other ranks connect (nothing when --world 1) ----
  DataParallel dp(data_parallel_options(opt.dist), command_fingerprint(*opt.app));
  const int W = dp.world();
  if (W > 1) {
    say(dp.leader() ? "data parallel: rank 0 of " + std::to_string(W) + " at " + opt.dist.addr + ", " +
                          std::to_string(opt.batch / W) + " of each batch's " + std::to_string(opt.batch) +
                          " pictures per rank"
                    : "data parallel: rank " + std::to_string(dp.rank()) + " of " + std::to_string(W) +
                          " connected to " + opt.dist.addr + " (rank 0 reports progress)");
    g_quiet = !dp.leader();
    tr.set_data_parallel(&dp);
    if (gan) gan->set_data_parallel(&dp);
    for (auto& p : tr.params().all()) dp.broadcast(p->v(), p->numel());  // rank 0's start, buffers too
    if (gan)
      for (auto& p : gan->discriminator().params().all()) dp.broadcast(p->v(), p->numel());
  }

  LrSchedule sched;
  sched.lr = float(opt.lr);
  sched.min_lr = float(opt.min_lr);
  sched.warmup = opt.warmup;
  sched.total = opt.steps;
  sched.kind = opt.min_lr < opt.lr ? "cosine" : "constant";
  const int64_t end = opt.stop_after > 0 ? std::min(opt.steps, start + opt.stop_after) : opt.steps;
  const nlohmann::json options = {
      {"steps", opt.steps},         {"batch", opt.batch},           {"lr", opt.lr},
      {"min_lr", opt.min_lr},       {"warmup", opt.warmup},         {"beta1", opt.beta1},
      {"beta2", opt.beta2},         {"seed", opt.seed},             {"save_every", opt.save_every},
      {"sample_every", opt.sample_every}, {"eval_count", opt.eval_count}, {"shuffle_buffer", opt.shuffle_buffer},
      {"no_flip", opt.no_flip},     {"gan", opt.gan},               {"lpips", opt.lpips},
      {"lpips_weight", opt.lpips_weight}, {"matmul", opt.matmul}};
  nlohmann::json options_all = options;
  options_all.update(tr.loss_options());
  if (opt.gan)
    options_all.update({{"disc_weight", opt.disc.disc_weight}, {"disc_layers", opt.disc.layers},
                        {"disc_ndf", opt.disc.ndf}, {"disc_start", opt.disc.start}});
  auto save = [&](int64_t step) {
    const data::DataState st = ds.state();
    nlohmann::json meta = {{"stage", cfg.type},
                           {"step", step},
                           {"config", {{"stage1", stage1_config_to_json(cfg)}}},
                           {"shards", shards},
                           {"eval_shards", eval_shards},
                           {"options", options_all},
                           {"data", {{"epoch", st.epoch}, {"consumed", st.consumed}}}};
    TensorMap extra;
    if (gan) {
      gan->save(extra);
      meta["disc_optimizer_steps"] = gan->optimizer().steps();
    }
    save_checkpoint(ckpt_path, tr.params(), &adam, extra, meta);
  };
  InterruptGuard guard;
  TrainLog log(dp.leader() ? (fs::path(work) / "train.jsonl").string() : std::string(), opt.resume ? start : -1);
  auto evaluate = [&](int64_t step) {
    if (eval_shards.empty() || fixed.dim(0) == 0 || !dp.leader()) return;
    const double p = psnr(fixed, reconstruct_all(tr, fixed));
    char buf[96];
    std::snprintf(buf, sizeof buf, "step %lld: eval PSNR %.2f dB on %lld pictures", (long long)step, p,
                  (long long)fixed.dim(0));
    say(buf);
    log.event("eval", {{"step", step}, {"psnr", p}, {"pictures", fixed.dim(0)}});
  };
  log.event(opt.resume ? "resume" : "start", {{"step", start},
                                             {"params", tr.params().num_trainable()},
                                             {"shards", shards.size()},
                                             {"config", stage1_config_to_json(cfg)},
                                             {"options", options_all}});
  if (matmul_precision() == MatmulPrecision::bf16)
    say(std::string("matrix products in bf16 with f32 accumulation: ") + cpu::gemm_bf16_kernel_name());
  say(describe(cfg, tr.params().num_trainable()) + "; " + std::to_string(shards.size()) + " shard(s), batch " +
      std::to_string(opt.batch) + ", " + std::to_string(num_threads()) + " threads");
  if (start >= end) say("the checkpoint is already at step " + std::to_string(start) + " of " + std::to_string(opt.steps));

  // ---- the loop ----
  TrainProgress progress(kPrefix, start, opt.steps, "img");
  const int64_t K = cfg.n_embed, per_image = int64_t(3) * R * R;
  int64_t step = start, last_saved = opt.resume ? start : -1;
  bool peer_stopped = false;
  for (; step < end; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<data::Sample> batch = ds.next_batch(opt.batch);
    Tensor x = Tensor::empty({int64_t(batch.size()), 3, R, R});
    for (size_t i = 0; i < batch.size(); ++i)
      std::memcpy(x.f32() + int64_t(i) * per_image, batch[i].image.f32(), size_t(per_image) * sizeof(float));
    const int64_t epoch = batch.empty() ? 0 : batch.back().epoch;
    batch.clear();
    // data parallel: every rank reads the same global batch and trains on its rows
    const int64_t rows = x.dim(0) / W;
    const Tensor xl = W > 1 ? x.slice0(dp.rank() * rows, (dp.rank() + 1) * rows).clone() : x;
    TensorMap dump;
    if (!opt.dump_step.empty() && step == start && dp.leader()) {
      dump["input"] = x.clone();
      for (auto& p : tr.params().all()) dump["before." + p->name] = p->value.clone();
      if (gan)  // before the generator's half moves the running statistics
        for (auto& p : gan->discriminator().params().all()) dump["disc.before." + p->name] = p->value.clone();
    }
    tr.params().zero_grad();
    AdversarialLoss* g = gan && step >= opt.disc.start ? gan.get() : nullptr;
    const Stage1Terms terms{lpips.get(), float(opt.lpips_weight), g};
    Stage1TermStats ts;
    TokStepStats st = tr.train_step(xl, mix_seed(opt.seed, uint64_t(step), 0x5271), terms, ts);
    GanStepStats& gst = ts.gan;
    bool stop = interrupted();
    if (W > 1) {  // the mean over the ranks' equal shares: the global batch's gradient and losses
      double sums[4] = {st.loss, st.recon, st.commitment, stop ? 1.0 : 0.0};
      dp.all_reduce_grads(tr.params(), 1.0f / float(W), sums, 4);
      st.loss = sums[0] / W, st.recon = sums[1] / W, st.commitment = sums[2] / W;
      peer_stopped = sums[3] > 0 && !stop;
      stop = sums[3] > 0;
    }
    const float lr = sched.at(step);
    if (!dump.empty()) {
      for (auto& p : tr.params().all())
        if (p->grad.defined()) dump["grad." + p->name] = p->grad.clone();
      tr.dump_step(dump);
    }
    const double gnorm = tr.params().clip_grad_norm(0.0f);  // the norm only (and the NaN check)
    adam.step(tr.params(), lr);
    if (g) g->discriminator_step(xl, tr.last_recon(), lr, gst, dump.empty() ? nullptr : &dump);
    if (!dump.empty()) {
      for (auto& p : tr.params().all()) dump["after." + p->name] = p->value.clone();
      Tensor lv = Tensor::empty({3});
      lv.f32()[0] = float(st.loss), lv.f32()[1] = float(st.recon), lv.f32()[2] = float(st.commitment);
      dump["loss"] = lv;
      if (lpips) {
        Tensor pv = Tensor::empty({1});
        pv.f32()[0] = float(ts.lpips);
        dump["lpips"] = pv;
      }
      if (g) {
        Tensor gv = Tensor::empty({5});
        const double v[5] = {gst.loss_gen, gst.g_weight, gst.loss_disc, gst.logits_real, gst.logits_fake};
        for (int i = 0; i < 5; ++i) gv.f32()[i] = float(v[i]);
        dump["gan"] = gv;
      }
      write_safetensors(opt.dump_step, dump,
                        {{"step", std::to_string(step)}, {"lr", std::to_string(lr)},
                         {"loss", std::to_string(st.loss)}});
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    nlohmann::json line = {{"step", step + 1},
              {"loss", st.loss},
              {"recon", st.recon},
              {"commitment", st.commitment},
              {"codes_used", st.codes_used},
              {"usage", double(st.codes_used) / double(K)},
              {"perplexity", st.perplexity},
              {"restarted", st.restarted},
              {"grad_norm", gnorm},
              {"lr", lr},
              {"img_per_s", secs > 0 ? double(x.dim(0)) / secs : 0.0},
              {"epoch", epoch}};
    if (lpips) line["lpips"] = ts.lpips;
    if (g)
      line.update({{"loss_gen", gst.loss_gen}, {"g_weight", gst.g_weight}, {"loss_disc", gst.loss_disc},
                   {"logits_real", gst.logits_real}, {"logits_fake", gst.logits_fake}});
    if (!dp.leader()) {
      if (stop) {
        ++step;
        break;
      }
      continue;  // rank 0 logs, writes the checkpoints and samples
    }
    log.step(line);
    char extra[192];
    int n = std::snprintf(extra, sizeof extra, "recon %.4f  commit %.4f  codes %lld/%lld  ppl %.1f", st.recon,
                          st.commitment, (long long)st.codes_used, (long long)K, st.perplexity);
    if (lpips) n += std::snprintf(extra + n, sizeof extra - size_t(n), "  lpips %.4f", ts.lpips);
    if (g)
      std::snprintf(extra + n, sizeof extra - size_t(n), "  gen %.3f x%.2f  disc %.3f", gst.loss_gen, gst.g_weight,
                    gst.loss_disc);
    progress.update(step, st.loss, lr, double(x.dim(0)), extra);
    const int64_t done = step + 1;
    if (stop) {
      ++step;
      break;
    }
    if (opt.save_every > 0 && done % opt.save_every == 0 && done < end) {
      save(done);
      last_saved = done;
      log.event("checkpoint", {{"step", done}, {"path", ckpt_path}});
      evaluate(done);
    }
    if (opt.sample_every > 0 && done % opt.sample_every == 0 && fixed.dim(0) > 0) {
      const fs::path dir = fs::path(work) / "samples";
      fs::create_directories(dir);
      char name[64];
      std::snprintf(name, sizeof name, "step%07lld.png", (long long)done);
      write_sample_grid((dir / name).string(), fixed, reconstruct_all(tr, fixed), done);
      log.event("sample", {{"step", done}, {"path", (dir / name).string()}});
    }
  }
  if (!dp.leader()) return follower_exit(kPrefix, step, peer_stopped);
  progress.finish();
  if (step != last_saved) {
    save(step);
    log.event("checkpoint", {{"step", step}, {"path", ckpt_path}});
    if (!interrupted() && !peer_stopped) evaluate(step);
  }
  if (peer_stopped && !interrupted()) {
    say("another rank was interrupted at step " + std::to_string(step) + "; saved " + ckpt_path +
        " (continue with --resume)");
    log.event("end", {{"step", step}, {"interrupted", true}});
    return 130;
  }
  if (interrupted()) {
    say("interrupted at step " + std::to_string(step) + "; saved " + ckpt_path + " (continue with --resume)");
    log.event("end", {{"step", step}, {"interrupted", true}});
    return 128 + interrupt_signal();
  }
  log.event("end", {{"step", step}, {"data", ds.stats().summary()}});
  say("data: " + ds.stats().summary());
  std::printf("%s: step %lld/%lld\n", ckpt_path.c_str(), (long long)step, (long long)opt.steps);
  if (!opt.output.empty()) {
    export_model(opt.output, cfg, tr, step);
    std::printf("wrote %s\n", opt.output.c_str());
  }
  return 0;
}

Command reg("train-tokenizer", "Train the image tokenizer (stage 1: an RQ-VAE or a VQGAN) on tar shards", [](CLI::App& sub) {
  auto opt = std::make_shared<TokOptions>();
  opt->app = &sub;
  sub.add_option("--shards", opt->shards, "tar shards: a folder, a list a.tar,b.tar, a range {00000..00009} or a glob");
  sub.add_option("--config", opt->config, "stage-1 config JSON (the \"stage1\" object of a model file)");
  sub.add_option("--preset", opt->preset, "a built-in config instead of --config: emoji64 (64x64 -> 8x8x4, K 512)");
  sub.add_option("--init", opt->init, "start from the weights of a stage-1 model file (fine-tuning)");
  sub.add_option("--work-dir", opt->work_dir, "folder for the checkpoint, log and samples")->required();
  sub.add_option("--steps", opt->steps, "training steps in all (the schedule's length)");
  sub.add_option("--stop-after", opt->stop_after, "stop this run after this many more steps (0 = run to --steps)");
  sub.add_option("--batch", opt->batch, "pictures per step (default 8)");
  sub.add_option("--lr", opt->lr, "learning rate (default 4e-5, the reference's)");
  sub.add_option("--min-lr", opt->min_lr, "cosine down to this at --steps (default: --lr, i.e. constant)");
  sub.add_option("--warmup", opt->warmup, "linear warm-up steps (default 0)");
  sub.add_option("--beta1", opt->beta1, "Adam beta1 (default 0.5)");
  sub.add_option("--beta2", opt->beta2, "Adam beta2 (default 0.9)");
  sub.add_option("--seed", opt->seed, "seed of the init, data order, augmentation and code restarts (default 0)");
  sub.add_option("--save-every", opt->save_every, "checkpoint (and eval) every N steps (0 = at the end only)");
  sub.add_option("--sample-every", opt->sample_every, "write a reconstruction grid every N steps (0 = never)");
  sub.add_option("--eval-shards", opt->eval_shards, "shards for the PSNR reported at each checkpoint");
  sub.add_option("--eval-count", opt->eval_count, "eval pictures (default 16)");
  sub.add_option("--shuffle-buffer", opt->shuffle_buffer, "samples in the shuffle buffer (default 1000)");
  sub.add_flag("--no-flip", opt->no_flip, "no random horizontal flips");
  sub.add_flag("--gan", opt->gan,
               "add the patch-GAN term of the released recipe (hinge loss, adaptive weight; a discriminator "
               "trained alongside)");
  sub.add_option("--matmul", opt->matmul,
                 "precision of the convolutions' matrix products: f32 (default) or bf16 (f32 accumulation and "
                 "master weights; uses AMX / AVX512-BF16 where the CPU has them)");
  sub.add_option("--lpips", opt->lpips,
                 "add the LPIPS perceptual term: VGG16 and LPIPS head weights, comma-separated files (e.g. "
                 "torchvision's vgg16-397923af.pth and taming's vgg.pth)");
  sub.add_option("--lpips-weight", opt->lpips_weight, "weight of the LPIPS term (default 1.0, the reference's)");
  sub.add_option("--disc-weight", opt->disc.disc_weight, "weight of the GAN terms (default 0.75, the reference's)");
  sub.add_option("--disc-layers", opt->disc.layers, "discriminator stride-2 conv layers (default 2)");
  sub.add_option("--disc-ndf", opt->disc.ndf, "discriminator filters of the first conv (default 64)");
  sub.add_option("--disc-start", opt->disc.start, "first step with the GAN (default 0)");
  sub.add_flag("--resume", opt->resume, "continue WORK/checkpoint.safetensors");
  sub.add_option("-o,--output", opt->output, "write a stage-1 model file at the end");
  sub.add_flag("--export-only", opt->export_only, "write -o from WORK/checkpoint.safetensors without training");
  add_dist_options(sub, opt->dist);
  sub.add_option("--dump-step", opt->dump_step, "")->group("");  // tests: the first step's tensors
  add_common_options(sub, opt->common);
  return [opt] { return run_with_exit_codes(kPrefix, [&] { return run_train_tokenizer(*opt); }); };
});

}  // namespace
}  // namespace hwaga::cli::train_tokenizer_cmd
