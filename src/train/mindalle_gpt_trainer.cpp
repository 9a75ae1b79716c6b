#include "train/mindalle_gpt_trainer.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "train/gpt_block_train.h"
#include "train/train_ops.h"

namespace hwaga::train {

MindalleGptTrainer::MindalleGptTrainer(const MindalleGptConfig& cfg, GptTrainerOptions opt) : cfg_(cfg), opt_(opt) {
  Stage2Config sc;
  sc.type = kStage2MindalleGpt;
  sc.gpt = cfg;
  validate_stage2_config(sc, "mindalle-gpt trainer");
  for (const TensorSpec& s : stage2_tensor_specs(sc)) {
    const std::string name = "stage2." + s.name;
    ps_.add(name, s.shape, stage2_param_kind(name));
  }
  auto P = [&](const std::string& k) { return &ps_.get("stage2." + k); };
  tok_emb_img_ = P("tok_emb_img.weight");
  tok_emb_txt_ = P("tok_emb_txt.weight");
  pos_emb_img_ = P("pos_emb_img.weight");
  pos_emb_txt_ = P("pos_emb_txt.weight");
  for (int i = 0; i < cfg.n_layers; ++i) {
    const std::string pre = "blocks." + std::to_string(i) + ".";
    blocks_.push_back(GptBlockParams::bind(ps_, "stage2." + pre));
  }
  ln_f_w_ = P("ln_f.weight");
  ln_f_b_ = P("ln_f.bias");
  head_img_ = P("head_img.weight");
  head_txt_ = P("head_txt.weight");
}

void MindalleGptTrainer::init_weights(uint64_t seed) {
  HWAGA_CHECK(ps_.device() == Device::CPU, "mindalle-gpt trainer: init_weights before to_device");
  uint64_t stream = 0;
  for (auto& p : ps_.all()) {
    const std::string& n = p->name;
    const bool ln = n.find(".ln") != std::string::npos;  // blocks.i.ln1/ln2 and stage2.ln_f
    const bool bias = n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0;
    float* v = p->v();
    if (ln) std::fill(v, v + p->numel(), bias ? 0.0f : 1.0f);
    else if (bias) std::fill(v, v + p->numel(), 0.0f);
    else fill_normal(*p, 0.0f, 0.02f, seed, stream);  // Linear / Embedding weights
    ++stream;
  }
}

void MindalleGptTrainer::check_batch(const GptBatch& b) const {
  const Tensor& t = b.text;
  const Tensor& c = b.codes;
  HWAGA_CHECK(c.defined() && c.dtype() == DType::I32 && c.ndim() == 4 && c.dim(3) == 1 &&
                  c.dim(1) * c.dim(2) == cfg_.ctx_len_img,
              "mindalle-gpt trainer: codes must be int32 [B,h,w,1] with h*w = ctx_len_img ", cfg_.ctx_len_img,
              ", found ", c.defined() ? shape_str(c.shape()) : std::string("none"));
  HWAGA_CHECK(t.defined() && t.dtype() == DType::I32 && t.ndim() == 2 && t.dim(0) == c.dim(0) &&
                  t.dim(1) == cfg_.ctx_len_txt,
              "mindalle-gpt trainer: text ids must be int32 [", c.dim(0), ",", cfg_.ctx_len_txt, "], found ",
              t.defined() ? shape_str(t.shape()) : std::string("none"));
  for (int64_t i = 0; i < t.numel(); ++i)
    HWAGA_CHECK(t.ptr<int32_t>()[i] >= 0 && t.ptr<int32_t>()[i] < cfg_.vocab_size_txt, "mindalle-gpt trainer: text id ",
                t.ptr<int32_t>()[i], " outside [0, ", cfg_.vocab_size_txt, ")");
  for (int64_t i = 0; i < c.numel(); ++i)
    HWAGA_CHECK(c.ptr<int32_t>()[i] >= 0 && c.ptr<int32_t>()[i] < cfg_.vocab_size_img, "mindalle-gpt trainer: code ",
                c.ptr<int32_t>()[i], " outside [0, ", cfg_.vocab_size_img, ")");
  check_input_codes(b, cfg_.vocab_size_img, "mindalle-gpt trainer");
}

// ---------------------------------------------------------------- the model

GptLoss MindalleGptTrainer::forward_backward(const GptBatch& batch, uint64_t dropout_seed, int64_t step,
                                             const LossNorm& norm) {
  return run(batch, true, opt_.dropout, dropout_seed, step, nullptr, nullptr, norm);
}

GptLoss MindalleGptTrainer::evaluate(const GptBatch& batch, Tensor* logits, Tensor* text_logits) {
  return run(batch, false, 0.0f, 0, 0, logits, text_logits);
}

GptLoss MindalleGptTrainer::run(const GptBatch& batch, bool backward, float dropout, uint64_t seed, int64_t step,
                                Tensor* logits_out, Tensor* text_logits_out, const LossNorm& norm) {
  check_batch(batch);
  TrainOps& o = ops();
  const int64_t B = batch.codes.dim(0), C = cfg_.embed_dim, K = cfg_.vocab_size_img, V = cfg_.vocab_size_txt;
  const int64_t L = cfg_.ctx_len_txt, T = cfg_.ctx_len_img, S = L + T - 1, Tm = T - 1;
  const int32_t* codes_host = batch.inputs().ptr<int32_t>();  // [B,T] raster order: the input codes
  const Tensor codes_t = on_device(o, batch.codes), text_t = on_device(o, batch.text);
  const int32_t* codes = codes_t.ptr<int32_t>();
  const int32_t* text = text_t.ptr<int32_t>();

  // ---- input X [B*S,C]: [txt_i + pos_txt_i]_{i<L} ++ [img_j + pos_img_j]_{j<T-1} ----
  Tensor img_in = Tensor::empty({B * Tm}, DType::I32);  // the codes fed as inputs (all but the last)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < Tm; ++j) img_in.ptr<int32_t>()[b * Tm + j] = codes_host[b * T + j];
  img_in = on_device(o, img_in);
  Tensor X = o.empty({B * S, C});
  {
    Tensor Xt = o.empty({B * L, C}), Xi = o.empty({B * Tm, C});
    o.embedding_fwd(tok_emb_txt_->v(), text, Xt.f32(), B * L, C);
    o.add_pos_fwd(Xt.f32(), pos_emb_txt_->v(), B * L, L, C);
    if (Tm > 0) {
      o.embedding_fwd(tok_emb_img_->v(), img_in.ptr<int32_t>(), Xi.f32(), B * Tm, C);
      o.add_pos_fwd(Xi.f32(), pos_emb_img_->v(), B * Tm, Tm, C);  // rows 0..T-2 of pos_emb_img
    }
    o.copy_rows(X.f32(), Xt.f32(), {.blocks = B, .rows = L, .C = C, .dst_block = S, .src_block = L}, false);
    o.copy_rows(X.f32(), Xi.f32(), {.blocks = B, .rows = Tm, .C = C, .dst_block = S, .dst_off = L, .src_block = Tm},
                false);
  }

  // ---- the causal stack ----
  std::vector<GptBlockActs> acts;
  X = gpt_stack_forward(o, blocks_, acts, X, B, S, C, cfg_.n_heads, dropout, seed, step, 0);
  const Tensor out = X;  // [B*S,C] before ln_f

  // ---- ln_f on every output; the heads read disjoint rows ----
  Tensor lnf_mean = o.empty({B * S}), lnf_rstd = o.empty({B * S}), Hs = o.empty({B * S, C});
  o.layer_norm_fwd(out.f32(), ln_f_w_->v(), ln_f_b_->v(), Hs.f32(), lnf_mean.f32(), lnf_rstd.f32(), B * S, C,
                   kStage2LnEps);
  const int64_t NI = B * T, NT = B * (L - 1);
  Tensor Hi = o.empty({NI, C});  // outputs L-1..S-1: predict codes 0..T-1
  o.copy_rows(Hi.f32(), Hs.f32(), {.blocks = B, .rows = T, .C = C, .dst_block = T, .src_block = S, .src_off = L - 1},
              false);
  Tensor logits = o.empty({NI, K});
  o.linear_fwd(Hi.f32(), head_img_->v(), nullptr, logits.f32(), NI, C, K);
  GptLoss res;
  Tensor wi = Tensor::empty({NI});
  std::fill(wi.f32(), wi.f32() + NI, 1.0f / float(norm.image_targets > 0 ? norm.image_targets : NI));
  wi = on_device(o, wi);
  Tensor dlogits = backward ? o.empty({NI, K}) : Tensor();
  res.image_loss = o.cross_entropy(logits.f32(), codes, wi.f32(), backward ? dlogits.f32() : nullptr,
                                   opt_.image_weight, NI, K);
  if (logits_out) *logits_out = to_host(o, logits).reshape({B, batch.codes.dim(1), batch.codes.dim(2), 1, K});
  logits = Tensor();

  // ---- text head: outputs 0..L-2 predict y_1..y_{L-1}, PAD targets left out ----
  Tensor Ht, dtxt;
  if (NT > 0) {
    Ht = o.empty({NT, C});
    o.copy_rows(Ht.f32(), Hs.f32(), {.blocks = B, .rows = L - 1, .C = C, .dst_block = L - 1, .src_block = S}, false);
    const TextTargets tt = text_targets(batch.text, opt_.text_pad_id, norm.text_targets);
    res.text_targets = tt.count;
    const Tensor tgt = on_device(o, tt.target), wt = on_device(o, tt.weight);
    Tensor tl = o.empty({NT, V});
    o.linear_fwd(Ht.f32(), head_txt_->v(), nullptr, tl.f32(), NT, C, V);
    if (backward) dtxt = o.empty({NT, V});
    if (res.text_targets > 0)
      res.text_loss = o.cross_entropy(tl.f32(), tgt.ptr<int32_t>(), wt.f32(), backward ? dtxt.f32() : nullptr,
                                      opt_.text_weight, NT, V);
    else if (backward)
      o.fill(dtxt.f32(), NT * V, 0.0f);
    if (text_logits_out) *text_logits_out = to_host(o, tl).reshape({B, L - 1, V});
  }
  res.loss = double(opt_.image_weight) * res.image_loss + double(opt_.text_weight) * res.text_loss;
  if (!backward) return res;

  // ================================================================ backward
  // heads -> dHs [B*S,C] (text rows 0..L-2 and image rows L-1..S-1 cover every row once)
  Tensor dHs = o.empty({B * S, C});
  {
    Tensor dHi = o.empty({NI, C});
    o.linear_bwd(Hi.f32(), head_img_->v(), dlogits.f32(), dHi.f32(), head_img_->g(), nullptr, NI, C, K);
    dlogits = Tensor();
    o.copy_rows(dHs.f32(), dHi.f32(),
                {.blocks = B, .rows = T, .C = C, .dst_block = S, .dst_off = L - 1, .src_block = T}, false);
  }
  if (NT > 0) {
    Tensor dHt = o.empty({NT, C});
    o.linear_bwd(Ht.f32(), head_txt_->v(), dtxt.f32(), dHt.f32(), head_txt_->g(), nullptr, NT, C, V);
    o.copy_rows(dHs.f32(), dHt.f32(), {.blocks = B, .rows = L - 1, .C = C, .dst_block = S, .src_block = L - 1},
                false);
  }
  Tensor dX = o.empty({B * S, C});
  o.layer_norm_bwd(out.f32(), ln_f_w_->v(), lnf_mean.f32(), lnf_rstd.f32(), dHs.f32(), dX.f32(), ln_f_w_->g(),
                   ln_f_b_->g(), B * S, C);
  dHs = Tensor();
  dX = gpt_stack_backward(o, blocks_, acts, dX, B, S, C, cfg_.n_heads, dropout, seed, step, 0);
  // input rows -> token tables and positional tables
  Tensor dXt = o.empty({B * L, C}), dXi = o.empty({B * Tm, C});
  o.copy_rows(dXt.f32(), dX.f32(), {.blocks = B, .rows = L, .C = C, .dst_block = L, .src_block = S}, false);
  o.copy_rows(dXi.f32(), dX.f32(), {.blocks = B, .rows = Tm, .C = C, .dst_block = Tm, .src_block = S, .src_off = L},
              false);
  o.embedding_bwd(text, dXt.f32(), tok_emb_txt_->g(), B * L, C);
  o.add_pos_bwd(dXt.f32(), pos_emb_txt_->g(), B * L, L, C);
  if (Tm > 0) {
    o.embedding_bwd(img_in.ptr<int32_t>(), dXi.f32(), tok_emb_img_->g(), B * Tm, C);
    o.add_pos_bwd(dXi.f32(), pos_emb_img_->g(), B * Tm, Tm, C);
  }
  return res;
}

}  // namespace hwaga::train
