#include "train/rq_transformer_trainer.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/threads.h"
#include "sample/rng.h"
#include "train/gpt_block_train.h"
#include "train/transformer_ops.h"

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
  codebook_ = codebook.to(DType::F32).clone();
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

void RqTransformerTrainer::init_weights(uint64_t seed) {
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
  const int64_t B = batch.codes.dim(0), C = cfg_.embed_dim, E = cfg_.input_embed_dim, K = cfg_.vocab_size;
  const int64_t L = cfg_.block_size_cond, P = int64_t(cfg_.H()) * cfg_.W(), D = cfg_.D(), T = L + P - 1;
  const int64_t V = cfg_.vocab_size_cond, Pm = P - 1;
  const int32_t* codes = batch.codes.ptr<int32_t>();  // [B,P,D]
  const int32_t* text = batch.text.ptr<int32_t>();    // [B,L]
  const float* cb = codebook_.f32();
  const float fD = float(D);

  // ---- body input X0 [B*T,C]: [s_0..s_{L-1}, u_0..u_{P-2}] (§2.3) ----
  Tensor esum = Tensor::zeros({B * Pm, E});  // Σ_d codebook[c_{b,p,d}], p < P-1
  parallel_for(B * Pm, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / Pm, p = r % Pm;
      float* o = esum.f32() + r * E;
      for (int64_t d = 0; d < D; ++d) {
        const float* e = cb + int64_t(codes[(b * P + p) * D + d]) * E;
        for (int64_t j = 0; j < E; ++j) o[j] += e[j];
      }
    }
  });
  Tensor U = Tensor::empty({B * Pm, C});
  linear_fwd(esum.f32(), input_mlp_w_->v(), nullptr, U.f32(), B * Pm, E, C);
  Tensor Sx = Tensor::empty({B * L, C});
  embedding_fwd(cond_emb_->v(), text, Sx.f32(), B * L, C);
  add_pos_fwd(Sx.f32(), pos_emb_cond_->v(), B * L, L, C);
  Tensor X = Tensor::empty({B * T, C});
  {
    std::vector<float> pb(size_t(Pm * C));  // pos_emb_hw[p] + D * b_in
    for (int64_t p = 0; p < Pm; ++p)
      for (int64_t c = 0; c < C; ++c) pb[size_t(p * C + c)] = pos_emb_hw_->v()[p * C + c] + fD * input_mlp_b_->v()[c];
    add_pos_fwd(U.f32(), pb.data(), B * Pm, Pm, C);
    for (int64_t b = 0; b < B; ++b) {
      std::memcpy(X.f32() + b * T * C, Sx.f32() + b * L * C, size_t(L * C) * sizeof(float));
      std::memcpy(X.f32() + (b * T + L) * C, U.f32() + b * Pm * C, size_t(Pm * C) * sizeof(float));
    }
  }

  // ---- body stack ----
  std::vector<GptBlockActs> body_acts(body_.size());
  for (size_t i = 0; i < body_.size(); ++i) {
    Tensor Y = Tensor::empty({B * T, C});
    gpt_block_forward(body_[i], body_acts[i], X.f32(), Y.f32(), B, T, C, cfg_.n_head, dropout, seed, dropout_stream(step, uint32_t(2 * i)));
    X = Y;
  }
  const Tensor& out = X;  // [B*T,C], no final LayerNorm

  // ---- depth input V [B*P*D,C] (§2.4) ----
  Tensor Vx = Tensor::empty({B * P * D, C});
  Tensor cum;                   // [B*P*(D-1),E]: e_0+..+e_{d-1} for d = 1..D-1
  Tensor hm;                    // head_mlp(cum)
  if (D > 1) {
    cum = Tensor::empty({B * P * (D - 1), E});
    parallel_for(B * P, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        std::vector<float> acc(size_t(E), 0.0f);
        for (int64_t d = 1; d < D; ++d) {
          const float* e = cb + int64_t(codes[r * D + d - 1]) * E;
          for (int64_t j = 0; j < E; ++j) acc[size_t(j)] += e[j];
          std::memcpy(cum.f32() + (r * (D - 1) + d - 1) * E, acc.data(), size_t(E) * sizeof(float));
        }
      }
    });
    hm = Tensor::empty({B * P * (D - 1), C});
    linear_fwd(cum.f32(), head_mlp_w_->v(), head_mlp_b_->v(), hm.f32(), B * P * (D - 1), E, C);
  }
  parallel_for(B * P, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / P, p = r % P;
      std::memcpy(Vx.f32() + r * D * C, out.f32() + (b * T + L - 1 + p) * C, size_t(C) * sizeof(float));
      for (int64_t d = 1; d < D; ++d)
        std::memcpy(Vx.f32() + (r * D + d) * C, hm.f32() + (r * (D - 1) + d - 1) * C, size_t(C) * sizeof(float));
    }
  });
  add_pos_fwd(Vx.f32(), pos_emb_d_->v(), B * P * D, D, C);

  // ---- head stack ----
  std::vector<GptBlockActs> head_acts(head_.size());
  Tensor O = Vx;
  for (size_t i = 0; i < head_.size(); ++i) {
    Tensor Y = Tensor::empty({B * P * D, C});
    gpt_block_forward(head_[i], head_acts[i], O.f32(), Y.f32(), B * P, D, C, cfg_.n_head, dropout, seed,
                  dropout_stream(step, kHeadSiteBase + uint32_t(2 * i)));
    O = Y;
  }

  // ---- image classifier and loss ----
  const int64_t NI = B * P * D;
  Tensor cls_mean = Tensor::empty({NI}), cls_rstd = Tensor::empty({NI}), cls_h = Tensor::empty({NI, C});
  layer_norm_fwd(O.f32(), cls_ln_w_->v(), cls_ln_b_->v(), cls_h.f32(), cls_mean.f32(), cls_rstd.f32(), NI, C,
                 kStage2LnEps);
  Tensor logits = Tensor::empty({NI, K});
  linear_fwd(cls_h.f32(), cls_w_->v(), cls_b_->v(), logits.f32(), NI, C, K);
  RqLoss res;
  std::vector<float> wi(size_t(NI), 1.0f / float(norm.image_targets > 0 ? norm.image_targets : NI));
  Tensor dlogits = backward ? Tensor::empty({NI, K}) : Tensor();
  res.image_loss = cross_entropy(logits.f32(), codes, wi.data(), backward ? dlogits.f32() : nullptr,
                                 opt_.image_weight, NI, K);
  if (logits_out) *logits_out = logits.reshape({B, cfg_.H(), cfg_.W(), D, K});
  else if (backward) logits = Tensor();

  // ---- text classifier and loss (body outputs 0..L-2 predict y_1..y_{L-1}) ----
  const int64_t NT = cfg_.has_text() ? B * (L - 1) : 0;
  Tensor txt_in, txt_mean, txt_rstd, txt_h, dtxt;
  if (NT > 0) {
    txt_in = Tensor::empty({NT, C});
    std::vector<int32_t> tgt(static_cast<size_t>(NT));
    std::vector<float> wt(static_cast<size_t>(NT), 0.0f);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t + 1 < L; ++t) {
        std::memcpy(txt_in.f32() + (b * (L - 1) + t) * C, out.f32() + (b * T + t) * C, size_t(C) * sizeof(float));
        tgt[size_t(b * (L - 1) + t)] = text[b * L + t + 1];
      }
    for (int64_t n = 0; n < NT; ++n)
      if (tgt[size_t(n)] != opt_.text_pad_id) res.text_targets++;
    for (int64_t n = 0; n < NT; ++n)
      if (tgt[size_t(n)] != opt_.text_pad_id)
        wt[size_t(n)] = 1.0f / float(norm.text_targets > 0 ? norm.text_targets : res.text_targets);
    txt_mean = Tensor::empty({NT});
    txt_rstd = Tensor::empty({NT});
    txt_h = Tensor::empty({NT, C});
    layer_norm_fwd(txt_in.f32(), ccls_ln_w_->v(), ccls_ln_b_->v(), txt_h.f32(), txt_mean.f32(), txt_rstd.f32(), NT,
                   C, kStage2LnEps);
    Tensor tl = Tensor::empty({NT, V});
    linear_fwd(txt_h.f32(), ccls_w_->v(), ccls_b_->v(), tl.f32(), NT, C, V);
    if (backward) dtxt = Tensor::empty({NT, V});
    if (res.text_targets > 0)
      res.text_loss = cross_entropy(tl.f32(), tgt.data(), wt.data(), backward ? dtxt.f32() : nullptr,
                                    opt_.text_weight, NT, V);
    else if (backward)
      std::memset(dtxt.data(), 0, dtxt.nbytes());
    if (text_logits_out) *text_logits_out = tl.reshape({B, L - 1, V});
  }
  res.loss = double(opt_.image_weight) * res.image_loss + double(opt_.text_weight) * res.text_loss;
  if (!backward) return res;

  // ================================================================ backward
  // image classifier -> dO [NI,C]
  Tensor dO = Tensor::empty({NI, C});
  {
    Tensor dh = Tensor::empty({NI, C});
    linear_bwd(cls_h.f32(), cls_w_->v(), dlogits.f32(), dh.f32(), cls_w_->g(), cls_b_->g(), NI, C, K);
    dlogits = Tensor();
    layer_norm_bwd(O.f32(), cls_ln_w_->v(), cls_mean.f32(), cls_rstd.f32(), dh.f32(), dO.f32(), cls_ln_w_->g(),
                   cls_ln_b_->g(), NI, C);
  }
  // head stack
  for (size_t i = head_.size(); i-- > 0;) {
    Tensor dX = Tensor::empty({NI, C});
    gpt_block_backward(head_[i], head_acts[i], dO.f32(), dX.f32(), B * P, D, C, cfg_.n_head, dropout, seed,
                   dropout_stream(step, kHeadSiteBase + uint32_t(2 * i)));
    head_acts[i] = GptBlockActs();
    dO = dX;
  }
  const Tensor& dV = dO;  // [B*P*D,C]
  add_pos_bwd(dV.f32(), pos_emb_d_->g(), NI, D, C);
  // body output gradient dOut [B*T,C]: rows L-1+p from slot 0 of the depth input, rows 0..L-2 from
  // the text head
  Tensor dOut = Tensor::zeros({B * T, C});
  if (D > 1) {
    Tensor dhm = Tensor::empty({B * P * (D - 1), C});
    for (int64_t r = 0; r < B * P; ++r)
      for (int64_t d = 1; d < D; ++d)
        std::memcpy(dhm.f32() + (r * (D - 1) + d - 1) * C, dV.f32() + (r * D + d) * C, size_t(C) * sizeof(float));
    linear_bwd(cum.f32(), head_mlp_w_->v(), dhm.f32(), nullptr, head_mlp_w_->g(), head_mlp_b_->g(), B * P * (D - 1), E,
               C);
  }
  for (int64_t r = 0; r < B * P; ++r) {
    const int64_t b = r / P, p = r % P;
    std::memcpy(dOut.f32() + (b * T + L - 1 + p) * C, dV.f32() + r * D * C, size_t(C) * sizeof(float));
  }
  if (NT > 0) {
    Tensor dh = Tensor::empty({NT, C}), dti = Tensor::empty({NT, C});
    linear_bwd(txt_h.f32(), ccls_w_->v(), dtxt.f32(), dh.f32(), ccls_w_->g(), ccls_b_->g(), NT, C, V);
    layer_norm_bwd(txt_in.f32(), ccls_ln_w_->v(), txt_mean.f32(), txt_rstd.f32(), dh.f32(), dti.f32(), ccls_ln_w_->g(),
                   ccls_ln_b_->g(), NT, C);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t + 1 < L; ++t) {
        float* d = dOut.f32() + (b * T + t) * C;
        const float* s = dti.f32() + (b * (L - 1) + t) * C;
        for (int64_t c = 0; c < C; ++c) d[c] += s[c];
      }
  }
  // body stack
  Tensor dX = dOut;
  for (size_t i = body_.size(); i-- > 0;) {
    Tensor dXin = Tensor::empty({B * T, C});
    gpt_block_backward(body_[i], body_acts[i], dX.f32(), dXin.f32(), B, T, C, cfg_.n_head, dropout, seed,
                   dropout_stream(step, uint32_t(2 * i)));
    body_acts[i] = GptBlockActs();
    dX = dXin;
  }
  // body input: text rows -> cond_emb, pos_emb_cond; image rows -> input_mlp, pos_emb_hw
  Tensor dS = Tensor::empty({B * L, C}), dU = Tensor::empty({B * Pm, C});
  for (int64_t b = 0; b < B; ++b) {
    std::memcpy(dS.f32() + b * L * C, dX.f32() + b * T * C, size_t(L * C) * sizeof(float));
    std::memcpy(dU.f32() + b * Pm * C, dX.f32() + (b * T + L) * C, size_t(Pm * C) * sizeof(float));
  }
  embedding_bwd(text, dS.f32(), cond_emb_->g(), B * L, C);
  add_pos_bwd(dS.f32(), pos_emb_cond_->g(), B * L, L, C);
  if (Pm > 0) {
    std::vector<float> db(size_t(C), 0.0f);  // Σ over rows of dU; the bias counts D times (§2.3)
    linear_bwd(esum.f32(), input_mlp_w_->v(), dU.f32(), nullptr, input_mlp_w_->g(), db.data(), B * Pm, E, C);
    for (int64_t c = 0; c < C; ++c) input_mlp_b_->g()[c] += fD * db[size_t(c)];
    add_pos_bwd(dU.f32(), pos_emb_hw_->g(), B * Pm, Pm, C);
  }
  return res;
}

}  // namespace hwaga::train
