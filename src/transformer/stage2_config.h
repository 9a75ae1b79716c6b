// The text/class-to-code transformer's blueprint: what "stage2" in a model file's config says,
// how it is read from the released config.yaml files, and which tensors it implies
// (architecture.md §2, §4.2, §5.1, §5.2).
//
//   RQ-Transformer (rq-vae-transformer <name>/stage2/config.yaml):
//     arch: {type: rq-transformer, block_size: [8,8,4], embed_dim, input_embed_dim, vocab_size?,
//            vocab_size_cond, block_size_cond, shared_tok_emb, shared_cls_emb, input_emb_vqvae,
//            head_emb_vqvae, cumsum_depth_ctx, body: {n_layer, block: {n_head}},
//            head: {n_layer, block: {n_head}}}
//     dataset: {vocab_size, txt_tok_name?, context_length?}
//   minDALL-E GPT (minDALL-E 1.3B/config.yaml):
//     stage2: {type: transformer1d, vocab_size_txt, vocab_size_img,
//              hparams: {embed_dim, n_layers, n_heads, n_dense_layers, ctx_len_img, ctx_len_txt,
//                        mlp_bias, attn_bias, gelu_use_approx, ...}}
//
// JSON form (model file metadata "config" -> "stage2"), e.g.
//   {"type": "rq-transformer", "embed_dim": 1280, "n_layer_body": 26, "n_layer_head": 4,
//    "n_head": 20, "block_size": [8,8,4], "vocab_size": 16384, "vocab_size_cond": 16384,
//    "block_size_cond": 32, "input_embed_dim": 256, "shared_tok_emb": true, ...}
//   {"type": "mindalle-gpt", "vocab_size_txt": 16384, "vocab_size_img": 16384, "embed_dim": 1536,
//    "n_layers": 42, "n_heads": 24, "ctx_len_txt": 64, "ctx_len_img": 256, "mlp_bias": true,
//    "attn_bias": true, "gelu_use_approx": false}
//
// Legend: C embed_dim, K image codebook size, V_c / L_c condition vocabulary / length,
// D code depth, E input_embed_dim (the stage-1 codebook vector dim).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor_map.h"

namespace hwaga {

inline constexpr const char* kStage2RqTransformer = "rq-transformer";
inline constexpr const char* kStage2MindalleGpt = "mindalle-gpt";
inline constexpr float kStage2LnEps = 1e-5f;  // LayerNorm eps in both transformers
inline constexpr int kStage2MlpRatio = 4;     // MLP hidden width = 4C in both

// RQ-Transformer (architecture.md §2). Spatial "body" stack over [L_c cond tokens, H*W-1 image
// positions], depth "head" stack over D slots per position, one shared classifier.
struct RqTransformerConfig {
  int embed_dim = 0;        // C
  int n_layer_body = 0;     // spatial transformer blocks
  int n_layer_head = 0;     // depth transformer blocks
  int n_head = 0;           // heads in both stacks; head dim = C / n_head
  std::vector<int> block_size = {8, 8, 4};  // {H, W, D}: the stage-1 code shape
  int vocab_size = 0;       // K, image codes per depth (the same at every depth)
  int vocab_size_cond = 1;  // V_c (>= 1): 1 = unconditional (SOS), 1000 = ImageNet, 16384 = text
  int block_size_cond = 1;  // L_c (>= 1): 1 for class/unconditional, 32 for text
  int input_embed_dim = 256;  // E: input_mlp / head_mlp take stage-1 codebook vectors of this dim

  // Flags of the released configs. hwaga implements exactly these values; anything else is
  // rejected by validate_stage2_config (so the forward pass never has to branch on them).
  bool shared_tok_emb = true;
  bool shared_cls_emb = true;     // one classifier for all depths
  bool input_emb_vqvae = true;    // body input = Σ_d input_mlp(codebook[c_d])
  bool head_emb_vqvae = true;     // depth input = head_mlp(cumsum of codebook vectors)
  bool cumsum_depth_ctx = true;
  bool scaled_head_emb_vqvae = false;
  bool use_padding_emb = false;
  bool mlp_bias = true;
  bool attn_bias = true;
  std::string gelu = "v1";        // exact erf GELU

  int H() const { return block_size[0]; }
  int W() const { return block_size[1]; }
  int D() const { return block_size[2]; }
  int head_dim() const { return embed_dim / n_head; }
  bool has_text() const { return block_size_cond > 1; }  // cond_classifier exists (text models)
};

// minDALL-E Transformer1d (architecture.md §4.2): one causal stack over
// [ctx_len_txt text tokens, ctx_len_img image codes], ln_f, bias-free heads.
struct MindalleGptConfig {
  int vocab_size_txt = 0;
  int vocab_size_img = 0;   // K
  int embed_dim = 0;        // C
  int n_layers = 0;
  int n_heads = 0;
  int ctx_len_txt = 0;      // 64 released (= tokenizer context length)
  int ctx_len_img = 0;      // 256 released (16x16 codes)
  bool mlp_bias = true;     // only true is implemented
  bool attn_bias = true;    // only true is implemented
  bool gelu_use_approx = false;  // only false (exact GELU) is implemented

  int head_dim() const { return embed_dim / n_heads; }
};

struct Stage2Config {
  std::string type;         // kStage2RqTransformer or kStage2MindalleGpt
  RqTransformerConfig rq;   // valid when is_rq()
  MindalleGptConfig gpt;    // valid when is_gpt()

  bool is_rq() const { return type == kStage2RqTransformer; }
  bool is_gpt() const { return type == kStage2MindalleGpt; }
  int embed_dim() const { return is_rq() ? rq.embed_dim : gpt.embed_dim; }
  int image_vocab_size() const { return is_rq() ? rq.vocab_size : gpt.vocab_size_img; }
  // Text tokens the model expects (0 when it takes no text): L_c for RQ text models, ctx_len_txt.
  int text_length() const;
  // Text vocabulary size (0 when it takes no text).
  int text_vocab_size() const;
};

// The text settings that go with a stage-2 model (from the dataset: block of the YAML).
struct TextSettings {
  std::string tokenizer;   // "" (no text), or "bpe16k" (the released 16k CharBPE)
  int context_length = 0;  // pad/truncate length (32 for RQ CC3M, 64 for minDALL-E)
};

// Throws hwaga::Error naming `source` and the field on any inconsistent or unsupported value:
// unknown type, non-positive sizes, embed_dim not divisible by the head count, a block_size
// that is not 3 values, L_c > 1 with V_c = 1, and every flag that differs from the implemented
// value (e.g. "cumsum_depth_ctx: false is not implemented by hwaga (only true)").
void validate_stage2_config(const Stage2Config& c, const std::string& source);

nlohmann::json stage2_config_to_json(const Stage2Config& c);
// Reads and validates; errors name `source` (e.g. "model.safetensors: config.stage2") and the
// field. Dimensions are required; flags may be omitted (they default to the implemented values).
Stage2Config stage2_config_from_json(const nlohmann::json& j, const std::string& source);

// Reads a released RQ stage-2 config.yaml (`arch:` block; K from arch.vocab_size, or from
// dataset.vocab_size when arch has none). Flags missing from the YAML take the reference's
// defaults (false for the boolean flags), so a YAML that omits e.g. cumsum_depth_ctx is
// rejected just like one that says false. Errors name the YAML file and the key.
Stage2Config stage2_config_from_rq_yaml(const std::string& yaml_path);
// Reads minDALL-E's config.yaml `stage2:` block (hparams missing from the YAML take the
// reference's Stage2Hparams defaults; n_dense_layers must equal n_layers).
Stage2Config stage2_config_from_mindalle_yaml(const std::string& yaml_path);

// Text settings from the same YAMLs: RQ dataset.txt_tok_name / dataset.context_length (only
// for text models; "bpe16k_huggingface" -> "bpe16k"), minDALL-E dataset.context_length
// (default 64) with the CharBPE tokenizer. Checks that the context length equals L_c /
// ctx_len_txt. Non-text RQ models get {"", 0}.
TextSettings text_settings_from_rq_yaml(const std::string& yaml_path, const Stage2Config& c);
TextSettings text_settings_from_mindalle_yaml(const std::string& yaml_path, const Stage2Config& c);

// Every tensor the config implies, in released key names WITHOUT the "stage2." prefix
// (architecture.md §5.1, §5.2). RQ positional tensors are bare [1, N, C] parameters; Linear
// weights are [out, in]. The RQ model has no token table: it needs the stage-1 codebook.
std::vector<TensorSpec> stage2_tensor_specs(const Stage2Config& c);
int64_t stage2_num_parameters(const Stage2Config& c);

// One line for `hwaga info`, e.g. "rq-transformer C=1280 body 26 + head 4 layers, 20 heads,
// K=16384, cond 16384x32, 654.1M params".
std::string describe_stage2_config(const Stage2Config& c);

}  // namespace hwaga
