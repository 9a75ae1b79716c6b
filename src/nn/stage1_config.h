// The image tokenizer's blueprint: what "stage1" in a model file's config says, and how it is
// read from the released config.yaml files (architecture.md §1.1, §4.1, §5).
//
//   RQ-VAE  (rq-vae-transformer stage1/config.yaml):  arch: {type: rq-vae, hparams: {...}, ddconfig: {...}}
//   VQGAN   (minDALL-E config.yaml):                  stage1: {type: vqgan, embed_dim, n_embed, hparams: {...}}
//
// JSON form (stored in the model file's metadata "config" -> "stage1"):
//   {"type": "rq-vae", "ch": 128, "ch_mult": [1,1,2,2,4,4], "num_res_blocks": 2,
//    "attn_resolutions": [8], "in_channels": 3, "out_ch": 3, "z_channels": 256,
//    "resolution": 256, "embed_dim": 256, "n_embed": 16384, "code_shape": [8,8,4],
//    "shared_codebook": true}
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor_map.h"
#include "nn/taming.h"

namespace hwaga {

struct Stage1Config {
  std::string type;        // "rq-vae" or "vqgan"
  TamingConfig net;        // encoder/decoder shape (ddconfig / hparams)
  int embed_dim = 256;     // E, codebook vector dim
  int n_embed = 16384;     // K, codebook size (RQ stores K+1 rows, the last is padding)
  std::vector<int> code_shape = {8, 8, 4};  // {h, w, D}; VQGAN {16, 16, 1}
  bool shared_codebook = true;              // RQ: one codebook for every depth (the only kind released)

  bool is_rq() const { return type == "rq-vae"; }
  int depth() const { return code_shape.size() == 3 ? code_shape[2] : 0; }
};

// Throws hwaga::Error naming `source` and the field on any inconsistent value: unknown type,
// non-positive sizes, empty ch_mult, channels not divisible by the 32 GroupNorm groups,
// resolution not divisible by 2^(levels-1), an attention resolution no level has, a code shape
// that does not match the latent (h = w = R / 2^(levels-1); D = 1 for VQGAN), etc.
void validate_stage1_config(const Stage1Config& c, const std::string& source);

nlohmann::json stage1_config_to_json(const Stage1Config& c);
// Reads and validates; errors name `source` (e.g. "model.safetensors: config.stage1") and the field.
Stage1Config stage1_config_from_json(const nlohmann::json& j, const std::string& source);

// Reads a released config.yaml. kind: "rq-vae" (expects `arch:` with `hparams` and `ddconfig`),
// "vqgan" (expects minDALL-E's top-level `stage1:`), or "auto" (whichever block is present).
// Missing keys or unsupported values -> hwaga::Error naming the YAML file and the key.
Stage1Config stage1_config_from_yaml(const std::string& yaml_path, const std::string& kind);

// Every tensor the config implies, in released key names WITHOUT the "stage1." prefix:
// encoder.*, quant_conv.*, post_quant_conv.*, decoder.*, and the codebook:
//   RQ-VAE "quantizer.codebooks.0.weight" [K+1, E]   (aliases codebooks.1-3 and EMA buffers are not listed)
//   VQGAN  "quantize.embedding.weight"    [K, E]
std::vector<TensorSpec> stage1_tensor_specs(const Stage1Config& c);

// Name of the codebook tensor (without prefix) and its row count (K+1 for RQ, K for VQGAN).
std::string stage1_codebook_name(const Stage1Config& c);
int64_t stage1_codebook_rows(const Stage1Config& c);

}  // namespace hwaga
