// A whole text-to-image (or class/unconditional-to-image) model: the text tokenizer, the stage-2
// transformer (RQ-Transformer, rq/rq_transformer.h, or minDALL-E's GPT, mindalle_gpt.h) and the
// stage-1 image tokenizer (RQ-VAE or VQGAN), loaded from one hwaga model file.
//
// Model file (io/safetensors.h): metadata "config" = {"stage1": {...}, "stage2": {...},
// "text": {"tokenizer": "bpe16k" | "", "context_length": N}?}, metadata "tokenizer" = the text
// tokenizer JSON (text models), tensors "stage1.*" and "stage2.*" (released key names).
//
// Shape legend: N candidates, h/w code grid (8x8 RQ, 16x16 minDALL-E), D code depth (4 RQ,
// 1 minDALL-E), K image codebook size, L text length (L_c = 32 RQ CC3M, 64 minDALL-E; 1 for
// class/unconditional RQ models, whose single "text id" is the class id or 0).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "io/safetensors.h"
#include "nn/image_tokenizer.h"
#include "sample/sampler.h"
#include "sample/sampling_defaults.h"
#include "text/text_tokenizer.h"
#include "transformer/presets.h"
#include "transformer/stage2_config.h"

namespace hwaga {

// Per-call generation options (the CLI's --n, --seed, --temperature, --top-k, ...).
struct GenerateOptions {
  int n_candidates = 1;    // pictures per prompt
  uint64_t seed = 0;       // candidate i draws from the Philox stream (seed, i) (sample/rng.h)
  SamplerOptions sampler;  // temperature, per-depth top-k / top-p (sample/sampler.h)
  bool greedy = false;     // argmax at every step (parity tests); overrides sampler
  float cfg_scale = 0.0f;  // 0 = off; else logits = u + s*(c - u), unconditional = all-PAD text
                           // (an extension: neither reference has CFG, architecture.md §3.3)
  int batch = 0;           // candidates run together (0 = all); results do not depend on it
  bool step_graphs = true;  // record one sampling step as a CUDA graph and replay it (CUDA only;
                            // false: op by op; the same codes either way)
  std::function<void(int step, int total)> progress;  // called after each sampling step
};

class Stage2Model;  // the transformer (internal; rq_transformer.h / mindalle_gpt.h)

class TextToImageModel {
 public:
  ~TextToImageModel();

  // Builds the model that file.metadata["config"] describes; checks every stage1.* and
  // stage2.* tensor against the config (a mismatch names the tensor and both shapes); refuses a
  // file without stage 2 ("<path> has no text-to-image stage (stage2); it is an image
  // tokenizer only"). Weights stay views into the mapped file where the backend allows it
  // (the CPU keeps bf16/f16 weights as they are and converts on the fly).
  static std::unique_ptr<TextToImageModel> load(const SafetensorsFile& file, Backend& backend);

  // Random weights for a preset (bench --random-weights), stored as `dtype` (f32/bf16/f16),
  // deterministic in `seed`. Stage 1 is random too (the preset's full stage-1 shape). There is
  // no text tokenizer (tokenizer() throws); callers pass text ids themselves.
  static std::unique_ptr<TextToImageModel> random(const ModelPreset& preset, Backend& backend, DType dtype,
                                                  uint64_t seed);

  bool has_tokenizer() const { return tokenizer_ != nullptr; }
  // The text tokenizer from the file; throws hwaga::Error when the model has none (random
  // weights, or a class/unconditional model).
  const TextTokenizer& tokenizer() const;
  ImageTokenizer& image_tokenizer() { return *stage1_; }
  const Stage2Config& stage2_config() const { return stage2_cfg_; }
  const TextSettings& text_settings() const { return text_; }
  // The file's recommended sampling settings (metadata "sampling"; empty when it has none),
  // checked against the model's depth and vocabulary at load.
  const SamplingDefaults& sampling_defaults() const { return sampling_; }

  std::string kind() const;  // "rq-transformer" or "mindalle-gpt"
  Shape code_shape() const;  // {h, w, D}: {8,8,4} RQ, {16,16,1} minDALL-E
  // Number of condition ids generate_codes expects: L_c (RQ) or ctx_len_txt (minDALL-E).
  int text_length() const;
  // Condition ids are in [0, cond_vocab_size()).
  int cond_vocab_size() const;
  // The id that stands for "no text" (CFG's unconditional prompt): the tokenizer's pad id, or 0.
  int32_t pad_id() const;

  // text_ids: exactly text_length() ids (already padded), each in [0, cond_vocab_size()).
  // -> host int32 [N,h,w,D] with N = opt.n_candidates. Candidate i's codes depend only on
  // (text_ids, seed, i, sampler options), not on opt.batch or the thread count.
  Tensor generate_codes(const std::vector<int32_t>& text_ids, const GenerateOptions& opt);
  // Parity: codes host int32 [B,h,w,D] -> host f32 logits [B,h,w,D,K], where the logits at
  // (p, d) are those the sampler would see given the text and codes before (p, d).
  Tensor logits_teacher_forced(const std::vector<int32_t>& text_ids, const Tensor& codes);
  // How much the prompt explains each candidate: the pointwise mutual information
  //   score[i] = Σ_{p,d} log p(c_{p,d} | text, codes before) − log p(c_{p,d} | all-PAD, codes before)
  // from the teacher-forced logits (temperature 1, no cutoff), summed in double. Text models only
  // (the "no text" prompt is the one classifier-free guidance uses; a model trained with
  // `hwaga train --cfg-drop` knows it). codes: host int32 [N,h,w,D].
  std::vector<double> prompt_scores(const std::vector<int32_t>& text_ids, const Tensor& codes);
  // codes [N,h,w,D] -> host f32 pictures [N,3,R,R] in [-1,1] (stage-1 decode; not clamped).
  Tensor decode(const Tensor& codes) { return stage1_->decode(codes); }

  std::string describe() const;    // stage 2 + stage 1 + text, several lines
  int64_t num_parameters() const;  // stage 2 + stage 1

 private:
  TextToImageModel();
  std::unique_ptr<TextTokenizer> tokenizer_;
  std::unique_ptr<ImageTokenizer> stage1_;
  Stage2Config stage2_cfg_;
  TextSettings text_;
  SamplingDefaults sampling_;
  std::unique_ptr<Stage2Model> stage2_;
};

}  // namespace hwaga
