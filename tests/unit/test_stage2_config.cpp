// Stage2Config (src/transformer/stage2_config.h) and the presets (src/transformer/presets.h):
//  - parameter counts of every released configuration against architecture.md §2.6 / §4.2
//    (rounded to 0.1M, as the table gives them);
//  - JSON round trips, and errors that name the field for bad or unsupported values;
//  - the released YAML layouts (written here in the layout of the public configs), including
//    the dataset.vocab_size fallback and the flag defaults;
//  - tensor names and shapes against the independent PyTorch reference: a tiny checkpoint from
//    tests/parity/torch_ref/make_stage2_checkpoint.py, whose state_dict keys/shapes must equal
//    stage2_tensor_specs exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "nn/stage1_config.h"
#include "transformer/presets.h"
#include "transformer/stage2_config.h"
#include "test_util.h"

using namespace hwaga;
namespace fs = std::filesystem;

namespace {

using test::TempDir;

// Expects `fn` to throw hwaga::Error whose message contains every needle.
template <typename Fn>
void expect_error(Fn fn, std::initializer_list<const char*> needles) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one mentioning " << *needles.begin();
  } catch (const Error& e) {
    for (const char* n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << "'" << n << "' not in: " << e.what();
  }
}

double millions(int64_t n) { return std::round(double(n) / 1e5) / 10.0; }

// The CC3M stage-2 YAML in the layout of configs/cc3m/cc3m-rqtransformer-8x8x4-650M.yaml.
std::string cc3m_yaml(const std::string& arch_vocab_line, const std::string& extra_arch = "") {
  return "dataset:\n"
         "  dataset: cc3m\n"
         "  txt_tok_name: bpe16k_huggingface\n"
         "  vocab_size_txt: 16384\n"
         "  vocab_size: 16384\n"
         "  context_length: 32\n"
         "arch:\n"
         "  type: rq-transformer\n"
         "  block_size: [ 8, 8, 4 ]\n"
         "  embed_dim: 1280\n"
         "  input_embed_dim: 256\n"
         "  shared_tok_emb: true\n"
         "  shared_cls_emb: true\n"
         "  input_emb_vqvae: true\n"
         "  head_emb_vqvae: true\n" +
         extra_arch +
         "  vocab_size_cond: 16384\n"
         "  block_size_cond: 32\n" +
         arch_vocab_line +
         "  body:\n"
         "    n_layer: 26\n"
         "    block:\n"
         "      n_head: 20\n"
         "  head:\n"
         "    n_layer: 4\n"
         "    block:\n"
         "      n_head: 20\n"
         "experiment:\n"
         "  sample:\n"
         "    top_k: 16384\n"
         "    top_p: 0.7\n";
}

const char* kDalleYaml =
    "stage1:\n"
    "  type: vqgan\n"
    "  embed_dim: 256\n"
    "  n_embed: 16384\n"
    "  hparams:\n"
    "    double_z: False\n"
    "    z_channels: 256\n"
    "    resolution: 256\n"
    "    in_channels: 3\n"
    "    out_ch: 3\n"
    "    ch: 128\n"
    "    ch_mult: [1, 1, 2, 2, 4]\n"
    "    num_res_blocks: 2\n"
    "    attn_resolutions: [16]\n"
    "    pdrop: 0.0\n"
    "stage2:\n"
    "  type: transformer1d\n"
    "  vocab_size_txt: 16384\n"
    "  vocab_size_img: 16384\n"
    "  hparams:\n"
    "    embed_dim: 1536\n"
    "    n_layers: 42\n"
    "    n_heads: 24\n"
    "    n_dense_layers: 42\n"
    "    ctx_len_img: 256\n"
    "    ctx_len_txt: 64\n"
    "    embd_pdrop: 0.0\n"
    "    resid_pdrop: 0.0\n"
    "    attn_pdrop: 0.0\n"
    "    mlp_bias: True\n"
    "    attn_bias: True\n"
    "    gelu_use_approx: False\n";

}  // namespace

// ---------------------------------------------------------------------------------------------
// presets

TEST(Stage2Presets, ParameterCountsMatchTheReleasedModels) {
  const std::map<std::string, double> want = {
      {"ffhq", 355.4},          {"church", 370.1},        {"cat", 612.1},
      {"bedroom", 612.1},       {"imagenet-480m", 480.9}, {"imagenet-821m", 820.9},
      {"imagenet-1.4b", 1387.5}, {"imagenet-3.8b", 3822.5}, {"rq-cc3m-654m", 654.1},
      {"rq-3.9b", 3903.9},      {"mindalle-1.3b", 1291.1}};
  EXPECT_EQ(model_presets().size(), want.size());
  for (const auto& [name, m] : want) {
    const ModelPreset& p = find_preset(name);
    EXPECT_DOUBLE_EQ(millions(stage2_num_parameters(p.stage2)), m) << name;
  }
  expect_error([] { find_preset("imagenet-2b"); }, {"imagenet-2b", "rq-cc3m-654m", "mindalle-1.3b"});
}

TEST(Stage2Presets, Stage1ConfigsParseAndMatchTheStage2) {
  for (const ModelPreset& p : model_presets()) {
    SCOPED_TRACE(p.name);
    Stage1Config s1 = stage1_config_from_json(p.stage1, "preset " + p.name);
    EXPECT_EQ(s1.n_embed, p.stage2.image_vocab_size());
    if (p.stage2.is_rq()) {
      EXPECT_EQ(s1.type, "rq-vae");
      EXPECT_EQ(s1.code_shape, p.stage2.rq.block_size);
      EXPECT_EQ(s1.embed_dim, p.stage2.rq.input_embed_dim);
      EXPECT_EQ(s1.net.attn_resolutions, std::vector<int>{p.name == "ffhq" ? 16 : 8});
      EXPECT_EQ(p.stage2.rq.head_dim(), 64);
    } else {
      EXPECT_EQ(s1.type, "vqgan");
      EXPECT_EQ(s1.code_shape[0] * s1.code_shape[1], p.stage2.gpt.ctx_len_img);
      EXPECT_EQ(p.stage2.gpt.head_dim(), 64);
    }
    EXPECT_EQ(p.text.context_length, p.stage2.text_length());
    EXPECT_EQ(p.text.tokenizer.empty(), p.conditioning != "text");
    EXPECT_FALSE(p.description.empty());
  }
  EXPECT_EQ(find_preset("rq-cc3m-654m").text.context_length, 32);
  EXPECT_EQ(find_preset("mindalle-1.3b").text.context_length, 64);
  EXPECT_EQ(find_preset("ffhq").stage2.rq.vocab_size, 2048);
  EXPECT_TRUE(find_preset("rq-3.9b").inferred);
}

// ---------------------------------------------------------------------------------------------
// JSON

TEST(Stage2Config, JsonRoundTripsEveryPreset) {
  for (const ModelPreset& p : model_presets()) {
    nlohmann::json j = stage2_config_to_json(p.stage2);
    Stage2Config back = stage2_config_from_json(nlohmann::json::parse(j.dump()), "test");
    EXPECT_EQ(stage2_config_to_json(back), j) << p.name;
    EXPECT_EQ(stage2_num_parameters(back), stage2_num_parameters(p.stage2)) << p.name;
  }
}

TEST(Stage2Config, JsonErrorsNameTheField) {
  nlohmann::json rq = stage2_config_to_json(find_preset("rq-cc3m-654m").stage2);
  auto with = [&](const char* key, nlohmann::json v) {
    nlohmann::json j = rq;
    j[key] = v;
    return j;
  };
  expect_error([&] { stage2_config_from_json(with("cumsum_depth_ctx", false), "m.safetensors: config.stage2"); },
               {"m.safetensors: config.stage2", "cumsum_depth_ctx", "not implemented"});
  expect_error([&] { stage2_config_from_json(with("shared_cls_emb", false), "f"); }, {"shared_cls_emb"});
  expect_error([&] { stage2_config_from_json(with("gelu", "v2"), "f"); }, {"gelu", "v2"});
  expect_error([&] { stage2_config_from_json(with("n_head", 19), "f"); }, {"embed_dim 1280", "n_head 19"});
  expect_error([&] { stage2_config_from_json(with("embed_dim", "1280"), "f"); }, {"embed_dim", "integer"});
  expect_error([&] { stage2_config_from_json(with("block_size", {8, 8}), "f"); }, {"block_size", "3 values"});
  expect_error([&] { stage2_config_from_json(with("vocab_size", 0), "f"); }, {"vocab_size", "positive"});
  expect_error([&] { stage2_config_from_json(with("vocab_size_cond", 1), "f"); }, {"block_size_cond"});
  expect_error([&] { stage2_config_from_json(with("n_embd", 3), "f"); }, {"unknown stage2 field 'n_embd'"});
  expect_error([&] { stage2_config_from_json(with("type", "gpt2"), "f"); }, {"type", "gpt2"});
  nlohmann::json missing = rq;
  missing.erase("n_layer_head");
  expect_error([&] { stage2_config_from_json(missing, "f"); }, {"n_layer_head", "missing"});
  // Flags may be omitted: they default to the implemented values.
  nlohmann::json minimal = rq;
  for (const char* k : {"shared_tok_emb", "cumsum_depth_ctx", "gelu", "mlp_bias"}) minimal.erase(k);
  EXPECT_NO_THROW(stage2_config_from_json(minimal, "f"));

  nlohmann::json g = stage2_config_to_json(find_preset("mindalle-1.3b").stage2);
  g["gelu_use_approx"] = true;
  expect_error([&] { stage2_config_from_json(g, "f"); }, {"gelu_use_approx"});
  g["gelu_use_approx"] = false;
  g["n_heads"] = 25;
  expect_error([&] { stage2_config_from_json(g, "f"); }, {"n_heads 25"});
  // Any integer head dim is accepted (tiny test models use 32).
  g["n_heads"] = 48;
  EXPECT_EQ(stage2_config_from_json(g, "f").gpt.head_dim(), 32);
}

// ---------------------------------------------------------------------------------------------
// YAML

TEST(Stage2Config, ReadsTheReleasedRqYaml) {
  TempDir t;
  const Stage2Config want = find_preset("rq-cc3m-654m").stage2;
  // arch.vocab_size present (what the training setup saves) ...
  std::string a = t.write("a.yaml", cc3m_yaml("  vocab_size: 16384\n", "  cumsum_depth_ctx: true\n"));
  Stage2Config c = stage2_config_from_rq_yaml(a);
  EXPECT_EQ(stage2_config_to_json(c), stage2_config_to_json(want));
  TextSettings ts = text_settings_from_rq_yaml(a, c);
  EXPECT_EQ(ts.tokenizer, "bpe16k");
  EXPECT_EQ(ts.context_length, 32);
  // ... or only dataset.vocab_size (the repo's YAMLs), or a per-depth list.
  std::string b = t.write("b.yaml", cc3m_yaml("", "  cumsum_depth_ctx: true\n"));
  EXPECT_EQ(stage2_config_to_json(stage2_config_from_rq_yaml(b)), stage2_config_to_json(want));
  std::string l = t.write("l.yaml", cc3m_yaml("  vocab_size: [16384, 16384, 16384, 16384]\n", "  cumsum_depth_ctx: true\n"));
  EXPECT_EQ(stage2_config_from_rq_yaml(l).rq.vocab_size, 16384);
  std::string l2 = t.write("l2.yaml", cc3m_yaml("  vocab_size: [16384, 8192, 16384, 16384]\n", "  cumsum_depth_ctx: true\n"));
  expect_error([&] { stage2_config_from_rq_yaml(l2); }, {"l2.yaml", "arch.vocab_size", "shared"});
  // A flag missing from the YAML takes the reference default (false) and is refused.
  std::string m = t.write("m.yaml", cc3m_yaml("  vocab_size: 16384\n"));
  expect_error([&] { stage2_config_from_rq_yaml(m); }, {"m.yaml", "cumsum_depth_ctx"});
  std::string f = t.write("f.yaml", cc3m_yaml("", "  cumsum_depth_ctx: false\n"));
  expect_error([&] { stage2_config_from_rq_yaml(f); }, {"f.yaml", "cumsum_depth_ctx", "not implemented"});
  // Body and head with different head counts, and a missing n_layer, are named.
  std::string h = t.write("h.yaml", std::string(cc3m_yaml("", "  cumsum_depth_ctx: true\n"))
                                        .replace(cc3m_yaml("", "  cumsum_depth_ctx: true\n").rfind("n_head: 20"), 10, "n_head: 10"));
  expect_error([&] { stage2_config_from_rq_yaml(h); }, {"arch.body.block.n_head", "arch.head.block.n_head"});
  std::string y = cc3m_yaml("", "  cumsum_depth_ctx: true\n");
  std::string n = t.write("n.yaml", y.replace(y.find("    n_layer: 26\n"), 16, ""));
  expect_error([&] { stage2_config_from_rq_yaml(n); }, {"n.yaml", "arch.body.n_layer", "missing"});
  std::string bad = t.write("bad.yaml", "arch: [1, 2\n");
  expect_error([&] { stage2_config_from_rq_yaml(bad); }, {"bad.yaml", "YAML"});
  expect_error([&] { stage2_config_from_rq_yaml((t.path / "none.yaml").string()); }, {"none.yaml", "cannot open"});
  // An unconditional model (FFHQ layout): no text settings; cond sizes 1.
  std::string ffhq = t.write("ffhq.yaml",
      "dataset:\n  type: ffhq\n  vocab_size: 2048\narch:\n  type: rq-transformer\n  block_size: [8, 8, 4]\n"
      "  embed_dim: 1024\n  input_embed_dim: 256\n  shared_tok_emb: true\n  shared_cls_emb: true\n"
      "  input_emb_vqvae: true\n  head_emb_vqvae: true\n  cumsum_depth_ctx: true\n  vocab_size_cond: 1\n"
      "  block_size_cond: 1\n  body:\n    n_layer: 24\n    block:\n      n_head: 16\n  head:\n    n_layer: 4\n"
      "    block:\n      n_head: 16\n");
  Stage2Config fc = stage2_config_from_rq_yaml(ffhq);
  EXPECT_EQ(stage2_config_to_json(fc), stage2_config_to_json(find_preset("ffhq").stage2));
  EXPECT_EQ(text_settings_from_rq_yaml(ffhq, fc).tokenizer, "");
}

TEST(Stage2Config, ReadsTheMindalleYaml) {
  TempDir t;
  std::string p = t.write("dalle.yaml", kDalleYaml);
  Stage2Config c = stage2_config_from_mindalle_yaml(p);
  EXPECT_EQ(stage2_config_to_json(c), stage2_config_to_json(find_preset("mindalle-1.3b").stage2));
  TextSettings ts = text_settings_from_mindalle_yaml(p, c);
  EXPECT_EQ(ts.context_length, 64);
  EXPECT_EQ(ts.tokenizer, "bpe16k");
  std::string y = kDalleYaml;
  std::string d = t.write("dense.yaml", std::string(y).replace(y.find("n_dense_layers: 42"), 18, "n_dense_layers: 40"));
  expect_error([&] { stage2_config_from_mindalle_yaml(d); }, {"dense.yaml", "n_dense_layers"});
  std::string g = t.write("gelu.yaml", std::string(y).replace(y.find("gelu_use_approx: False"), 22, "gelu_use_approx: True"));
  expect_error([&] { stage2_config_from_mindalle_yaml(g); }, {"gelu.yaml", "gelu_use_approx"});
  std::string ctx = t.write("ctx.yaml", std::string(kDalleYaml) + "dataset:\n  context_length: 32\n");
  expect_error([&] { text_settings_from_mindalle_yaml(ctx, c); }, {"ctx.yaml", "context_length 32", "ctx_len_txt 64"});
  std::string no = t.write("no.yaml", "stage1:\n  type: vqgan\n");
  expect_error([&] { stage2_config_from_mindalle_yaml(no); }, {"no.yaml", "stage2"});
}

// ---------------------------------------------------------------------------------------------
// tensors

TEST(Stage2Config, TensorSpecsUseTheReleasedKeys) {
  auto find = [](const std::vector<TensorSpec>& s, const std::string& n) -> const TensorSpec* {
    for (const TensorSpec& t : s)
      if (t.name == n) return &t;
    return nullptr;
  };
  auto s = stage2_tensor_specs(find_preset("rq-cc3m-654m").stage2);
  EXPECT_EQ(s.size(), size_t(8 + 16 * (26 + 4) + 4 + 4));
  EXPECT_EQ(find(s, "pos_emb_cond")->shape, (Shape{1, 32, 1280}));
  EXPECT_EQ(find(s, "pos_emb_hw")->shape, (Shape{1, 64, 1280}));
  EXPECT_EQ(find(s, "pos_emb_d")->shape, (Shape{1, 4, 1280}));
  EXPECT_EQ(find(s, "input_mlp.weight")->shape, (Shape{1280, 256}));
  EXPECT_EQ(find(s, "body_transformer.blocks.25.mlp.0.weight")->shape, (Shape{5120, 1280}));
  EXPECT_EQ(find(s, "head_transformer.blocks.3.attn.query.bias")->shape, (Shape{1280}));
  EXPECT_EQ(find(s, "classifier.linear.weight")->shape, (Shape{16384, 1280}));
  EXPECT_EQ(find(s, "cond_classifier.linear.bias")->shape, (Shape{16384}));
  EXPECT_EQ(find(s, "body_transformer.blocks.26.ln1.weight"), nullptr);
  auto in = stage2_tensor_specs(find_preset("imagenet-480m").stage2);
  EXPECT_EQ(find(in, "cond_classifier.linear.weight"), nullptr);  // only text models
  EXPECT_EQ(find(in, "cond_emb.weight")->shape, (Shape{1000, 1536}));
  auto g = stage2_tensor_specs(find_preset("mindalle-1.3b").stage2);
  EXPECT_EQ(find(g, "pos_emb_txt.weight")->shape, (Shape{64, 1536}));
  EXPECT_EQ(find(g, "blocks.41.attn.proj.weight")->shape, (Shape{1536, 1536}));
  EXPECT_NE(find(g, "head_img.weight"), nullptr);
  EXPECT_EQ(find(g, "head_img.bias"), nullptr);  // no head biases
  EXPECT_NE(describe_stage2_config(find_preset("rq-3.9b").stage2).find("3903.9M"), std::string::npos);
}

// The independent PyTorch reference's state_dict (tiny random checkpoints) has exactly the keys
// and shapes stage2_tensor_specs lists, and its config.yaml reads back into the same config.
TEST(Stage2Config, MatchesTheTorchReferenceCheckpoints) {
  const std::string dir = std::string(HWAGA_SOURCE_DIR) + "/tests/parity/torch_ref";
  TempDir t;
  const std::string rq = (t.path / "rq").string(), md = (t.path / "md").string();
  const std::string dump = t.write("dump.py",
      "import json, sys\n"
      "sys.path.insert(0, sys.argv[1])\n"
      "import mindalle_ref, torch\n"
      "def shapes(sd): return {k: list(v.shape) for k, v in sd.items()}\n"
      "rq = torch.load(sys.argv[2] + '/model.pt', map_location='cpu')['state_dict']\n"
      "md = mindalle_ref.load_lightning_ckpt(sys.argv[3] + '/stage2_last.ckpt')['state_dict']\n"
      "json.dump({'rq': shapes(rq), 'md': shapes(md)}, open(sys.argv[4], 'w'))\n");
  const std::string out = (t.path / "shapes.json").string(), log = (t.path / "log.txt").string();
  const std::string cmd =
      "/usr/bin/python3 " + dir + "/make_stage2_checkpoint.py --kind rq --size tiny --seed 1 --out " + rq + " >" + log +
      " 2>&1 && /usr/bin/python3 " + dir + "/make_stage2_checkpoint.py --kind mindalle --size tiny --seed 2 --out " +
      md + " >>" + log + " 2>&1 && /usr/bin/python3 " + dump + " " + dir + " " + rq + " " + md + " " + out + " >>" +
      log + " 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    std::ifstream f(log);
    FAIL() << cmd << "\n" << std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  nlohmann::json shapes = nlohmann::json::parse(std::ifstream(out));

  Stage2Config crq = stage2_config_from_rq_yaml(rq + "/config.yaml");
  EXPECT_EQ(crq.rq.embed_dim, 64);
  EXPECT_EQ(crq.rq.head_dim(), 32);
  EXPECT_EQ(crq.rq.block_size_cond, 8);
  EXPECT_EQ(text_settings_from_rq_yaml(rq + "/config.yaml", crq).context_length, 8);
  Stage2Config cmd_ = stage2_config_from_mindalle_yaml(md + "/config.yaml");
  EXPECT_EQ(cmd_.gpt.ctx_len_img, 16);
  EXPECT_EQ(text_settings_from_mindalle_yaml(md + "/config.yaml", cmd_).context_length, 8);

  for (auto [key, cfg] : {std::pair<const char*, Stage2Config*>{"rq", &crq}, {"md", &cmd_}}) {
    const nlohmann::json& sd = shapes[key];
    auto specs = stage2_tensor_specs(*cfg);
    EXPECT_EQ(specs.size(), sd.size()) << key;
    int64_t n = 0;
    for (const TensorSpec& s : specs) {
      ASSERT_TRUE(sd.contains(s.name)) << key << ": reference has no " << s.name;
      EXPECT_EQ(sd[s.name].get<Shape>(), s.shape) << key << ": " << s.name;
      n += shape_numel(s.shape);
    }
    EXPECT_EQ(n, stage2_num_parameters(*cfg));
  }
}
