// Stage-2 configs: validation, JSON, the released YAMLs, tensor specs. See stage2_config.h.
#include "transformer/stage2_config.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>

#include <yaml-cpp/yaml.h>

#include "core/error.h"

namespace hwaga {

int Stage2Config::text_length() const {
  if (is_rq()) return rq.has_text() ? rq.block_size_cond : 0;
  return gpt.ctx_len_txt;
}

int Stage2Config::text_vocab_size() const {
  if (is_rq()) return rq.has_text() ? rq.vocab_size_cond : 0;
  return gpt.vocab_size_txt;
}

// ---------------------------------------------------------------------------------------------
// validation

namespace {

// Upper bounds keep every size product (parameter counts, tensor shapes) far from int64 overflow
// while leaving room far beyond any released model (C 2560, 48 layers, 16384-entry vocabularies).
constexpr int64_t kMaxSize = int64_t(1) << 24;  // vocabularies, context lengths, code shapes
constexpr int64_t kMaxWidth = 65536;            // embed_dim, input_embed_dim
constexpr int64_t kMaxLayers = 4096;

void need_positive(int64_t v, const char* field, const std::string& source, int64_t max = kMaxSize) {
  if (v <= 0) fail(source, ": stage2 field '", field, "' must be a positive integer, found ", v);
  if (v > max) fail(source, ": stage2 field '", field, "' = ", v, " is larger than hwaga accepts (at most ", max, ")");
}

void need_flag(bool v, bool want, const char* field, const std::string& source) {
  if (v != want)
    fail(source, ": stage2 field '", field, "' = ", v ? "true" : "false",
         " is not implemented by hwaga (the released models use ", want ? "true" : "false", ")");
}

void need_heads(int C, int heads, const char* heads_field, const std::string& source) {
  need_positive(heads, heads_field, source);
  if (C % heads != 0)
    fail(source, ": stage2 embed_dim ", C, " is not divisible by ", heads_field, " ", heads,
         " (head dim = embed_dim / ", heads_field, " must be an integer)");
}

}  // namespace

void validate_stage2_config(const Stage2Config& c, const std::string& source) {
  if (c.is_rq()) {
    const RqTransformerConfig& r = c.rq;
    need_positive(r.embed_dim, "embed_dim", source, kMaxWidth);
    need_positive(r.n_layer_body, "n_layer_body", source, kMaxLayers);
    need_positive(r.n_layer_head, "n_layer_head", source, kMaxLayers);
    need_heads(r.embed_dim, r.n_head, "n_head", source);
    if (r.block_size.size() != 3)
      fail(source, ": stage2 field 'block_size' must have 3 values [H, W, D], found ",
           r.block_size.size());
    for (int v : r.block_size) need_positive(v, "block_size", source, 4096);
    need_positive(r.vocab_size, "vocab_size", source);
    need_positive(r.vocab_size_cond, "vocab_size_cond", source);
    need_positive(r.block_size_cond, "block_size_cond", source, 65536);
    need_positive(r.input_embed_dim, "input_embed_dim", source, kMaxWidth);
    if (r.block_size_cond > 1 && r.vocab_size_cond == 1)
      fail(source, ": stage2 block_size_cond ", r.block_size_cond,
           " > 1 needs vocab_size_cond > 1 (a text vocabulary), found vocab_size_cond 1");
    need_flag(r.shared_tok_emb, true, "shared_tok_emb", source);
    need_flag(r.shared_cls_emb, true, "shared_cls_emb", source);
    need_flag(r.input_emb_vqvae, true, "input_emb_vqvae", source);
    need_flag(r.head_emb_vqvae, true, "head_emb_vqvae", source);
    need_flag(r.cumsum_depth_ctx, true, "cumsum_depth_ctx", source);
    need_flag(r.scaled_head_emb_vqvae, false, "scaled_head_emb_vqvae", source);
    need_flag(r.use_padding_emb, false, "use_padding_emb", source);
    need_flag(r.mlp_bias, true, "mlp_bias", source);
    need_flag(r.attn_bias, true, "attn_bias", source);
    if (r.gelu != "v1")
      fail(source, ": stage2 field 'gelu' = '", r.gelu,
           "' is not implemented by hwaga (only 'v1', the exact erf GELU)");
  } else if (c.is_gpt()) {
    const MindalleGptConfig& g = c.gpt;
    need_positive(g.vocab_size_txt, "vocab_size_txt", source);
    need_positive(g.vocab_size_img, "vocab_size_img", source);
    need_positive(g.embed_dim, "embed_dim", source, kMaxWidth);
    need_positive(g.n_layers, "n_layers", source, kMaxLayers);
    need_heads(g.embed_dim, g.n_heads, "n_heads", source);
    need_positive(g.ctx_len_txt, "ctx_len_txt", source, 65536);
    need_positive(g.ctx_len_img, "ctx_len_img", source, 65536);
    need_flag(g.mlp_bias, true, "mlp_bias", source);
    need_flag(g.attn_bias, true, "attn_bias", source);
    need_flag(g.gelu_use_approx, false, "gelu_use_approx", source);
  } else {
    fail(source, ": stage2 field 'type' must be '", kStage2RqTransformer, "' or '",
         kStage2MindalleGpt, "', found '", c.type, "'");
  }
}

// ---------------------------------------------------------------------------------------------
// JSON

nlohmann::json stage2_config_to_json(const Stage2Config& c) {
  nlohmann::json j;
  j["type"] = c.type;
  if (c.is_rq()) {
    const RqTransformerConfig& r = c.rq;
    j["embed_dim"] = r.embed_dim;
    j["n_layer_body"] = r.n_layer_body;
    j["n_layer_head"] = r.n_layer_head;
    j["n_head"] = r.n_head;
    j["block_size"] = r.block_size;
    j["vocab_size"] = r.vocab_size;
    j["vocab_size_cond"] = r.vocab_size_cond;
    j["block_size_cond"] = r.block_size_cond;
    j["input_embed_dim"] = r.input_embed_dim;
    j["shared_tok_emb"] = r.shared_tok_emb;
    j["shared_cls_emb"] = r.shared_cls_emb;
    j["input_emb_vqvae"] = r.input_emb_vqvae;
    j["head_emb_vqvae"] = r.head_emb_vqvae;
    j["cumsum_depth_ctx"] = r.cumsum_depth_ctx;
    j["scaled_head_emb_vqvae"] = r.scaled_head_emb_vqvae;
    j["use_padding_emb"] = r.use_padding_emb;
    j["mlp_bias"] = r.mlp_bias;
    j["attn_bias"] = r.attn_bias;
    j["gelu"] = r.gelu;
  } else {
    const MindalleGptConfig& g = c.gpt;
    j["vocab_size_txt"] = g.vocab_size_txt;
    j["vocab_size_img"] = g.vocab_size_img;
    j["embed_dim"] = g.embed_dim;
    j["n_layers"] = g.n_layers;
    j["n_heads"] = g.n_heads;
    j["ctx_len_txt"] = g.ctx_len_txt;
    j["ctx_len_img"] = g.ctx_len_img;
    j["mlp_bias"] = g.mlp_bias;
    j["attn_bias"] = g.attn_bias;
    j["gelu_use_approx"] = g.gelu_use_approx;
  }
  return j;
}

namespace {

const nlohmann::json* j_find(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

int j_int(const nlohmann::json& j, const char* key, const std::string& source) {
  const nlohmann::json* v = j_find(j, key);
  if (!v) fail(source, ": stage2 field '", key, "' is missing");
  if (!v->is_number_integer())
    fail(source, ": stage2 field '", key, "' must be an integer, found ", v->dump());
  int64_t x = v->get<int64_t>();
  if (x < INT32_MIN || x > INT32_MAX)
    fail(source, ": stage2 field '", key, "' out of range: ", x);
  return int(x);
}

void j_bool(const nlohmann::json& j, const char* key, bool& out, const std::string& source) {
  const nlohmann::json* v = j_find(j, key);
  if (!v) return;  // flags default to the implemented value
  if (!v->is_boolean()) fail(source, ": stage2 field '", key, "' must be true/false, found ", v->dump());
  out = v->get<bool>();
}

}  // namespace

Stage2Config stage2_config_from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) fail(source, ": stage2 config must be a JSON object, found ", j.dump());
  const nlohmann::json* t = j_find(j, "type");
  if (!t || !t->is_string()) fail(source, ": stage2 field 'type' is missing or not a string");
  Stage2Config c;
  c.type = t->get<std::string>();
  // Unknown fields are refused: a field hwaga does not read would be silently ignored otherwise.
  static const char* rq_fields[] = {"type", "embed_dim", "n_layer_body", "n_layer_head", "n_head",
      "block_size", "vocab_size", "vocab_size_cond", "block_size_cond", "input_embed_dim",
      "shared_tok_emb", "shared_cls_emb", "input_emb_vqvae", "head_emb_vqvae", "cumsum_depth_ctx",
      "scaled_head_emb_vqvae", "use_padding_emb", "mlp_bias", "attn_bias", "gelu"};
  static const char* gpt_fields[] = {"type", "vocab_size_txt", "vocab_size_img", "embed_dim",
      "n_layers", "n_heads", "ctx_len_txt", "ctx_len_img", "mlp_bias", "attn_bias", "gelu_use_approx"};
  if (c.is_rq() || c.is_gpt()) {
    for (const auto& [k, v] : j.items()) {
      bool known = false;
      if (c.is_rq()) { for (const char* f : rq_fields) known = known || k == f; }
      else { for (const char* f : gpt_fields) known = known || k == f; }
      if (!known) fail(source, ": unknown stage2 field '", k, "' for type '", c.type, "'");
    }
  }
  if (c.is_rq()) {
    RqTransformerConfig& r = c.rq;
    r.embed_dim = j_int(j, "embed_dim", source);
    r.n_layer_body = j_int(j, "n_layer_body", source);
    r.n_layer_head = j_int(j, "n_layer_head", source);
    r.n_head = j_int(j, "n_head", source);
    const nlohmann::json* bs = j_find(j, "block_size");
    if (!bs) fail(source, ": stage2 field 'block_size' is missing");
    if (!bs->is_array()) fail(source, ": stage2 field 'block_size' must be an array, found ", bs->dump());
    r.block_size.clear();
    for (const auto& v : *bs) {
      if (!v.is_number_integer())
        fail(source, ": stage2 field 'block_size' must hold integers, found ", bs->dump());
      r.block_size.push_back(v.get<int>());
    }
    r.vocab_size = j_int(j, "vocab_size", source);
    r.vocab_size_cond = j_int(j, "vocab_size_cond", source);
    r.block_size_cond = j_int(j, "block_size_cond", source);
    r.input_embed_dim = j_int(j, "input_embed_dim", source);
    j_bool(j, "shared_tok_emb", r.shared_tok_emb, source);
    j_bool(j, "shared_cls_emb", r.shared_cls_emb, source);
    j_bool(j, "input_emb_vqvae", r.input_emb_vqvae, source);
    j_bool(j, "head_emb_vqvae", r.head_emb_vqvae, source);
    j_bool(j, "cumsum_depth_ctx", r.cumsum_depth_ctx, source);
    j_bool(j, "scaled_head_emb_vqvae", r.scaled_head_emb_vqvae, source);
    j_bool(j, "use_padding_emb", r.use_padding_emb, source);
    j_bool(j, "mlp_bias", r.mlp_bias, source);
    j_bool(j, "attn_bias", r.attn_bias, source);
    if (const nlohmann::json* g = j_find(j, "gelu")) {
      if (!g->is_string()) fail(source, ": stage2 field 'gelu' must be a string, found ", g->dump());
      r.gelu = g->get<std::string>();
    }
  } else if (c.is_gpt()) {
    MindalleGptConfig& g = c.gpt;
    g.vocab_size_txt = j_int(j, "vocab_size_txt", source);
    g.vocab_size_img = j_int(j, "vocab_size_img", source);
    g.embed_dim = j_int(j, "embed_dim", source);
    g.n_layers = j_int(j, "n_layers", source);
    g.n_heads = j_int(j, "n_heads", source);
    g.ctx_len_txt = j_int(j, "ctx_len_txt", source);
    g.ctx_len_img = j_int(j, "ctx_len_img", source);
    j_bool(j, "mlp_bias", g.mlp_bias, source);
    j_bool(j, "attn_bias", g.attn_bias, source);
    j_bool(j, "gelu_use_approx", g.gelu_use_approx, source);
  }
  validate_stage2_config(c, source);
  return c;
}

// ---------------------------------------------------------------------------------------------
// YAML

namespace {

YAML::Node load_yaml(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail(path, ": cannot open the config YAML");
  try {
    YAML::Node n = YAML::Load(f);
    if (!n.IsMap()) fail(path, ": expected a YAML mapping at the top level");
    return n;
  } catch (const YAML::Exception& e) {
    fail(path, ": YAML parse error: ", e.what());
  }
}

// node[key] as a map, or an undefined/null node when absent.
YAML::Node y_child(const YAML::Node& n, const char* key) {
  if (!n || !n.IsMap()) return YAML::Node();
  return n[key];
}

template <typename T>
T y_as(const YAML::Node& v, const std::string& where, const std::string& path, const char* what) {
  try {
    return v.as<T>();
  } catch (const YAML::Exception&) {
    fail(path, ": key '", where, "' must be ", what, ", found '", YAML::Dump(v), "'");
  }
}

int y_int(const YAML::Node& n, const char* key, const std::string& where, const std::string& path) {
  YAML::Node v = y_child(n, key);
  if (!v || v.IsNull()) fail(path, ": key '", where, "' is missing");
  return y_as<int>(v, where, path, "an integer");
}

int y_int_or(const YAML::Node& n, const char* key, int dflt, const std::string& where,
             const std::string& path) {
  YAML::Node v = y_child(n, key);
  if (!v || v.IsNull()) return dflt;
  return y_as<int>(v, where, path, "an integer");
}

bool y_bool_or(const YAML::Node& n, const char* key, bool dflt, const std::string& where,
               const std::string& path) {
  YAML::Node v = y_child(n, key);
  if (!v || v.IsNull()) return dflt;
  return y_as<bool>(v, where, path, "true or false");
}

// RQ's vocab_size is `Any`: an int, or a list with one entry per depth (all equal for the
// shared classifier hwaga implements).
int rq_vocab(const YAML::Node& v, const std::string& where, const std::string& path) {
  if (v.IsSequence()) {
    if (v.size() == 0) fail(path, ": key '", where, "' is an empty list");
    int k0 = y_as<int>(v[0], where, path, "an integer or a list of integers");
    for (size_t i = 1; i < v.size(); ++i)
      if (y_as<int>(v[i], where, path, "an integer or a list of integers") != k0)
        fail(path, ": key '", where, "' lists different sizes per depth; hwaga implements only ",
             "one vocabulary shared by all depths (shared_cls_emb)");
    return k0;
  }
  return y_as<int>(v, where, path, "an integer or a list of integers");
}

}  // namespace

Stage2Config stage2_config_from_rq_yaml(const std::string& path) {
  YAML::Node root = load_yaml(path);
  YAML::Node arch = root["arch"];
  if (!arch || !arch.IsMap()) fail(path, ": missing the 'arch:' block of an RQ stage-2 config");
  Stage2Config c;
  c.type = kStage2RqTransformer;
  RqTransformerConfig& r = c.rq;
  std::string type = y_child(arch, "type") ? y_as<std::string>(arch["type"], "arch.type", path, "a string") : "";
  if (type != "rq-transformer")
    fail(path, ": arch.type must be 'rq-transformer' for an RQ stage-2 config, found '", type, "'");

  YAML::Node bs = arch["block_size"];
  if (!bs || !bs.IsSequence()) fail(path, ": key 'arch.block_size' is missing or not a list");
  r.block_size.clear();
  for (const auto& v : bs) r.block_size.push_back(y_as<int>(v, "arch.block_size", path, "a list of integers"));

  r.embed_dim = y_int(arch, "embed_dim", "arch.embed_dim", path);
  // input_embed_dim defaults to None in the reference, which the VQ-VAE-embedding path cannot use.
  r.input_embed_dim = y_int(arch, "input_embed_dim", "arch.input_embed_dim", path);

  YAML::Node vs = arch["vocab_size"];
  if (vs && !vs.IsNull()) {
    r.vocab_size = rq_vocab(vs, "arch.vocab_size", path);
  } else {
    YAML::Node dvs = y_child(root["dataset"], "vocab_size");
    if (!dvs || dvs.IsNull())
      fail(path, ": neither 'arch.vocab_size' nor 'dataset.vocab_size' is present (need the code count K)");
    r.vocab_size = rq_vocab(dvs, "dataset.vocab_size", path);
  }
  // The reference takes max(value, 1) for both (0 is its default: no condition, an SOS token).
  r.vocab_size_cond = std::max(1, y_int_or(arch, "vocab_size_cond", 0, "arch.vocab_size_cond", path));
  r.block_size_cond = std::max(1, y_int_or(arch, "block_size_cond", 0, "arch.block_size_cond", path));

  // Reference defaults (RQTransformerConfig): every boolean flag false unless the YAML says so.
  r.shared_tok_emb = y_bool_or(arch, "shared_tok_emb", false, "arch.shared_tok_emb", path);
  r.shared_cls_emb = y_bool_or(arch, "shared_cls_emb", false, "arch.shared_cls_emb", path);
  r.input_emb_vqvae = y_bool_or(arch, "input_emb_vqvae", false, "arch.input_emb_vqvae", path);
  r.head_emb_vqvae = y_bool_or(arch, "head_emb_vqvae", false, "arch.head_emb_vqvae", path);
  r.cumsum_depth_ctx = y_bool_or(arch, "cumsum_depth_ctx", false, "arch.cumsum_depth_ctx", path);
  r.scaled_head_emb_vqvae = y_bool_or(arch, "scaled_head_emb_vqvae", false, "arch.scaled_head_emb_vqvae", path);
  r.use_padding_emb = y_bool_or(arch, "use_padding_emb", false, "arch.use_padding_emb", path);

  // body / head stacks: {n_layer, block: {n_head, embed_dim?, mlp_bias, attn_bias, gelu, ...}}
  int heads[2] = {0, 0};
  const char* stacks[2] = {"body", "head"};
  for (int s = 0; s < 2; ++s) {
    std::string w = std::string("arch.") + stacks[s];
    YAML::Node st = arch[stacks[s]];
    if (!st || !st.IsMap()) fail(path, ": key '", w, "' is missing (expected {n_layer, block: {n_head}})");
    int n_layer = y_int(st, "n_layer", w + ".n_layer", path);
    (s == 0 ? r.n_layer_body : r.n_layer_head) = n_layer;
    YAML::Node blk = st["block"];
    if (!blk || !blk.IsMap()) fail(path, ": key '", w, ".block' is missing (expected {n_head})");
    heads[s] = y_int(blk, "n_head", w + ".block.n_head", path);
    int bdim = y_int_or(blk, "embed_dim", r.embed_dim, w + ".block.embed_dim", path);
    if (bdim != r.embed_dim)
      fail(path, ": key '", w, ".block.embed_dim' = ", bdim, " differs from arch.embed_dim ",
           r.embed_dim, "; hwaga implements only one width");
    bool mlp_bias = y_bool_or(blk, "mlp_bias", true, w + ".block.mlp_bias", path);
    bool attn_bias = y_bool_or(blk, "attn_bias", true, w + ".block.attn_bias", path);
    r.mlp_bias = r.mlp_bias && mlp_bias;
    r.attn_bias = r.attn_bias && attn_bias;
    YAML::Node g = blk["gelu"];
    if (g && !g.IsNull()) {
      std::string gv = y_as<std::string>(g, w + ".block.gelu", path, "a string");
      if (gv != "v1") r.gelu = gv;
    }
  }
  if (heads[0] != heads[1])
    fail(path, ": arch.body.block.n_head ", heads[0], " differs from arch.head.block.n_head ",
         heads[1], "; hwaga implements one head count for both stacks (as every released model has)");
  r.n_head = heads[0];
  validate_stage2_config(c, path);
  return c;
}

Stage2Config stage2_config_from_mindalle_yaml(const std::string& path) {
  YAML::Node root = load_yaml(path);
  YAML::Node s2 = root["stage2"];
  if (!s2 || !s2.IsMap()) fail(path, ": missing the 'stage2:' block of a minDALL-E config");
  std::string type = y_child(s2, "type") ? y_as<std::string>(s2["type"], "stage2.type", path, "a string")
                                         : "transformer1d";
  if (type != "transformer1d")
    fail(path, ": stage2.type must be 'transformer1d' (the text-to-image GPT), found '", type, "'");
  Stage2Config c;
  c.type = kStage2MindalleGpt;
  MindalleGptConfig& g = c.gpt;
  // Defaults are the reference's Stage2Config / Stage2Hparams defaults.
  g.vocab_size_txt = y_int_or(s2, "vocab_size_txt", 16384, "stage2.vocab_size_txt", path);
  g.vocab_size_img = y_int_or(s2, "vocab_size_img", 16384, "stage2.vocab_size_img", path);
  YAML::Node hp = s2["hparams"];
  if (hp && !hp.IsMap()) fail(path, ": key 'stage2.hparams' must be a mapping");
  g.embed_dim = y_int_or(hp, "embed_dim", 1536, "stage2.hparams.embed_dim", path);
  g.n_layers = y_int_or(hp, "n_layers", 42, "stage2.hparams.n_layers", path);
  g.n_heads = y_int_or(hp, "n_heads", 24, "stage2.hparams.n_heads", path);
  int n_dense = y_int_or(hp, "n_dense_layers", g.n_layers, "stage2.hparams.n_dense_layers", path);
  if (n_dense != g.n_layers)
    fail(path, ": stage2.hparams.n_dense_layers ", n_dense, " must equal n_layers ", g.n_layers,
         " (only dense causal attention exists)");
  g.ctx_len_img = y_int_or(hp, "ctx_len_img", 256, "stage2.hparams.ctx_len_img", path);
  g.ctx_len_txt = y_int_or(hp, "ctx_len_txt", 64, "stage2.hparams.ctx_len_txt", path);
  g.mlp_bias = y_bool_or(hp, "mlp_bias", true, "stage2.hparams.mlp_bias", path);
  g.attn_bias = y_bool_or(hp, "attn_bias", true, "stage2.hparams.attn_bias", path);
  g.gelu_use_approx = y_bool_or(hp, "gelu_use_approx", false, "stage2.hparams.gelu_use_approx", path);
  if (!y_bool_or(hp, "use_head_txt", true, "stage2.hparams.use_head_txt", path))
    fail(path, ": stage2.hparams.use_head_txt false is not implemented by hwaga (head_txt is expected)");
  YAML::Node ncls = y_child(hp, "n_classes");
  if (ncls && !ncls.IsNull())
    fail(path, ": stage2.hparams.n_classes is set: that is the ImageNet-transfer iGPT, not the ",
         "text-to-image Transformer1d hwaga implements");
  validate_stage2_config(c, path);
  return c;
}

TextSettings text_settings_from_rq_yaml(const std::string& path, const Stage2Config& c) {
  TextSettings t;
  if (!c.is_rq() || !c.rq.has_text()) return t;
  YAML::Node root = load_yaml(path);
  YAML::Node ds = root["dataset"];
  YAML::Node tok = y_child(ds, "txt_tok_name");
  if (!tok || tok.IsNull()) fail(path, ": key 'dataset.txt_tok_name' is missing (a text model needs its tokenizer)");
  std::string name = y_as<std::string>(tok, "dataset.txt_tok_name", path, "a string");
  if (name != "bpe16k_huggingface")
    fail(path, ": dataset.txt_tok_name '", name, "' is not supported (hwaga has 'bpe16k_huggingface')");
  t.tokenizer = "bpe16k";
  t.context_length = y_int(ds, "context_length", "dataset.context_length", path);
  if (t.context_length != c.rq.block_size_cond)
    fail(path, ": dataset.context_length ", t.context_length, " differs from arch.block_size_cond ",
         c.rq.block_size_cond);
  return t;
}

TextSettings text_settings_from_mindalle_yaml(const std::string& path, const Stage2Config& c) {
  YAML::Node root = load_yaml(path);
  YAML::Node ds = root["dataset"];
  YAML::Node tt = y_child(ds, "tokenizer_type");
  if (tt && !tt.IsNull()) {
    std::string v = y_as<std::string>(tt, "dataset.tokenizer_type", path, "a string");
    if (v != "CharBPE") fail(path, ": dataset.tokenizer_type '", v, "' is not supported (only CharBPE)");
  }
  TextSettings t;
  t.tokenizer = "bpe16k";
  t.context_length = y_int_or(ds, "context_length", 64, "dataset.context_length", path);
  if (c.is_gpt() && t.context_length != c.gpt.ctx_len_txt)
    fail(path, ": dataset.context_length ", t.context_length, " differs from stage2.hparams.ctx_len_txt ",
         c.gpt.ctx_len_txt);
  return t;
}

// ---------------------------------------------------------------------------------------------
// tensors

namespace {

void block_specs(std::vector<TensorSpec>& s, const std::string& p, int64_t C) {
  const int64_t F = kStage2MlpRatio * C;
  s.push_back({p + "ln1.weight", {C}});
  s.push_back({p + "ln1.bias", {C}});
  s.push_back({p + "ln2.weight", {C}});
  s.push_back({p + "ln2.bias", {C}});
  for (const char* m : {"key", "query", "value", "proj"}) {
    s.push_back({p + "attn." + m + ".weight", {C, C}});
    s.push_back({p + "attn." + m + ".bias", {C}});
  }
  s.push_back({p + "mlp.0.weight", {F, C}});
  s.push_back({p + "mlp.0.bias", {F}});
  s.push_back({p + "mlp.2.weight", {C, F}});
  s.push_back({p + "mlp.2.bias", {C}});
}

}  // namespace

std::vector<TensorSpec> stage2_tensor_specs(const Stage2Config& c) {
  validate_stage2_config(c, "stage2_tensor_specs");
  std::vector<TensorSpec> s;
  if (c.is_rq()) {
    const RqTransformerConfig& r = c.rq;
    const int64_t C = r.embed_dim, E = r.input_embed_dim, K = r.vocab_size;
    s.push_back({"cond_emb.weight", {r.vocab_size_cond, C}});
    s.push_back({"pos_emb_cond", {1, r.block_size_cond, C}});
    s.push_back({"pos_emb_hw", {1, int64_t(r.H()) * r.W(), C}});
    s.push_back({"pos_emb_d", {1, r.D(), C}});
    s.push_back({"input_mlp.weight", {C, E}});
    s.push_back({"input_mlp.bias", {C}});
    s.push_back({"head_mlp.weight", {C, E}});
    s.push_back({"head_mlp.bias", {C}});
    for (int i = 0; i < r.n_layer_body; ++i)
      block_specs(s, "body_transformer.blocks." + std::to_string(i) + ".", C);
    for (int i = 0; i < r.n_layer_head; ++i)
      block_specs(s, "head_transformer.blocks." + std::to_string(i) + ".", C);
    s.push_back({"classifier.layer_norm.weight", {C}});
    s.push_back({"classifier.layer_norm.bias", {C}});
    s.push_back({"classifier.linear.weight", {K, C}});
    s.push_back({"classifier.linear.bias", {K}});
    if (r.has_text()) {
      s.push_back({"cond_classifier.layer_norm.weight", {C}});
      s.push_back({"cond_classifier.layer_norm.bias", {C}});
      s.push_back({"cond_classifier.linear.weight", {r.vocab_size_cond, C}});
      s.push_back({"cond_classifier.linear.bias", {r.vocab_size_cond}});
    }
  } else {
    const MindalleGptConfig& g = c.gpt;
    const int64_t C = g.embed_dim;
    s.push_back({"tok_emb_img.weight", {g.vocab_size_img, C}});
    s.push_back({"tok_emb_txt.weight", {g.vocab_size_txt, C}});
    s.push_back({"pos_emb_img.weight", {g.ctx_len_img, C}});
    s.push_back({"pos_emb_txt.weight", {g.ctx_len_txt, C}});
    for (int i = 0; i < g.n_layers; ++i) block_specs(s, "blocks." + std::to_string(i) + ".", C);
    s.push_back({"ln_f.weight", {C}});
    s.push_back({"ln_f.bias", {C}});
    s.push_back({"head_img.weight", {g.vocab_size_img, C}});
    s.push_back({"head_txt.weight", {g.vocab_size_txt, C}});
  }
  return s;
}

int64_t stage2_num_parameters(const Stage2Config& c) {
  int64_t n = 0;
  for (const TensorSpec& s : stage2_tensor_specs(c)) n += shape_numel(s.shape);
  return n;
}

std::string describe_stage2_config(const Stage2Config& c) {
  char buf[256];
  double m = double(stage2_num_parameters(c)) / 1e6;
  if (c.is_rq()) {
    const RqTransformerConfig& r = c.rq;
    std::snprintf(buf, sizeof buf,
                  "rq-transformer C=%d, body %d + head %d layers, %d heads, codes %dx%dx%d, K=%d, "
                  "cond %dx%d, %.1fM params",
                  r.embed_dim, r.n_layer_body, r.n_layer_head, r.n_head, r.H(), r.W(), r.D(),
                  r.vocab_size, r.vocab_size_cond, r.block_size_cond, m);
  } else {
    const MindalleGptConfig& g = c.gpt;
    std::snprintf(buf, sizeof buf,
                  "mindalle-gpt C=%d, %d layers, %d heads, text %dx%d, image %dx%d, %.1fM params",
                  g.embed_dim, g.n_layers, g.n_heads, g.vocab_size_txt, g.ctx_len_txt,
                  g.vocab_size_img, g.ctx_len_img, m);
  }
  return buf;
}

}  // namespace hwaga
