// hwaga train --tokenizer STAGE1.safetensors --shards SPEC --config stage2.json
//             --text-tokenizer bpe16k:VOCAB.json,MERGES.txt | spm:VOCAB_SIZE [--context N]
//             --work-dir DIR --steps N [--batch B] [--lr 5e-4] [--warmup 0] [--min-lr 0]
//             [--weight-decay 1e-4] [--dropout 0.1] [--clip 1.0] [--seed S]
//             [--balance] [--canonical-flat] [--cfg-drop P] [--code-noise P] [--self-feed P] [--eval-shards SPEC [--eval-count N]] [--save-every N] [--sample-every N --sample-prompt P ...] [--stop-after K]
//             [--resume] [--export model.safetensors [--export-dtype f32|bf16|f16]] [--threads N]
//             [--device cpu|cuda] [--world W --rank R --dist-addr HOST:PORT [--dist-timeout S]
//             [--dist-backend tcp|nccl]]
//
// Trains the text-conditioned RQ-Transformer (stage 2, config type "rq-transformer") against a
// frozen stage-1 RQ-VAE (architecture.md §2, §6.2), or minDALL-E's GPT (type "mindalle-gpt")
// against a frozen stage-1 model with one code per position, e.g. a VQGAN (§4.2, §6.3), on the
// CPU or, with --device cuda, on the GPU (the same trainer over train/train_ops.h's CUDA ops;
// the code cache is encoded and the samples painted by that GPU's backend):
//   1. every shard sample is encoded once with the stage-1 model into WORK/codes.safetensors
//      (train/code_cache.h; reused while the shards and the stage-1 file are unchanged);
//   2. the text tokenizer is the released CharBPE (bpe16k:...) or a SentencePiece model trained
//      on all cached captions (spm:N; character coverage 1.0, so Hangul survives);
//   3. steps: seeded batches (per-epoch permutation, one caption variant per sample and epoch),
//      loss 0.9 image CE + 0.1 text CE, AdamW (decay on Linear weights only), warm-up + cosine,
//      gradient clipping, residual dropout keyed by (seed, step). The recipe follows the model:
//        rq-transformer  β 0.9/0.95, --lr default 5e-4, --dropout default 0.1 (§6.2)
//        mindalle-gpt    β 0.9/0.99, --lr default 1e-4, --dropout default 0 (§6.3; pdrop 0.0, §4.2)
//      (both trainers sit behind Stage2Trainer below, so the loop is one);
//   4. WORK/checkpoint.safetensors every --save-every steps, at the end, and on SIGINT/SIGTERM
//      (then exit 130/143); WORK/train.jsonl one line per step; WORK/samples/*.png every
//      --sample-every steps (each --sample-prompt with seed = its index).
//
// --steps is the length of the run (the cosine schedule ends there); --stop-after K stops this
// invocation after K more steps (a checkpoint is written), and --resume continues from
// WORK/checkpoint.safetensors with the settings it records (model, tokenizer, data, seed, batch;
// the optimizer options may be given again to change them). A resumed run is bit for bit the
// run that was never stopped.
//
// --balance draws every json "group" of the shards equally often instead of every sample (a set
// where most samples are variants of a few, like the emoji's skin tones, otherwise spends most
// steps on those few); the data order of a run is fixed at its start.
//
// --matmul bf16 runs the linear layers' matrix products with bf16 inputs and f32 accumulation
// (cpu::gemm_bf16, several times sgemm's rate on CPUs with AMX; cuBLAS on the GPU); everything
// else stays f32 (f32 master weights, gradients and optimizer state).
//
// --canonical-flat gives the code positions of flat patches (a plain background) the codes of a
// picture filled with that colour (train/code_cache.h): the stage-1 encoder's attention writes
// each picture's identity into its background's codes, which no prompt predicts and which the
// model, having learnt them, follows when it samples them wrong.
//
// --cfg-drop P gives a share P of the rows the unconditional all-PAD text instead of their
// caption (train/code_cache.h), so that the model also learns the picture distribution without
// text: classifier-free guidance (generate --cfg S) samples from u + S(c - u) and needs it.
//
// --code-noise P feeds a share P of the input codes as uniform random codes (the targets stay
// the true codes; train/code_cache.h): the model learns not to trust a code it is given too far,
// which is what sampling needs, as it gives the model its own draws.
//
// --self-feed P replaces a share P of the input codes with the model's own draws from its
// teacher-forced logits of the same batch (an extra forward pass; train/self_feed.h): the errors
// sampling really makes, where --code-noise gives random ones.
//
// --eval-shards SPEC scores held-out pairs: the first --eval-count samples (caption variant 0),
// encoded once into WORK/eval-codes.safetensors, teacher-forced without dropout, at the start of a
// run, at each checkpoint and at the end; "eval" lines of train.jsonl and the console give the
// loss as training weighs it. The shards are recorded in the checkpoint and kept on --resume.
//
// --init MODEL fine-tunes a text-to-image model file: its stage-2 weights, config and text
// tokenizer start the run (in f32, whatever the file's dtype), and its stage 1 encodes the
// shards unless --tokenizer names another stage-1 file with the same codebook shape.
//
// --world W --rank R --dist-addr HOST:PORT: data parallel (train/data_parallel.h). The same
// command runs once per rank; every rank draws the same global batch and trains on its B/W rows,
// its losses normalised by the global batch's target counts (LossNorm) so that the gradients
// summed over the ranks are the global batch's; rank 0 alone encodes the code cache, trains a
// SentencePiece tokenizer (and sends it), writes the log, checkpoints and samples. An interrupt
// on any rank stops all of them after the same step (rank 0 saves; the others exit 130).
// --dist-backend nccl (with --device cuda; one process per GPU, e.g. CUDA_VISIBLE_DEVICES=R)
// sums the gradients GPU to GPU with NCCL (train/nccl_comm.h); the TCP link still carries the
// rendezvous, the losses, the interrupt flag and the broadcasts.
//
// Exit codes: 0 done, 1 error (files, data, a config that does not pair with the stage-1 model
// or the tokenizer), 2 bad option value, 128+signal when interrupted (after saving).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
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
#include "progress.h"
#include "rq/rqvae.h"
#include "t2i_options.h"
#include "text/charbpe.h"
#include "text/spm_tokenizer.h"
#include "train/self_feed.h"
#include "train/checkpoint.h"
#include "train/nccl_comm.h"
#include "train/train_ops.h"
#include "train/code_cache.h"
#include "train/data_parallel.h"
#include "train/mindalle_gpt_trainer.h"
#include "train/optim.h"
#include "train/rq_transformer_trainer.h"
#include "train/stage2_export.h"
#include "train/stage2_trainer.h"
#include "train/train_log.h"
#include "train/transformer_ops.h"
#include "kernels/cpu/gemm.h"

namespace hwaga::cli::train_cmd {  // a namespace per command (unity build)
namespace {

namespace fs = std::filesystem;
using namespace hwaga::train;

constexpr const char* kPrefix = "hwaga train: ";

struct TrainCliOptions {
  CommonOptions common;
  std::string tokenizer, shards, config, text_tokenizer, work_dir, export_path, export_dtype = "f32";
  std::string init;  // fine-tuning: a model file whose stage 2, tokenizer (and stage 1) start the run
  int context = 0;
  int64_t steps = 0, stop_after = 0, save_every = 0, sample_every = 0;
  int batch = 8;
  std::string eval_shards;  // held-out shards: their loss at each checkpoint
  int eval_count = 64;
  double lr = 5e-4, min_lr = 0.0, weight_decay = 1e-4, dropout = 0.1, clip = 1.0;
  double cfg_drop = 0.0;  // share of rows trained with the unconditional (all-PAD) text
  double code_noise = 0.0;  // share of input codes replaced by uniform random codes
  double self_feed = 0.0;   // share of input codes replaced by the model's own draws
  std::string matmul = "f32";  // the linear layers' matrix products: f32 or bf16 (train/transformer_ops.h)
  int64_t warmup = 0;
  uint64_t seed = 0;
  std::vector<std::string> sample_prompts;
  bool resume = false;
  bool balance = false;  // draw every json "group" equally often (train/code_cache.h)
  bool canonical_flat = false;  // flat patches get the codes of a flat picture (train/code_cache.h)
  std::string dump_step;  // hidden: the first step's batch, losses and gradients (parity tests)
  DistCliOptions dist;  // data parallel (train/data_parallel.h)
  std::string dist_backend = "tcp";  // how the gradients are summed: tcp, or nccl (GPUs)
  CLI::App* app = nullptr;
  bool given(const char* name) const { return app && app->count(name) > 0; }
};

bool g_quiet = false;  // ranks 1..W-1 of a data-parallel run leave the talking to rank 0

void say(const std::string& s) {
  if (!g_quiet) std::fprintf(stderr, "%s%s\n", kPrefix, s.c_str());
}

// ---- the text tokenizer ----

struct TextTokSpec {
  std::string kind;  // "bpe16k" | "spm"
  std::string vocab, merges;
  int spm_vocab = 0;
};

TextTokSpec parse_text_tokenizer(const std::string& s) {
  TextTokSpec t;
  const size_t colon = s.find(':');
  const std::string kind = s.substr(0, colon), rest = colon == std::string::npos ? "" : s.substr(colon + 1);
  if (kind == "bpe16k") {
    const size_t comma = rest.find(',');
    if (comma == std::string::npos || comma == 0 || comma + 1 == rest.size())
      usage_fail("--text-tokenizer ", s, ": expected bpe16k:VOCAB.json,MERGES.txt");
    t.kind = "bpe16k";
    t.vocab = rest.substr(0, comma);
    t.merges = rest.substr(comma + 1);
  } else if (kind == "spm") {
    try {
      size_t used = 0;
      t.spm_vocab = std::stoi(rest, &used);
      if (used != rest.size()) throw std::invalid_argument("trailing text");
    } catch (const std::exception&) {
      usage_fail("--text-tokenizer ", s, ": expected spm:VOCAB_SIZE (an integer)");
    }
    if (t.spm_vocab < 3) usage_fail("--text-tokenizer ", s, ": the vocabulary needs at least 3 ids (pad, unk, one piece)");
    t.kind = "spm";
  } else {
    usage_fail("--text-tokenizer ", s, ": expected bpe16k:VOCAB.json,MERGES.txt or spm:VOCAB_SIZE");
  }
  return t;
}

std::unique_ptr<TextTokenizer> make_text_tokenizer(const TextTokSpec& t, int context, const CodeCache& cache) {
  if (t.kind == "bpe16k") return charbpe_from_files(t.vocab, t.merges, context);
  std::vector<std::string> sentences;
  for (auto& v : cache.captions)
    for (auto& s : v) sentences.push_back(s);
  SpmTrainOptions o;
  o.vocab_size = t.spm_vocab;
  o.context_length = context;
  o.character_coverage = 1.0;
  o.num_threads = 1;
  say("training a SentencePiece tokenizer (" + std::to_string(t.spm_vocab) + " ids) on " +
      std::to_string(sentences.size()) + " captions");
  try {
    return SpmTokenizer::train(sentences, o);
  } catch (const Error& e) {
    fail("--text-tokenizer spm:", t.spm_vocab, ": SentencePiece cannot make a vocabulary of ", t.spm_vocab, " ids from ",
         sentences.size(), " captions (", e.what(), "); choose another VOCAB_SIZE");
  }
}

// ---- samples ----

void write_samples(const TrainCliOptions& opt, const std::string& work, int64_t step, const SafetensorsFile& s1file,
                   const Stage2Config& cfg, const ParamSet& params, const TextSettings& text,
                   const std::string& tok_json, Backend& be) {
  const fs::path dir = fs::path(work) / "samples";
  fs::create_directories(dir);
  const std::string tmp = (dir / ".model-tmp.safetensors").string();
  write_stage2_model(tmp, s1file, cfg, params.host_values(), text, tok_json, DType::F32);
  struct Cleanup {
    std::string p;
    ~Cleanup() {
      std::error_code ec;
      fs::remove(p, ec);
    }
  } cleanup{tmp};
  SafetensorsFile f = read_model_file(tmp);
  auto model = TextToImageModel::load(f, be);
  for (size_t i = 0; i < opt.sample_prompts.size(); ++i) {
    SamplingArgs a;
    a.seed = i;
    a.seed_given = true;
    const Sampling s = resolve_sampling(a, *model);
    const std::vector<int32_t> ids = prompt_ids(model->tokenizer(), opt.sample_prompts[i], "--sample-prompt", kPrefix);
    Tensor codes = sample_codes(*model, ids, s, s.seed).codes;
    Tensor x = model->decode(codes);
    char name[64];
    std::snprintf(name, sizeof name, "step%07lld-%02zu.png", (long long)step, i);
    write_png((dir / name).string(), x.reshape({3, x.dim(2), x.dim(3)}),
              {{"Software", software_string()}, {"Description", opt.sample_prompts[i]},
               {"hwaga.step", std::to_string(step)}, {"hwaga.seed", std::to_string(i)}});
  }
}

int run_train(TrainCliOptions opt) {
  g_quiet = false;
  // ---- option values that can never work ----
  if (opt.work_dir.empty()) usage_fail("--work-dir is required");
  const std::string work = opt.work_dir;
  const std::string ckpt_path = (fs::path(work) / "checkpoint.safetensors").string();
  nlohmann::json rmeta;  // the resumed checkpoint's metadata
  Checkpoint resumed;
  if (opt.resume) {
    if (!fs::exists(ckpt_path)) fail("--resume: there is no checkpoint in ", work, " (", ckpt_path, ")");
    resumed = read_checkpoint(ckpt_path);
    rmeta = resumed.meta;
    const std::string stage = rmeta.value("stage", std::string());
    if (stage != kStage2RqTransformer && stage != kStage2MindalleGpt)
      fail(ckpt_path, ": a checkpoint of stage \"", rmeta.value("stage", std::string("?")), "\", not of \"",
           kStage2RqTransformer, "\" or \"", kStage2MindalleGpt, "\" (hwaga train-tokenizer writes stage-1 checkpoints)");
    const nlohmann::json& o = rmeta["options"];
    // the recorded settings, unless given again
    auto take = [&](const char* flag, const char* key, auto& v) {
      if (!opt.given(flag) && o.contains(key)) v = o[key].get<std::decay_t<decltype(v)>>();
    };
    take("--steps", "steps", opt.steps);
    take("--lr", "lr", opt.lr);
    take("--min-lr", "min_lr", opt.min_lr);
    take("--warmup", "warmup", opt.warmup);
    take("--weight-decay", "weight_decay", opt.weight_decay);
    take("--dropout", "dropout", opt.dropout);
    take("--cfg-drop", "cfg_drop", opt.cfg_drop);
    take("--code-noise", "code_noise", opt.code_noise);
    take("--self-feed", "self_feed", opt.self_feed);
    take("--eval-count", "eval_count", opt.eval_count);
    take("--matmul", "matmul", opt.matmul);
    take("--clip", "clip", opt.clip);
    take("--save-every", "save_every", opt.save_every);
    take("--sample-every", "sample_every", opt.sample_every);
    if (!opt.given("--sample-prompt") && o.contains("sample_prompts"))
      opt.sample_prompts = o["sample_prompts"].get<std::vector<std::string>>();
    for (auto [flag, key] : {std::pair{"--batch", "batch"}, std::pair{"--seed", "seed"}}) {
      const bool same = std::string(key) == "batch" ? o.value(key, 0) == opt.batch : o.value(key, uint64_t(0)) == opt.seed;
      if (opt.given(flag) && !same)
        usage_fail(flag, " differs from the checkpoint's (", o[key].dump(),
                   "); a resumed run keeps it (start a new --work-dir to change it)");
    }
    if (opt.given("--balance") && !o.value("balance", false))
      usage_fail("--balance: the checkpoint's run draws every sample equally often; a resumed run keeps its data "
                 "order (start a new --work-dir, or --init from an export, to balance)");
    opt.batch = o.value("batch", opt.batch);
    opt.seed = o.value("seed", opt.seed);
    opt.balance = o.value("balance", false);
    if (opt.given("--canonical-flat") && !o.value("canonical_flat", false))
      usage_fail("--canonical-flat: the checkpoint's run trained on the encoder's own codes; start a new "
                 "--work-dir (or --init from an export) to switch");
    opt.canonical_flat = o.value("canonical_flat", false);
  } else {
    if (opt.shards.empty()) usage_fail("--shards is required (or --resume)");
    if (!opt.init.empty()) {
      // Fine-tuning: the model file brings its config, text tokenizer and (by default) stage 1.
      if (!opt.config.empty() || !opt.text_tokenizer.empty() || opt.context > 0)
        usage_fail("--init ", opt.init, " takes the config, text tokenizer and context from the model file; "
                   "drop --config/--text-tokenizer/--context");
      if (opt.tokenizer.empty()) opt.tokenizer = opt.init;
    } else {
      if (opt.tokenizer.empty()) usage_fail("--tokenizer STAGE1.safetensors is required (or --resume, or --init MODEL)");
      if (opt.config.empty()) usage_fail("--config stage2.json is required (or --resume, or --init MODEL)");
      if (opt.text_tokenizer.empty())
        usage_fail("--text-tokenizer is required (bpe16k:VOCAB.json,MERGES.txt or spm:N)");
    }
    if (fs::exists(ckpt_path))
      usage_fail(work, " already holds a checkpoint; continue it with --resume or choose another --work-dir");
  }
  if (opt.steps < 1) usage_fail("--steps must be at least 1, got ", opt.steps);
  if (opt.batch < 1) usage_fail("--batch must be at least 1, got ", opt.batch);
  if (!(opt.lr > 0) || !std::isfinite(opt.lr)) usage_fail("--lr must be positive, got ", opt.lr);
  if (!(opt.min_lr >= 0) || opt.min_lr > opt.lr) usage_fail("--min-lr must be in [0, --lr], got ", opt.min_lr);
  if (opt.warmup < 0) usage_fail("--warmup must be >= 0, got ", opt.warmup);
  if (!(opt.weight_decay >= 0)) usage_fail("--weight-decay must be >= 0, got ", opt.weight_decay);
  if (!(opt.dropout >= 0 && opt.dropout < 1)) usage_fail("--dropout must be in [0, 1), got ", opt.dropout);
  try {
    set_matmul_precision(parse_matmul_precision(opt.matmul, "--matmul"));
  } catch (const Error& e) {
    usage_fail(e.what());
  }
  if (!(opt.cfg_drop >= 0 && opt.cfg_drop < 1)) usage_fail("--cfg-drop must be in [0, 1), got ", opt.cfg_drop);
  if (!(opt.code_noise >= 0 && opt.code_noise < 1))
    usage_fail("--code-noise must be in [0, 1), got ", opt.code_noise);
  if (!(opt.self_feed >= 0 && opt.self_feed < 1)) usage_fail("--self-feed must be in [0, 1), got ", opt.self_feed);
  if (opt.eval_count < 1) usage_fail("--eval-count must be at least 1, got ", opt.eval_count);
  if (!(opt.clip >= 0)) usage_fail("--clip must be >= 0 (0 = no clipping), got ", opt.clip);
  if (opt.save_every < 0 || opt.sample_every < 0 || opt.stop_after < 0)
    usage_fail("--save-every, --sample-every and --stop-after must be >= 0");
  if (opt.sample_every > 0 && opt.sample_prompts.empty())
    usage_fail("--sample-every needs at least one --sample-prompt");
  DType export_dtype = DType::F32;
  try {
    export_dtype = parse_dtype(opt.export_dtype, "--export-dtype");
  } catch (const Error& e) {
    usage_fail(e.what());
  }
  TextTokSpec tspec;
  if (!opt.resume && opt.init.empty()) tspec = parse_text_tokenizer(opt.text_tokenizer);
  if (opt.resume && !opt.init.empty()) usage_fail("--init starts a new run; --resume continues one (not both)");
  if (opt.context < 0) usage_fail("--context must be positive, got ", opt.context);
  check_dist_options(opt.dist, opt.batch);
  if (opt.dist_backend != "tcp" && opt.dist_backend != "nccl")
    usage_fail("--dist-backend: expected tcp or nccl, got '", opt.dist_backend, "'");
  if (opt.dist_backend == "nccl") {
    if (opt.common.device != "cuda") usage_fail("--dist-backend nccl sums gradients on GPUs: it needs --device cuda");
    std::string why;
    if (!nccl_available(&why)) fail("--dist-backend nccl: ", why);
  }

  // "auto" stays on the CPU until the GPU loop has been measured against it on a lent GPU
  // (tests/gpu/test_cuda_train.cpp); --device cuda asks for it.
  if (opt.common.device == "auto") opt.common.device = "cpu";
  std::unique_ptr<Backend> cpu_be = select_backend(opt.common);
  std::unique_ptr<TrainOps> gpu_ops;  // --device cuda: the training ops and their backend
  if (cpu_be->device() == Device::CUDA) {
    std::string why;
    gpu_ops = make_cuda_train_ops(0, &why);
    if (!gpu_ops) fail("--device cuda: the training ops are not available: ", why);
    cpu_be.reset();
    say("training on " + gpu_ops->name());
  }
  Backend* be = gpu_ops ? &gpu_ops->backend() : cpu_be.get();  // encodes the data and paints the samples
  fs::create_directories(work);

  // ---- data parallel: rank 0 listens, the other ranks connect (nothing when --world 1) ----
  DataParallel dp(data_parallel_options(opt.dist), command_fingerprint(*opt.app));
  if (dp.world() > 1 && !opt.dump_step.empty() && opt.self_feed > 0)
    usage_fail("--dump-step: the self-fed inputs of the other ranks are not in the dump; use --world 1");
  if (dp.world() > 1) {
    say(dp.leader() ? "data parallel: rank 0 of " + std::to_string(dp.world()) + " at " + opt.dist.addr + ", " +
                          std::to_string(opt.batch / dp.world()) + " of each batch's " + std::to_string(opt.batch) +
                          " rows per rank"
                    : "data parallel: rank " + std::to_string(dp.rank()) + " of " + std::to_string(dp.world()) +
                          " connected to " + opt.dist.addr + " (rank 0 reports progress)");
    g_quiet = !dp.leader();
  }

  // ---- stage 1 ----
  std::string s1path = opt.tokenizer;
  FileFingerprint s1fp;
  if (opt.resume) {
    const FileFingerprint rec = fingerprint_from_json(rmeta.at("stage1"), ckpt_path + ": train.stage1");
    if (s1path.empty()) s1path = rec.path;
    if (!fs::exists(s1path))
      fail("the stage-1 model ", s1path, " recorded in ", ckpt_path, " is gone; pass its new place with --tokenizer");
    s1fp = fingerprint_file(s1path);
    if (!s1fp.same_file_content(rec))
      fail("the stage-1 model ", s1path, " differs from the one ", ckpt_path, " was trained with (size ", s1fp.size,
           " vs ", rec.size, ", hash ", s1fp.hash, " vs ", rec.hash, ")");
  } else {
    s1fp = fingerprint_file(s1path);
  }
  SafetensorsFile s1file = read_model_file(s1path);
  if (!model_config(s1file).contains("stage1")) fail(s1path, ": not an image tokenizer file (no config.stage1)");
  std::unique_ptr<ImageTokenizer> stage1 = load_image_tokenizer(s1file, *be);
  Tensor codebook;  // [K,E], what the RQ-Transformer embeds codes with (the GPT has its own tables)
  if (auto* rqvae = dynamic_cast<RQVAE*>(stage1.get())) codebook = be->download(rqvae->codebook());

  // ---- the stage-2 config (checked against stage 1 before any shard is encoded) ----
  Stage2Config cfg;
  SafetensorsFile init_file;  // --init
  if (opt.resume) {
    cfg = stage2_config_from_json(rmeta.at("config").at("stage2"), ckpt_path + ": train.config.stage2");
  } else if (!opt.init.empty()) {
    init_file = read_model_file(opt.init);
    const nlohmann::json mc = model_config(init_file);
    if (!mc.contains("stage2"))
      fail(opt.init, ": --init needs a text-to-image model file (config.stage2); this one is an image tokenizer only");
    cfg = stage2_config_from_json(mc["stage2"], opt.init + ": config.stage2");
  } else {
    nlohmann::json j = read_config_json(opt.config, "stage2");  // "type" defaults to rq-transformer
    if (j.is_object() && !j.contains("type")) j["type"] = kStage2RqTransformer;
    cfg = stage2_config_from_json(j, opt.config);
  }
  const std::string cfg_name = opt.resume ? ckpt_path : !opt.init.empty() ? opt.init : opt.config;
  check_stage1_pairing(cfg, cfg_name, *stage1, s1path, codebook);
  if (cfg.is_gpt() && !opt.resume) {  // minDALL-E's recipe (§6.3) and released pdrop (§4.2)
    if (!opt.given("--lr")) opt.lr = 1e-4;
    if (!opt.given("--dropout")) opt.dropout = 0.0;
    if (opt.min_lr > opt.lr) usage_fail("--min-lr must be in [0, --lr], got ", opt.min_lr);
  }

  // ---- data: the code cache ----
  std::vector<std::string> shards;
  if (opt.resume) {
    shards = rmeta.at("shards").get<std::vector<std::string>>();
    if (!opt.shards.empty()) {
      if (absolute_shards(opt.shards) != shards)
        fail("--shards ", opt.shards, " lists other files than the checkpoint was trained on (", shards.size(),
             " shards, first ", shards.empty() ? "" : shards[0], "); start a new --work-dir for other data");
    }
  } else {
    shards = absolute_shards(opt.shards);
  }
  // held-out shards: given, else the checkpoint's
  std::vector<std::string> eval_shards =
      !opt.eval_shards.empty() ? absolute_shards(opt.eval_shards)
      : opt.resume             ? rmeta.value("eval_shards", std::vector<std::string>{})
                               : std::vector<std::string>{};
  InterruptGuard guard;
  CodeCacheOptions co;
  co.shards = shards;
  co.log = [](const std::string& s) { say(s); };
  co.check_interrupt = [] { throw_if_interrupted(); };
  co.canonical_flat = opt.canonical_flat;
  if (!dp.leader()) dp.barrier();  // rank 0 encodes the shards into the shared cache first
  const CodeCache cache =
      load_or_build_code_cache((fs::path(work) / "codes.safetensors").string(), co, s1fp, *stage1);
  if (dp.leader()) dp.barrier();
  CodeCache eval_cache;  // rank 0 only: it reports the held-out loss
  if (!eval_shards.empty() && dp.leader()) {
    CodeCacheOptions eo = co;
    eo.shards = eval_shards;
    say("held-out shards: " + std::to_string(eval_shards.size()));
    eval_cache = load_or_build_code_cache((fs::path(work) / "eval-codes.safetensors").string(), eo, s1fp, *stage1);
    if (eval_cache.size() == 0) fail("--eval-shards: the held-out shards hold no usable sample");
  }

  // ---- text tokenizer ----
  std::unique_ptr<TextTokenizer> tok;
  TextSettings text;
  if (opt.resume) {
    tok = text_tokenizer_from_json_text(rmeta.at("tokenizer").get<std::string>(), ckpt_path + ": train.tokenizer");
    text.tokenizer = rmeta.at("config").at("text").at("tokenizer").get<std::string>();
    text.context_length = rmeta.at("config").at("text").at("context_length").get<int>();
  } else if (!opt.init.empty()) {
    const nlohmann::json mc = model_config(init_file);
    auto tj = init_file.metadata.find("tokenizer");
    if (tj == init_file.metadata.end() || !mc.contains("text"))
      fail(opt.init, ": --init needs a model with a text tokenizer (metadata \"tokenizer\")");
    tok = text_tokenizer_from_json_text(tj->second, opt.init + ": tokenizer");
    text.tokenizer = mc["text"].value("tokenizer", std::string());
    text.context_length = mc["text"].value("context_length", 0);
  } else {
    const int context = opt.context > 0 ? opt.context : cfg.text_length();
    if (context < 2)
      fail(opt.config, ": --context ", context, ": hwaga train trains text-conditioned models (a context > 1)");
    // a SentencePiece vocabulary is trained by rank 0 and sent to the others
    if (dp.leader() || tspec.kind != "spm") tok = make_text_tokenizer(tspec, context, cache);
    if (dp.world() > 1 && tspec.kind == "spm") {
      std::string j = dp.leader() ? tok->to_json() : std::string();
      dp.broadcast(j);
      if (!dp.leader()) tok = text_tokenizer_from_json_text(j, "rank 0's text tokenizer");
    }
    text.tokenizer = tspec.kind;
    text.context_length = context;
  }
  check_text_pairing(cfg, cfg_name, *tok,
                     opt.resume ? "the checkpoint's" : !opt.init.empty() ? "the --init model's" : opt.text_tokenizer);
  const std::string tok_json = tok->to_json();

  // ---- model, optimizer, schedule ----
  std::unique_ptr<Stage2Trainer> trainer;
  float image_weight = 0, text_weight = 0;
  if (cfg.is_gpt()) {
    GptTrainerOptions to;
    to.dropout = float(opt.dropout);
    to.text_pad_id = tok->pad_id;
    image_weight = to.image_weight, text_weight = to.text_weight;
    trainer = std::make_unique<TrainerOf<MindalleGptTrainer>>(cfg.gpt, to);
  } else {
    RqTrainerOptions to;
    to.dropout = float(opt.dropout);
    to.text_pad_id = tok->pad_id;
    image_weight = to.image_weight, text_weight = to.text_weight;
    trainer = std::make_unique<TrainerOf<RqTransformerTrainer>>(cfg.rq, codebook, to);
  }
  Stage2Trainer& tr = *trainer;
  const auto [beta1, beta2] = recipe_betas(cfg);
  AdamW adam(AdamWOptions{float(beta1), float(beta2), 1e-8f, float(opt.weight_decay)});
  int64_t start = 0;
  const bool fresh = !opt.resume && opt.init.empty();
  if (fresh) tr.init_weights(opt.seed);  // on the host, then moved
  if (gpu_ops) tr.to_device(*gpu_ops);    // before the optimizer state exists: AdamW follows the params
  TrainOps& ops = tr.params().ops();
  std::unique_ptr<NcclComm> nccl;  // --dist-backend nccl: rank 0's id travels over the TCP link
  if (opt.dist_backend == "nccl") {
    std::string id = dp.leader() ? NcclComm::unique_id() : std::string();
    dp.broadcast(id);
    nccl = std::make_unique<NcclComm>(dp.rank(), dp.world(), id, *gpu_ops);
    dp.set_nccl(nccl.get());
    say("gradients summed over NCCL, " + std::to_string(dp.world()) + " rank" + (dp.world() == 1 ? "" : "s"));
  }
  if (opt.resume) {
    restore_checkpoint(resumed, ckpt_path, tr.params(), &adam);
    start = rmeta.at("step").get<int64_t>();
    resumed = Checkpoint();
  } else if (!opt.init.empty()) {
    // stage2.* of the model file, converted to f32 (a bf16 export fine-tunes in f32).
    tr.params().load_values(init_file.tensors, opt.init);
    init_file = SafetensorsFile();
    say("fine-tuning from " + opt.init);
  }
  if (dp.world() > 1)  // every rank starts from rank 0's weights
    for (auto& p : tr.params().all()) {
      Tensor h = to_host(ops, p->value);
      dp.broadcast(h.f32(), p->numel());
      if (h.data() != p->value.data()) ops.write(p->v(), h.data(), h.nbytes());
    }
  LrSchedule sched;
  sched.lr = float(opt.lr);
  sched.min_lr = float(opt.min_lr);
  sched.warmup = opt.warmup;
  sched.total = opt.steps;
  CodeBatcher batcher(cache, *tok, opt.seed, opt.balance);
  batcher.set_uncond_prob(opt.cfg_drop);
  batcher.set_code_noise(opt.code_noise, cfg.image_vocab_size());
  if (matmul_precision() == MatmulPrecision::bf16)
    say(std::string("matrix products in bf16 with f32 accumulation: ") +
        (gpu_ops ? std::string("cuBLAS") : std::string(cpu::gemm_bf16_kernel_name())));
  if (opt.cfg_drop > 0)
    say("classifier-free guidance training: " + std::to_string(int(opt.cfg_drop * 100 + 0.5)) +
        "% of the rows see the unconditional (all-PAD) text");
  if (opt.code_noise > 0)
    say("input code noise: " + std::to_string(int(opt.code_noise * 100 + 0.5)) +
        "% of the input codes are uniform random codes (the targets stay the true codes)");
  if (opt.self_feed > 0)
    say("self-feeding: " + std::to_string(int(opt.self_feed * 100 + 0.5)) +
        "% of the input codes are the model's own draws from its teacher-forced logits (one more forward "
        "pass a step)");
  if (opt.balance) {
    int64_t groups = 0;
    for (size_t n = 0; n < cache.groups.size(); ++n) groups = std::max<int64_t>(groups, cache.groups[n] + 1);
    say("balanced batches: " + std::to_string(groups) + " groups of " + std::to_string(cache.size()) +
        " samples drawn equally often");
  }
  const int64_t end = opt.stop_after > 0 ? std::min(opt.steps, start + opt.stop_after) : opt.steps;

  nlohmann::json options = {{"steps", opt.steps},       {"batch", opt.batch},
                            {"lr", opt.lr},             {"min_lr", opt.min_lr},
                            {"warmup", opt.warmup},     {"weight_decay", opt.weight_decay},
                            {"dropout", opt.dropout},   {"clip", opt.clip},
                            {"seed", opt.seed},         {"save_every", opt.save_every},
                            {"sample_every", opt.sample_every}, {"sample_prompts", opt.sample_prompts},
                            {"betas", {beta1, beta2}},  {"image_weight", image_weight},
                            {"text_weight", text_weight}, {"init", opt.init},
                            {"balance", opt.balance},   {"cfg_drop", opt.cfg_drop},
                            {"code_noise", opt.code_noise}, {"self_feed", opt.self_feed},
                            {"eval_count", opt.eval_count}, {"canonical_flat", opt.canonical_flat},
                            {"matmul", opt.matmul}};
  auto save = [&](int64_t step) {
    const int64_t g = step * opt.batch;
    nlohmann::json meta = {
        {"stage", cfg.type},
        {"step", step},
        {"config", {{"stage2", stage2_config_to_json(cfg)},
                    {"text", {{"tokenizer", text.tokenizer}, {"context_length", text.context_length}}}}},
        {"tokenizer", tok_json},
        {"stage1", s1fp.to_json()},
        {"shards", shards},
        {"eval_shards", eval_shards},
        {"options", options},
        {"data", {{"epoch", batcher.epoch_of(g)}, {"position", batcher.position_of(g)}, {"samples", cache.size()}}},
    };
    save_checkpoint(ckpt_path, tr.params(), &adam, {}, meta);
  };

  TrainLog log(dp.leader() ? (fs::path(work) / "train.jsonl").string() : std::string(), opt.resume ? start : -1);
  log.event(opt.resume ? "resume" : "start",
            {{"step", start},
             {"world", dp.world()},
             {"params", tr.params().num_trainable()},
             {"samples", cache.size()},
             {"captions", cache.num_captions()},
             {"config", describe_stage2_config(cfg)},
             {"options", options}});
  say(describe_stage2_config(cfg) + "; " + std::to_string(cache.size()) + " samples, " +
      std::to_string(cache.num_captions()) + " captions; text " + tok->type() + " (" + std::to_string(tok->vocab_size) +
      " ids, context " + std::to_string(tok->context_length) + ")");
  if (start >= end) say("the checkpoint is already at step " + std::to_string(start) + " of " + std::to_string(opt.steps));

  auto evaluate_held_out = [&](int64_t step) {
    if (eval_cache.size() == 0) return;
    const HeldOutLoss h = held_out_loss(tr, eval_cache, *tok, opt.eval_count, opt.batch, image_weight, text_weight);
    log.event("eval", {{"step", step}, {"loss", h.loss}, {"image_loss", h.image_loss}, {"text_loss", h.text_loss},
                       {"samples", h.samples}});
    char buf[160];
    std::snprintf(buf, sizeof buf, "step %lld: held-out loss %.4f (image %.4f, text %.4f) on %lld samples",
                  (long long)step, h.loss, h.image_loss, h.text_loss, (long long)h.samples);
    say(buf);
  };
  if (!opt.resume) evaluate_held_out(start);

  // ---- the loop ----
  TrainProgress progress(kPrefix, start, opt.steps, "tok");
  const double tokens_per_step = double(tr.targets_per_batch(opt.batch));
  int64_t step = start;
  int64_t last_saved = opt.resume ? start : -1;
  // data parallel: one buffer for the gradients, the losses and an "interrupted" flag, summed over
  // the ranks after each backward pass; each rank's losses are its share of the global means
  // (LossNorm), so the sums are the global batch's. Dropout masks differ per rank (the seed is
  // offset by the rank).
  const int W = dp.world();
  const uint64_t dropout_seed = opt.seed + uint64_t(dp.rank()) * 0x9E3779B97F4A7C15ull;
  bool peer_stopped = false;
  for (; step < end; ++step) {
    const RqBatch full = batcher.batch(step, opt.batch);
    RqBatch b = W > 1 ? rank_rows(full, dp.rank(), W) : full;
    if (opt.self_feed > 0)  // the draws follow the rows' global positions, whatever the rank
    {
      Tensor z;
      tr.evaluate(b, &z);
      b.input_codes = self_feed_inputs(b.inputs(), z, opt.self_feed, opt.seed,
                                       step * opt.batch + int64_t(dp.rank()) * b.codes.dim(0));
    }
    LossNorm norm;
    if (W > 1) norm = {full.codes.numel(), count_text_targets(full.text, tr.text_pad_id())};
    tr.params().zero_grad();
    RqLoss l = tr.forward_backward(b, dropout_seed, step, norm);
    bool stop = interrupted();
    if (W > 1) {
      double stats[4] = {l.loss, l.image_loss, l.text_loss, stop ? 1.0 : 0.0};
      dp.all_reduce_grads(tr.params(), 1.0f, stats, 4);
      l.loss = stats[0], l.image_loss = stats[1], l.text_loss = stats[2];
      peer_stopped = stats[3] > 0 && !stop;
      stop = stats[3] > 0;
    }
    if (!opt.dump_step.empty() && step == start && dp.leader()) {
      TensorMap dump = {{"text", full.text}, {"codes", full.codes}};
      const Tensor& in = W == 1 ? b.input_codes : full.input_codes;  // --self-feed with W > 1 is refused
      if (in.defined()) dump["input_codes"] = in;
      Tensor lv = Tensor::empty({3});
      lv.f32()[0] = float(l.loss), lv.f32()[1] = float(l.image_loss), lv.f32()[2] = float(l.text_loss);
      dump["loss"] = lv;
      for (auto& p : tr.params().all()) dump["grad." + p->name] = ops.download(p->grad);
      write_safetensors(opt.dump_step, dump, {{"step", std::to_string(step)}});
    }
    const double gnorm = tr.params().clip_grad_norm(float(opt.clip));
    const float lr = sched.at(step);
    adam.step(tr.params(), lr);
    log.step({{"step", step + 1},
              {"loss", l.loss},
              {"image_loss", l.image_loss},
              {"text_loss", l.text_loss},
              {"grad_norm", gnorm},
              {"lr", lr},
              {"epoch", batcher.epoch_of(step * opt.batch)}});
    char extra[96];
    std::snprintf(extra, sizeof extra, "text %.3f  img %.3f", l.text_loss, l.image_loss);
    if (dp.leader()) progress.update(step, l.loss, lr, tokens_per_step, extra);
    const int64_t done = step + 1;
    if (stop) {
      ++step;
      break;
    }
    if (!dp.leader()) continue;  // rank 0 writes the checkpoints and samples
    if (opt.save_every > 0 && done % opt.save_every == 0 && done < end) {
      save(done);
      last_saved = done;
      log.event("checkpoint", {{"step", done}, {"path", ckpt_path}});
      evaluate_held_out(done);
    }
    if (opt.sample_every > 0 && done % opt.sample_every == 0) {
      write_samples(opt, work, done, s1file, cfg, tr.params(), text, tok_json, *be);
      log.event("sample", {{"step", done}, {"prompts", opt.sample_prompts.size()}});
    }
  }
  if (!dp.leader()) return follower_exit(kPrefix, step, peer_stopped);
  progress.finish();
  if (step != last_saved) {
    save(step);
    log.event("checkpoint", {{"step", step}, {"path", ckpt_path}});
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
  evaluate_held_out(step);
  log.event("end", {{"step", step}});
  std::printf("%s: step %lld/%lld\n", ckpt_path.c_str(), (long long)step, (long long)opt.steps);
  if (!opt.export_path.empty())
    std::printf("%s\n", export_stage2_checkpoint(ckpt_path, opt.export_path, export_dtype, s1path).c_str());
  return 0;
}

Command reg("train", "Train the text-to-image transformer (stage 2) on tar shards", [](CLI::App& sub) {
  auto opt = std::make_shared<TrainCliOptions>();
  opt->app = &sub;
  sub.add_option("--tokenizer", opt->tokenizer, "the stage-1 model file (hwaga convert rq-vae / train-tokenizer)");
  sub.add_option("--shards", opt->shards, "tar shards: a folder, a list a.tar,b.tar, a range {00000..00009} or a glob");
  sub.add_option("--config", opt->config, "stage-2 config JSON (the \"stage2\" object of a model file)");
  sub.add_option("--text-tokenizer", opt->text_tokenizer, "bpe16k:VOCAB.json,MERGES.txt or spm:VOCAB_SIZE");
  sub.add_option("--context", opt->context, "text ids per caption (default: the config's block_size_cond)");
  sub.add_option("--work-dir", opt->work_dir, "folder for the code cache, checkpoint, log and samples")->required();
  sub.add_option("--steps", opt->steps, "training steps in all (the schedule's length)");
  sub.add_option("--stop-after", opt->stop_after, "stop this run after this many more steps (0 = run to --steps)");
  sub.add_option("--batch", opt->batch, "samples per step (default 8)");
  sub.add_option("--lr", opt->lr, "peak learning rate (default 5e-4; 1e-4 for mindalle-gpt)");
  sub.add_option("--warmup", opt->warmup, "linear warm-up steps (default 0)");
  sub.add_option("--min-lr", opt->min_lr, "learning rate at the end of the cosine (default 0)");
  sub.add_option("--weight-decay", opt->weight_decay, "AdamW weight decay on Linear weights (default 1e-4)");
  sub.add_option("--dropout", opt->dropout, "residual dropout (default 0.1; 0 for mindalle-gpt)");
  sub.add_option("--clip", opt->clip, "gradient-norm clip (default 1.0; 0 = off)");
  sub.add_option("--seed", opt->seed, "seed of the init, data order, captions and dropout (default 0)");
  sub.add_option("--save-every", opt->save_every, "checkpoint every N steps (0 = at the end only)");
  sub.add_option("--sample-every", opt->sample_every, "write sample pictures every N steps (0 = never)");
  sub.add_option("--sample-prompt", opt->sample_prompts, "a prompt for the sample pictures (repeatable)");
  sub.add_flag("--resume", opt->resume, "continue WORK/checkpoint.safetensors");
  sub.add_flag("--canonical-flat", opt->canonical_flat,
              "code positions whose picture patch is one flat colour get the codes of a picture filled with "
              "that colour, not the encoder's picture-specific ones (plain backgrounds: icons, emoji, sprites)");
  sub.add_flag("--balance", opt->balance,
               "draw the shards' json \"group\" values equally often, not the samples (e.g. an emoji with its "
               "skin-tone variants as one group); samples without a group are their own");
  sub.add_option("--matmul", opt->matmul,
                 "precision of the linear layers' matrix products: f32 (default) or bf16 (f32 accumulation and "
                 "master weights; uses AMX / AVX512-BF16 where the CPU has them)");
  sub.add_option("--cfg-drop", opt->cfg_drop,
                 "share of rows trained with the unconditional (all-PAD) text, for classifier-free guidance "
                 "(generate --cfg); 0.1 is usual (default 0)");
  sub.add_option("--code-noise", opt->code_noise,
                 "share of input codes replaced by uniform random codes while the targets stay the true ones, "
                 "so that sampling, which feeds the model its own draws, leans on the text (default 0)");
  sub.add_option("--self-feed", opt->self_feed,
                 "share of input codes replaced by the model's own draws from its teacher-forced logits of the "
                 "same batch (parallel scheduled sampling; one more forward pass a step; default 0)");
  sub.add_option("--eval-shards", opt->eval_shards,
                 "held-out shards: their teacher-forced loss is logged at the start, at each checkpoint and at "
                 "the end (encoded once into WORK/eval-codes.safetensors)");
  sub.add_option("--eval-count", opt->eval_count, "held-out samples scored (default 64; the first of the shards)");
  sub.add_option("--init", opt->init,
                 "fine-tune: start from a model file's stage 2 weights, config and text tokenizer (its stage 1 "
                 "encodes the data unless --tokenizer is given)");
  sub.add_option("--export", opt->export_path, "write a model file for hwaga generate at the end");
  sub.add_option("--export-dtype", opt->export_dtype, "stage-2 dtype of --export: f32, bf16 or f16 (default f32)");
  sub.add_option("--dump-step", opt->dump_step, "")->group("");  // tests: the first step's gradients
  add_dist_options(sub, opt->dist);
  sub.add_option("--dist-backend", opt->dist_backend,
                 "data parallel: sum the gradients over tcp (default; through the host) or nccl (GPU to GPU, with "
                 "--device cuda, one process per GPU; needs libnccl.so.2)");
  add_common_options(sub, opt->common);
  return [opt] { return run_with_exit_codes(kPrefix, [&] { return run_train(*opt); }); };
});

}  // namespace
}  // namespace hwaga::cli::train_cmd
