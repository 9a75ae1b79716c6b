// RQ-Transformer (rq-vae-transformer stage 2, architecture.md §2, §3): a spatial "body" GPT over
// [L_c condition tokens, image positions 0..H*W-2] and a depth "head" GPT over the D codes of one
// position, one shared classifier. It has no token table of its own: codes are embedded with the
// paired RQ-VAE's codebook (rows [0,K)).
//
//   body input  s_j = cond_emb[y_j] + pos_emb_cond[j]                      j < L_c
//               u_p = W_in (Σ_d e_{p,d}) + D·b_in + pos_emb_hw[p]          (input_mlp per depth, summed:
//                                                                            its bias counts D times)
//   h_p         = body output at index L_c-1+p (no final LayerNorm)        predicts position p
//   depth input v_{p,0} = h_p + pos_emb_d[0]
//               v_{p,d} = head_mlp(e_{p,0} + ... + e_{p,d-1}) + pos_emb_d[d]  (bias once, no pos_emb_hw)
//   logits      classifier.linear(classifier.layer_norm(head output))      [.., K]
//
// Sampling (§3.1): the body's KV cache grows by one position per step (the condition prefix is
// computed once per prompt and replicated for the candidates); the head's cache is cleared at
// d = 0 of every position. 256 steps for 8x8x4.
//
// Shape legend: B batch, M sampling rows, C width, E codebook vector dim, K codebook size,
// V_c / L_c condition vocabulary / length, H/W code grid, P = H*W, D depth.
#pragma once
#include <string>
#include <vector>

#include "transformer/gpt_block.h"
#include "transformer/stage2_config.h"
#include "transformer/stage2_model.h"

namespace hwaga {

// Names copy the released state_dict keys (architecture.md §5.1).
struct RqTransformerWeights {
  Tensor cond_emb_weight;        // [V_c,C] (f32/bf16/f16)
  Tensor pos_emb_cond;           // [L_c,C] f32 (released as [1,L_c,C])
  Tensor pos_emb_hw;             // [P,C]
  Tensor pos_emb_d;              // [D,C]
  Tensor input_mlp_weight;       // [C,E]
  Tensor input_mlp_bias;         // [C] f32
  Tensor head_mlp_weight;        // [C,E]
  Tensor head_mlp_bias;          // [C]
  std::vector<GptBlockWeights> body_transformer_blocks;
  std::vector<GptBlockWeights> head_transformer_blocks;
  Tensor classifier_layer_norm_weight, classifier_layer_norm_bias;  // [C]
  Tensor classifier_linear_weight;  // [K,C]
  Tensor classifier_linear_bias;    // [K]
  // Derived at load: pos_emb_hw[p] + D * input_mlp.bias, [P,C] f32.
  Tensor pos_emb_hw_plus_input_bias;
  // cond_classifier.* (text models) predicts text tokens: a training loss only, not loaded.
};

class RqTransformer final : public Stage2Model {
 public:
  // Tensors "stage2.<released key>" in `tensors` (checked against the config by the caller);
  // codebook [K,E] f32 on `be`: the paired RQ-VAE's rows [0,K).
  RqTransformer(const RqTransformerConfig& cfg, const TensorMap& tensors, const std::string& source, Backend& be,
                Tensor codebook);

  Tensor sample(const Tensor& cond, int64_t first, int64_t n, const GenerateOptions& opt,
                const std::function<void(int)>& step_done) override;
  Tensor logits_teacher_forced(const Tensor& cond, const Tensor& codes) override;
  int sampling_steps() const override { return cfg_.H() * cfg_.W() * cfg_.D(); }

 private:
  // s [R*L_c,C]: condition tokens of cond host int32 [R,L_c].
  Tensor cond_tokens(const Tensor& cond);
  // u [N,C] = W_in Σ_d codebook[codes[n,d]] + pos_bias[n % R] for codes host int32 [N,D] and
  // pos_bias [R,C] = rows of pos_emb_hw_plus_input_bias.
  Tensor spatial_input(const Tensor& codes, const Tensor& pos_bias);
  // head_mlp(cum) + pos_emb_d[d] for cum [N,E] = Σ_{i<d} e_i, d >= 1 -> [N,C].
  Tensor depth_input(const Tensor& cum, int d);
  // LayerNorm + linear: o [N,C] -> logits [N,K].
  Tensor classify(const Tensor& o);

  RqTransformerConfig cfg_;
  Backend& be_;
  RqTransformerWeights w_;
  Tensor codebook_;  // [K,E] f32 on the backend
};

}  // namespace hwaga
