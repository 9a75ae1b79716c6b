// hwaga info -m MODEL | --preset NAME | --list-presets
//
// -m: what a model file holds: format and version, the config stored in it, the stage-1
// tokenizer's architecture summary, parameter counts per stage, tensor dtypes and the file size.
// The tokenizer is built (and its tensors checked against the config) on the selected backend, so
// a file that `info` accepts is one the other commands can load. A stage 2 is reported when
// present and never required; when present the whole text-to-image model is built the same way
// and its stage-2 architecture, text settings and tokenizer are shown.
// --preset: a released configuration's architecture and parameter counts (stage 1, stage 2,
// total), from transformer/presets.h, without any weights. --list-presets: one line per preset.
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "command.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "nn/image_tokenizer.h"
#include "nn/stage1_config.h"
#include "transformer/presets.h"
#include "transformer/stage2_config.h"
#include "transformer/text_to_image.h"

namespace hwaga::cli::info_cmd {  // a namespace per command (unity build)
namespace {

struct InfoOptions {
  CommonOptions common;
  std::string model;
  std::string preset;
  bool list_presets = false;
};

struct StageStats {
  int64_t tensors = 0, params = 0;
  uint64_t bytes = 0;
  std::map<std::string, int64_t> dtypes;  // dtype name -> tensor count
};

std::string dtype_list(const StageStats& s) {
  std::string out;
  for (auto& [name, n] : s.dtypes) out += (out.empty() ? "" : ", ") + name + " (" + std::to_string(n) + " tensors)";
  return out.empty() ? "-" : out;
}

int run_info(const InfoOptions& opt) {
  SafetensorsFile file = read_model_file(opt.model);
  auto backend = select_backend(opt.common);

  std::map<std::string, StageStats> stages;  // "stage1", "stage2", other prefixes
  for (auto& [name, t] : file.tensors) {
    std::string stage = name.substr(0, name.find('.'));
    auto& s = stages[stage];
    s.tensors += 1;
    s.params += t.numel();
    s.bytes += t.nbytes();
    s.dtypes[dtype_name(t.dtype())] += 1;
  }

  std::printf("file:     %s (%s)\n", opt.model.c_str(), human_bytes(file_size_or_zero(opt.model)).c_str());
  std::printf("format:   %s, version %s\n", file.metadata.count("format") ? file.metadata.at("format").c_str() : "?",
              file.metadata.count("version") ? file.metadata.at("version").c_str() : "?");
  std::printf("backend:  %s\n", backend->name().c_str());
  if (auto it = file.metadata.find("config"); it != file.metadata.end()) {
    nlohmann::json cfg;
    try {
      cfg = nlohmann::json::parse(it->second);
    } catch (const std::exception& e) {
      fail(opt.model, ": metadata 'config' is not valid JSON: ", e.what());
    }
    std::printf("config:\n%s\n", cfg.dump(2).c_str());
  }
  std::set<std::string> other_meta;
  for (auto& [k, v] : file.metadata)
    if (k != "format" && k != "version" && k != "config") other_meta.insert(k);
  for (auto& k : other_meta) std::printf("metadata: %s (%zu bytes)\n", k.c_str(), file.metadata.at(k).size());

  int64_t total = 0;
  for (auto& [stage, s] : stages) {
    std::printf("%s:   %lld tensors, %s parameters (%lld), %s, dtype %s\n", stage.c_str(), (long long)s.tensors,
                human_count(s.params).c_str(), (long long)s.params, human_bytes(s.bytes).c_str(),
                dtype_list(s).c_str());
    total += s.params;
  }
  std::printf("total:    %s parameters (%lld)\n", human_count(total).c_str(), (long long)total);
  if (!stages.count("stage2")) std::printf("stage2:   none (image tokenizer only)\n");

  if (stages.count("stage2")) {
    auto t2i = TextToImageModel::load(file, *backend);
    ImageTokenizer* tok = &t2i->image_tokenizer();
    Shape cs = tok->code_shape();
    std::printf("\ntext-to-image model: %s, %s parameters (%lld)\n", t2i->kind().c_str(),
                human_count(t2i->num_parameters()).c_str(), (long long)t2i->num_parameters());
    std::printf("%s\n", t2i->describe().c_str());
    const TextSettings& ts = t2i->text_settings();
    if (!ts.tokenizer.empty())
      std::printf("text settings: tokenizer %s, context length %d\n", ts.tokenizer.c_str(), ts.context_length);
    if (t2i->has_tokenizer()) {
      const TextTokenizer& tt = t2i->tokenizer();
      std::printf("text tokenizer: %s, %d tokens, pads to %d ids with id %d ('%s')\n", tt.type().c_str(),
                  tt.vocab_size, tt.context_length, int(tt.pad_id), tt.id_to_token(tt.pad_id).c_str());
    } else if (t2i->stage2_config().text_length() > 0) {
      std::printf("text tokenizer: none in the file (metadata \"tokenizer\" missing)\n");
    }
    std::printf("\nimage tokenizer: %s, %dx%d pictures -> codes [%lld, %lld, %lld], K = %d, %s parameters\n",
                tok->kind().c_str(), tok->resolution(), tok->resolution(), (long long)cs[0], (long long)cs[1],
                (long long)cs[2], tok->codebook_size(), human_count(tok->num_parameters()).c_str());
  } else if (stages.count("stage1")) {
    auto tok = load_image_tokenizer(file, *backend);
    Shape cs = tok->code_shape();
    std::printf("\nimage tokenizer: %s, %dx%d pictures -> codes [%lld, %lld, %lld], K = %d, %s parameters\n",
                tok->kind().c_str(), tok->resolution(), tok->resolution(), (long long)cs[0], (long long)cs[1],
                (long long)cs[2], tok->codebook_size(), human_count(tok->num_parameters()).c_str());
    std::printf("%s\n", tok->describe().c_str());
  } else {
    std::printf("\nimage tokenizer: none (no stage1.* tensors)\n");
  }
  return 0;
}

// Parameters of a stage-1 config (every tensor its specs list, the RQ codebook with its padding row).
int64_t stage1_params(const nlohmann::json& j, const std::string& source) {
  int64_t n = 0;
  for (const TensorSpec& t : stage1_tensor_specs(stage1_config_from_json(j, source))) n += shape_numel(t.shape);
  return n;
}

std::string millions(int64_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1fM", double(n) / 1e6);
  return buf;
}

std::string sampling_text(const ModelPreset& p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", double(p.temperature));
  std::string out = "temperature " + std::string(buf);
  out += ", top-k " + (p.top_k > 0 ? std::to_string(p.top_k) : std::string("none"));
  std::snprintf(buf, sizeof buf, "%g", double(p.top_p));
  out += ", top-p " + (p.top_p > 0 ? std::string(buf) : std::string("none"));
  return out;
}

int run_preset(const std::string& name) {
  const ModelPreset& p = find_preset(name);
  const Stage1Config s1 = stage1_config_from_json(p.stage1, "preset " + p.name + ": stage1");
  const int64_t n1 = stage1_params(p.stage1, "preset " + p.name), n2 = stage2_num_parameters(p.stage2);
  std::printf("preset:       %s%s\n", p.name.c_str(), p.inferred ? " (stage-2 shape inferred, see presets.h)" : "");
  std::printf("release:      %s\n", p.release.c_str());
  std::printf("description:  %s\n", p.description.c_str());
  std::printf("conditioning: %s", p.conditioning.c_str());
  if (!p.text.tokenizer.empty()) std::printf(" (tokenizer %s, %d ids)", p.text.tokenizer.c_str(), p.text.context_length);
  std::printf("\n");
  std::printf("stage 1:      %s, %d px, ch %d, K = %d, codes [%d, %d, %d], E = %d\n", s1.type.c_str(),
              s1.net.resolution, s1.net.ch, s1.n_embed, s1.code_shape[0], s1.code_shape[1],
              s1.code_shape.size() > 2 ? s1.code_shape[2] : 1, s1.embed_dim);
  std::printf("stage 2:      %s\n", describe_stage2_config(p.stage2).c_str());
  std::printf("sampling:     %s (the authors' settings)\n", sampling_text(p).c_str());
  std::printf("parameters:   stage 1 %s (%lld), stage 2 %s (%lld), total %s (%lld)\n", millions(n1).c_str(),
              (long long)n1, millions(n2).c_str(), (long long)n2, millions(n1 + n2).c_str(), (long long)(n1 + n2));
  std::printf("weights:      stage 2 %s in f32, %s in bf16\n", human_bytes(uint64_t(n2) * 4).c_str(),
              human_bytes(uint64_t(n2) * 2).c_str());
  std::printf("\nstage-1 config:\n%s\nstage-2 config:\n%s\n", p.stage1.dump(2).c_str(),
              stage2_config_to_json(p.stage2).dump(2).c_str());
  return 0;
}

int run_list_presets() {
  std::printf("%-15s %-12s %10s %10s  %s\n", "preset", "condition", "stage 2", "total", "description");
  for (const ModelPreset& p : model_presets()) {
    const int64_t n1 = stage1_params(p.stage1, "preset " + p.name), n2 = stage2_num_parameters(p.stage2);
    std::printf("%-15s %-12s %10s %10s  %s\n", p.name.c_str(), p.conditioning.c_str(), millions(n2).c_str(),
                millions(n1 + n2).c_str(), p.description.c_str());
  }
  return 0;
}

Command reg("info", "Show what a model file holds: config, architecture, parameters, dtypes", [](CLI::App& sub) {
  auto opt = std::make_shared<InfoOptions>();
  auto* m = sub.add_option("-m,--model", opt->model, "hwaga model file (.safetensors)");
  auto* p = sub.add_option("--preset", opt->preset, "a released configuration (see --list-presets)");
  auto* l = sub.add_flag("--list-presets", opt->list_presets, "list the released configurations");
  m->excludes(p)->excludes(l);
  p->excludes(l);
  add_common_options(sub, opt->common);
  return [opt]() -> int {
    if (opt->list_presets) return run_list_presets();
    if (!opt->preset.empty()) return run_preset(opt->preset);
    if (opt->model.empty()) {
      std::fprintf(stderr, "hwaga info: give -m MODEL, --preset NAME or --list-presets\n");
      return 2;
    }
    return run_info(*opt);
  };
});

}  // namespace
}  // namespace hwaga::cli::info_cmd
