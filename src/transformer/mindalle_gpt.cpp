#include "transformer/mindalle_gpt.h"

#include "core/error.h"

namespace hwaga {

namespace {

Tensor ids_tensor(const std::vector<int32_t>& ids) {
  Tensor t = Tensor::empty({int64_t(ids.size())}, DType::I32);
  for (size_t i = 0; i < ids.size(); ++i) t.ptr<int32_t>()[i] = ids[i];
  return t;
}

}  // namespace

MindalleGpt::MindalleGpt(const MindalleGptConfig& cfg, int code_h, int code_w, const TensorMap& m,
                         const std::string& source, Backend& be)
    : cfg_(cfg), code_h_(code_h), code_w_(code_w), be_(be) {
  HWAGA_CHECK(int64_t(code_h) * code_w == cfg.ctx_len_img, source, ": the image tokenizer's ", code_h, "x", code_w,
              " code grid does not match stage2 ctx_len_img ", cfg.ctx_len_img);
  auto get = [&](const std::string& k) { return get_tensor(m, "stage2." + k, source); };
  auto vec = [&](const std::string& k) { return be.upload(get(k), DType::F32); };
  auto mat = [&](const std::string& k) { return be.upload_weight(get(k)); };
  w_.tok_emb_img_weight = mat("tok_emb_img.weight");
  w_.tok_emb_txt_weight = mat("tok_emb_txt.weight");
  w_.pos_emb_img_weight = vec("pos_emb_img.weight");
  w_.pos_emb_txt_weight = vec("pos_emb_txt.weight");
  for (int i = 0; i < cfg.n_layers; ++i)
    w_.blocks.push_back(load_gpt_block(m, "stage2.blocks." + std::to_string(i) + ".", source, be));
  w_.ln_f_weight = vec("ln_f.weight");
  w_.ln_f_bias = vec("ln_f.bias");
  w_.head_img_weight = mat("head_img.weight");
}

Tensor MindalleGpt::text_tokens(const Tensor& texts) {
  const int64_t R = texts.dim(0), L = texts.dim(1);
  HWAGA_CHECK(L == cfg_.ctx_len_txt, "mindalle-gpt: ", L, " text ids per row, the model takes ctx_len_txt = ",
              cfg_.ctx_len_txt);
  for (int64_t i = 0; i < texts.numel(); ++i) {
    const int32_t y = texts.ptr<int32_t>()[i];
    if (y < 0 || y >= cfg_.vocab_size_txt)
      fail("mindalle-gpt: text id ", y, " at position ", i % L, " is outside [0, ", cfg_.vocab_size_txt, ")");
  }
  Tensor x = be_.embedding(w_.tok_emb_txt_weight, texts.reshape({R * L}));  // [R*L,C]
  return be_.add_rows(x, w_.pos_emb_txt_weight);                           // + pos_emb_txt[i]
}

Tensor MindalleGpt::head(const Tensor& x) {
  Tensor h = be_.layer_norm(x, w_.ln_f_weight, w_.ln_f_bias, kStage2LnEps);
  return be_.linear(h, w_.head_img_weight, Tensor());  // [N,K], no bias
}

Tensor MindalleGpt::logits_teacher_forced(const Tensor& cond, const Tensor& codes) {
  const int64_t C = cfg_.embed_dim, L = cfg_.ctx_len_txt, T = cfg_.ctx_len_img, K = cfg_.vocab_size_img;
  HWAGA_CHECK(codes.ndim() == 4 && codes.dim(1) == code_h_ && codes.dim(2) == code_w_ && codes.dim(3) == 1 &&
                  codes.dtype() == DType::I32,
              "mindalle-gpt: codes must be int32 [B,", code_h_, ",", code_w_, ",1], found ", shape_str(codes.shape()));
  const int64_t B = codes.dim(0);
  HWAGA_CHECK(cond.ndim() == 2 && cond.dim(0) == B, "mindalle-gpt: ", B, " code maps but text ",
              shape_str(cond.shape()));
  const int64_t S = L + T - 1, hd = C / cfg_.n_heads;
  Tensor s = text_tokens(cond);                                                      // [B*L,C]
  Tensor im = be_.add_rows(be_.embedding(w_.tok_emb_img_weight, codes.reshape({B * T})),
                           w_.pos_emb_img_weight);                                   // [B*T,C]
  std::vector<int32_t> idx;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < S; ++t) idx.push_back(int32_t(t < L ? b * L + t : B * L + b * T + (t - L)));
  Tensor seq = be_.embedding(be_.concat({s, im}), ids_tensor(idx)).reshape({B, S, C});
  auto caches = new_stack_caches(be_, w_.blocks.size(), B, cfg_.n_heads, S, hd);
  Tensor out = gpt_stack_forward(be_, w_.blocks, seq, caches, cfg_.n_heads, kStage2LnEps).reshape({B * S, C});
  idx.clear();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < T; ++j) idx.push_back(int32_t(b * S + L - 1 + j));  // output L-1+j predicts code j
  Tensor logits = head(be_.embedding(out, ids_tensor(idx)));                     // [B*T,K]
  return be_.download(logits).reshape({B, code_h_, code_w_, 1, K});
}

Tensor MindalleGpt::sample(const Tensor& cond, int64_t first, int64_t n, const GenerateOptions& opt,
                           const std::function<void(int)>& step_done) {
  const int64_t C = cfg_.embed_dim, L = cfg_.ctx_len_txt, T = cfg_.ctx_len_img, hd = C / cfg_.n_heads;
  StepSampler sampler(be_, opt, SamplerSemantics::MinDalle, 1, cfg_.vocab_size_img, first, n, T);
  const int R = sampler.rows_per_candidate();
  HWAGA_CHECK(cond.ndim() == 2 && cond.dim(0) == R, "mindalle-gpt: sample expects ", R, " text rows, found ",
              shape_str(cond.shape()));
  const int64_t M = R * n;
  const std::vector<int32_t> rows = candidate_rows(R, n);
  auto caches = new_stack_caches(be_, w_.blocks.size(), M, cfg_.n_heads, L + T - 1, hd);

  // Step 0: the text prefix once per distinct row; the last text slot predicts code 0.
  {
    auto prefix = new_stack_caches(be_, w_.blocks.size(), R, cfg_.n_heads, L, hd);
    Tensor x = text_tokens(cond).reshape({R, L, C});
    Tensor out = gpt_stack_forward(be_, w_.blocks, x, prefix, cfg_.n_heads, kStage2LnEps);  // [R,L,C]
    std::vector<int32_t> last;
    for (int r = 0; r < R; ++r) last.push_back(int32_t(r * L + L - 1));
    Tensor logits = head(be_.embedding(out.reshape({R * L, C}), ids_tensor(last)));  // [R,K]
    sampler.pick(be_.embedding(logits, ids_tensor(rows)), 0);                        // [M,K] -> codes
    sampler.next_step();
    gather_stack_caches(be_, caches, prefix, rows);
  }
  if (step_done) step_done(0);
  for (auto& c : caches) c.len_counter = be_.counter_new(int32_t(c.len));

  // Step j >= 1: feed code j-1 (sampler.row_codes(), on the backend) at image position j-1; the
  // step counter j and the caches' len_counter are read on the backend, so one step is a graph
  // for all.
  auto step = [&](int64_t j) {
    for (auto& c : caches) c.len = L + j - 1;
    Tensor x = be_.add_row_at(be_.gather_sum(w_.tok_emb_img_weight, sampler.row_codes(), 1), w_.pos_emb_img_weight,
                              sampler.step_counter(), -1);
    Tensor out = gpt_stack_forward(be_, w_.blocks, x.reshape({M, 1, C}), caches, cfg_.n_heads, kStage2LnEps);
    sampler.pick(head(out.reshape({M, C})), 0);
    sampler.next_step();
  };
  run_steps(be_, 1, T, opt.step_graphs, step, [&](int64_t j) {
    if (step_done) step_done(int(j));
  });
  return sampler.finish().reshape({n, code_h_, code_w_, 1});
}

}  // namespace hwaga
