// RQ-VAE and VQGAN on the CPU against the independent PyTorch reference
// (tests/parity/torch_ref/*.py) on tiny random checkpoints, plus the config/file checks.
//
// The fixture runs make_checkpoint.py (--safetensors: the hwaga model file is written by the
// Python script itself, so this test depends neither on the converter nor on the checkpoint
// reader) and run_reference.py once per configuration. ctest runs every test case in its own
// process, so the results are cached in the build tree under a name that includes a hash of
// the Python sources (edit a script and the fixtures are made again).
//
// Tolerances: codes must be identical (argmin over well separated f32 distances). z_e and
// pixels differ from PyTorch only by f32 summation order in convs/GEMMs: about 1e-7 relative per
// op, compounded over ~40 layers and re-scaled by each GroupNorm, which lands around 1e-6 on
// O(1) activations. 1e-4 absolute on values in about [-2,2] (z_e: 1e-4 on O(0.3) values) is
// far above that and far below any real mistake (a wrong pad, order or layout moves values by
// O(0.1)).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "nn/image_tokenizer.h"
#include "nn/stage1_config.h"
#include "rq/rqvae.h"
#include "vqgan/vqgan.h"
#include "test_util.h"

using namespace hwaga;
namespace fs = std::filesystem;

namespace {

const std::string kRef = std::string(HWAGA_SOURCE_DIR) + "/tests/parity/torch_ref/";

// ---- a minimal safetensors reader (independent of src/io) ----
SafetensorsFile read_st(const std::string& path) {
  std::string bytes = test::read_all(path);
  auto buf = std::make_shared<Tensor>(Tensor::empty({int64_t(bytes.size())}, DType::U8));
  std::memcpy(buf->data(), bytes.data(), bytes.size());
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  nlohmann::json h = nlohmann::json::parse(bytes.substr(8, n));
  SafetensorsFile f;
  f.path = path;
  for (auto& [k, v] : h["__metadata__"].items()) f.metadata[k] = v.get<std::string>();
  char* base = static_cast<char*>(buf->data()) + 8 + n;
  for (auto& [k, v] : h.items()) {
    if (k == "__metadata__") continue;
    Shape s = v["shape"].get<Shape>();
    f.tensors[k] = Tensor::wrap(base + v["data_offsets"][0].get<size_t>(), s, DType::F32, buf);
  }
  return f;
}

// ---- minimal .npy I/O (v1.0, little endian, C order) ----
void write_npy(const std::string& path, const Tensor& t) {
  std::string shape = "(";
  for (int64_t d : t.shape()) shape += std::to_string(d) + ", ";
  shape += ")";
  std::string hdr = std::string("{'descr': '") + (t.dtype() == DType::F32 ? "<f4" : "<i4") +
                    "', 'fortran_order': False, 'shape': " + shape + ", }";
  while ((10 + hdr.size() + 1) % 64) hdr += ' ';
  hdr += '\n';
  std::ofstream f(path, std::ios::binary);
  uint16_t len = uint16_t(hdr.size());
  f.write("\x93NUMPY\x01\x00", 8);
  f.write(reinterpret_cast<const char*>(&len), 2);
  f << hdr;
  f.write(static_cast<const char*>(t.data()), std::streamsize(t.nbytes()));
}

struct Case {
  std::string name, kind, variant;
  int n_embed;
};

struct Fixture {
  Case c;
  std::string dir;
  Tensor images;    // f32 [2,3,32,32], integer pixels mapped by x/127.5-1
  Tensor ref_codes, ref_ze, codes_in, ref_pixels;
};

std::string fixture_root() {
  return test::fixture_cache_dir("stage1",
                                 {kRef + "taming_ref.py", kRef + "make_checkpoint.py", kRef + "run_reference.py"});
}

class Stage1Models : public ::testing::TestWithParam<Case> {
 protected:
  // Builds the checkpoint and the reference outputs for this case (once per build tree).
  Fixture fixture() {
    const Case& c = GetParam();
    Fixture f;
    f.c = c;
    f.dir = fixture_root() + "/" + c.name;
    // Two pictures of integer pixel values, as PNG inputs would give; random codes to decode
    // (3 pictures: a batch that is not a multiple of anything).
    std::mt19937 rng(42);
    f.images = Tensor::empty({2, 3, 32, 32});
    for (int64_t i = 0; i < f.images.numel(); ++i) f.images.f32()[i] = float(rng() % 256) / 127.5f - 1.0f;
    const int64_t h = c.kind == "rq-vae" ? 8 : 16, D = c.kind == "rq-vae" ? 4 : 1;
    f.codes_in = Tensor::empty({3, h, h, D}, DType::I32);
    for (int64_t i = 0; i < f.codes_in.numel(); ++i) f.codes_in.ptr<int32_t>()[i] = int32_t(rng() % c.n_embed);
    test::make_fixture_once(f.dir, [&](const std::string& tmp) {
      const std::string py = "/usr/bin/python3 " + kRef;
      test::run_quiet(py + "make_checkpoint.py --kind " + c.kind + " --size tiny --variant " + c.variant +
                      " --n-embed " + std::to_string(c.n_embed) + " --seed 3 --safetensors --out " + tmp);
      if (HasFatalFailure()) return;
      write_npy(tmp + "/images.npy", f.images);
      write_npy(tmp + "/codes_in.npy", f.codes_in);
      test::run_quiet(py + "run_reference.py encode --ckpt " + tmp + " --kind " + c.kind + " --images-npy " + tmp +
                      "/images.npy --out " + tmp + "/codes.npy --dump-ze " + tmp + "/ze.npy --decode-codes " + tmp +
                      "/codes_in.npy --decode-out " + tmp + "/pixels.npy");
    });
    if (HasFatalFailure()) return f;
    f.ref_codes = test::read_npy_ref(f.dir + "/codes.npy");
    f.ref_ze = test::read_npy_ref(f.dir + "/ze.npy");
    f.ref_pixels = test::read_npy_ref(f.dir + "/pixels.npy");
    return f;
  }

  std::unique_ptr<Backend> be = make_cpu_backend();
};

double max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  double m = 0;
  for (int64_t i = 0; i < std::min(a.numel(), b.numel()); ++i)
    m = std::max(m, double(std::fabs(a.f32()[i] - b.f32()[i])));
  return m;
}

TEST_P(Stage1Models, EncodeMatchesReference) {
  Fixture f = fixture();
  if (HasFatalFailure()) return;
  SafetensorsFile file = read_st(f.dir + "/model.safetensors");
  auto tok = load_image_tokenizer(file, *be);
  EXPECT_EQ(tok->kind(), f.c.kind);
  Tensor codes = tok->encode(f.images);
  ASSERT_EQ(codes.shape(), f.ref_codes.shape());
  ASSERT_EQ(codes.shape(), (Shape{2, tok->code_shape()[0], tok->code_shape()[1], tok->code_shape()[2]}));
  int64_t mismatches = 0;
  for (int64_t i = 0; i < codes.numel(); ++i) mismatches += codes.ptr<int32_t>()[i] != f.ref_codes.ptr<int32_t>()[i];
  EXPECT_EQ(mismatches, 0) << "of " << codes.numel() << " codes";
  // Codes spread over the codebook (a degenerate fixture would test little).
  std::set<int32_t> used(codes.ptr<int32_t>(), codes.ptr<int32_t>() + codes.numel());
  EXPECT_GT(used.size(), size_t(f.c.n_embed / 4));

  Tensor ze = f.c.kind == "rq-vae" ? static_cast<RQVAE&>(*tok).encode_latent(f.images)
                                   : static_cast<VQGAN&>(*tok).encode_latent(f.images);
  const double d = max_abs_diff(ze, f.ref_ze);
  EXPECT_LT(d, 1e-4) << "z_e differs from the reference";
  std::printf("[ %s ] z_e max |diff| = %.3g\n", f.c.name.c_str(), d);
}

TEST_P(Stage1Models, DecodeMatchesReference) {
  Fixture f = fixture();
  if (HasFatalFailure()) return;
  SafetensorsFile file = read_st(f.dir + "/model.safetensors");
  auto tok = load_image_tokenizer(file, *be);
  Tensor px = tok->decode(f.codes_in);
  ASSERT_EQ(px.shape(), (Shape{3, 3, 32, 32}));
  const double d = max_abs_diff(px, f.ref_pixels);
  EXPECT_LT(d, 1e-4) << "decoded pixels differ from the reference";
  std::printf("[ %s ] pixels max |diff| = %.3g\n", f.c.name.c_str(), d);
}

TEST_P(Stage1Models, ConfigYamlSpecsAndInfo) {
  Fixture f = fixture();
  if (HasFatalFailure()) return;
  SafetensorsFile file = read_st(f.dir + "/model.safetensors");
  // The released-layout YAML gives the same config as the one stored in the file.
  Stage1Config from_yaml = stage1_config_from_yaml(f.dir + "/config.yaml", f.c.kind);
  Stage1Config auto_yaml = stage1_config_from_yaml(f.dir + "/config.yaml", "auto");
  nlohmann::json stored = nlohmann::json::parse(file.metadata.at("config"))["stage1"];
  EXPECT_EQ(stage1_config_to_json(from_yaml), stored);
  EXPECT_EQ(stage1_config_to_json(auto_yaml), stored);
  // The specs name exactly the tensors the script kept, and the parameter count adds up.
  std::vector<TensorSpec> specs = stage1_tensor_specs(from_yaml);
  EXPECT_EQ(specs.size(), file.tensors.size());
  int64_t n = 0;
  for (const TensorSpec& s : specs) {
    auto it = file.tensors.find("stage1." + s.name);
    ASSERT_NE(it, file.tensors.end()) << s.name;
    EXPECT_EQ(it->second.shape(), s.shape) << s.name;
    n += shape_numel(s.shape);
  }
  auto tok = load_image_tokenizer(file, *be);
  EXPECT_EQ(tok->num_parameters(), n);
  EXPECT_EQ(tok->codebook_size(), f.c.n_embed);
  EXPECT_EQ(tok->resolution(), 32);
  const std::string info = tok->describe();
  EXPECT_NE(info.find(f.c.kind == "rq-vae" ? "RQ-VAE" : "VQGAN"), std::string::npos) << info;
  EXPECT_NE(info.find("K = " + std::to_string(f.c.n_embed)), std::string::npos) << info;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST_P(Stage1Models, BadFilesAndInputsGiveClearErrors) {
  Fixture f = fixture();
  if (HasFatalFailure()) return;
  const SafetensorsFile good = read_st(f.dir + "/model.safetensors");
  const std::string some = "stage1.decoder.up.0.block.1.conv2.weight";

  {  // wrong shape: names the tensor and both shapes
    SafetensorsFile bad = good;
    bad.tensors[some] = Tensor::zeros({32, 32, 1, 1});
    std::string e = error_of([&] { load_image_tokenizer(bad, *be); });
    EXPECT_NE(e.find(some), std::string::npos) << e;
    EXPECT_NE(e.find("[32, 32, 1, 1]"), std::string::npos) << e;
    EXPECT_NE(e.find("[32, 32, 3, 3]"), std::string::npos) << e;
  }
  {  // missing tensor
    SafetensorsFile bad = good;
    bad.tensors.erase(some);
    std::string e = error_of([&] { load_image_tokenizer(bad, *be); });
    EXPECT_NE(e.find("missing tensor '" + some + "'"), std::string::npos) << e;
    EXPECT_NE(e.find(good.path), std::string::npos) << e;
  }
  {  // codebook with the wrong row count (RQ needs K+1 rows)
    SafetensorsFile bad = good;
    const std::string cb = f.c.kind == "rq-vae" ? "stage1.quantizer.codebooks.0.weight" : "stage1.quantize.embedding.weight";
    const int64_t rows = f.c.kind == "rq-vae" ? f.c.n_embed : f.c.n_embed + 1;
    bad.tensors[cb] = Tensor::zeros({rows, 32});
    std::string e = error_of([&] { load_image_tokenizer(bad, *be); });
    EXPECT_NE(e.find(cb), std::string::npos) << e;
  }
  // bad config values: each error names the field
  const nlohmann::json cfg = nlohmann::json::parse(good.metadata.at("config"));
  auto with = [&](const char* key, nlohmann::json v) {
    SafetensorsFile bad = good;
    nlohmann::json c = cfg;
    if (v.is_null()) c["stage1"].erase(key);
    else c["stage1"][key] = v;
    bad.metadata["config"] = c.dump();
    return error_of([&] { load_image_tokenizer(bad, *be); });
  };
  EXPECT_NE(with("type", "vqvae").find("type"), std::string::npos);
  EXPECT_NE(with("ch_mult", nlohmann::json::array()).find("ch_mult"), std::string::npos);
  EXPECT_NE(with("ch", -32).find("ch"), std::string::npos);
  EXPECT_NE(with("n_embed", 0).find("n_embed"), std::string::npos);
  EXPECT_NE(with("attn_resolutions", {7}).find("attn_resolutions"), std::string::npos);
  EXPECT_NE(with("resolution", 36).find("resolution"), std::string::npos);
  EXPECT_NE(with("code_shape", {8, 8}).find("code_shape"), std::string::npos);
  EXPECT_NE(with("embed_dim", nullptr).find("missing field \"embed_dim\""), std::string::npos);
  EXPECT_NE(with("z_channels", "32").find("z_channels"), std::string::npos);
  EXPECT_NE(with("bogus", 1).find("unknown field \"bogus\""), std::string::npos);
  {
    SafetensorsFile bad = good;
    bad.metadata["config"] = "{not json";
    EXPECT_NE(error_of([&] { load_image_tokenizer(bad, *be); }).find("not valid JSON"), std::string::npos);
    bad.metadata.erase("config");
    EXPECT_NE(error_of([&] { load_image_tokenizer(bad, *be); }).find("config"), std::string::npos);
  }

  auto tok = load_image_tokenizer(good, *be);
  Tensor codes = f.codes_in.clone();
  codes.ptr<int32_t>()[5] = f.c.n_embed;  // K is out of range (the RQ padding row is not a code)
  std::string e = error_of([&] { tok->decode(codes); });
  EXPECT_NE(e.find("code " + std::to_string(f.c.n_embed)), std::string::npos) << e;
  EXPECT_NE(e.find("[0, " + std::to_string(f.c.n_embed) + ")"), std::string::npos) << e;
  codes.ptr<int32_t>()[5] = -1;
  EXPECT_THROW(tok->decode(codes), Error);
  e = error_of([&] { tok->decode(Tensor::zeros({1, 4, 4, 4}, DType::I32)); });
  EXPECT_NE(e.find("expected int32 codes"), std::string::npos) << e;
  e = error_of([&] { tok->encode(Tensor::zeros({1, 3, 16, 16})); });
  EXPECT_NE(e.find("[B, 3, 32, 32]"), std::string::npos) << e;
}

INSTANTIATE_TEST_SUITE_P(Tiny, Stage1Models,
                         ::testing::Values(Case{"rq_attn8", "rq-vae", "attn8", 64},
                                           Case{"rq_attn16", "rq-vae", "attn16", 48},
                                           Case{"vqgan", "vqgan", "attn8", 64}),
                         [](const auto& info) { return info.param.name; });

// ---- configs alone (no Python) ----

std::string write_tmp(const std::string& text) {
  char tmpl[] = "/tmp/hwaga_yaml_XXXXXX";
  int fd = mkstemp(tmpl);
  EXPECT_GE(fd, 0);
  FILE* fp = fdopen(fd, "w");
  std::fputs(text.c_str(), fp);
  std::fclose(fp);
  return tmpl;
}

const char* kRqYaml = R"(arch:
  type: rq-vae
  code_hier: 1
  hparams: {bottleneck_type: rq, embed_dim: 256, n_embed: N_EMBED, latent_shape: [8, 8, 256], code_shape: [8, 8, 4],
            shared_codebook: true, decay: 0.99, restart_unused_codes: true, loss_type: mse, latent_loss_weight: 0.25}
  ddconfig: {double_z: false, z_channels: 256, resolution: 256, in_channels: 3, out_ch: 3, ch: 128,
             ch_mult: [1, 1, 2, 2, 4, 4], num_res_blocks: 2, attn_resolutions: [ATTN], dropout: 0.0}
  checkpointing: true
)";

const char* kDalleYaml = R"(stage1:
  type: vqgan
  embed_dim: 256
  n_embed: 16384
  hparams: {double_z: false, z_channels: 256, resolution: 256, in_channels: 3, out_ch: 3, ch: 128,
            ch_mult: [1, 1, 2, 2, 4], num_res_blocks: 2, attn_resolutions: [16], pdrop: 0.0}
stage2:
  type: transformer1d
  vocab_size_txt: 16384
  vocab_size_img: 16384
  hparams: {embed_dim: 1536, n_layers: 42, n_heads: 24, n_dense_layers: 42, ctx_len_img: 256, ctx_len_txt: 64}
)";

std::string subst(std::string s, const std::string& key, const std::string& v) {
  return s.replace(s.find(key), key.size(), v);
}

TEST(Stage1Config, ReleasedShapesAndParameterCounts) {
  // Parameter counts from architecture.md §1.4 and §4.1 (computed from the released state_dicts).
  for (const char* attn : {"8", "16"}) {
    std::string p = write_tmp(subst(subst(kRqYaml, "N_EMBED", "16384"), "ATTN", attn));
    Stage1Config c = stage1_config_from_yaml(p, "rq-vae");
    fs::remove(p);
    int64_t convs = 0, codebook = 0;
    for (const TensorSpec& s : stage1_tensor_specs(c))
      (s.name.rfind("quantizer.", 0) == 0 ? codebook : convs) += shape_numel(s.shape);
    EXPECT_NEAR(double(convs) / 1e6, 100.21, 0.005) << "attn " << attn;
    EXPECT_EQ(codebook, 16385 * 256);
    EXPECT_EQ(c.code_shape, (std::vector<int>{8, 8, 4}));
  }
  std::string p = write_tmp(subst(subst(kRqYaml, "N_EMBED", "2048"), "ATTN", "16"));
  Stage1Config ffhq = stage1_config_from_yaml(p, "auto");
  fs::remove(p);
  EXPECT_EQ(ffhq.n_embed, 2048);
  bool has_up4_attn = false, has_up5_attn = false;
  for (const TensorSpec& s : stage1_tensor_specs(ffhq)) {
    has_up4_attn |= s.name == "decoder.up.4.attn.2.q.weight";
    has_up5_attn |= s.name.rfind("decoder.up.5.attn", 0) == 0;
    if (s.name == "quantizer.codebooks.0.weight") EXPECT_EQ(s.shape, (Shape{2049, 256}));
  }
  EXPECT_TRUE(has_up4_attn);
  EXPECT_FALSE(has_up5_attn);

  p = write_tmp(kDalleYaml);
  Stage1Config vq = stage1_config_from_yaml(p, "vqgan");
  fs::remove(p);
  EXPECT_EQ(vq.code_shape, (std::vector<int>{16, 16, 1}));
  int64_t total = 0, encdec = 0;
  for (const TensorSpec& s : stage1_tensor_specs(vq)) {
    total += shape_numel(s.shape);
    if (s.name.rfind("encoder.", 0) == 0 || s.name.rfind("decoder.", 0) == 0) encdec += shape_numel(s.shape);
  }
  EXPECT_NEAR(double(encdec) / 1e6, 71.75, 0.005);
  EXPECT_NEAR(double(total) / 1e6, 76.07, 0.005);
  // JSON round trip
  EXPECT_EQ(stage1_config_to_json(stage1_config_from_json(stage1_config_to_json(vq), "x")), stage1_config_to_json(vq));
}

TEST(Stage1Config, YamlErrorsNameFileAndKey) {
  auto err = [](const std::string& text, const std::string& kind) {
    std::string p = write_tmp(text);
    std::string e = error_of([&] { stage1_config_from_yaml(p, kind); });
    fs::remove(p);
    return std::make_pair(e, p);
  };
  std::string rq = subst(subst(kRqYaml, "N_EMBED", "16384"), "ATTN", "8");
  auto [e1, p1] = err(subst(rq, "n_embed: 16384, ", ""), "rq-vae");
  EXPECT_NE(e1.find(p1), std::string::npos) << e1;
  EXPECT_NE(e1.find("arch.hparams.n_embed"), std::string::npos) << e1;
  auto [e2, p2] = err(subst(rq, "ch: 128", "ch: many"), "rq-vae");
  EXPECT_NE(e2.find("arch.ddconfig.ch'"), std::string::npos) << e2;
  auto [e3, p3] = err(subst(rq, "attn_resolutions: [8]", "attn_resolutions: [12]"), "rq-vae");
  EXPECT_NE(e3.find("attn_resolutions"), std::string::npos) << e3;
  auto [e4, p4] = err(subst(rq, "code_shape: [8, 8, 4]", "code_shape: [16, 16, 4]"), "rq-vae");
  EXPECT_NE(e4.find("code_shape"), std::string::npos) << e4;
  auto [e5, p5] = err(rq, "vqgan");
  EXPECT_NE(e5.find("stage1"), std::string::npos) << e5;
  auto [e6, p6] = err(subst(rq, "bottleneck_type: rq", "bottleneck_type: vq"), "rq-vae");
  EXPECT_NE(e6.find("bottleneck_type"), std::string::npos) << e6;
  auto [e7, p7] = err(subst(kDalleYaml, "resolution: 256", "resolution: 100"), "vqgan");  // 100 % 2^4 != 0
  EXPECT_NE(e7.find("resolution"), std::string::npos) << e7;
  EXPECT_NE(e7.find(p7), std::string::npos) << e7;
  auto [e8, p8] = err("{arch: [", "auto");
  EXPECT_NE(e8.find("not valid YAML"), std::string::npos) << e8;
  EXPECT_NE(error_of([] { stage1_config_from_yaml("/nonexistent/config.yaml", "auto"); }).find("/nonexistent/config.yaml"),
            std::string::npos);
}

}  // namespace
