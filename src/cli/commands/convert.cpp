// hwaga convert KIND SOURCE -o model.safetensors [--dtype f32|bf16|f16]
//
// Released PyTorch checkpoints -> one hwaga model file (src/io/safetensors.h):
//   convert rq-vae STAGE1_DIR   STAGE1_DIR holds model.pt + config.yaml (rq-vae-transformer <name>/stage1/)
//   convert vqgan  CKPT_DIR     CKPT_DIR holds stage1_last.ckpt + config.yaml (minDALL-E 1.3B/)
// (SOURCE may also name the checkpoint file itself; config.yaml is then read next to it.)
//
// Whole text-to-image models (stage 1 + stage 2 + text tokenizer in one file):
//   convert rq --stage1 DIR --stage2 DIR [--vocab V --merges M]
//       a released RQ tarball: <name>/stage1/{model.pt,config.yaml}, <name>/stage2/{model.pt,
//       config.yaml}; the text settings come from stage2's dataset.txt_tok_name /
//       context_length, and text models need the CharBPE files (bpe-16k-vocab.json,
//       bpe-16k-merges.txt) that the tarball does not carry.
//   convert mindalle DIR
//       minDALL-E's 1.3B/ folder: config.yaml, stage1_last.ckpt, stage2_last.ckpt,
//       tokenizer/bpe-16k-vocab.json + tokenizer/bpe-16k-merges.txt.
// The file's metadata holds config {"stage1", "stage2", "text"} and "tokenizer" (the tokenizer
// JSON). Stage 1 and stage 2 must pair (codebook size, code shape, codebook vector size).
// Memory: the checkpoints are mapped, and tensors kept in their stored dtype stay views into
// the mapping; only tensors converted to another dtype are copied (a 15.6 GB f32 checkpoint
// written as bf16 needs its 7.8 GB of bf16 copies in memory, never a second f32 copy).
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
#include "text/charbpe.h"
#include "transformer/stage2_config.h"

namespace hwaga::cli::convert_cmd {  // a namespace per command (unity build)
namespace {

namespace fs = std::filesystem;

struct ConvertOptions {
  CommonOptions common;
  std::string source;
  std::string output;
  std::string dtype = "f32";
  std::string stage1, stage2, vocab, merges;  // convert rq
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

// ---- whole text-to-image models (convert rq, convert mindalle) ----

// The stage-2 tensors of `sd` that `cfg` implies, named "stage2.<key>", in dtype `dt`;
// anything else in the state_dict is reported and left out.
TensorMap select_stage2(const TensorMap& sd, const Stage2Config& cfg, DType dt, const std::string& ckpt,
                        const std::string& yaml) {
  TensorMap out;
  std::set<std::string> used;
  for (const TensorSpec& spec : stage2_tensor_specs(cfg)) {
    auto it = sd.find(spec.name);
    if (it == sd.end())
      fail(ckpt, ": tensor '", spec.name, "' ", shape_str(spec.shape), " is missing from the state_dict (",
           yaml, " implies it)");
    const Tensor& t = it->second;
    if (t.shape() != spec.shape)
      fail(ckpt, ": tensor '", spec.name, "' has shape ", shape_str(t.shape()), ", expected ", shape_str(spec.shape),
           " from ", yaml);
    if (!is_float(t.dtype()))
      fail(ckpt, ": tensor '", spec.name, "' has dtype ", dtype_name(t.dtype()), ", expected a float type");
    out["stage2." + spec.name] = t.dtype() == dt ? t : t.to(dt);
    used.insert(spec.name);
  }
  size_t unexpected = 0;
  for (auto& [name, t] : sd) {
    if (used.count(name)) continue;
    if (++unexpected <= 10)
      std::fprintf(stderr, "hwaga convert: warning: %s: ignoring tensor '%s' %s (not part of the architecture in %s)\n",
                   ckpt.c_str(), name.c_str(), shape_str(t.shape()).c_str(), yaml.c_str());
  }
  if (unexpected > 10)
    std::fprintf(stderr, "hwaga convert: warning: %s: ... and %zu more tensors ignored\n", ckpt.c_str(),
                 unexpected - 10);
  return out;
}

// "stage1/model.pt": the file with its folder, without the rest of the local path.
std::string short_name(const std::string& path) {
  fs::path p(path);
  std::string dir = p.parent_path().filename().string();
  return dir.empty() ? p.filename().string() : dir + "/" + p.filename().string();
}

// Stage 1 and stage 2 must describe one model: the transformer predicts the tokenizer's codes.
void check_pairing(const Stage1Config& s1, const Stage2Config& s2, const std::string& yaml1, const std::string& yaml2) {
  const auto& cs = s1.code_shape;
  if (s2.is_rq()) {
    const RqTransformerConfig& r = s2.rq;
    if (!s1.is_rq()) fail(yaml1, ": stage 1 is a ", s1.type, " but ", yaml2, " describes an rq-transformer");
    if (s1.n_embed != r.vocab_size)
      fail(yaml2, ": vocab_size ", r.vocab_size, " differs from the stage-1 codebook size ", s1.n_embed, " in ", yaml1);
    if (cs != std::vector<int>{r.H(), r.W(), r.D()})
      fail(yaml2, ": block_size [", r.H(), ", ", r.W(), ", ", r.D(), "] differs from the stage-1 code_shape [", cs[0],
           ", ", cs[1], ", ", cs[2], "] in ", yaml1);
    if (s1.embed_dim != r.input_embed_dim)
      fail(yaml2, ": input_embed_dim ", r.input_embed_dim, " differs from the stage-1 embed_dim ", s1.embed_dim,
           " in ", yaml1);
    return;
  }
  const MindalleGptConfig& g = s2.gpt;
  if (s1.is_rq()) fail(yaml1, ": stage 1 is an rq-vae but stage 2 is a minDALL-E GPT (expected a vqgan)");
  if (s1.n_embed != g.vocab_size_img)
    fail(yaml2, ": stage2.vocab_size_img ", g.vocab_size_img, " differs from the stage-1 n_embed ", s1.n_embed);
  if (int64_t(cs[0]) * cs[1] != g.ctx_len_img)
    fail(yaml2, ": stage2.hparams.ctx_len_img ", g.ctx_len_img, " differs from the stage-1 code grid ", cs[0], "x",
         cs[1]);
}

// The tokenizer for the text settings, checked against the stage-2 text vocabulary.
std::unique_ptr<CharBpeTokenizer> load_text_tokenizer(const std::string& vocab, const std::string& merges,
                                                      const TextSettings& text, const Stage2Config& s2,
                                                      const std::string& yaml2) {
  auto tok = charbpe_from_files(vocab, merges, text.context_length);
  if (tok->vocab_size > s2.text_vocab_size())
    fail(vocab, ": the vocabulary has ", tok->vocab_size, " tokens but the model's text vocabulary (", yaml2,
         ") has ", s2.text_vocab_size());
  return tok;
}

// Writes the model file: stage1.* + stage2.* tensors, config, tokenizer.
int write_t2i_model(const ConvertOptions& opt, DType dt, const Stage1Config& s1, const Stage2Config& s2,
                    const TextSettings& text, const TextTokenizer* tok, TensorMap tensors,
                    const std::string& converted_from) {
  nlohmann::json config = {{"stage1", stage1_config_to_json(s1)}, {"stage2", stage2_config_to_json(s2)}};
  if (!text.tokenizer.empty())
    config["text"] = {{"tokenizer", text.tokenizer}, {"context_length", text.context_length}};
  std::map<std::string, std::string> meta = {
      {"format", kModelFormat},
      {"version", std::to_string(kModelFormatVersion)},
      {"config", config.dump()},
      {"converted_from", converted_from},
      {"software", software_string()},
  };
  if (tok) meta["tokenizer"] = tok->to_json();
  write_safetensors(opt.output, tensors, meta);

  int64_t p1 = 0, p2 = 0;
  uint64_t bytes = 0;
  for (auto& [name, t] : tensors) (name.rfind("stage1.", 0) == 0 ? p1 : p2) += t.numel(), bytes += t.nbytes();
  std::printf("wrote %s: %s + %s, %zu tensors, %s parameters (stage 1 %s, stage 2 %s), dtype %s, file %s\n",
              opt.output.c_str(), s1.type.c_str(), s2.type.c_str(), tensors.size(), human_count(p1 + p2).c_str(),
              human_count(p1).c_str(), human_count(p2).c_str(), dtype_name(dt),
              human_bytes(file_size_or_zero(opt.output)).c_str());
  if (tok)
    std::printf("text: %s, %d ids per prompt, %d tokens\n", text.tokenizer.c_str(), text.context_length,
                tok->vocab_size);
  return 0;
}

int run_convert_rq(const ConvertOptions& opt) {
  apply_common(opt.common);
  DType dt = parse_dtype(opt.dtype, "--dtype");
  check_output_dir(opt.output, "-o");
  SourcePaths p1 = find_source(opt.stage1, "model.pt");
  SourcePaths p2 = find_source(opt.stage2, "model.pt");

  Stage1Config s1 = stage1_config_from_yaml(p1.yaml, "rq-vae");
  Stage2Config s2 = stage2_config_from_rq_yaml(p2.yaml);
  TextSettings text = text_settings_from_rq_yaml(p2.yaml, s2);
  check_pairing(s1, s2, p1.yaml, p2.yaml);
  std::unique_ptr<CharBpeTokenizer> tok;
  if (!text.tokenizer.empty()) {
    if (opt.vocab.empty() || opt.merges.empty()) {
      std::fprintf(stderr,
                   "hwaga convert: error: %s describes a text-to-image model (%s, %d ids); pass its tokenizer "
                   "files with --vocab bpe-16k-vocab.json --merges bpe-16k-merges.txt\n",
                   p2.yaml.c_str(), text.tokenizer.c_str(), text.context_length);
      return 2;
    }
    tok = load_text_tokenizer(opt.vocab, opt.merges, text, s2, p2.yaml);
  } else if (!opt.vocab.empty() || !opt.merges.empty()) {
    std::fprintf(stderr, "hwaga convert: error: %s describes a model that takes no text; drop --vocab/--merges\n",
                 p2.yaml.c_str());
    return 2;
  }
  std::fprintf(stderr, "hwaga convert: %s\n", describe_stage2_config(s2).c_str());

  TensorMap tensors;
  {
    TensorMap sd = load_torch_state_dict(p1.checkpoint, "state_dict");
    tensors = select_stage1(sd, s1, dt, p1.checkpoint);
  }
  {
    TensorMap sd = load_torch_state_dict(p2.checkpoint, "state_dict");
    for (auto& [name, t] : select_stage2(sd, s2, dt, p2.checkpoint, p2.yaml)) tensors[name] = t;
  }
  return write_t2i_model(opt, dt, s1, s2, text, tok.get(), std::move(tensors),
                         "rq: " + short_name(p1.checkpoint) + " + " + short_name(p2.checkpoint));
}

int run_convert_mindalle(const ConvertOptions& opt) {
  apply_common(opt.common);
  DType dt = parse_dtype(opt.dtype, "--dtype");
  check_output_dir(opt.output, "-o");
  std::error_code ec;
  if (!fs::is_directory(opt.source, ec))
    fail(opt.source, ": expected minDALL-E's checkpoint folder (config.yaml, stage1_last.ckpt, stage2_last.ckpt, "
         "tokenizer/)");
  const fs::path dir = opt.source;
  const std::string yaml = (dir / "config.yaml").string();
  const std::string ck1 = (dir / "stage1_last.ckpt").string(), ck2 = (dir / "stage2_last.ckpt").string();
  const std::string vocab = (dir / "tokenizer" / "bpe-16k-vocab.json").string();
  const std::string merges = (dir / "tokenizer" / "bpe-16k-merges.txt").string();
  for (const std::string& f : {yaml, ck1, ck2, vocab, merges})
    if (!fs::is_regular_file(f, ec)) fail(f, ": not found (expected in minDALL-E's checkpoint folder ", opt.source, ")");

  Stage1Config s1 = stage1_config_from_yaml(yaml, "vqgan");
  Stage2Config s2 = stage2_config_from_mindalle_yaml(yaml);
  TextSettings text = text_settings_from_mindalle_yaml(yaml, s2);
  check_pairing(s1, s2, yaml, yaml);
  auto tok = load_text_tokenizer(vocab, merges, text, s2, yaml);
  std::fprintf(stderr, "hwaga convert: %s\n", describe_stage2_config(s2).c_str());

  TensorMap tensors;
  {
    TensorMap sd = load_torch_state_dict(ck1, "state_dict");
    tensors = select_stage1(sd, s1, dt, ck1);
  }
  {
    TensorMap sd = load_torch_state_dict(ck2, "state_dict");
    for (auto& [name, t] : select_stage2(sd, s2, dt, ck2, yaml)) tensors[name] = t;
  }
  return write_t2i_model(opt, dt, s1, s2, text, tok.get(), std::move(tensors),
                         base_name(fs::absolute(dir).lexically_normal().string()) + " (minDALL-E)");
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
  CLI::App* rqm = sub.add_subcommand("rq", "Whole RQ-Transformer model: --stage1 DIR --stage2 DIR [--vocab --merges]");
  rqm->add_option("--stage1", opt->stage1, "stage-1 folder: model.pt + config.yaml (<name>/stage1)")->required();
  rqm->add_option("--stage2", opt->stage2, "stage-2 folder: model.pt + config.yaml (<name>/stage2)")->required();
  rqm->add_option("--vocab", opt->vocab, "CharBPE vocabulary (bpe-16k-vocab.json), for text models");
  rqm->add_option("--merges", opt->merges, "CharBPE merges (bpe-16k-merges.txt), for text models");
  CLI::App* md = sub.add_subcommand("mindalle", "Whole minDALL-E model: its checkpoint folder (1.3B/)");
  md->add_option("source", opt->source, "folder with config.yaml, stage1_last.ckpt, stage2_last.ckpt, tokenizer/")
      ->required();
  for (CLI::App* s : {rqm, md}) {
    s->add_option("-o,--output", opt->output, "output model file (.safetensors)")->required();
    s->add_option("--dtype", opt->dtype, "stored dtype of the weights")
        ->check(CLI::IsMember({"f32", "bf16", "f16"}))
        ->capture_default_str();
    add_common_options(*s, opt->common);
  }
  return [opt, rq, vq, rqm, md]() -> int {
    if (rq->parsed()) return run_convert_stage1(*opt, "rq-vae", "model.pt");
    if (vq->parsed()) return run_convert_stage1(*opt, "vqgan", "stage1_last.ckpt");
    if (rqm->parsed()) return run_convert_rq(*opt);
    if (md->parsed()) return run_convert_mindalle(*opt);
    fail("convert: expected a subcommand (rq-vae, vqgan, rq or mindalle)");
  };
});

}  // namespace
}  // namespace hwaga::cli::convert_cmd
