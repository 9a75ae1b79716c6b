#include "transformer/gpt_block.h"

namespace hwaga {

GptBlockWeights load_gpt_block(const TensorMap& m, const std::string& prefix, const std::string& source,
                               Backend& be) {
  auto vec = [&](const char* name) { return be.upload(get_tensor(m, prefix + name, source), DType::F32); };
  auto mat = [&](const char* name) { return be.upload_weight(get_tensor(m, prefix + name, source)); };
  GptBlockWeights w;
  w.ln1_weight = vec("ln1.weight");
  w.ln1_bias = vec("ln1.bias");
  w.attn_key_weight = mat("attn.key.weight");
  w.attn_key_bias = vec("attn.key.bias");
  w.attn_query_weight = mat("attn.query.weight");
  w.attn_query_bias = vec("attn.query.bias");
  w.attn_value_weight = mat("attn.value.weight");
  w.attn_value_bias = vec("attn.value.bias");
  w.attn_proj_weight = mat("attn.proj.weight");
  w.attn_proj_bias = vec("attn.proj.bias");
  w.ln2_weight = vec("ln2.weight");
  w.ln2_bias = vec("ln2.bias");
  w.mlp_0_weight = mat("mlp.0.weight");
  w.mlp_0_bias = vec("mlp.0.bias");
  w.mlp_2_weight = mat("mlp.2.weight");
  w.mlp_2_bias = vec("mlp.2.bias");
  return w;
}

Tensor gpt_block_forward(Backend& be, const GptBlockWeights& w, const Tensor& x, Backend::KvCache& cache, int n_head,
                         float ln_eps) {
  // attention: x [B,T,C]
  Tensor h = be.layer_norm(x, w.ln1_weight, w.ln1_bias, ln_eps);        // [B,T,C]
  Tensor q = be.linear(h, w.attn_query_weight, w.attn_query_bias);      // [B,T,C]
  Tensor k = be.linear(h, w.attn_key_weight, w.attn_key_bias);          // [B,T,C]
  Tensor v = be.linear(h, w.attn_value_weight, w.attn_value_bias);      // [B,T,C]
  Tensor a = be.attention_step(q, k, v, cache, n_head);                 // [B,T,C], cache += T
  Tensor x1 = be.add(x, be.linear(a, w.attn_proj_weight, w.attn_proj_bias));
  // MLP
  Tensor h2 = be.layer_norm(x1, w.ln2_weight, w.ln2_bias, ln_eps);      // [B,T,C]
  Tensor m = be.gelu(be.linear(h2, w.mlp_0_weight, w.mlp_0_bias));      // [B,T,4C]
  return be.add(x1, be.linear(m, w.mlp_2_weight, w.mlp_2_bias));        // [B,T,C]
}

Tensor gpt_stack_forward(Backend& be, const std::vector<GptBlockWeights>& blocks, const Tensor& x,
                         std::vector<Backend::KvCache>& caches, int n_head, float ln_eps) {
  HWAGA_CHECK(caches.size() == blocks.size(), "gpt_stack_forward: ", caches.size(), " caches for ", blocks.size(),
              " blocks");
  Tensor h = x;
  for (size_t i = 0; i < blocks.size(); ++i) h = gpt_block_forward(be, blocks[i], h, caches[i], n_head, ln_eps);
  return h;
}

std::vector<Backend::KvCache> new_stack_caches(Backend& be, size_t n_blocks, int64_t B, int n_head, int64_t T_max,
                                               int64_t head_dim) {
  std::vector<Backend::KvCache> c;
  c.reserve(n_blocks);
  for (size_t i = 0; i < n_blocks; ++i) c.push_back(be.kv_cache_new(B, n_head, T_max, head_dim));
  return c;
}

void gather_stack_caches(Backend& be, std::vector<Backend::KvCache>& dst, const std::vector<Backend::KvCache>& src,
                         const std::vector<int32_t>& rows) {
  HWAGA_CHECK(dst.size() == src.size(), "gather_stack_caches: ", dst.size(), " vs ", src.size(), " caches");
  for (size_t i = 0; i < dst.size(); ++i) be.kv_cache_gather(dst[i], src[i], rows);
}

}  // namespace hwaga
