// Every released Kakao Brain configuration (architecture.md §2.6, §4), by name: the stage-1
// config (as the JSON that a model file's config "stage1" holds), the stage-2 config, the text
// settings and the sampling defaults the authors used. Used by `hwaga convert` to check a
// checkpoint against what it claims to be, by `hwaga info`, and by tests.
//
// rq-3.9b (cc3m_cc12m_yfcc) is INFERRED: its YAML ships only inside the tarball; the shape
// here is the 3.8B ImageNet model plus the CC3M text setup, which gives the README's 3.9B.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "transformer/stage2_config.h"

namespace hwaga {

struct ModelPreset {
  std::string name;          // "ffhq", "imagenet-1.4b", "rq-cc3m-654m", "mindalle-1.3b", ...
  std::string release;       // the released archive name(s), e.g. "imagenet_1.4B, imagenet_1.4B_rqvae_50e"
  std::string description;   // one line
  std::string conditioning;  // "none", "class" (ImageNet ids 0..999) or "text"
  bool inferred = false;     // the stage-2 shape is not in any public file (rq-3.9b)
  nlohmann::json stage1;     // stage-1 config, the form stage1_config_from_json reads
  Stage2Config stage2;
  TextSettings text;         // tokenizer "" for non-text models
  // The authors' sampling settings (architecture.md §3.4, §4.4): top_k 0 / top_p 0 = unset.
  float temperature = 1.0f;
  int top_k = 0;
  float top_p = 0.0f;
};

// All presets, in the order of the §2.6 table, minDALL-E last.
const std::vector<ModelPreset>& model_presets();
// The preset called `name`; throws hwaga::Error listing the known names otherwise.
const ModelPreset& find_preset(const std::string& name);

}  // namespace hwaga
