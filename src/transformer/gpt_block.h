// The pre-norm GPT block shared by the RQ-Transformer's body and head stacks and minDALL-E's GPT
// (architecture.md §2.1, §4.2): x = x + proj(Attn(LN1(x))); x = x + mlp.2(GELU(mlp.0(LN2(x)))).
// Separate key/query/value Linear(C,C) with bias, heads are contiguous 64-wide channel slices,
// scores q.k / sqrt(hd), causal; LayerNorm eps 1e-5; exact erf GELU; MLP width 4C.
//
// Shape legend: B batch, T tokens in this call, C width, hd head dim.
#pragma once
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/tensor_map.h"

namespace hwaga {

// Names copy the released module tree: <prefix>ln1.weight, <prefix>attn.key.weight, ...
struct GptBlockWeights {
  Tensor ln1_weight, ln1_bias;                   // [C] f32
  Tensor attn_key_weight, attn_key_bias;         // [C,C] (f32/bf16/f16), [C] f32
  Tensor attn_query_weight, attn_query_bias;     // [C,C], [C]
  Tensor attn_value_weight, attn_value_bias;     // [C,C], [C]
  Tensor attn_proj_weight, attn_proj_bias;       // [C,C], [C]
  Tensor ln2_weight, ln2_bias;                   // [C]
  Tensor mlp_0_weight, mlp_0_bias;               // [4C,C], [4C]
  Tensor mlp_2_weight, mlp_2_bias;               // [C,4C], [C]
};

// Small vectors (LN, biases) are uploaded as f32; matrices through upload_weight (kept bf16/f16).
// Tensors are "<prefix><name>" in `m`; a missing one names `source`.
GptBlockWeights load_gpt_block(const TensorMap& m, const std::string& prefix, const std::string& source,
                               Backend& be);

// One block over T new tokens per batch row: x [B,T,C] -> [B,T,C]; the block's K/V are appended
// to `cache` (which holds the earlier tokens of the same rows).
Tensor gpt_block_forward(Backend& be, const GptBlockWeights& w, const Tensor& x, Backend::KvCache& cache, int n_head,
                         float ln_eps);

// A stack of blocks with one cache per block.
Tensor gpt_stack_forward(Backend& be, const std::vector<GptBlockWeights>& blocks, const Tensor& x,
                         std::vector<Backend::KvCache>& caches, int n_head, float ln_eps);

// Caches for a stack: one per block, [B, n_head, T_max, hd] each, len 0.
std::vector<Backend::KvCache> new_stack_caches(Backend& be, size_t n_blocks, int64_t B, int n_head, int64_t T_max,
                                               int64_t head_dim);
// dst[i] <- src[i] gathered by rows (Backend::kv_cache_gather).
void gather_stack_caches(Backend& be, std::vector<Backend::KvCache>& dst, const std::vector<Backend::KvCache>& src,
                         const std::vector<int32_t>& rows);

}  // namespace hwaga
