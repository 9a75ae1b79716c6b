#include "train/gpt_block_train.h"

#include <cstring>

#include "train/train_ops.h"
#include "train/transformer_ops.h"  // dropout_stream
#include "transformer/stage2_config.h"

namespace hwaga::train {

GptBlockParams GptBlockParams::bind(ParamSet& ps, const std::string& pre) {
  auto P = [&](const char* k) { return &ps.get(pre + k); };
  GptBlockParams b;
  b.ln1_w = P("ln1.weight");
  b.ln1_b = P("ln1.bias");
  b.key_w = P("attn.key.weight");
  b.key_b = P("attn.key.bias");
  b.query_w = P("attn.query.weight");
  b.query_b = P("attn.query.bias");
  b.value_w = P("attn.value.weight");
  b.value_b = P("attn.value.bias");
  b.proj_w = P("attn.proj.weight");
  b.proj_b = P("attn.proj.bias");
  b.ln2_w = P("ln2.weight");
  b.ln2_b = P("ln2.bias");
  b.mlp0_w = P("mlp.0.weight");
  b.mlp0_b = P("mlp.0.bias");
  b.mlp2_w = P("mlp.2.weight");
  b.mlp2_b = P("mlp.2.bias");
  return b;
}

void gpt_block_forward(TrainOps& ops, const GptBlockParams& p, GptBlockActs& a, const float* x, float* y, int64_t Bs,
                       int64_t T, int64_t C, int64_t H, float dropout, uint64_t seed, uint64_t stream0) {
  const int64_t R = Bs * T, F = int64_t(kStage2MlpRatio) * C;
  a.x = ops.empty({R, C});
  ops.copy(a.x.f32(), x, R * C);
  a.ln1_mean = ops.empty({R});
  a.ln1_rstd = ops.empty({R});
  a.h1 = ops.empty({R, C});
  ops.layer_norm_fwd(x, p.ln1_w->v(), p.ln1_b->v(), a.h1.f32(), a.ln1_mean.f32(), a.ln1_rstd.f32(), R, C,
                     kStage2LnEps);
  a.q = ops.empty({R, C});
  a.k = ops.empty({R, C});
  a.v = ops.empty({R, C});
  ops.linear_fwd(a.h1.f32(), p.query_w->v(), p.query_b->v(), a.q.f32(), R, C, C);
  ops.linear_fwd(a.h1.f32(), p.key_w->v(), p.key_b->v(), a.k.f32(), R, C, C);
  ops.linear_fwd(a.h1.f32(), p.value_w->v(), p.value_b->v(), a.v.f32(), R, C, C);
  a.probs = ops.empty({Bs, H, T, T});
  a.a = ops.empty({R, C});
  ops.attention_fwd(a.q.f32(), a.k.f32(), a.v.f32(), a.probs.f32(), a.a.f32(), Bs, T, H, C / H);
  Tensor t = ops.empty({R, C});
  ops.linear_fwd(a.a.f32(), p.proj_w->v(), p.proj_b->v(), t.f32(), R, C, C);
  ops.dropout_apply(t.f32(), R * C, dropout, seed, stream0);
  a.x1 = ops.empty({R, C});
  ops.add(x, t.f32(), a.x1.f32(), R * C);
  a.ln2_mean = ops.empty({R});
  a.ln2_rstd = ops.empty({R});
  a.h2 = ops.empty({R, C});
  ops.layer_norm_fwd(a.x1.f32(), p.ln2_w->v(), p.ln2_b->v(), a.h2.f32(), a.ln2_mean.f32(), a.ln2_rstd.f32(), R, C,
                     kStage2LnEps);
  a.f = ops.empty({R, F});
  a.g = ops.empty({R, F});
  ops.linear_fwd(a.h2.f32(), p.mlp0_w->v(), p.mlp0_b->v(), a.f.f32(), R, C, F);
  ops.gelu_fwd(a.f.f32(), a.g.f32(), R * F);
  ops.linear_fwd(a.g.f32(), p.mlp2_w->v(), p.mlp2_b->v(), t.f32(), R, F, C);
  ops.dropout_apply(t.f32(), R * C, dropout, seed, stream0 + 1);
  ops.add(a.x1.f32(), t.f32(), y, R * C);
}

void gpt_block_backward(TrainOps& ops, const GptBlockParams& p, const GptBlockActs& a, float* dy, float* dx,
                        int64_t Bs, int64_t T, int64_t C, int64_t H, float dropout, uint64_t seed, uint64_t stream0) {
  const int64_t R = Bs * T, F = int64_t(kStage2MlpRatio) * C;
  // x2 = x1 + drop(mlp.2(g)): dx1 = dy + LN2-path
  ops.copy(dx, dy, R * C);                                   // dx holds dx1 for now
  ops.dropout_apply(dy, R * C, dropout, seed, stream0 + 1);  // d(mlp.2 out)
  Tensor dg = ops.empty({R, F});
  ops.linear_bwd(a.g.f32(), p.mlp2_w->v(), dy, dg.f32(), p.mlp2_w->g(), p.mlp2_b->g(), R, F, C);
  ops.gelu_bwd(a.f.f32(), dg.f32(), dg.f32(), R * F);
  Tensor dh = ops.empty({R, C});
  ops.linear_bwd(a.h2.f32(), p.mlp0_w->v(), dg.f32(), dh.f32(), p.mlp0_w->g(), p.mlp0_b->g(), R, C, F);
  dg = Tensor();
  ops.layer_norm_bwd(a.x1.f32(), p.ln2_w->v(), a.ln2_mean.f32(), a.ln2_rstd.f32(), dh.f32(), dx, p.ln2_w->g(),
                     p.ln2_b->g(), R, C, /*accumulate_dx=*/true);
  // x1 = x + drop(proj(a)): dx = dx1 + LN1-path
  ops.copy(dy, dx, R * C);
  ops.dropout_apply(dy, R * C, dropout, seed, stream0);  // d(proj out)
  Tensor da = ops.empty({R, C});
  ops.linear_bwd(a.a.f32(), p.proj_w->v(), dy, da.f32(), p.proj_w->g(), p.proj_b->g(), R, C, C);
  Tensor dq = ops.empty({R, C}), dk = ops.empty({R, C}), dv = ops.empty({R, C});
  ops.attention_bwd(a.q.f32(), a.k.f32(), a.v.f32(), a.probs.f32(), da.f32(), dq.f32(), dk.f32(), dv.f32(), Bs, T, H,
                    C / H);
  ops.linear_bwd(a.h1.f32(), p.query_w->v(), dq.f32(), dh.f32(), p.query_w->g(), p.query_b->g(), R, C, C);
  ops.linear_bwd(a.h1.f32(), p.key_w->v(), dk.f32(), dh.f32(), p.key_w->g(), p.key_b->g(), R, C, C, true);
  ops.linear_bwd(a.h1.f32(), p.value_w->v(), dv.f32(), dh.f32(), p.value_w->g(), p.value_b->g(), R, C, C, true);
  ops.layer_norm_bwd(a.x.f32(), p.ln1_w->v(), a.ln1_mean.f32(), a.ln1_rstd.f32(), dh.f32(), dx, p.ln1_w->g(),
                     p.ln1_b->g(), R, C, /*accumulate_dx=*/true);
}

Tensor gpt_stack_forward(TrainOps& ops, const std::vector<GptBlockParams>& blocks, std::vector<GptBlockActs>& acts,
                         Tensor x, int64_t Bs, int64_t T, int64_t C, int64_t H, float dropout, uint64_t seed,
                         int64_t step, uint32_t site0) {
  acts.assign(blocks.size(), GptBlockActs());
  for (size_t i = 0; i < blocks.size(); ++i) {
    Tensor y = ops.empty({Bs * T, C});
    gpt_block_forward(ops, blocks[i], acts[i], x.f32(), y.f32(), Bs, T, C, H, dropout, seed,
                      dropout_stream(step, site0 + uint32_t(2 * i)));
    x = y;
  }
  return x;
}

Tensor gpt_stack_backward(TrainOps& ops, const std::vector<GptBlockParams>& blocks, std::vector<GptBlockActs>& acts,
                          Tensor dy, int64_t Bs, int64_t T, int64_t C, int64_t H, float dropout, uint64_t seed,
                          int64_t step, uint32_t site0) {
  for (size_t i = blocks.size(); i-- > 0;) {
    Tensor dx = ops.empty({Bs * T, C});
    gpt_block_backward(ops, blocks[i], acts[i], dy.f32(), dx.f32(), Bs, T, C, H, dropout, seed,
                       dropout_stream(step, site0 + uint32_t(2 * i)));
    acts[i] = GptBlockActs();
    dy = dx;
  }
  return dy;
}

}  // namespace hwaga::train
