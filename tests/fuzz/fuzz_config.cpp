// Fuzz target: the text configs a model file or a released checkpoint folder carries. The first
// byte picks the reader, the rest is the text:
//
//   'a' 'r' 'v'  stage1_config_from_yaml(file, "auto" / "rq-vae" / "vqgan")
//   'R'          stage2_config_from_rq_yaml + text_settings_from_rq_yaml
//   'M'          stage2_config_from_mindalle_yaml + text_settings_from_mindalle_yaml
//   '1'          stage1_config_from_json (model file metadata "config" -> "stage1")
//   '2'          stage2_config_from_json (model file metadata "config" -> "stage2")
//   'T'          text_tokenizer_from_json_text (model file metadata "tokenizer")
//   other bytes  the reader at index byte % 8 of this list, so every input means something.
//
// The YAML readers take a path: the text is written to one temporary file per process
// ($TMPDIR or /tmp), removed at exit. Every reader must return or throw hwaga::Error (anything
// else, e.g. a YAML::Exception or nlohmann::json exception escaping, aborts). On success:
//   - a stage-1/stage-2 config survives to_json -> from_json -> to_json unchanged, and every
//     tensor spec it implies has dims >= 1 (stage 2: only when the layer count is small enough
//     to list; stage2_config_from_json puts no upper bound on the layer counts);
//   - a tokenizer survives to_json -> text_tokenizer_from_json_text -> to_json unchanged, and
//     encodes a fixed prompt to exactly context_length ids in [0, vocab_size), which decode.
// A JSON text that nlohmann::json cannot parse is skipped for '1'/'2' (hwaga parses the
// metadata text before these readers see it); 'T' takes the raw text.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "nn/stage1_config.h"
#include "text/text_tokenizer.h"
#include "transformer/stage2_config.h"

namespace {

using namespace hwaga;

[[noreturn]] void bad(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "fuzz_config: %s %s\n", what, detail.c_str());
  std::abort();
}

struct TempYaml {
  std::string path;
  TempYaml() {
    const char* dir = std::getenv("TMPDIR");
    std::string tmpl = std::string(dir && *dir ? dir : "/tmp") + "/hwaga_fuzz_config_XXXXXX";
    int fd = mkstemp(tmpl.data());
    if (fd < 0) bad("cannot create a temporary file", tmpl);
    ::close(fd);
    path = tmpl;
  }
  ~TempYaml() { std::remove(path.c_str()); }
  const std::string& write(std::string_view text) const {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) bad("cannot write", path);
    if (!text.empty() && std::fwrite(text.data(), 1, text.size(), f) != text.size()) bad("short write", path);
    std::fclose(f);
    return path;
  }
};

const TempYaml& temp_yaml() {
  static TempYaml t;
  return t;
}

void check_specs(const std::vector<TensorSpec>& specs, const char* which) {
  for (const TensorSpec& s : specs)
    for (int64_t d : s.shape)
      if (d < 1) bad(which, "tensor spec with a dim < 1: " + s.name);
}

void check_stage1(const Stage1Config& c) {
  nlohmann::json j = stage1_config_to_json(c);
  Stage1Config back;
  try {
    back = stage1_config_from_json(j, "round trip");
  } catch (const Error& e) {
    bad("stage1 config does not read back:", e.what());
  }
  if (stage1_config_to_json(back) != j) bad("stage1 config changes in a JSON round trip:", j.dump());
  check_specs(stage1_tensor_specs(c), "stage1");
  (void)stage1_codebook_name(c);
  if (stage1_codebook_rows(c) < 1) bad("stage1 codebook without rows");
}

void check_stage2(const Stage2Config& c) {
  nlohmann::json j = stage2_config_to_json(c);
  Stage2Config back;
  try {
    back = stage2_config_from_json(j, "round trip");
  } catch (const Error& e) {
    bad("stage2 config does not read back:", e.what());
  }
  if (stage2_config_to_json(back) != j) bad("stage2 config changes in a JSON round trip:", j.dump());
  int64_t layers = c.is_rq() ? int64_t(c.rq.n_layer_body) + c.rq.n_layer_head : c.gpt.n_layers;
  if (layers <= 4096) {  // listing 2^31 layers' specs would only measure the memory limit
    check_specs(stage2_tensor_specs(c), "stage2");
    (void)describe_stage2_config(c);
  }
  (void)c.text_length();
  (void)c.text_vocab_size();
}

void check_tokenizer(const TextTokenizer& tok) {
  std::string j = tok.to_json();
  std::unique_ptr<TextTokenizer> back;
  try {
    back = text_tokenizer_from_json_text(j, "round trip");
  } catch (const Error& e) {
    bad("tokenizer does not read back:", e.what());
  }
  if (back->to_json() != j) bad("tokenizer changes in a JSON round trip");
  if (tok.context_length > 4096) return;  // the padding alone would dominate the run time
  std::vector<int32_t> ids = tok.encode("a photo of a cat [PAD] sitting on a mat, 1024px! \xea\xb3\xa0\xec\x96\x91\xec\x9d\xb4");
  if (ids.size() != size_t(tok.context_length)) bad("encode gave the wrong number of ids");
  for (int32_t id : ids)
    if (id < 0 || id >= tok.vocab_size) bad("encode gave an id outside the vocabulary");
  (void)tok.decode(ids, true);
  (void)tok.decode(ids, false);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > (1 << 16)) return 0;
  static const char kModes[] = "arvRM12T";
  char mode = char(data[0]);
  if (std::string_view(kModes).find(mode) == std::string_view::npos) mode = kModes[data[0] % 8];
  std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);

  try {
    switch (mode) {
      case 'a': case 'r': case 'v': {
        const char* kind = mode == 'a' ? "auto" : mode == 'r' ? "rq-vae" : "vqgan";
        check_stage1(stage1_config_from_yaml(temp_yaml().write(text), kind));
        break;
      }
      case 'R': case 'M': {
        const std::string& p = temp_yaml().write(text);
        Stage2Config c = mode == 'R' ? stage2_config_from_rq_yaml(p) : stage2_config_from_mindalle_yaml(p);
        check_stage2(c);
        TextSettings ts = mode == 'R' ? text_settings_from_rq_yaml(p, c) : text_settings_from_mindalle_yaml(p, c);
        if (ts.context_length < 0) bad("negative context length");
        break;
      }
      case '1': case '2': {
        nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded()) return 0;
        if (mode == '1') check_stage1(stage1_config_from_json(j, "fuzz.json: stage1"));
        else check_stage2(stage2_config_from_json(j, "fuzz.json: stage2"));
        break;
      }
      default:
        check_tokenizer(*text_tokenizer_from_json_text(text, "fuzz.json: tokenizer"));
    }
  } catch (const Error&) {
  }
  return 0;
}
