// hwaga info -m MODEL
//
// What a model file holds: format and version, the config stored in it, the stage-1 tokenizer's
// architecture summary, parameter counts per stage, tensor dtypes and the file size. The
// tokenizer is built (and its tensors checked against the config) on the selected backend, so a
// file that `info` accepts is one the other commands can load. A stage 2 is reported when present
// and never required.
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

namespace hwaga::cli {
namespace {

struct InfoOptions {
  CommonOptions common;
  std::string model;
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

  if (stages.count("stage1")) {
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

Command reg("info", "Show what a model file holds: config, architecture, parameters, dtypes", [](CLI::App& sub) {
  auto opt = std::make_shared<InfoOptions>();
  sub.add_option("-m,--model", opt->model, "hwaga model file (.safetensors)")->required();
  add_common_options(sub, opt->common);
  return [opt] { return run_info(*opt); };
});

}  // namespace
}  // namespace hwaga::cli
