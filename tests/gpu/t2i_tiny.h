// Tiny text-to-image presets for the GPU tests: the released architectures at toy sizes (the
// shapes of tests/parity/torch_ref/make_stage2_checkpoint.py --size tiny), so that a whole model
// builds with random weights in well under a second on the CPU backend.
//   rq:  RQ-VAE 32x32 -> 8x8x4 (ch 32, ch_mult [1,1,2], K 64, E 32) + RQ-Transformer C 64,
//        2 body + 2 head layers, 2 heads (hd 32), text V_c 100 / L_c 8
//   gpt: VQGAN 16x16 -> 4x4 (ch 32, ch_mult [1,1,2], K 64) + minDALL-E GPT C 64, 2 layers,
//        2 heads, ctx_len_txt 8, ctx_len_img 16, text vocab 100
#pragma once
#include "transformer/presets.h"

namespace hwaga::gputest {

inline ModelPreset tiny_rq_preset() {
  ModelPreset p;
  p.name = "tiny-rq";
  p.conditioning = "text";
  p.stage1 = {{"type", "rq-vae"}, {"resolution", 32}, {"in_channels", 3}, {"out_ch", 3}, {"ch", 32},
              {"ch_mult", {1, 1, 2}}, {"num_res_blocks", 1}, {"attn_resolutions", {8}}, {"z_channels", 32},
              {"embed_dim", 32}, {"n_embed", 64}, {"code_shape", {8, 8, 4}}, {"shared_codebook", true}};
  p.stage2.type = kStage2RqTransformer;
  RqTransformerConfig& r = p.stage2.rq;
  r.embed_dim = 64;
  r.n_layer_body = 2;
  r.n_layer_head = 2;
  r.n_head = 2;
  r.block_size = {8, 8, 4};
  r.vocab_size = 64;
  r.vocab_size_cond = 100;
  r.block_size_cond = 8;
  r.input_embed_dim = 32;
  p.text = {"bpe16k", 8};
  return p;
}

inline ModelPreset tiny_gpt_preset() {
  ModelPreset p;
  p.name = "tiny-gpt";
  p.conditioning = "text";
  p.stage1 = {{"type", "vqgan"}, {"resolution", 16}, {"in_channels", 3}, {"out_ch", 3}, {"ch", 32},
              {"ch_mult", {1, 1, 2}}, {"num_res_blocks", 1}, {"attn_resolutions", {4}}, {"z_channels", 32},
              {"embed_dim", 32}, {"n_embed", 64}, {"code_shape", {4, 4, 1}}, {"shared_codebook", true}};
  p.stage2.type = kStage2MindalleGpt;
  MindalleGptConfig& g = p.stage2.gpt;
  g.vocab_size_txt = 100;
  g.vocab_size_img = 64;
  g.embed_dim = 64;
  g.n_layers = 2;
  g.n_heads = 2;
  g.ctx_len_txt = 8;
  g.ctx_len_img = 16;
  p.text = {"bpe16k", 8};
  return p;
}

}  // namespace hwaga::gputest
