// The stage-2 trainer's data: every shard sample encoded ONCE with the frozen stage-1 model and
// kept with all its caption variants in WORK/codes.safetensors, then served in seeded batches.
//
// codes.safetensors (written atomically):
//   tensors  "codes"            int32 [N,h,w,D]  the stage-1 codes of sample n (centre crop)
//            "captions.bytes"   u8    [M_bytes]  every caption variant, UTF-8, concatenated
//            "captions.offsets" i64   [M+1]      caption m = bytes[offsets[m], offsets[m+1])
//            "captions.first"   i64   [N+1]      sample n's variants are captions first[n]..first[n+1]-1
//            "groups"           i32   [N]        sample n's group (see below), numbered from 0
//   metadata "format" = "hwaga-codes", "version" = "2",
//            "source" = JSON {"shards": [{"path", "size"}...], "stage1": {"path", "size", "hash"}}
// It is reused when "source" equals what the current run would write (same shard files in the
// same order with the same sizes, the same stage-1 file by size and content hash), else rebuilt.
//
// Caption variants of a sample: its .txt, then each string of the json's "captions" array that
// differs from the ones before (the emoji data lists English and Korean captions there).
// Group of a sample: the json's "group" value (a string or number; the emoji data names the base
// emoji and style there, so that the skin-tone variants of one emoji form one group); samples
// without one are each a group of their own. Groups matter only to balanced batches.
// A version-1 cache (no groups) is rebuilt.
//
// Batches (CodeBatcher): the sample at global position g = step*B + i is perm_e[g mod N] with
// e = g div N and perm_e a Fisher-Yates permutation from the Philox stream (seed, e); its caption
// is variant Philox(seed', e*2^32 + n) mod n_variants of that sample, tokenized (truncated and
// padded to the context). Everything depends on (seed, step) only: the data state of a
// checkpoint is its step.
// Balanced batches (hwaga train --balance): every group is equally likely instead of every
// sample. Epoch e is still N draws: rounds of a Fisher-Yates permutation of the groups (Philox
// stream (seed'', e*2^24 + round)), each group contributing one member drawn uniformly from
// the same stream, until N positions are filled.
// Unconditional rows (hwaga train --cfg-drop P): the row at global position g gets the all-PAD
// text, the prompt classifier-free guidance conditions on for "no text", when a uniform draw
// from Philox stream (seed''', g) is below P; its image targets are kept, so the model learns the
// unconditional picture distribution next to the conditional one.
// Input code noise (hwaga train --code-noise P): each code of the row at global position g is,
// as an input, replaced with a uniform code in [0, K) when its uniform draw from Philox stream
// (seed'''', g) is below P (one 64-bit word a code: the low half is the draw, the high half
// picks the replacement); the targets stay the true codes. Sampling feeds the model its own (imperfect) codes; trained only on true
// ones, a model learns to read the picture's identity off small details of the first codes (the
// RQ-VAE's attention spreads it into every code) and follows a wrong guess there instead of the
// text. Noisy inputs make it lean on the text.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "nn/image_tokenizer.h"
#include "text/text_tokenizer.h"
#include "train/rq_transformer_trainer.h"

namespace hwaga::train {

inline constexpr const char* kCodeCacheFormat = "hwaga-codes";

struct CodeCache {
  Tensor codes;  // int32 [N,h,w,D]
  std::vector<std::vector<std::string>> captions;  // per sample, at least one
  std::vector<int32_t> groups;  // per sample, in [0, number of groups); empty = a group per sample
  int64_t size() const { return codes.defined() ? codes.dim(0) : 0; }
  int64_t num_captions() const;
};

// "size:hash" of a file's bytes (a 64-bit hash of the whole content, hex); throws naming the
// file when it cannot be read.
struct FileFingerprint {
  std::string path;  // absolute
  uint64_t size = 0;
  std::string hash;  // 16 hex digits
  nlohmann::json to_json() const { return {{"path", path}, {"size", size}, {"hash", hash}}; }
  bool same_file_content(const FileFingerprint& o) const { return size == o.size && hash == o.hash; }
};
FileFingerprint fingerprint_file(const std::string& path);
FileFingerprint fingerprint_from_json(const nlohmann::json& j, const std::string& what);

// The caption variants of one sample (see above). Malformed json is ignored (the .txt stays).
std::vector<std::string> caption_variants(const std::string& caption, const std::string& json);
// The json's "group" as text ("" when there is none or the json is malformed).
std::string sample_group(const std::string& json);

struct CodeCacheOptions {
  std::vector<std::string> shards;  // expanded shard files, in order
  int encode_batch = 8;             // pictures per stage-1 encode call
  std::function<void(const std::string&)> log;  // progress lines ("" = quiet)
  std::function<void()> check_interrupt;        // called between batches (may throw)
  // Flat patches get canonical codes (hwaga train --canonical-flat): a code position whose
  // picture patch (resolution / h pixels square) is one colour, every channel within 2/255 of
  // its range, gets the code stack that the same position has in a picture filled with that
  // colour (the patch's first pixel, 8-bit), encoded once per colour. The stage-1 encoder's
  // attention otherwise writes every picture's identity into the codes of its plain background,
  // which no prompt can predict (the emoji cache: 5,220 different stacks among 7,184 top-left
  // corners, most of them white). Recorded in the cache's source, so switching it re-encodes.
  bool canonical_flat = false;
};

// Loads `path` when its source matches (shards + stage-1 fingerprint), else encodes every sample
// of the shards with `stage1` (images at stage1.resolution(), centre crop) and writes `path`.
// *rebuilt (optional) tells which happened. Errors name the shards or the cache file.
CodeCache load_or_build_code_cache(const std::string& path, const CodeCacheOptions& opt,
                                   const FileFingerprint& stage1_file, ImageTokenizer& stage1, bool* rebuilt = nullptr);

// Reads a cache file (errors name it); `source` (optional) receives its "source" JSON.
CodeCache read_code_cache(const std::string& path, nlohmann::json* source = nullptr);
void write_code_cache(const std::string& path, const CodeCache& c, const nlohmann::json& source);

// Samples first..first+count-1 of a cache with their first caption variant (the .txt), tokenized:
// the fixed held-out batches of hwaga train --eval-shards.
RqBatch fixed_batch(const CodeCache& cache, const TextTokenizer& tok, int64_t first, int64_t count);

// Seeded batches over a cache (see the header comment).
class CodeBatcher {
 public:
  // balance: draw every group equally often (see the header comment) instead of every sample.
  CodeBatcher(const CodeCache& cache, const TextTokenizer& tok, uint64_t seed, bool balance = false);
  // Share of rows given the unconditional all-PAD text (see the header comment), in [0, 1).
  void set_uncond_prob(double p);
  // Whether the row at global position g is unconditional.
  bool unconditional(int64_t g) const;
  // Share of input codes replaced by uniform codes in [0, K) (see the header comment), in [0, 1).
  void set_code_noise(double p, int64_t K);
  // The batch of training step `step` (B samples: positions step*B .. step*B+B-1).
  RqBatch batch(int64_t step, int B);
  // Epoch and position in it of global position g.
  int64_t epoch_of(int64_t g) const { return g / cache_.size(); }
  int64_t position_of(int64_t g) const { return g % cache_.size(); }
  // Sample index and caption variant at global position g.
  int64_t sample_at(int64_t g);
  int caption_variant(int64_t epoch, int64_t sample) const;

 private:
  const std::vector<int64_t>& permutation(int64_t epoch);
  const CodeCache& cache_;
  const TextTokenizer& tok_;
  uint64_t seed_;
  bool balance_;
  double uncond_prob_ = 0;
  double code_noise_ = 0;
  int64_t noise_vocab_ = 0;
  std::vector<std::vector<int64_t>> members_;  // balance: the samples of each group, ascending
  int64_t perm_epoch_ = -1;
  std::vector<int64_t> perm_;
};

}  // namespace hwaga::train
