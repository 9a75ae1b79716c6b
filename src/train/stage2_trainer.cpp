#include "train/stage2_trainer.h"

#include <algorithm>

#include "core/error.h"

namespace hwaga::train {

std::pair<double, double> recipe_betas(const Stage2Config& c) {
  return c.is_gpt() ? std::pair{0.9, 0.99} : std::pair{0.9, 0.95};
}


void check_stage1_pairing(const Stage2Config& c, const std::string& cfg_name, ImageTokenizer& s1,
                          const std::string& s1_name, const Tensor& codebook) {
  const Shape cs = s1.code_shape();
  if (c.is_gpt()) {
    const MindalleGptConfig& g = c.gpt;
    if (cs.size() != 3 || cs[2] != 1)
      fail(cfg_name, ": a mindalle-gpt takes one code per position, but the codes of ", s1_name, " are ",
           shape_str(cs), " (a ", s1.kind(), "; use a VQGAN or another depth-1 stage-1 model)");
    if (cs[0] * cs[1] != g.ctx_len_img)
      fail(cfg_name, ": ctx_len_img ", g.ctx_len_img, " differs from the ", cs[0], "x", cs[1], " codes of ", s1_name);
    if (s1.codebook_size() != g.vocab_size_img)
      fail(cfg_name, ": vocab_size_img ", g.vocab_size_img, " differs from the codebook size of ", s1_name, ", ",
           s1.codebook_size());
    if (g.ctx_len_txt < 2)
      fail(cfg_name, ": ctx_len_txt ", g.ctx_len_txt, ": hwaga train trains text-conditioned models (> 1)");
    return;
  }
  if (!c.is_rq())
    fail(cfg_name, ": type \"", c.type, "\": hwaga train trains \"", kStage2RqTransformer, "\" and \"",
         kStage2MindalleGpt, "\" models");
  const RqTransformerConfig& r = c.rq;
  if (!r.has_text())
    fail(cfg_name, ": block_size_cond ", r.block_size_cond,
         ": hwaga train trains text-conditioned models (block_size_cond = the text context, > 1)");
  if (!codebook.defined())
    fail(s1_name, ": the stage-1 model is a ", s1.kind(), "; the RQ-Transformer needs an rq-vae");
  if (cs != Shape{r.H(), r.W(), r.D()})
    fail(cfg_name, ": block_size ", shape_str(Shape{r.H(), r.W(), r.D()}), " differs from the codes of ", s1_name, ", ",
         shape_str(cs));
  if (s1.codebook_size() != r.vocab_size)
    fail(cfg_name, ": vocab_size ", r.vocab_size, " differs from the codebook size of ", s1_name, ", ",
         s1.codebook_size());
  if (codebook.dim(1) != r.input_embed_dim)
    fail(cfg_name, ": input_embed_dim ", r.input_embed_dim, " differs from the codebook vectors of ", s1_name, " (",
         codebook.dim(1), " values)");
}

void check_text_pairing(const Stage2Config& c, const std::string& cfg_name, const TextTokenizer& tok,
                        const std::string& tok_name) {
  const char* vocab_field = c.is_gpt() ? "vocab_size_txt" : "vocab_size_cond";
  const char* len_field = c.is_gpt() ? "ctx_len_txt" : "block_size_cond";
  if (tok.vocab_size != c.text_vocab_size())
    fail(cfg_name, ": ", vocab_field, " ", c.text_vocab_size(), " differs from the text tokenizer's vocabulary (",
         tok_name, ": ", tok.vocab_size, " ids); set ", vocab_field, " to ", tok.vocab_size);
  if (tok.context_length != c.text_length())
    fail(cfg_name, ": ", len_field, " ", c.text_length(), " differs from the text context (", tok.context_length,
         " ids)");
}

RqBatch rank_rows(const RqBatch& full, int rank, int world) {
  const int64_t B = full.codes.dim(0), n = B / world;
  RqBatch b{full.text.slice0(rank * n, (rank + 1) * n).clone(), full.codes.slice0(rank * n, (rank + 1) * n).clone(), {}};
  if (full.input_codes.defined()) b.input_codes = full.input_codes.slice0(rank * n, (rank + 1) * n).clone();
  return b;
}

HeldOutLoss held_out_loss(Stage2Trainer& tr, const CodeCache& cache, const TextTokenizer& tok, int64_t count,
                          int batch, float image_weight, float text_weight) {
  HWAGA_CHECK(cache.size() > 0 && count >= 1 && batch >= 1, "held-out loss: nothing to score (", cache.size(),
              " samples, count ", count, ", batch ", batch, ")");
  HeldOutLoss h;
  h.samples = std::min<int64_t>(count, cache.size());
  int64_t text_n = 0;
  for (int64_t i = 0; i < h.samples; i += batch) {
    const int64_t m = std::min<int64_t>(batch, h.samples - i);
    const RqLoss l = tr.evaluate(fixed_batch(cache, tok, i, m), nullptr);
    h.image_loss += l.image_loss * double(m);
    h.text_loss += l.text_loss * double(l.text_targets);
    text_n += l.text_targets;
  }
  h.image_loss /= double(h.samples);
  h.text_loss = text_n > 0 ? h.text_loss / double(text_n) : 0.0;
  h.loss = double(image_weight) * h.image_loss + double(text_weight) * h.text_loss;
  return h;
}

}  // namespace hwaga::train
