// What `hwaga train` needs of a stage-2 trainer, apart from the command line: one face over the
// RQ-Transformer and minDALL-E GPT trainers (so that one loop trains both), the checks that pair
// a stage-2 config with its stage-1 model and text tokenizer before any shard is encoded, the
// rows of a global batch that one data-parallel rank trains on, and the held-out loss.
#pragma once
#include <cstdint>
#include <string>
#include <utility>

#include "core/tensor.h"
#include "nn/image_tokenizer.h"
#include "text/text_tokenizer.h"
#include "train/code_cache.h"
#include "train/param.h"
#include "train/rq_transformer_trainer.h"
#include "train/train_ops.h"
#include "transformer/stage2_config.h"

namespace hwaga::train {

// The two stage-2 trainers behind one face, so that hwaga train's loop is shared.
struct Stage2Trainer {
  virtual ~Stage2Trainer() = default;
  virtual ParamSet& params() = 0;
  virtual void init_weights(uint64_t seed) = 0;
  virtual void to_device(TrainOps& ops) = 0;
  virtual RqLoss forward_backward(const RqBatch& b, uint64_t seed, int64_t step, const LossNorm& norm) = 0;
  virtual RqLoss evaluate(const RqBatch& b, Tensor* logits) = 0;  // no dropout; logits host f32 [B,h,w,D,K]
  virtual int32_t text_pad_id() = 0;
  virtual int64_t targets_per_batch(int64_t B) const = 0;
};

template <class T>
struct TrainerOf final : Stage2Trainer {
  T t;
  template <class... A>
  explicit TrainerOf(A&&... a) : t(std::forward<A>(a)...) {}
  ParamSet& params() override { return t.params(); }
  void init_weights(uint64_t seed) override { t.init_weights(seed); }
  void to_device(TrainOps& ops) override { t.to_device(ops); }
  RqLoss forward_backward(const RqBatch& b, uint64_t seed, int64_t step, const LossNorm& norm) override {
    return t.forward_backward(b, seed, step, norm);
  }
  RqLoss evaluate(const RqBatch& b, Tensor* logits) override { return t.evaluate(b, logits); }
  int32_t text_pad_id() override { return t.options().text_pad_id; }
  int64_t targets_per_batch(int64_t B) const override { return t.targets_per_batch(B); }
};

// AdamW betas of each model's recipe (architecture.md §6.2, §6.3): RQ-Transformer 0.9/0.95,
// minDALL-E's GPT 0.9/0.99.
std::pair<double, double> recipe_betas(const Stage2Config& c);

// The stage-2 config against the stage-1 model (before any shard is encoded). `codebook` is the
// RQ-VAE's [K,E] (undefined for other stage-1 kinds). Errors name cfg_name / s1_name.
void check_stage1_pairing(const Stage2Config& c, const std::string& cfg_name, ImageTokenizer& s1,
                          const std::string& s1_name, const Tensor& codebook);
// The stage-2 config's text vocabulary and context against the text tokenizer.
void check_text_pairing(const Stage2Config& c, const std::string& cfg_name, const TextTokenizer& tok,
                        const std::string& tok_name);

// Rows [r*B/W, (r+1)*B/W) of a global batch (input codes too): what rank r of W trains on.
RqBatch rank_rows(const RqBatch& full, int rank, int world);

struct HeldOutLoss {
  double loss = 0, image_loss = 0, text_loss = 0;
  int64_t samples = 0;
};
// The first min(count, cache.size()) samples of a held-out cache, caption variant 0, teacher-
// forced without dropout in batches of `batch`: the image loss is the mean over all codes, the
// text loss the mean over all non-PAD targets, weighted as training weighs them.
HeldOutLoss held_out_loss(Stage2Trainer& tr, const CodeCache& cache, const TextTokenizer& tok, int64_t count,
                          int batch, float image_weight, float text_weight);

}  // namespace hwaga::train
