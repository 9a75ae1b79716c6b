// What `hwaga generate`, `hwaga gallery` and `hwaga bench` share: the sampling options as typed
// (--top-k 1024 or 1024,512,256,128, --top-p, --temperature, --cfg, --greedy, --seed, -n,
// --batch), the model family's defaults, where the default model lives, prompt -> text ids,
// the settings every picture carries in its PNG text chunks, and 8-bit conversion of pictures.
//
// Exit codes: an option value that can never work (top-k 0, top-p 1.5, temperature 0, -n 0,
// an empty prompt) is a usage error, UsageError below, which the commands turn into exit 2;
// everything else (a missing model, invalid UTF-8, an unwritable folder) is a hwaga::Error,
// exit 1.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "core/error.h"
#include "core/tensor.h"
#include "io/safetensors.h"
#include "sample/sampler.h"
#include "transformer/text_to_image.h"

namespace hwaga::cli {

// A bad option value: the command prints it and exits 2.
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& msg) : Error(msg) {}
};
template <typename... Args>
[[noreturn]] void usage_fail(Args&&... args) {
  throw UsageError(detail::concat(std::forward<Args>(args)...));
}

// Runs a command's body with the exit codes every long-running command shares: a UsageError
// prints "<prefix>error: <message>" and returns 2; an Error thrown because SIGINT/SIGTERM was
// caught (progress.h) prints "<prefix><message><interrupted_hint>" and returns 128 + the signal;
// any other error propagates to main (message, exit 1).
int run_with_exit_codes(const std::string& prefix, const std::function<int()>& body,
                        const std::string& interrupted_hint = "");

// The sampling options as given on the command line (empty string / not given = the model file's
// recommendation, metadata "sampling" (sample/sampling_defaults.h), else the family default).
struct SamplingArgs {
  std::string top_k;        // "K" or "K0,K1,K2,K3" (RQ per depth) or "none"
  std::string top_p;        // "P" or "P0,..,P3" or "none"
  double temperature = 1.0; // the same default for both families
  bool temperature_given = false;
  double cfg = 0;           // classifier-free guidance scale, 0 = off
  bool cfg_given = false;
  bool greedy = false;
  uint64_t seed = 0;
  bool seed_given = false;
  int n = 1;                // pictures per prompt
  int batch = 0;            // candidates sampled together (0 = all)
  int rerank = 0;           // draw this many candidates, keep the n the prompt explains best (0 = off)
  bool rerank_given = false;
};
// --top-k, --top-p, --temperature, --cfg, --greedy, --seed, -n, --batch, --rerank.
void add_sampling_options(CLI::App& sub, SamplingArgs& a, const char* n_help);
// Range checks that need no model (top-k >= 1, 0 < top-p <= 1, temperature > 0 and finite,
// n >= 1, batch >= 0, cfg finite); throws UsageError naming the option and the value.
void check_sampling_args(const SamplingArgs& a);
// "64" / "64,32,16,8" / "none" -> {64} / {64,32,16,8} / {}; throws UsageError naming `option`.
std::vector<int> parse_top_k(const std::string& s, const char* option = "--top-k");
// "0.9" / "0.9,0.8" / "none" -> {0.9f} / ... / {}; throws UsageError naming `option`.
std::vector<float> parse_top_p(const std::string& s, const char* option = "--top-p");

// The options resolved against a model: defaults filled in, checked with the model's depth and
// vocabulary (validate_sampler_options), the seed chosen.
struct Sampling {
  SamplerOptions sampler;
  bool greedy = false;
  float cfg = 0.0f;
  uint64_t seed = 0;
  bool seed_random = false;  // true when no --seed was given
  int n = 1, batch = 0;
  int rerank = 0;  // 0 = off; else >= n: candidates drawn, of which the n best are kept
  std::string top_k_text, top_p_text;  // as stored in the PNG ("1024", "none", "64,32,16,8")
  std::string temperature_text, cfg_text;
};
// An option not given takes the model file's recommendation (TextToImageModel::sampling_defaults),
// else the family default (architecture.md §3.4, §4.4): RQ text models top-k 1024, top-p 0.95,
// temperature 1.0 (the released T2I notebook); minDALL-E top-k 256 (capped at K), no top-p.
Sampling resolve_sampling(const SamplingArgs& a, const TextToImageModel& model);
// A fresh random seed (std::random_device), below 2^53 so that any JSON reader keeps it exact.
uint64_t random_seed();
// Steps generate_codes reports for one prompt: h*w*D per candidate batch.
int sampling_steps(const TextToImageModel& model, const Sampling& s);
// GenerateOptions for one prompt (n_candidates: the pool when reranking).
GenerateOptions generate_options(const Sampling& s, uint64_t seed);

// The codes of one prompt's s.n pictures: candidates (seed, 0..n-1), or with s.rerank > 0 the
// s.n of candidates (seed, 0..rerank-1) with the highest TextToImageModel::prompt_scores, best
// first (ties: the lower candidate). candidate[i] is picture i's stream, so `generate --seed S
// -n candidate+1` without --rerank draws it again as its last picture.
struct SampledCodes {
  Tensor codes;                    // host int32 [n,h,w,D]
  std::vector<int64_t> candidate;  // the Philox stream index of each picture
  std::vector<double> score;       // the prompt score of each picture (empty without --rerank)
};
SampledCodes sample_codes(TextToImageModel& model, const std::vector<int32_t>& ids, const Sampling& s,
                          uint64_t seed, const std::function<void(int, int)>& progress = {});

// ---- the model ----
// -m as given, or the default model: $HWAGA_MODEL, else samples/models/default.safetensors
// found from the executable (<exe dir>/../samples/models/, <exe dir>/../share/hwaga/models/,
// <exe dir>/../../samples/models/); says on stderr which file it took. Throws naming every place
// looked at and how to pass -m.
std::string resolve_model_path(const std::string& given);
// read_model_file + TextToImageModel::load, refusing a file with no text stage or no text
// tokenizer ("<path> has no text stage (stage2) ..." / "... takes no text ...").
struct LoadedModel {
  std::string path;
  SafetensorsFile file;
  std::unique_ptr<TextToImageModel> model;
};
LoadedModel load_text_model(const std::string& path, Backend& backend);
// The same for any stage-2 model: text-to-image, class-conditional or unconditional (generate
// --class); a text model without a tokenizer is still refused.
LoadedModel load_stage2_model(const std::string& path, Backend& backend);
// "rq-transformer" -> SamplerSemantics.
SamplerSemantics semantics_of(const TextToImageModel& m);

// ---- prompts ----
// The padded ids of a prompt. Empty/blank prompt -> UsageError; invalid UTF-8 -> hwaga::Error
// (from the tokenizer, `what` prefixed); a prompt longer than the context is truncated and a
// warning naming `what` is printed on stderr (`warn_prefix` starts the line).
std::vector<int32_t> prompt_ids(const TextTokenizer& tok, const std::string& prompt, const std::string& what,
                                const std::string& warn_prefix);

// What a picture is drawn from: a prompt (text models), a class id (class-conditional models) or
// nothing (unconditional models).
struct Condition {
  std::string prompt;  // text models
  int class_id = -1;   // class-conditional models; -1 otherwise
  // "a red apple" / "class 207" / "unconditional"
  std::string description() const;
  // the generate options that give it again: {"-p", prompt} / {"--class", "207"} / {}
  std::vector<std::string> args() const;
};

// ---- provenance ----
// argv of this process, from /proc/self/cmdline (empty when unavailable).
std::vector<std::string> process_arguments();
// The PNG text chunks of one picture: Software, Description (the prompt, "class N" or
// "unconditional"), hwaga.prompt (text models) or hwaga.class (class-conditional), hwaga.model, hwaga.seed, hwaga.candidate, hwaga.n, hwaga.top_k, hwaga.top_p,
// hwaga.temperature, hwaga.cfg, hwaga.greedy, hwaga.version, hwaga.command, hwaga.reproduce
// (how to make exactly this picture again).
std::map<std::string, std::string> picture_text(const Condition& cond, const std::string& model_path,
                                                const Sampling& s, uint64_t seed, int64_t candidate,
                                                const std::string& command_line);

// ---- pictures ----
// f32 [3,R,R] in [-1,1] -> 8-bit RGB [R][R][3] with write_png's rounding (clamp, *255, +0.5,
// truncate); a NaN is an error.
std::vector<uint8_t> to_rgb8(const float* chw, int64_t height, int64_t width);

}  // namespace hwaga::cli
