// Training the RQ-Transformer (stage 2 of rq-vae-transformer, architecture.md §2, §6.2) on the
// CPU: a teacher-forced forward that equals the inference model's (rq/rq_transformer.h
// logits_teacher_forced), a hand-written backward through every layer (train/transformer_ops.h),
// and the loss of the text models
//
//   loss = image_weight · CE(image codes)          mean over all B·H·W·D targets
//        + text_weight  · CE(next text token)      mean over the non-PAD targets y_1..y_{L_c-1}
//
// (0.9 / 0.1 in the released CC3M config; the text head reads body outputs 0..L_c-2, §2.3).
// Hard code targets (the released YAML's stochastic soft codes, §6.2, are not implemented).
//
// Parameters are named exactly as the model file stores them ("stage2.<released key>", as
// stage2_tensor_specs lists them), so ParamSet::values() is the stage-2 half of a model file.
// The stage-1 codebook [K,E] is frozen: it embeds codes (§2.3, §2.4) but gets no gradient.
//
// Input codes (RqBatch::input_codes, hwaga train --code-noise) replace the codes in the
// embeddings only: the body's position sums and the depth stack's partial sums read them, the
// targets stay the true codes.
//
// Residual dropout (after attn.proj and after mlp.2 in every block, §2.1) uses masks from the
// Philox stream (seed, dropout_stream(step, site)), so a step replays bit for bit.
//
// Shape legend: B batch, L = L_c text length, P = H*W positions, D depth, T = L+P-1 body tokens,
// C width, E codebook vector dim, K codebook size, V = V_c text vocabulary.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "train/gpt_block_train.h"
#include "train/param.h"
#include "train/train_ops.h"
#include "transformer/stage2_config.h"

namespace hwaga::train {

struct RqTrainerOptions {
  float dropout = 0.1f;       // residual dropout while training (0 at evaluation)
  float image_weight = 0.9f;  // loss weights (§2.5, §6.2)
  float text_weight = 0.1f;
  int32_t text_pad_id = 0;    // text targets equal to this id are left out of the text loss
};

struct RqBatch {
  Tensor text;   // int32 [B,L]: condition ids (text ids, class id, or 0 for unconditional)
  Tensor codes;  // int32 [B,H,W,D]: the targets, and the inputs unless input_codes is set
  // Optional, the shape of codes: the codes fed as inputs (their embeddings) when they differ
  // from the targets (hwaga train --code-noise); undefined = codes. The loss always predicts codes.
  Tensor input_codes;
  const Tensor& inputs() const { return input_codes.defined() ? input_codes : codes; }
};

// Checks the optional input codes of a batch against its codes (shape, dtype, range [0, K));
// `who` names the trainer in the error.
void check_input_codes(const RqBatch& b, int64_t K, const char* who);

struct RqLoss {
  double loss = 0;        // image_weight·image + text_weight·text
  double image_loss = 0;  // mean CE over the image targets
  double text_loss = 0;   // mean CE over the non-PAD text targets (0 without text / targets)
  int64_t text_targets = 0;
};

// The denominators of the two mean losses. Zero means "this batch's own count"; data-parallel
// training (train/data_parallel.h) passes the counts of the whole global batch, so that each
// rank's gradient is its share of the global mean and the shares add up to it.
struct LossNorm {
  int64_t image_targets = 0;
  int64_t text_targets = 0;
};

// Non-PAD text targets of a batch (the text head predicts ids 1..L-1 of each row).
int64_t count_text_targets(const Tensor& text, int32_t pad_id);

// The text head's targets of a batch text [B,L] (host int32): target[b*(L-1)+t] = text[b,t+1];
// weight 1/count for the non-PAD ones (count = norm_count when > 0, else this batch's), 0 for
// PAD; count = this batch's non-PAD targets. Host tensors [B*(L-1)].
struct TextTargets {
  Tensor target, weight;
  int64_t count = 0;
};
TextTargets text_targets(const Tensor& text, int32_t pad_id, int64_t norm_count);

class RqTransformerTrainer {
 public:
  // codebook: host f32 [K,E], rows [0,K) of the stage-1 codebook (copied). Parameters start at 0;
  // call init_weights or load them (params().load_values).
  RqTransformerTrainer(const RqTransformerConfig& cfg, const Tensor& codebook, RqTrainerOptions opt = {});

  // Moves the parameters and the codebook onto the device of `ops`; forward_backward then runs
  // there (batches stay host tensors; evaluate's logits come back to the host).
  void to_device(TrainOps& ops);
  TrainOps& ops() const { return ops_ ? *ops_ : cpu_train_ops(); }

  ParamSet& params() { return ps_; }
  const ParamSet& params() const { return ps_; }
  const RqTransformerConfig& config() const { return cfg_; }
  RqTrainerOptions& options() { return opt_; }

  // GPT-style init (Stage2Model._init_weights of the reference, architecture.md §2.1): Linear and
  // Embedding weights N(0, 0.02), biases 0, LayerNorm weight 1 / bias 0, the three positional
  // tensors N(0, 0.02). Parameter i draws from the Philox stream (seed, i): deterministic.
  void init_weights(uint64_t seed);

  // One forward + backward over the batch: gradients are ADDED to params().grad (zero them
  // first). Dropout (options().dropout) with masks keyed by (dropout_seed, step).
  RqLoss forward_backward(const RqBatch& batch, uint64_t dropout_seed, int64_t step, const LossNorm& norm = {});

  // Forward only, no dropout. logits: host f32 [B,H,W,D,K] (the inference model's
  // logits_teacher_forced); text_logits: [B,L-1,V] (text models). Either may be null.
  RqLoss evaluate(const RqBatch& batch, Tensor* logits = nullptr, Tensor* text_logits = nullptr);

  // Text + image targets of one batch (for throughput figures).
  int64_t targets_per_batch(int64_t B) const;

 private:
  RqLoss run(const RqBatch& batch, bool backward, float dropout, uint64_t seed, int64_t step, Tensor* logits,
             Tensor* text_logits, const LossNorm& norm = {});
  void check_batch(const RqBatch& batch) const;

  RqTransformerConfig cfg_;
  RqTrainerOptions opt_;
  Tensor codebook_host_;  // [K,E] f32
  Tensor codebook_;       // the same on the device of ops()
  TrainOps* ops_ = nullptr;
  ParamSet ps_;
  std::vector<GptBlockParams> body_, head_;
  Param *cond_emb_, *pos_emb_cond_, *pos_emb_hw_, *pos_emb_d_;
  Param *input_mlp_w_, *input_mlp_b_, *head_mlp_w_, *head_mlp_b_;
  Param *cls_ln_w_, *cls_ln_b_, *cls_w_, *cls_b_;
  Param *ccls_ln_w_ = nullptr, *ccls_ln_b_ = nullptr, *ccls_w_ = nullptr, *ccls_b_ = nullptr;
};

// The ParamKind of a stage-2 tensor name: Linear weights decay, everything else (biases,
// LayerNorm, embeddings, positional tensors) does not.
ParamKind stage2_param_kind(const std::string& name);

// Fills `p` with N(mean, std) from the Philox stream (seed, stream) (Box-Muller, element i from
// words 2i and 2i+1), independent of the thread count.
void fill_normal(Param& p, float mean, float std, uint64_t seed, uint64_t stream);

}  // namespace hwaga::train
