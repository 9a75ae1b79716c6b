// hwaga convert KIND SOURCE -o model.safetensors [--dtype f32|bf16|f16]
//
// Released PyTorch checkpoints -> one hwaga model file (src/io/safetensors.h):
//   convert rq-vae STAGE1_DIR   STAGE1_DIR holds model.pt + config.yaml (rq-vae-transformer <name>/stage1/)
//   convert vqgan  CKPT_DIR     CKPT_DIR holds stage1_last.ckpt + config.yaml (minDALL-E 1.3B/)
// (SOURCE may also name the checkpoint file itself; config.yaml is then read next to it.)
// Whole models (`convert rq`, `convert mindalle`) will be further subcommands of this one.
//
// The config comes from the YAML, never from tensor names. Exactly the tensors that
// stage1_tensor_specs(config) lists are taken from the state_dict, each checked for shape; the
// RQ-VAE's aliased codebooks.1-3 (checked equal to codebooks.0) and the EMA buffers are dropped;
// anything else in the state_dict is reported as a warning and left out. Tensors are stored as
// "stage1.<released key>" in the chosen dtype. The write is atomic.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "command.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "io/torch_checkpoint.h"
#include "nn/stage1_config.h"

namespace hwaga::cli {
namespace {

namespace fs = std::filesystem;

struct ConvertOptions {
  CommonOptions common;
  std::string source;
  std::string output;
  std::string dtype = "f32";
};

// Where the checkpoint and its config.yaml are.
struct SourcePaths {
  std::string checkpoint, yaml;
};

SourcePaths find_source(const std::string& source, const char* ckpt_name) {
  std::error_code ec;
  if (!fs::exists(source, ec)) fail(source, ": no such file or folder");
  fs::path dir = source;
  SourcePaths p;
  if (fs::is_directory(source, ec)) {
    p.checkpoint = (dir / ckpt_name).string();
  } else {
    p.checkpoint = source;
    dir = dir.parent_path().empty() ? fs::path(".") : dir.parent_path();
  }
  p.yaml = (dir / "config.yaml").string();
  if (!fs::is_regular_file(p.checkpoint, ec))
    fail(p.checkpoint, ": checkpoint not found (expected ", ckpt_name, " in ", dir.string(), ")");
  if (!fs::is_regular_file(p.yaml, ec)) fail(p.yaml, ": config not found (expected config.yaml next to the checkpoint)");
  return p;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Released keys that are known and deliberately dropped (architecture.md §5.1, §5.3).
bool known_dropped(const Stage1Config& cfg, const std::string& key) {
  if (!cfg.is_rq()) return false;
  if (key.rfind("quantizer.codebooks.", 0) != 0) return false;
  return ends_with(key, ".cluster_size_ema") || ends_with(key, ".embed_ema") || ends_with(key, ".weight");
}

bool is_float(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

// The stage-1 tensors of `sd` that `cfg` implies, named "stage1.<key>", in dtype `dt`.
TensorMap select_stage1(const TensorMap& sd, const Stage1Config& cfg, DType dt, const std::string& ckpt) {
  TensorMap out;
  std::set<std::string> used;
  for (const TensorSpec& spec : stage1_tensor_specs(cfg)) {
    auto it = sd.find(spec.name);
    if (it == sd.end())
      fail(ckpt, ": tensor '", spec.name, "' ", shape_str(spec.shape),
           " is missing from the state_dict (the config.yaml implies it)");
    const Tensor& t = it->second;
    if (t.shape() != spec.shape)
      fail(ckpt, ": tensor '", spec.name, "' has shape ", shape_str(t.shape()), ", expected ", shape_str(spec.shape),
           " from config.yaml");
    if (!is_float(t.dtype()))
      fail(ckpt, ": tensor '", spec.name, "' has dtype ", dtype_name(t.dtype()), ", expected a float type");
    out["stage1." + spec.name] = t.dtype() == dt ? t : t.to(dt);
    used.insert(spec.name);
  }

  // RQ-VAE: codebooks.1-3 alias codebooks.0 in the released files; a model whose depths had
  // their own codebooks would lose them silently here, so they must be equal.
  if (cfg.is_rq()) {
    const std::string cb0 = stage1_codebook_name(cfg);
    const Tensor& ref = sd.at(cb0);
    for (int d = 1; d < cfg.depth(); ++d) {
      std::string name = "quantizer.codebooks." + std::to_string(d) + ".weight";
      auto it = sd.find(name);
      if (it == sd.end()) continue;
      const Tensor& t = it->second;
      if (t.shape() != ref.shape() || t.dtype() != ref.dtype() || std::memcmp(t.data(), ref.data(), t.nbytes()) != 0)
        fail(ckpt, ": tensor '", name, "' differs from '", cb0,
             "' (expected one shared codebook for every depth, as in the released RQ-VAEs)");
    }
  }

  std::vector<std::string> unexpected;
  int64_t dropped = 0;
  for (auto& [name, t] : sd) {
    if (used.count(name)) continue;
    if (known_dropped(cfg, name)) {
      ++dropped;
      continue;
    }
    unexpected.push_back("'" + name + "' " + shape_str(t.shape()));
  }
  if (dropped) std::fprintf(stderr, "hwaga convert: dropped %lld aliased codebook / EMA tensors\n", (long long)dropped);
  for (size_t i = 0; i < unexpected.size() && i < 10; ++i)
    std::fprintf(stderr, "hwaga convert: warning: %s: ignoring tensor %s (not part of the architecture in config.yaml)\n",
                 ckpt.c_str(), unexpected[i].c_str());
  if (unexpected.size() > 10)
    std::fprintf(stderr, "hwaga convert: warning: %s: ... and %zu more tensors ignored\n", ckpt.c_str(),
                 unexpected.size() - 10);
  return out;
}

int run_convert_stage1(const ConvertOptions& opt, const std::string& kind, const char* ckpt_name) {
  apply_common(opt.common);
  DType dt = parse_dtype(opt.dtype, "--dtype");
  check_output_dir(opt.output, "-o");
  SourcePaths src = find_source(opt.source, ckpt_name);

  Stage1Config cfg = stage1_config_from_yaml(src.yaml, kind);
  std::fprintf(stderr, "hwaga convert: %s: %s, K = %d, code shape [%d, %d, %d]\n", src.yaml.c_str(), cfg.type.c_str(),
               cfg.n_embed, cfg.code_shape[0], cfg.code_shape[1], cfg.code_shape.size() > 2 ? cfg.code_shape[2] : 1);
  TensorMap sd = load_torch_state_dict(src.checkpoint, "state_dict");
  TensorMap tensors = select_stage1(sd, cfg, dt, src.checkpoint);
  sd.clear();

  nlohmann::json config = {{"stage1", stage1_config_to_json(cfg)}};
  std::map<std::string, std::string> meta = {
      {"format", kModelFormat},
      {"version", std::to_string(kModelFormatVersion)},
      {"config", config.dump()},
      {"converted_from", base_name(src.checkpoint)},
      {"software", software_string()},
  };
  write_safetensors(opt.output, tensors, meta);

  int64_t params = 0;
  uint64_t bytes = 0;
  for (auto& [name, t] : tensors) params += t.numel(), bytes += t.nbytes();
  std::printf("wrote %s: %s, %zu tensors, %s parameters (%lld), dtype %s, %s of tensors, file %s\n",
              opt.output.c_str(), cfg.type.c_str(), tensors.size(), human_count(params).c_str(), (long long)params,
              dtype_name(dt), human_bytes(bytes).c_str(), human_bytes(file_size_or_zero(opt.output)).c_str());
  return 0;
}

// One stage-1 conversion subcommand (rq-vae, vqgan).
CLI::App* add_stage1(CLI::App& parent, const char* name, const char* help, const char* source_help,
                     std::shared_ptr<ConvertOptions> opt) {
  CLI::App* s = parent.add_subcommand(name, help);
  s->add_option("source", opt->source, source_help)->required();
  s->add_option("-o,--output", opt->output, "output model file (.safetensors)")->required();
  s->add_option("--dtype", opt->dtype, "stored dtype of the weights")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}))
      ->capture_default_str();
  add_common_options(*s, opt->common);
  return s;
}

Command reg("convert", "Convert released PyTorch checkpoints into a hwaga model file", [](CLI::App& sub) {
  auto opt = std::make_shared<ConvertOptions>();
  sub.require_subcommand(1);
  CLI::App* rq = add_stage1(sub, "rq-vae", "RQ-VAE tokenizer: a folder with model.pt + config.yaml",
                            "folder holding model.pt and config.yaml (or model.pt itself)", opt);
  CLI::App* vq = add_stage1(sub, "vqgan", "minDALL-E VQGAN tokenizer: a folder with stage1_last.ckpt + config.yaml",
                            "folder holding stage1_last.ckpt and config.yaml (or the .ckpt itself)", opt);
  return [opt, rq, vq]() -> int {
    if (rq->parsed()) return run_convert_stage1(*opt, "rq-vae", "model.pt");
    if (vq->parsed()) return run_convert_stage1(*opt, "vqgan", "stage1_last.ckpt");
    fail("convert: expected a subcommand (rq-vae or vqgan)");
  };
});

}  // namespace
}  // namespace hwaga::cli
