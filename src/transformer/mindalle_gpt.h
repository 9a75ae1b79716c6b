// minDALL-E's stage 2, Transformer1d (architecture.md §4.2, §4.4): one causal GPT over
// [ctx_len_txt text tokens, ctx_len_img image codes], then ln_f and bias-free heads.
//
//   x_i      = tok_emb_txt[y_i] + pos_emb_txt[i]                  i < L (text)
//   x_{L+j}  = tok_emb_img[c_j] + pos_emb_img[j]                   j < T-1 (image code j, position j)
//   logits_j = head_img(ln_f(output at L-1+j))                     predicts code j: the last text slot
//                                                                  (usually a PAD) predicts code 0
// Sampling: step 0 runs the L text tokens (once per prompt; the cache is then replicated for the
// candidates), steps j = 1..T-1 feed code j-1 alone. T = 256 steps for the 16x16 grid.
//
// Shape legend: B batch, M sampling rows, C width, L = ctx_len_txt, T = ctx_len_img, K image
// vocabulary, V text vocabulary.
#pragma once
#include <string>
#include <vector>

#include "transformer/gpt_block.h"
#include "transformer/stage2_config.h"
#include "transformer/stage2_model.h"

namespace hwaga {

// Names copy the released state_dict keys (architecture.md §5.2).
struct MindalleGptWeights {
  Tensor tok_emb_img_weight;  // [K,C] (f32/bf16/f16)
  Tensor tok_emb_txt_weight;  // [V,C]
  Tensor pos_emb_img_weight;  // [T,C] f32
  Tensor pos_emb_txt_weight;  // [L,C] f32
  std::vector<GptBlockWeights> blocks;
  Tensor ln_f_weight, ln_f_bias;  // [C]
  Tensor head_img_weight;         // [K,C], no bias
  // head_txt predicts text tokens (a training loss only): not loaded.
};

class MindalleGpt final : public Stage2Model {
 public:
  // Tensors "stage2.<released key>" in `tensors`. code_h * code_w == ctx_len_img.
  MindalleGpt(const MindalleGptConfig& cfg, int code_h, int code_w, const TensorMap& tensors,
              const std::string& source, Backend& be);

  Tensor sample(const Tensor& cond, int64_t first, int64_t n, const GenerateOptions& opt,
                const std::function<void(int)>& step_done) override;
  Tensor logits_teacher_forced(const Tensor& cond, const Tensor& codes) override;
  int sampling_steps() const override { return cfg_.ctx_len_img; }

 private:
  // text tokens [R*L,C] for host int32 [R,L]
  Tensor text_tokens(const Tensor& texts);
  // ln_f + head_img: [N,C] -> [N,K]
  Tensor head(const Tensor& x);

  MindalleGptConfig cfg_;
  int code_h_, code_w_;
  Backend& be_;
  MindalleGptWeights w_;
};

}  // namespace hwaga
