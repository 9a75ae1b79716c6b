#include "rq/rq_transformer.h"

#include <cstdio>

#include "core/error.h"

namespace hwaga {

namespace {

// Host int32 [N,d]: the first d codes of each row of codes [N,D].
Tensor code_prefix(const Tensor& codes, int d) {
  const int64_t N = codes.dim(0), D = codes.dim(1);
  Tensor t = Tensor::empty({N, d}, DType::I32);
  for (int64_t n = 0; n < N; ++n)
    for (int i = 0; i < d; ++i) t.ptr<int32_t>()[n * d + i] = codes.ptr<int32_t>()[n * D + i];
  return t;
}

Tensor ids_tensor(const std::vector<int32_t>& ids) {
  Tensor t = Tensor::empty({int64_t(ids.size())}, DType::I32);
  for (size_t i = 0; i < ids.size(); ++i) t.ptr<int32_t>()[i] = ids[i];
  return t;
}

}  // namespace

RqTransformer::RqTransformer(const RqTransformerConfig& cfg, const TensorMap& m, const std::string& source,
                             Backend& be, Tensor codebook)
    : cfg_(cfg), be_(be), codebook_(std::move(codebook)) {
  const int64_t C = cfg.embed_dim, P = int64_t(cfg.H()) * cfg.W();
  HWAGA_CHECK(codebook_.ndim() == 2 && codebook_.dim(0) == cfg.vocab_size && codebook_.dim(1) == cfg.input_embed_dim,
              source, ": the stage-1 codebook ", shape_str(codebook_.shape()), " does not pair with the stage-2 model (K=",
              cfg.vocab_size, ", input_embed_dim=", cfg.input_embed_dim, ")");
  auto get = [&](const std::string& k) { return get_tensor(m, "stage2." + k, source); };
  auto vec = [&](const std::string& k, Shape s) { return be.upload(get(k).reshape(std::move(s)), DType::F32); };
  auto mat = [&](const std::string& k) { return be.upload_weight(get(k)); };
  w_.cond_emb_weight = mat("cond_emb.weight");
  w_.pos_emb_cond = vec("pos_emb_cond", {cfg.block_size_cond, C});
  w_.pos_emb_hw = vec("pos_emb_hw", {P, C});
  w_.pos_emb_d = vec("pos_emb_d", {cfg.D(), C});
  w_.input_mlp_weight = mat("input_mlp.weight");
  w_.input_mlp_bias = vec("input_mlp.bias", {C});
  w_.head_mlp_weight = mat("head_mlp.weight");
  w_.head_mlp_bias = vec("head_mlp.bias", {C});
  for (int i = 0; i < cfg.n_layer_body; ++i)
    w_.body_transformer_blocks.push_back(
        load_gpt_block(m, "stage2.body_transformer.blocks." + std::to_string(i) + ".", source, be));
  for (int i = 0; i < cfg.n_layer_head; ++i)
    w_.head_transformer_blocks.push_back(
        load_gpt_block(m, "stage2.head_transformer.blocks." + std::to_string(i) + ".", source, be));
  w_.classifier_layer_norm_weight = vec("classifier.layer_norm.weight", {C});
  w_.classifier_layer_norm_bias = vec("classifier.layer_norm.bias", {C});
  w_.classifier_linear_weight = mat("classifier.linear.weight");
  w_.classifier_linear_bias = vec("classifier.linear.bias", {cfg.vocab_size});

  // pos_emb_hw[p] + D * b_in (§2.3: input_mlp runs on each depth's vector and the D results are
  // summed, so its bias is added D times), computed once on the host in f32.
  Tensor hw = get("pos_emb_hw").to(DType::F32), bias = get("input_mlp.bias").to(DType::F32);
  Tensor pb = Tensor::empty({P, C});
  for (int64_t p = 0; p < P; ++p)
    for (int64_t c = 0; c < C; ++c) pb.f32()[p * C + c] = hw.f32()[p * C + c] + float(cfg.D()) * bias.f32()[c];
  w_.pos_emb_hw_plus_input_bias = be.upload(pb, DType::F32);
}

Tensor RqTransformer::cond_tokens(const Tensor& cond) {
  const int64_t R = cond.dim(0), L = cond.dim(1);
  HWAGA_CHECK(L == cfg_.block_size_cond, "rq-transformer: ", L, " condition ids per row, the model takes L_c = ",
              cfg_.block_size_cond);
  for (int64_t i = 0; i < cond.numel(); ++i) {
    const int32_t y = cond.ptr<int32_t>()[i];
    if (y < 0 || y >= cfg_.vocab_size_cond)
      fail("rq-transformer: condition id ", y, " at position ", i % L, " is outside [0, ", cfg_.vocab_size_cond, ")");
  }
  Tensor s = be_.embedding(w_.cond_emb_weight, cond.reshape({R * L}));  // [R*L_c,C]
  return be_.add_rows(s, w_.pos_emb_cond);                             // + pos_emb_cond[j]
}

Tensor RqTransformer::spatial_input(const Tensor& codes, const Tensor& pos_bias) {
  Tensor e = be_.embed_sum(be_.upload(codes, DType::I32), codebook_);  // [N,E] = Σ_d codebook[c_d]
  Tensor u = be_.linear(e, w_.input_mlp_weight, Tensor());            // [N,C] = W_in Σ_d e_d
  return be_.add_rows(u, pos_bias);                                   // + pos_emb_hw[p] + D b_in
}

Tensor RqTransformer::depth_input(const Tensor& cum, int d) {
  Tensor v = be_.linear(cum, w_.head_mlp_weight, w_.head_mlp_bias);           // [N,C]
  return be_.add_rows(v, w_.pos_emb_d.slice0(d, d + 1));                      // + pos_emb_d[d]
}

Tensor RqTransformer::classify(const Tensor& o) {
  Tensor h = be_.layer_norm(o, w_.classifier_layer_norm_weight, w_.classifier_layer_norm_bias, kStage2LnEps);
  return be_.linear(h, w_.classifier_linear_weight, w_.classifier_linear_bias);  // [N,K]
}

Tensor RqTransformer::logits_teacher_forced(const Tensor& cond, const Tensor& codes) {
  const int64_t C = cfg_.embed_dim, P = int64_t(cfg_.H()) * cfg_.W(), D = cfg_.D(), L = cfg_.block_size_cond;
  HWAGA_CHECK(codes.ndim() == 4 && codes.dim(1) == cfg_.H() && codes.dim(2) == cfg_.W() && codes.dim(3) == D &&
                  codes.dtype() == DType::I32,
              "rq-transformer: codes must be int32 [B,", cfg_.H(), ",", cfg_.W(), ",", D, "], found ",
              shape_str(codes.shape()));
  const int64_t B = codes.dim(0);
  HWAGA_CHECK(cond.ndim() == 2 && cond.dim(0) == B, "rq-transformer: ", B, " code maps but condition ",
              shape_str(cond.shape()));
  for (int64_t i = 0; i < codes.numel(); ++i)
    HWAGA_CHECK(codes.ptr<int32_t>()[i] >= 0 && codes.ptr<int32_t>()[i] < cfg_.vocab_size, "rq-transformer: code ",
                codes.ptr<int32_t>()[i], " outside [0, ", cfg_.vocab_size, ")");
  const int64_t hd = C / cfg_.n_head, T = L + P - 1;
  Tensor flat = codes.reshape({B * P, D});

  // body: [s_0..s_{L_c-1}, u_0..u_{P-2}] per row
  Tensor s = cond_tokens(cond);                                           // [B*L,C]
  Tensor u = spatial_input(flat, w_.pos_emb_hw_plus_input_bias);          // [B*P,C]
  std::vector<int32_t> idx;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) idx.push_back(int32_t(t < L ? b * L + t : B * L + b * P + (t - L)));
  Tensor seq = be_.embedding(be_.concat({s, u}), ids_tensor(idx)).reshape({B, T, C});
  auto body_caches = new_stack_caches(be_, w_.body_transformer_blocks.size(), B, cfg_.n_head, T, hd);
  Tensor out = gpt_stack_forward(be_, w_.body_transformer_blocks, seq, body_caches, cfg_.n_head, kStage2LnEps)
                   .reshape({B * T, C});
  idx.clear();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p) idx.push_back(int32_t(b * T + L - 1 + p));  // index L_c-1+p predicts p
  Tensor h = be_.embedding(out, ids_tensor(idx));                               // [B*P,C]

  // head: D slots per position
  std::vector<Tensor> slots{be_.add_rows(h, w_.pos_emb_d.slice0(0, 1))};
  for (int d = 1; d < D; ++d)  // e_0 + .. + e_{d-1} of each position
    slots.push_back(depth_input(be_.embed_sum(be_.upload(code_prefix(flat, d), DType::I32), codebook_), d));
  idx.clear();
  for (int64_t r = 0; r < B * P; ++r)
    for (int64_t d = 0; d < D; ++d) idx.push_back(int32_t(d * B * P + r));
  Tensor v = be_.embedding(be_.concat(slots), ids_tensor(idx)).reshape({B * P, D, C});
  auto head_caches = new_stack_caches(be_, w_.head_transformer_blocks.size(), B * P, cfg_.n_head, D, hd);
  Tensor o = gpt_stack_forward(be_, w_.head_transformer_blocks, v, head_caches, cfg_.n_head, kStage2LnEps);
  Tensor logits = classify(o.reshape({B * P * D, C}));  // [B*P*D,K]
  return be_.download(logits).reshape({B, cfg_.H(), cfg_.W(), D, cfg_.vocab_size});
}

Tensor RqTransformer::sample(const Tensor& cond, int64_t first, int64_t n, const GenerateOptions& opt,
                             const std::function<void(int)>& step_done) {
  const int64_t C = cfg_.embed_dim, P = int64_t(cfg_.H()) * cfg_.W(), D = cfg_.D(), L = cfg_.block_size_cond;
  const int64_t hd = C / cfg_.n_head;
  StepSampler sampler(be_, opt, SamplerSemantics::RqTransformer, int(D), cfg_.vocab_size, first, n, P);
  const int R = sampler.rows_per_candidate();
  HWAGA_CHECK(cond.ndim() == 2 && cond.dim(0) == R, "rq-transformer: sample expects ", R, " condition rows, found ",
              shape_str(cond.shape()));
  const int64_t M = R * n;
  const std::vector<int32_t> rows = candidate_rows(R, n);

  // Condition prefix, once per distinct row (§3.1, first position): h_0 = output at L_c-1.
  Tensor h_prefix;
  auto body = new_stack_caches(be_, w_.body_transformer_blocks.size(), M, cfg_.n_head, L + P - 1, hd);
  {
    auto prefix = new_stack_caches(be_, w_.body_transformer_blocks.size(), R, cfg_.n_head, L, hd);
    Tensor s = cond_tokens(cond).reshape({R, L, C});
    Tensor out = gpt_stack_forward(be_, w_.body_transformer_blocks, s, prefix, cfg_.n_head, kStage2LnEps);
    std::vector<int32_t> last;
    for (int r = 0; r < R; ++r) last.push_back(int32_t(r * L + L - 1));
    h_prefix = be_.embedding(out.reshape({R * L, C}), ids_tensor(last));  // [R,C]
    gather_stack_caches(be_, body, prefix, rows);                         // replicated for the candidates
  }
  for (auto& c : body) c.len_counter = be_.counter_new(int32_t(c.len));
  auto head = new_stack_caches(be_, w_.head_transformer_blocks.size(), M, cfg_.n_head, D, hd);
  const Tensor row_ids = ids_tensor(rows);

  // Position p: the body token of the codes at p-1 (sampler.row_codes(), on the backend), then D
  // depth tokens, each followed by its draw. Everything that moves with p is read on the backend
  // (the step counter p, the body caches' len_counter), so one position is a graph for all.
  auto position = [&](int64_t p) {
    Tensor h;  // [M,C]: spatial context of position p
    if (p == 0) {
      h = be_.embedding(h_prefix, row_ids);
    } else {
      for (auto& c : body) c.len = L + p - 1;
      // one new body token per row: u_{p-1} from all D codes sampled at p-1
      Tensor e = be_.gather_sum(codebook_, sampler.row_codes(), int(D));  // [M,E] = Σ_d codebook[c_d]
      Tensor u = be_.linear(e, w_.input_mlp_weight, Tensor());           // [M,C] = W_in Σ_d e_d
      u = be_.add_row_at(u, w_.pos_emb_hw_plus_input_bias, sampler.step_counter(), -1);  // + pos_emb_hw[p-1] + D b_in
      h = gpt_stack_forward(be_, w_.body_transformer_blocks, u.reshape({M, 1, C}), body, cfg_.n_head, kStage2LnEps)
              .reshape({M, C});
    }
    for (auto& c : head) c.len = 0;  // the depth cache starts empty at every position
    for (int64_t d = 0; d < D; ++d) {
      Tensor v;
      if (d == 0) {
        v = be_.add_rows(h, w_.pos_emb_d.slice0(0, 1));
      } else {
        v = depth_input(be_.gather_sum(codebook_, sampler.row_codes(), int(d)), int(d));  // e_0 + .. + e_{d-1}
      }
      Tensor o = gpt_stack_forward(be_, w_.head_transformer_blocks, v.reshape({M, 1, C}), head, cfg_.n_head,
                                   kStage2LnEps);
      sampler.pick(classify(o.reshape({M, C})), int(d));
    }
    sampler.next_step();
  };
  auto position_done = [&](int64_t p) {
    if (step_done)
      for (int64_t d = 0; d < D; ++d) step_done(int(p * D + d));
  };
  position(0);  // no body token: not the step a graph records
  position_done(0);
  run_steps(be_, 1, P, opt.step_graphs, position, position_done);
  return sampler.finish().reshape({n, cfg_.H(), cfg_.W(), D});
}

}  // namespace hwaga
