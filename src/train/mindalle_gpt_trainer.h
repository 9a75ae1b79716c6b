// Training minDALL-E's text-to-image GPT (Transformer1d, architecture.md §4.2, §6.3) on the CPU:
// a teacher-forced forward that equals the inference model's (transformer/mindalle_gpt.h
// logits_teacher_forced), a hand-written backward through every layer (train/transformer_ops.h),
// and the loss
//
//   loss = image_weight · CE(image codes)          mean over all B·T image targets
//        + text_weight  · CE(next text token)      mean over the non-PAD targets y_1..y_{L-1}
//
// The sequence is [tok_emb_txt[y_i] + pos_emb_txt[i]]_{i<L} ++ [tok_emb_img[c_j] + pos_emb_img[j]]_{j<T-1}
// (S = L+T-1 tokens: the last code is a target only), one causal stack, ln_f on every output;
// head_txt reads outputs 0..L-2 (predicting y_1..y_{L-1}), head_img reads outputs L-1..S-1
// (output L-1, the last text slot, predicts code 0). Both heads have no bias.
//
// Loss weights: minDALL-E's training code is not released (§6.3 gives only the optimizer
// defaults), so the text-model weighting of the RQ-Transformer's released config (§6.2: image
// 0.9, text 0.1, PAD targets left out) is used for both trainers; options() changes it.
//
// Parameters are named as the model file stores them ("stage2.<released key>", the order of
// stage2_tensor_specs), so ParamSet::values() is the stage-2 half of a model file (head_txt
// included: the released checkpoint has it, inference does not read it).
//
// Residual dropout (after attn.proj and mlp.2 of every block, sites 2i and 2i+1) uses masks from
// the Philox stream (seed, dropout_stream(step, site)), so a step replays bit for bit. The
// released hparams have every pdrop at 0.0 (§4.2), so `hwaga train` defaults it to 0 for this
// model; embedding and attention-probability dropout are not implemented.
//
// Shape legend: B batch, L = ctx_len_txt, T = ctx_len_img, S = L+T-1 sequence, C width, H heads,
// K image vocabulary, V text vocabulary.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "train/gpt_block_train.h"
#include "train/param.h"
#include "train/train_ops.h"
#include "train/rq_transformer_trainer.h"  // RqBatch, RqLoss (model-neutral), fill_normal, stage2_param_kind
#include "transformer/stage2_config.h"

namespace hwaga::train {

struct GptTrainerOptions {
  float dropout = 0.0f;       // residual dropout while training (released: 0.0)
  float image_weight = 0.9f;  // loss weights (see above)
  float text_weight = 0.1f;
  int32_t text_pad_id = 0;    // text targets equal to this id are left out of the text loss
};

// The batch and the losses are the RQ trainer's types: text int32 [B,L], codes int32 [B,h,w,1]
// with h*w = T (raster order, as the code cache stores them).
using GptBatch = RqBatch;
using GptLoss = RqLoss;

class MindalleGptTrainer {
 public:
  // Parameters start at 0; call init_weights or load them (params().load_values).
  explicit MindalleGptTrainer(const MindalleGptConfig& cfg, GptTrainerOptions opt = {});

  // Moves the parameters onto the device of `ops`; forward_backward then runs there.
  void to_device(TrainOps& ops) {
    ps_.to_device(ops);
    ops_ = &ops;
  }
  TrainOps& ops() const { return ops_ ? *ops_ : cpu_train_ops(); }

  ParamSet& params() { return ps_; }
  const ParamSet& params() const { return ps_; }
  const MindalleGptConfig& config() const { return cfg_; }
  GptTrainerOptions& options() { return opt_; }

  // GPT init (as Transformer1d._init_weights, §4.2): Linear and Embedding weights (the four
  // token/position tables included) N(0, 0.02), biases 0, LayerNorm weight 1 / bias 0.
  // Parameter i draws from the Philox stream (seed, i): deterministic, thread-count free.
  void init_weights(uint64_t seed);

  // One forward + backward: gradients are ADDED to params().grad (zero them first). Dropout
  // (options().dropout) with masks keyed by (dropout_seed, step).
  GptLoss forward_backward(const GptBatch& batch, uint64_t dropout_seed, int64_t step, const LossNorm& norm = {});

  // Forward only, no dropout. logits: host f32 [B,h,w,1,K] (the inference model's
  // logits_teacher_forced); text_logits: [B,L-1,V]. Either may be null.
  GptLoss evaluate(const GptBatch& batch, Tensor* logits = nullptr, Tensor* text_logits = nullptr);

  // Text + image targets of one batch (for throughput figures).
  int64_t targets_per_batch(int64_t B) const { return B * (int64_t(cfg_.ctx_len_img) + cfg_.ctx_len_txt - 1); }

 private:
  GptLoss run(const GptBatch& batch, bool backward, float dropout, uint64_t seed, int64_t step, Tensor* logits,
              Tensor* text_logits, const LossNorm& norm = {});
  void check_batch(const GptBatch& batch) const;

  MindalleGptConfig cfg_;
  GptTrainerOptions opt_;
  ParamSet ps_;
  std::vector<GptBlockParams> blocks_;
  Param *tok_emb_img_, *tok_emb_txt_, *pos_emb_img_, *pos_emb_txt_;
  Param *ln_f_w_, *ln_f_b_, *head_img_, *head_txt_;
  TrainOps* ops_ = nullptr;
};

}  // namespace hwaga::train
