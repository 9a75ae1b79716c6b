// The sampling settings a model file recommends: metadata "sampling" (docs/MODEL_FORMAT.md §2.4),
// written by `hwaga export --top-k/--top-p/--temperature/--cfg/--rerank` and used by generate and gallery
// for every option the command line leaves out. A small model trained by hwaga (the default emoji
// model) draws cleaner pictures with a tighter filter than the released models' notebook
// defaults, and its trainer knows which; the released checkpoints carry none.
//
// JSON text, every field optional (absent = the family default, sample/sampler.h):
//   {"top_k": [64] | [64,32,16,8] | [], "top_p": [0.9] | [], "temperature": 0.9, "cfg": 2.0,
//    "rerank": 16}
// [] stands for "none" (no cutoff), which is not the same as an absent field.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "sample/sampler.h"

namespace hwaga {

struct SamplingDefaults {
  std::optional<std::vector<int>> top_k;    // each in [1, 2^30]
  std::optional<std::vector<float>> top_p;  // each in (0, 1]
  std::optional<float> temperature;         // finite, > 0
  std::optional<float> cfg;                 // finite (0 = off)
  std::optional<int> rerank;                // candidates drawn per picture pool, in [0, 100000] (0 = off)
  bool empty() const { return !top_k && !top_p && !temperature && !cfg && !rerank; }
};

// Parses and range-checks the JSON text; throws hwaga::Error naming `where`, the field and what
// was expected (an unknown field is refused too, so a typo does not pass unnoticed). The checks
// that need the model (list length 1 or D, top-k against K) are TextToImageModel::load's.
SamplingDefaults sampling_defaults_from_json_text(const std::string& text, const std::string& where);
// The checks that need the model: list lengths 1 or `depth`, top-k against `vocab` under the
// family's rules (validate_sampler_options); throws hwaga::Error starting with `where`.
void validate_sampling_defaults(const SamplingDefaults& d, SamplerSemantics s, int depth, int vocab,
                                const std::string& where);
// Compact JSON with the present fields only (deterministic: fixed field order).
std::string sampling_defaults_to_json_text(const SamplingDefaults& d);
// The shortest decimal text that reads back as the same float ("0.9", not "0.899999976").
std::string float_text(float v);
// Lists as the command line writes them: {64,32,16,8} -> "64,32,16,8", {0.9f} -> "0.9", {} -> "none".
std::string values_text(const std::vector<int>& v);
std::string values_text(const std::vector<float>& v);
// "top-k 64, top-p 0.9, temperature 0.9" (present fields only; "none" for []).
std::string describe_sampling_defaults(const SamplingDefaults& d);

}  // namespace hwaga
