// One GPT block of the two stage-2 transformers, for training: the forward pass that keeps what
// the backward needs, and the backward (architecture.md §2.1, §4.2; the same pre-LN block in the
// RQ-Transformer's body and head stacks and in minDALL-E's GPT):
//   x1 = x  + drop(attn.proj(causal_attention(ln1(x))))      drop site stream0
//   y  = x1 + drop(mlp.2(gelu(mlp.0(ln2(x1)))))                drop site stream0 + 1
// Rows R = Bs*T (Bs independent sequences of T positions), width C, H heads.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "train/param.h"

namespace hwaga::train {

// The block's parameters, named as the released module tree: <prefix>ln1.weight, attn.key.*, ...
struct GptBlockParams {
  Param *ln1_w, *ln1_b, *key_w, *key_b, *query_w, *query_b, *value_w, *value_b, *proj_w, *proj_b;
  Param *ln2_w, *ln2_b, *mlp0_w, *mlp0_b, *mlp2_w, *mlp2_b;
  // Looks up the 16 parameters "<prefix>ln1.weight" ... in `ps` (they must exist).
  static GptBlockParams bind(ParamSet& ps, const std::string& prefix);
};

// What one block's backward needs, for rows R = Bs*T.
struct GptBlockActs {
  Tensor x;                   // [R,C] block input
  Tensor ln1_mean, ln1_rstd;  // [R]
  Tensor h1, q, k, v;         // [R,C]
  Tensor probs;               // [Bs,H,T,T]
  Tensor a;                   // [R,C] attention output (before proj)
  Tensor x1;                  // [R,C] after the attention residual
  Tensor ln2_mean, ln2_rstd;  // [R]
  Tensor h2;                  // [R,C]
  Tensor f, g;                // [R,4C] mlp.0 output, GELU(f)
};

class TrainOps;

// x [R,C] -> y [R,C] on the device of `ops` (the parameters' device); fills `a`. Dropout masks
// come from (seed, stream0) and (seed, stream0 + 1).
void gpt_block_forward(TrainOps& ops, const GptBlockParams& p, GptBlockActs& a, const float* x, float* y, int64_t Bs, int64_t T,
                       int64_t C, int64_t H, float dropout, uint64_t seed, uint64_t stream0);
// dy [R,C] (overwritten as scratch) -> dx [R,C] (written; may not alias dy). Parameter gradients
// are added to p.*->grad.
void gpt_block_backward(TrainOps& ops, const GptBlockParams& p, const GptBlockActs& a, float* dy, float* dx, int64_t Bs, int64_t T,
                        int64_t C, int64_t H, float dropout, uint64_t seed, uint64_t stream0);

// A stack of blocks, as the trainers run it: block i draws its dropout masks from the streams
// dropout_stream(step, site0 + 2i) and + 1.
//   forward:  x [Bs*T,C] -> the last block's output; `acts` gets one entry a block.
//   backward: dy [Bs*T,C] (used as scratch) -> dx; each block's activations are freed once used.
Tensor gpt_stack_forward(TrainOps& ops, const std::vector<GptBlockParams>& blocks, std::vector<GptBlockActs>& acts,
                         Tensor x, int64_t Bs, int64_t T, int64_t C, int64_t H, float dropout, uint64_t seed,
                         int64_t step, uint32_t site0);
Tensor gpt_stack_backward(TrainOps& ops, const std::vector<GptBlockParams>& blocks, std::vector<GptBlockActs>& acts,
                          Tensor dy, int64_t Bs, int64_t T, int64_t C, int64_t H, float dropout, uint64_t seed,
                          int64_t step, uint32_t site0);

}  // namespace hwaga::train
