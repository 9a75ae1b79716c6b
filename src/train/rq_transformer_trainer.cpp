#include "train/rq_transformer_trainer.h"

#include <cmath>
#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/threads.h"
#include "sample/rng.h"
#include "train/gpt_block_train.h"
#include "train/train_ops.h"

namespace hwaga::train {

namespace {

constexpr uint32_t kHeadSiteBase = 0x8000;  // dropout sites of the head stack start here

}  // namespace

int64_t count_text_targets(const Tensor& text, int32_t pad_id) {
  HWAGA_CHECK(text.dtype() == DType::I32 && text.ndim() == 2, "count_text_targets: int32 [B,L] ids expected, found ",
              shape_str(text.shape()));
  const int64_t B = text.dim(0), L = text.dim(1);
  int64_t n = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 1; t < L; ++t) n += text.ptr<int32_t>()[b * L + t] != pad_id;
  return n;
}

TextTargets text_targets(const Tensor& text, int32_t pad_id, int64_t norm_count) {
  const int64_t B = text.dim(0), L = text.dim(1), NT = B * (L - 1);
  TextTargets tt{Tensor::empty({NT}, DType::I32), Tensor::zeros({NT}), 0};
  int32_t* tgt = tt.target.ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < L; ++t) tgt[b * (L - 1) + t] = text.ptr<int32_t>()[b * L + t + 1];
  for (int64_t n = 0; n < NT; ++n) tt.count += tgt[n] != pad_id;
  const float w = 1.0f / float(norm_count > 0 ? norm_count : tt.count);
  for (int64_t n = 0; n < NT; ++n)
    if (tgt[n] != pad_id) tt.weight.f32()[n] = w;
  return tt;
}

ParamKind stage2_param_kind(const std::string& name) {
  auto ends = [&](const char* e) {
    const size_t n = std::strlen(e);
    return name.size() >= n && name.compare(name.size() - n, n, e) == 0;
  };
  if (!ends(".weight")) return ParamKind::no_decay;  // biases, positional tensors
  if (name.find(".ln") != std::string::npos || name.find("layer_norm") != std::string::npos ||
      name.find("ln_f") != std::string::npos || name.find("emb") != std::string::npos)
    return ParamKind::no_decay;  // LayerNorm gains, embedding tables
  return ParamKind::weight;
}

void fill_normal(Param& p, float mean, float std, uint64_t seed, uint64_t stream) {
  float* v = p.v();
  parallel_for(p.numel(), 1 << 14, [&](int64_t b, int64_t e) {
    Rng rng(seed, stream);
    rng.seek(uint64_t(2 * b));
    for (int64_t i = b; i < e; ++i) {
      const double u1 = 1.0 - rng.next_double();  // (0,1]
      const double u2 = rng.next_double();
      v[i] = mean + std * float(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
    }
  });
}

RqTransformerTrainer::RqTransformerTrainer(const RqTransformerConfig& cfg, const Tensor& codebook,
                                           RqTrainerOptions opt)
    : cfg_(cfg), opt_(opt) {
  Stage2Config sc;
  sc.type = kStage2RqTransformer;
  sc.rq = cfg;
  validate_stage2_config(sc, "rq-transformer trainer");
  HWAGA_CHECK(codebook.ndim() == 2 && codebook.dim(0) == cfg.vocab_size && codebook.dim(1) == cfg.input_embed_dim,
              "rq-transformer trainer: the stage-1 codebook ", shape_str(codebook.shape()),
              " does not pair with the stage-2 config (K=", cfg.vocab_size, ", input_embed_dim=", cfg.input_embed_dim,
              ")");
  codebook_host_ = codebook.to(DType::F32).clone();
  codebook_ = codebook_host_;
  for (const TensorSpec& s : stage2_tensor_specs(sc)) {
    const std::string name = "stage2." + s.name;
    ps_.add(name, s.shape, stage2_param_kind(name));
  }
  auto P = [&](const std::string& k) { return &ps_.get("stage2." + k); };
  cond_emb_ = P("cond_emb.weight");
  pos_emb_cond_ = P("pos_emb_cond");
  pos_emb_hw_ = P("pos_emb_hw");
  pos_emb_d_ = P("pos_emb_d");
  input_mlp_w_ = P("input_mlp.weight");
  input_mlp_b_ = P("input_mlp.bias");
  head_mlp_w_ = P("head_mlp.weight");
  head_mlp_b_ = P("head_mlp.bias");
  auto block = [&](const std::string& pre) { return GptBlockParams::bind(ps_, "stage2." + pre); };
  for (int i = 0; i < cfg.n_layer_body; ++i) body_.push_back(block("body_transformer.blocks." + std::to_string(i) + "."));
  for (int i = 0; i < cfg.n_layer_head; ++i) head_.push_back(block("head_transformer.blocks." + std::to_string(i) + "."));
  cls_ln_w_ = P("classifier.layer_norm.weight");
  cls_ln_b_ = P("classifier.layer_norm.bias");
  cls_w_ = P("classifier.linear.weight");
  cls_b_ = P("classifier.linear.bias");
  if (cfg.has_text()) {
    ccls_ln_w_ = P("cond_classifier.layer_norm.weight");
    ccls_ln_b_ = P("cond_classifier.layer_norm.bias");
    ccls_w_ = P("cond_classifier.linear.weight");
    ccls_b_ = P("cond_classifier.linear.bias");
  }
}

void RqTransformerTrainer::to_device(TrainOps& ops) {
  ps_.to_device(ops);
  codebook_ = on_device(ops, codebook_host_);
  ops_ = &ops;
}

void RqTransformerTrainer::init_weights(uint64_t seed) {
  HWAGA_CHECK(ps_.device() == Device::CPU, "rq-transformer trainer: init_weights before to_device");
  uint64_t stream = 0;
  for (auto& p : ps_.all()) {
    const std::string& n = p->name;
    const bool ln = n.find(".ln") != std::string::npos || n.find("layer_norm") != std::string::npos;
    float* v = p->v();
    if (ln) {
      std::fill(v, v + p->numel(), n.size() > 7 && n.compare(n.size() - 7, 7, ".weight") == 0 ? 1.0f : 0.0f);
    } else if (n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0) {
      std::fill(v, v + p->numel(), 0.0f);
    } else {
      fill_normal(*p, 0.0f, 0.02f, seed, stream);  // Linear / Embedding weights, positional tensors
    }
    ++stream;
  }
}

int64_t RqTransformerTrainer::targets_per_batch(int64_t B) const {
  return B * (int64_t(cfg_.H()) * cfg_.W() * cfg_.D() + (cfg_.has_text() ? cfg_.block_size_cond - 1 : 0));
}

void RqTransformerTrainer::check_batch(const RqBatch& b) const {
  const Tensor& t = b.text;
  const Tensor& c = b.codes;
  HWAGA_CHECK(c.defined() && c.dtype() == DType::I32 && c.ndim() == 4 && c.dim(1) == cfg_.H() && c.dim(2) == cfg_.W() &&
                  c.dim(3) == cfg_.D(),
              "rq-transformer trainer: codes must be int32 [B,", cfg_.H(), ",", cfg_.W(), ",", cfg_.D(), "], found ",
              c.defined() ? shape_str(c.shape()) : std::string("none"));
  HWAGA_CHECK(t.defined() && t.dtype() == DType::I32 && t.ndim() == 2 && t.dim(0) == c.dim(0) &&
                  t.dim(1) == cfg_.block_size_cond,
              "rq-transformer trainer: text ids must be int32 [", c.dim(0), ",", cfg_.block_size_cond, "], found ",
              t.defined() ? shape_str(t.shape()) : std::string("none"));
  for (int64_t i = 0; i < t.numel(); ++i)
    HWAGA_CHECK(t.ptr<int32_t>()[i] >= 0 && t.ptr<int32_t>()[i] < cfg_.vocab_size_cond, "rq-transformer trainer: text id ",
                t.ptr<int32_t>()[i], " outside [0, ", cfg_.vocab_size_cond, ")");
  for (int64_t i = 0; i < c.numel(); ++i)
    HWAGA_CHECK(c.ptr<int32_t>()[i] >= 0 && c.ptr<int32_t>()[i] < cfg_.vocab_size, "rq-transformer trainer: code ",
                c.ptr<int32_t>()[i], " outside [0, ", cfg_.vocab_size, ")");
  check_input_codes(b, cfg_.vocab_size, "rq-transformer trainer");
}

void check_input_codes(const RqBatch& b, int64_t K, const char* who) {
  if (!b.input_codes.defined()) return;
  const Tensor& x = b.input_codes;
  HWAGA_CHECK(x.dtype() == DType::I32 && x.shape() == b.codes.shape(), who, ": input codes must be int32 ",
              shape_str(b.codes.shape()), " like the codes, found ", dtype_name(x.dtype()), " ", shape_str(x.shape()));
  for (int64_t i = 0; i < x.numel(); ++i)
    HWAGA_CHECK(x.ptr<int32_t>()[i] >= 0 && x.ptr<int32_t>()[i] < K, who, ": input code ", x.ptr<int32_t>()[i],
                " outside [0, ", K, ")");
}

// ---------------------------------------------------------------- the model

RqLoss RqTransformerTrainer::forward_backward(const RqBatch& batch, uint64_t dropout_seed, int64_t step,
                                              const LossNorm& norm) {
  return run(batch, true, opt_.dropout, dropout_seed, step, nullptr, nullptr, norm);
}

RqLoss RqTransformerTrainer::evaluate(const RqBatch& batch, Tensor* logits, Tensor* text_logits) {
  return run(batch, false, 0.0f, 0, 0, logits, text_logits);
}

RqLoss RqTransformerTrainer::run(const RqBatch& batch, bool backward, float dropout, uint64_t seed, int64_t step,
                                 Tensor* logits_out, Tensor* text_logits_out, const LossNorm& norm) {
  check_batch(batch);
  TrainOps& o = ops();
  const int64_t B = batch.codes.dim(0), C = cfg_.embed_dim, E = cfg_.input_embed_dim, K = cfg_.vocab_size;
  const int64_t L = cfg_.block_size_cond, P = int64_t(cfg_.H()) * cfg_.W(), D = cfg_.D(), T = L + P - 1;
  const int64_t V = cfg_.vocab_size_cond, Pm = P - 1;
  const Tensor codes_t = on_device(o, batch.codes), text_t = on_device(o, batch.text);
  const Tensor in_t = batch.input_codes.defined() ? on_device(o, batch.input_codes) : codes_t;
  const int32_t* codes = codes_t.ptr<int32_t>();         // [B,P,D] on the device: the targets
  const int32_t* in_codes = in_t.ptr<int32_t>();         // [B,P,D] on the device: the inputs
  const int32_t* text = text_t.ptr<int32_t>();           // [B,L] on the device
  const float* cb = codebook_.f32();
  const float fD = float(D);

  // ---- body input X0 [B*T,C]: [s_0..s_{L-1}, u_0..u_{P-2}] (§2.3) ----
  Tensor esum = o.empty({B * Pm, E});  // Σ_d codebook[c_{b,p,d}], p < P-1
  o.code_sum(cb, in_codes, esum.f32(), B, P, Pm, D, E);
  Tensor U = o.empty({B * Pm, C});
  o.linear_fwd(esum.f32(), input_mlp_w_->v(), nullptr, U.f32(), B * Pm, E, C);
  Tensor Sx = o.empty({B * L, C});
  o.embedding_fwd(cond_emb_->v(), text, Sx.f32(), B * L, C);
  o.add_pos_fwd(Sx.f32(), pos_emb_cond_->v(), B * L, L, C);
  Tensor X = o.empty({B * T, C});
  {
    Tensor pb = o.empty({Pm, C});  // pos_emb_hw[p] + D * b_in
    o.pos_plus_bias(pos_emb_hw_->v(), input_mlp_b_->v(), fD, pb.f32(), Pm, C);
    o.add_pos_fwd(U.f32(), pb.f32(), B * Pm, Pm, C);
    o.copy_rows(X.f32(), Sx.f32(), {.blocks = B, .rows = L, .C = C, .dst_block = T, .src_block = L}, false);
    o.copy_rows(X.f32(), U.f32(), {.blocks = B, .rows = Pm, .C = C, .dst_block = T, .dst_off = L, .src_block = Pm},
                false);
  }

  // ---- body stack ----
  std::vector<GptBlockActs> body_acts;
  X = gpt_stack_forward(o, body_, body_acts, X, B, T, C, cfg_.n_head, dropout, seed, step, 0);
  const Tensor& out = X;  // [B*T,C], no final LayerNorm

  // ---- depth input V [B*P*D,C] (§2.4) ----
  Tensor Vx = o.empty({B * P * D, C});
  Tensor cum;  // [B*P*(D-1),E]: e_0+..+e_{d-1} for d = 1..D-1
  Tensor hm;   // head_mlp(cum)
  if (D > 1) {
    cum = o.empty({B * P * (D - 1), E});
    o.code_prefix_sums(cb, in_codes, cum.f32(), B * P, D, E);
    hm = o.empty({B * P * (D - 1), C});
    o.linear_fwd(cum.f32(), head_mlp_w_->v(), head_mlp_b_->v(), hm.f32(), B * P * (D - 1), E, C);
  }
  // slot 0 of position p: body output L-1+p; slots 1..D-1: head_mlp of the partial sums
  o.copy_rows(Vx.f32(), out.f32(),
              {.blocks = B, .rows = P, .C = C, .dst_block = P * D, .dst_row = D, .src_block = T, .src_off = L - 1},
              false);
  if (D > 1)
    o.copy_rows(Vx.f32(), hm.f32(),
                {.blocks = B * P, .rows = D - 1, .C = C, .dst_block = D, .dst_off = 1, .src_block = D - 1}, false);
  o.add_pos_fwd(Vx.f32(), pos_emb_d_->v(), B * P * D, D, C);

  // ---- head stack ----
  std::vector<GptBlockActs> head_acts;
  Tensor O = gpt_stack_forward(o, head_, head_acts, Vx, B * P, D, C, cfg_.n_head, dropout, seed, step, kHeadSiteBase);

  // ---- image classifier and loss ----
  const int64_t NI = B * P * D;
  Tensor cls_mean = o.empty({NI}), cls_rstd = o.empty({NI}), cls_h = o.empty({NI, C});
  o.layer_norm_fwd(O.f32(), cls_ln_w_->v(), cls_ln_b_->v(), cls_h.f32(), cls_mean.f32(), cls_rstd.f32(), NI, C,
                   kStage2LnEps);
  Tensor logits = o.empty({NI, K});
  o.linear_fwd(cls_h.f32(), cls_w_->v(), cls_b_->v(), logits.f32(), NI, C, K);
  RqLoss res;
  Tensor wi = Tensor::empty({NI});
  std::fill(wi.f32(), wi.f32() + NI, 1.0f / float(norm.image_targets > 0 ? norm.image_targets : NI));
  wi = on_device(o, wi);
  Tensor dlogits = backward ? o.empty({NI, K}) : Tensor();
  res.image_loss = o.cross_entropy(logits.f32(), codes, wi.f32(), backward ? dlogits.f32() : nullptr,
                                   opt_.image_weight, NI, K);
  if (logits_out) *logits_out = to_host(o, logits).reshape({B, cfg_.H(), cfg_.W(), D, K});
  logits = Tensor();

  // ---- text classifier and loss (body outputs 0..L-2 predict y_1..y_{L-1}) ----
  const int64_t NT = cfg_.has_text() ? B * (L - 1) : 0;
  Tensor txt_in, txt_mean, txt_rstd, txt_h, dtxt;
  if (NT > 0) {
    txt_in = o.empty({NT, C});
    o.copy_rows(txt_in.f32(), out.f32(), {.blocks = B, .rows = L - 1, .C = C, .dst_block = L - 1, .src_block = T},
                false);
    const TextTargets tt = text_targets(batch.text, opt_.text_pad_id, norm.text_targets);
    res.text_targets = tt.count;
    const Tensor tgt = on_device(o, tt.target), wt = on_device(o, tt.weight);
    txt_mean = o.empty({NT});
    txt_rstd = o.empty({NT});
    txt_h = o.empty({NT, C});
    o.layer_norm_fwd(txt_in.f32(), ccls_ln_w_->v(), ccls_ln_b_->v(), txt_h.f32(), txt_mean.f32(), txt_rstd.f32(), NT,
                     C, kStage2LnEps);
    Tensor tl = o.empty({NT, V});
    o.linear_fwd(txt_h.f32(), ccls_w_->v(), ccls_b_->v(), tl.f32(), NT, C, V);
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
  // image classifier -> dO [NI,C]
  Tensor dO = o.empty({NI, C});
  {
    Tensor dh = o.empty({NI, C});
    o.linear_bwd(cls_h.f32(), cls_w_->v(), dlogits.f32(), dh.f32(), cls_w_->g(), cls_b_->g(), NI, C, K);
    dlogits = Tensor();
    o.layer_norm_bwd(O.f32(), cls_ln_w_->v(), cls_mean.f32(), cls_rstd.f32(), dh.f32(), dO.f32(), cls_ln_w_->g(),
                     cls_ln_b_->g(), NI, C);
  }
  // head stack
  dO = gpt_stack_backward(o, head_, head_acts, dO, B * P, D, C, cfg_.n_head, dropout, seed, step, kHeadSiteBase);
  const Tensor& dV = dO;  // [B*P*D,C]
  o.add_pos_bwd(dV.f32(), pos_emb_d_->g(), NI, D, C);
  // body output gradient dOut [B*T,C]: rows L-1+p from slot 0 of the depth input, rows 0..L-2 from
  // the text head
  Tensor dOut = o.zeros({B * T, C});
  if (D > 1) {
    Tensor dhm = o.empty({B * P * (D - 1), C});
    o.copy_rows(dhm.f32(), dV.f32(),
                {.blocks = B * P, .rows = D - 1, .C = C, .dst_block = D - 1, .src_block = D, .src_off = 1}, false);
    o.linear_bwd(cum.f32(), head_mlp_w_->v(), dhm.f32(), nullptr, head_mlp_w_->g(), head_mlp_b_->g(),
                 B * P * (D - 1), E, C);
  }
  o.copy_rows(dOut.f32(), dV.f32(),
              {.blocks = B, .rows = P, .C = C, .dst_block = T, .dst_off = L - 1, .src_block = P * D, .src_row = D},
              false);
  if (NT > 0) {
    Tensor dh = o.empty({NT, C}), dti = o.empty({NT, C});
    o.linear_bwd(txt_h.f32(), ccls_w_->v(), dtxt.f32(), dh.f32(), ccls_w_->g(), ccls_b_->g(), NT, C, V);
    o.layer_norm_bwd(txt_in.f32(), ccls_ln_w_->v(), txt_mean.f32(), txt_rstd.f32(), dh.f32(), dti.f32(),
                     ccls_ln_w_->g(), ccls_ln_b_->g(), NT, C);
    o.copy_rows(dOut.f32(), dti.f32(), {.blocks = B, .rows = L - 1, .C = C, .dst_block = T, .src_block = L - 1},
                true);
  }
  // body stack
  Tensor dX = gpt_stack_backward(o, body_, body_acts, dOut, B, T, C, cfg_.n_head, dropout, seed, step, 0);
  // body input: text rows -> cond_emb, pos_emb_cond; image rows -> input_mlp, pos_emb_hw
  Tensor dS = o.empty({B * L, C}), dU = o.empty({B * Pm, C});
  o.copy_rows(dS.f32(), dX.f32(), {.blocks = B, .rows = L, .C = C, .dst_block = L, .src_block = T}, false);
  o.copy_rows(dU.f32(), dX.f32(), {.blocks = B, .rows = Pm, .C = C, .dst_block = Pm, .src_block = T, .src_off = L},
              false);
  o.embedding_bwd(text, dS.f32(), cond_emb_->g(), B * L, C);
  o.add_pos_bwd(dS.f32(), pos_emb_cond_->g(), B * L, L, C);
  if (Pm > 0) {
    Tensor db = o.zeros({C});  // Σ over rows of dU; the bias counts D times (§2.3)
    o.linear_bwd(esum.f32(), input_mlp_w_->v(), dU.f32(), nullptr, input_mlp_w_->g(), db.f32(), B * Pm, E, C);
    o.axpy(input_mlp_b_->g(), db.f32(), fD, C);
    o.add_pos_bwd(dU.f32(), pos_emb_hw_->g(), B * Pm, Pm, C);
  }
  return res;
}

}  // namespace hwaga::train
