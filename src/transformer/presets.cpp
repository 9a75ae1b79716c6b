// The released configurations as data (architecture.md §1.1, §1.7, §2.6, §3.4, §4.1, §4.2, §4.4).
#include "transformer/presets.h"

#include "core/error.h"

namespace hwaga {

namespace {

// RQ-VAE 8x8x4 (ImageNet, LSUN: attention at 8, K = 16384; FFHQ: attention at 16, K = 2048).
nlohmann::json rqvae_stage1(int attn_resolution, int n_embed) {
  return {{"type", "rq-vae"}, {"resolution", 256}, {"in_channels", 3}, {"out_ch", 3}, {"ch", 128},
          {"ch_mult", {1, 1, 2, 2, 4, 4}}, {"num_res_blocks", 2},
          {"attn_resolutions", {attn_resolution}}, {"z_channels", 256}, {"embed_dim", 256},
          {"n_embed", n_embed}, {"code_shape", {8, 8, 4}}, {"shared_codebook", true}};
}

// minDALL-E's VQGAN: 5 levels (256 -> 16), attention at 16, a plain 16384-entry codebook.
nlohmann::json vqgan_stage1() {
  return {{"type", "vqgan"}, {"resolution", 256}, {"in_channels", 3}, {"out_ch", 3}, {"ch", 128},
          {"ch_mult", {1, 1, 2, 2, 4}}, {"num_res_blocks", 2}, {"attn_resolutions", {16}},
          {"z_channels", 256}, {"embed_dim", 256}, {"n_embed", 16384}, {"code_shape", {16, 16, 1}},
          {"shared_codebook", true}};
}

Stage2Config rq_stage2(int C, int body, int head, int heads, int K, int Vc, int Lc) {
  Stage2Config c;
  c.type = kStage2RqTransformer;
  c.rq.embed_dim = C;
  c.rq.n_layer_body = body;
  c.rq.n_layer_head = head;
  c.rq.n_head = heads;
  c.rq.vocab_size = K;
  c.rq.vocab_size_cond = Vc;
  c.rq.block_size_cond = Lc;
  return c;
}

ModelPreset rq(std::string name, std::string release, std::string desc, std::string cond,
               nlohmann::json s1, Stage2Config s2, int top_k, float top_p) {
  ModelPreset p;
  p.name = std::move(name);
  p.release = std::move(release);
  p.description = std::move(desc);
  p.conditioning = std::move(cond);
  p.stage1 = std::move(s1);
  p.stage2 = std::move(s2);
  if (p.conditioning == "text") p.text = {"bpe16k", p.stage2.rq.block_size_cond};
  p.top_k = top_k;
  p.top_p = top_p;
  return p;
}

std::vector<ModelPreset> build() {
  std::vector<ModelPreset> v;
  // Sampling defaults: repo YAML experiment.sample (FFHQ/LSUN 250 / 1.0, ImageNet 16384 / 0.92),
  // and the T2I notebook / COCO evaluation (1024 / 0.95) for text models (§3.4).
  v.push_back(rq("ffhq", "ffhq", "RQ-Transformer 355M, unconditional FFHQ faces 256x256", "none",
                 rqvae_stage1(16, 2048), rq_stage2(1024, 24, 4, 16, 2048, 1, 1), 250, 1.0f));
  v.push_back(rq("church", "church", "RQ-Transformer 370M, unconditional LSUN-Church 256x256", "none",
                 rqvae_stage1(8, 16384), rq_stage2(1024, 24, 4, 16, 16384, 1, 1), 250, 1.0f));
  v.push_back(rq("cat", "cat", "RQ-Transformer 612M, unconditional LSUN-Cat 256x256", "none",
                 rqvae_stage1(8, 16384), rq_stage2(1280, 26, 4, 20, 16384, 1, 1), 250, 1.0f));
  v.push_back(rq("bedroom", "bedroom", "RQ-Transformer 612M, unconditional LSUN-Bedroom 256x256",
                 "none", rqvae_stage1(8, 16384), rq_stage2(1280, 26, 4, 20, 16384, 1, 1), 250, 1.0f));
  v.push_back(rq("imagenet-480m", "imagenet_480M", "RQ-Transformer 480M, ImageNet class-conditional 256x256",
                 "class", rqvae_stage1(8, 16384), rq_stage2(1536, 12, 4, 24, 16384, 1000, 1), 16384, 0.92f));
  v.push_back(rq("imagenet-821m", "imagenet_821M", "RQ-Transformer 821M, ImageNet class-conditional 256x256",
                 "class", rqvae_stage1(8, 16384), rq_stage2(1536, 24, 4, 24, 16384, 1000, 1), 16384, 0.92f));
  v.push_back(rq("imagenet-1.4b", "imagenet_1.4B, imagenet_1.4B_rqvae_50e",
                 "RQ-Transformer 1.4B, ImageNet class-conditional 256x256", "class",
                 rqvae_stage1(8, 16384), rq_stage2(1536, 42, 6, 24, 16384, 1000, 1), 16384, 0.92f));
  v.push_back(rq("imagenet-3.8b", "imagenet_3.8B_rqvae_50e",
                 "RQ-Transformer 3.8B, ImageNet class-conditional 256x256", "class",
                 rqvae_stage1(8, 16384), rq_stage2(2560, 42, 6, 40, 16384, 1000, 1), 16384, 0.92f));
  v.push_back(rq("rq-cc3m-654m", "cc3m", "RQ-Transformer 654M, text-to-image trained on CC-3M", "text",
                 rqvae_stage1(8, 16384), rq_stage2(1280, 26, 4, 20, 16384, 16384, 32), 1024, 0.95f));
  ModelPreset big = rq("rq-3.9b", "cc3m_cc12m_yfcc",
                       "RQ-Transformer 3.9B, text-to-image on CC-3M+CC-12M+YFCC (shape inferred)",
                       "text", rqvae_stage1(8, 16384), rq_stage2(2560, 42, 6, 40, 16384, 16384, 32),
                       1024, 0.95f);
  big.inferred = true;
  v.push_back(big);

  ModelPreset m;
  m.name = "mindalle-1.3b";
  m.release = "1.3B";
  m.description = "minDALL-E 1.3B, text-to-image GPT over 16x16 VQGAN codes (CC-3M+CC-12M)";
  m.conditioning = "text";
  m.stage1 = vqgan_stage1();
  m.stage2.type = kStage2MindalleGpt;
  m.stage2.gpt = {16384, 16384, 1536, 42, 24, 64, 256, true, true, false};
  m.text = {"bpe16k", 64};
  m.top_k = 256;  // minDALL-E's example default; top_p unset (§4.4)
  v.push_back(m);

  for (const ModelPreset& p : v) validate_stage2_config(p.stage2, "preset " + p.name);
  return v;
}

}  // namespace

const std::vector<ModelPreset>& model_presets() {
  static const std::vector<ModelPreset> presets = build();
  return presets;
}

const ModelPreset& find_preset(const std::string& name) {
  std::string names;
  for (const ModelPreset& p : model_presets()) {
    if (p.name == name) return p;
    names += (names.empty() ? "" : ", ") + p.name;
  }
  fail("unknown model preset '", name, "'; known presets: ", names);
}

}  // namespace hwaga
