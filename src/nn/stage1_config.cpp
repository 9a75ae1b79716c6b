// Stage1Config: validation, JSON round trip, the released YAML layouts, and the tensor list.
#include "nn/stage1_config.h"

#include <algorithm>
#include <set>

#include <yaml-cpp/yaml.h>

#include "core/error.h"

namespace hwaga {

// ---------------------------------------------------------------------------------------------
// validation

namespace {
std::string list_str(const std::vector<int>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

void positive(const std::string& source, const char* field, int64_t v, int64_t max) {
  if (v <= 0 || v > max) fail(source, ": ", field, " must be in [1, ", max, "], found ", v);
}
}  // namespace

void validate_stage1_config(const Stage1Config& c, const std::string& source) {
  if (c.type != "rq-vae" && c.type != "vqgan")
    fail(source, ": type must be \"rq-vae\" or \"vqgan\", found \"", c.type, "\"");
  const TamingConfig& n = c.net;
  positive(source, "ch", n.ch, 1 << 16);
  positive(source, "num_res_blocks", n.num_res_blocks, 64);
  positive(source, "in_channels", n.in_channels, 1 << 16);
  positive(source, "out_ch", n.out_ch, 1 << 16);
  positive(source, "z_channels", n.z_channels, 1 << 16);
  positive(source, "resolution", n.resolution, 1 << 14);
  positive(source, "embed_dim", c.embed_dim, 1 << 16);
  positive(source, "n_embed", c.n_embed, (int64_t(1) << 30));
  if (n.ch_mult.empty()) fail(source, ": ch_mult must list at least one level, found []");
  if (n.ch_mult.size() > 14) fail(source, ": ch_mult has ", n.ch_mult.size(), " levels, at most 14 are supported");
  if (n.ch % kTamingGroups != 0)
    fail(source, ": ch ", n.ch, " must be divisible by the ", kTamingGroups, " GroupNorm groups");
  for (size_t i = 0; i < n.ch_mult.size(); ++i) {
    const int m = n.ch_mult[i];
    if (m <= 0 || m > 256) fail(source, ": ch_mult[", i, "] must be in [1, 256], found ", m);
    if (int64_t(n.ch) * m > (1 << 16))
      fail(source, ": ch * ch_mult[", i, "] = ", int64_t(n.ch) * m, " channels is too many");
    if ((n.ch * m) % kTamingGroups != 0)
      fail(source, ": ch * ch_mult[", i, "] = ", n.ch * m, " channels is not divisible by the ",
           kTamingGroups, " GroupNorm groups");
  }
  const int down = n.num_levels() - 1;
  if (n.resolution % (1 << down) != 0)
    fail(source, ": resolution ", n.resolution, " must be divisible by 2^", down, " = ", 1 << down,
         " (", n.num_levels(), " levels in ch_mult)");
  std::vector<int> level_res;
  for (int i = 0; i < n.num_levels(); ++i) level_res.push_back(n.level_resolution(i));
  for (int r : n.attn_resolutions)
    if (std::find(level_res.begin(), level_res.end(), r) == level_res.end())
      fail(source, ": attn_resolutions entry ", r, " is not the resolution of any level (levels run at ",
           list_str(level_res), ")");
  if (c.code_shape.size() != 3)
    fail(source, ": code_shape must be [h, w, depth], found ", list_str(c.code_shape));
  const int h = n.latent_resolution();
  if (c.code_shape[0] != h || c.code_shape[1] != h)
    fail(source, ": code_shape ", list_str(c.code_shape), " does not match the ", h, "x", h,
         " latent (resolution ", n.resolution, " / 2^", down, ")");
  if (c.code_shape[2] < 1 || c.code_shape[2] > 64)
    fail(source, ": code_shape depth must be in [1, 64], found ", c.code_shape[2]);
  if (c.type == "vqgan" && c.code_shape[2] != 1)
    fail(source, ": code_shape depth must be 1 for a vqgan, found ", c.code_shape[2]);
  if (c.type == "rq-vae" && !c.shared_codebook)
    fail(source, ": shared_codebook false is not supported (every released RQ-VAE shares one codebook)");
}

// ---------------------------------------------------------------------------------------------
// JSON

nlohmann::json stage1_config_to_json(const Stage1Config& c) {
  nlohmann::json j;
  j["type"] = c.type;
  j["ch"] = c.net.ch;
  j["ch_mult"] = c.net.ch_mult;
  j["num_res_blocks"] = c.net.num_res_blocks;
  j["attn_resolutions"] = c.net.attn_resolutions;
  j["in_channels"] = c.net.in_channels;
  j["out_ch"] = c.net.out_ch;
  j["z_channels"] = c.net.z_channels;
  j["resolution"] = c.net.resolution;
  j["embed_dim"] = c.embed_dim;
  j["n_embed"] = c.n_embed;
  j["code_shape"] = c.code_shape;
  j["shared_codebook"] = c.shared_codebook;
  return j;
}

namespace {
const nlohmann::json& jfield(const nlohmann::json& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end()) fail(source, ": missing field \"", key, "\"");
  return *it;
}

int jint(const nlohmann::json& j, const char* key, const std::string& source) {
  const nlohmann::json& v = jfield(j, key, source);
  if (!v.is_number_integer()) fail(source, ": field \"", key, "\" must be an integer, found ", v.dump());
  const int64_t x = v.get<int64_t>();
  if (x < INT32_MIN || x > INT32_MAX) fail(source, ": field \"", key, "\" is out of range: ", x);
  return int(x);
}

std::vector<int> jints(const nlohmann::json& j, const char* key, const std::string& source) {
  const nlohmann::json& v = jfield(j, key, source);
  if (!v.is_array()) fail(source, ": field \"", key, "\" must be a list of integers, found ", v.dump());
  std::vector<int> out;
  for (const auto& e : v) {
    if (!e.is_number_integer() || e.get<int64_t>() < INT32_MIN || e.get<int64_t>() > INT32_MAX)
      fail(source, ": field \"", key, "\" must be a list of integers, found ", v.dump());
    out.push_back(int(e.get<int64_t>()));
  }
  return out;
}
}  // namespace

Stage1Config stage1_config_from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) fail(source, ": expected a JSON object, found ", j.dump());
  static const std::set<std::string> known = {"type", "ch", "ch_mult", "num_res_blocks", "attn_resolutions",
                                              "in_channels", "out_ch", "z_channels", "resolution", "embed_dim",
                                              "n_embed", "code_shape", "shared_codebook"};
  for (const auto& [k, v] : j.items())
    if (!known.count(k)) fail(source, ": unknown field \"", k, "\"");
  Stage1Config c;
  const nlohmann::json& type = jfield(j, "type", source);
  if (!type.is_string()) fail(source, ": field \"type\" must be a string, found ", type.dump());
  c.type = type.get<std::string>();
  c.net.ch = jint(j, "ch", source);
  c.net.ch_mult = jints(j, "ch_mult", source);
  c.net.num_res_blocks = jint(j, "num_res_blocks", source);
  c.net.attn_resolutions = jints(j, "attn_resolutions", source);
  c.net.in_channels = jint(j, "in_channels", source);
  c.net.out_ch = jint(j, "out_ch", source);
  c.net.z_channels = jint(j, "z_channels", source);
  c.net.resolution = jint(j, "resolution", source);
  c.embed_dim = jint(j, "embed_dim", source);
  c.n_embed = jint(j, "n_embed", source);
  c.code_shape = jints(j, "code_shape", source);
  const nlohmann::json& sc = jfield(j, "shared_codebook", source);
  if (!sc.is_boolean()) fail(source, ": field \"shared_codebook\" must be true or false, found ", sc.dump());
  c.shared_codebook = sc.get<bool>();
  validate_stage1_config(c, source);
  return c;
}

// ---------------------------------------------------------------------------------------------
// YAML

namespace {
struct Yaml {
  std::string path;

  YAML::Node child(const YAML::Node& n, const std::string& where, const char* key) const {
    if (!n.IsMap()) fail(path, ": '", where, "' must be a mapping");
    YAML::Node c = n[key];
    if (!c.IsDefined() || c.IsNull()) fail(path, ": missing key '", where, ".", key, "'");
    return c;
  }
  template <typename T>
  T scalar(const YAML::Node& n, const std::string& where, const char* key) const {
    YAML::Node c = child(n, where, key);
    try {
      if (!c.IsScalar()) throw YAML::Exception(YAML::Mark::null_mark(), "not a scalar");
      return c.as<T>();
    } catch (const YAML::Exception&) {
      fail(path, ": key '", where, ".", key, "' has an unexpected value (expected ",
           std::is_same_v<T, bool> ? "true/false" : std::is_same_v<T, std::string> ? "a string" : "an integer",
           ")");
    }
  }
  std::vector<int> ints(const YAML::Node& n, const std::string& where, const char* key) const {
    YAML::Node c = child(n, where, key);
    if (!c.IsSequence()) fail(path, ": key '", where, ".", key, "' must be a list of integers");
    std::vector<int> out;
    try {
      for (const auto& e : c) out.push_back(e.as<int>());
    } catch (const YAML::Exception&) {
      fail(path, ": key '", where, ".", key, "' must be a list of integers");
    }
    return out;
  }
  bool has(const YAML::Node& n, const char* key) const {
    return n.IsMap() && n[key].IsDefined() && !n[key].IsNull();
  }
};

// The ddconfig / hparams block shared by both layouts.
TamingConfig read_taming(const Yaml& y, const YAML::Node& n, const std::string& where) {
  TamingConfig t;
  if (y.has(n, "double_z") && y.scalar<bool>(n, where, "double_z"))
    fail(y.path, ": key '", where, ".double_z' is true; only false (a plain VQ latent) is supported");
  t.z_channels = y.scalar<int>(n, where, "z_channels");
  t.resolution = y.scalar<int>(n, where, "resolution");
  t.in_channels = y.scalar<int>(n, where, "in_channels");
  t.out_ch = y.scalar<int>(n, where, "out_ch");
  t.ch = y.scalar<int>(n, where, "ch");
  t.ch_mult = y.ints(n, where, "ch_mult");
  t.num_res_blocks = y.scalar<int>(n, where, "num_res_blocks");
  t.attn_resolutions = y.ints(n, where, "attn_resolutions");
  return t;
}
}  // namespace

Stage1Config stage1_config_from_yaml(const std::string& yaml_path, const std::string& kind) {
  if (kind != "rq-vae" && kind != "vqgan" && kind != "auto")
    fail("stage1 config kind must be rq-vae, vqgan or auto, found '", kind, "'");
  YAML::Node root;
  try {
    root = YAML::LoadFile(yaml_path);
  } catch (const YAML::BadFile&) {
    fail(yaml_path, ": cannot open the file");
  } catch (const YAML::Exception& e) {
    fail(yaml_path, ": not valid YAML: ", e.what());
  }
  Yaml y{yaml_path};
  if (!root.IsMap()) fail(yaml_path, ": expected a YAML mapping at the top level");
  std::string k = kind;
  if (k == "auto") {
    if (y.has(root, "arch")) k = "rq-vae";
    else if (y.has(root, "stage1")) k = "vqgan";
    else fail(yaml_path, ": neither 'arch' (RQ-VAE) nor 'stage1' (minDALL-E) is present");
  }
  Stage1Config c;
  c.type = k;
  if (k == "rq-vae") {
    YAML::Node arch = y.child(root, "", "arch");
    const std::string type = y.scalar<std::string>(arch, "arch", "type");
    if (type != "rq-vae") fail(yaml_path, ": key 'arch.type' is '", type, "', expected 'rq-vae'");
    if (y.has(arch, "code_hier") && y.scalar<int>(arch, "arch", "code_hier") != 1)
      fail(yaml_path, ": key 'arch.code_hier' must be 1 (a single code hierarchy)");
    YAML::Node hp = y.child(arch, "arch", "hparams");
    if (y.has(hp, "bottleneck_type")) {
      const std::string bt = y.scalar<std::string>(hp, "arch.hparams", "bottleneck_type");
      if (bt != "rq") fail(yaml_path, ": key 'arch.hparams.bottleneck_type' is '", bt, "', expected 'rq'");
    }
    c.embed_dim = y.scalar<int>(hp, "arch.hparams", "embed_dim");
    c.n_embed = y.scalar<int>(hp, "arch.hparams", "n_embed");
    c.code_shape = y.ints(hp, "arch.hparams", "code_shape");
    c.shared_codebook = y.scalar<bool>(hp, "arch.hparams", "shared_codebook");
    c.net = read_taming(y, y.child(arch, "arch", "ddconfig"), "arch.ddconfig");
    if (y.has(hp, "latent_shape")) {
      std::vector<int> ls = y.ints(hp, "arch.hparams", "latent_shape");
      const int h = c.net.resolution >> (std::max(1, c.net.num_levels()) - 1);
      if (ls != std::vector<int>{h, h, c.embed_dim})
        fail(yaml_path, ": key 'arch.hparams.latent_shape' is ", list_str(ls), ", expected ",
             list_str({h, h, c.embed_dim}), " from resolution, ch_mult and embed_dim");
    }
  } else {
    YAML::Node s1 = y.child(root, "", "stage1");
    if (y.has(s1, "type")) {
      const std::string type = y.scalar<std::string>(s1, "stage1", "type");
      if (type != "vqgan") fail(yaml_path, ": key 'stage1.type' is '", type, "', expected 'vqgan'");
    }
    c.embed_dim = y.scalar<int>(s1, "stage1", "embed_dim");
    c.n_embed = y.scalar<int>(s1, "stage1", "n_embed");
    c.net = read_taming(y, y.child(s1, "stage1", "hparams"), "stage1.hparams");
    const int h = c.net.ch_mult.empty() ? 0 : c.net.resolution >> (c.net.num_levels() - 1);
    c.code_shape = {h, h, 1};
    c.shared_codebook = true;
  }
  validate_stage1_config(c, yaml_path);
  return c;
}

// ---------------------------------------------------------------------------------------------
// tensors

std::string stage1_codebook_name(const Stage1Config& c) {
  return c.is_rq() ? "quantizer.codebooks.0.weight" : "quantize.embedding.weight";
}

int64_t stage1_codebook_rows(const Stage1Config& c) { return c.is_rq() ? int64_t(c.n_embed) + 1 : c.n_embed; }

std::vector<TensorSpec> stage1_tensor_specs(const Stage1Config& c) {
  std::vector<TensorSpec> specs = taming_encoder_specs(c.net, "encoder.");
  const int64_t Z = c.net.z_channels, E = c.embed_dim;
  specs.push_back({"quant_conv.weight", {E, Z, 1, 1}});
  specs.push_back({"quant_conv.bias", {E}});
  specs.push_back({"post_quant_conv.weight", {Z, E, 1, 1}});
  specs.push_back({"post_quant_conv.bias", {Z}});
  std::vector<TensorSpec> dec = taming_decoder_specs(c.net, "decoder.");
  specs.insert(specs.end(), dec.begin(), dec.end());
  specs.push_back({stage1_codebook_name(c), {stage1_codebook_rows(c), E}});
  return specs;
}

}  // namespace hwaga
