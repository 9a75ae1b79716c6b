// hwaga tokenize --vocab V --merges M --context N PROMPT...
// hwaga tokenize -m MODEL PROMPT...
//
// Prints the text tokenizer's ids for each prompt, one JSON array per line, exactly as the model
// sees them: truncated to the context length and right-padded with the pad id. A prompt that
// was truncated gets a warning on stderr. Invalid UTF-8 exits 1 naming the byte; bad options
// exit 2.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "command.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "text/charbpe.h"
#include "text/text_tokenizer.h"

namespace hwaga::cli::tokenize_cmd {  // a namespace per command (unity build)
namespace {

struct TokenizeOptions {
  std::string model;
  std::string vocab, merges;
  int context = 0;
  bool tokens = false;
  std::vector<std::string> prompts;
};

std::unique_ptr<TextTokenizer> load_tokenizer(const TokenizeOptions& opt) {
  if (!opt.model.empty()) {
    SafetensorsFile file = read_model_file(opt.model);
    auto it = file.metadata.find("tokenizer");
    if (it == file.metadata.end())
      fail("model file ", opt.model, ": no \"tokenizer\" in the metadata (an image-only model has no text tokenizer)");
    return text_tokenizer_from_json_text(it->second, "model file " + opt.model + " metadata \"tokenizer\"");
  }
  return charbpe_from_files(opt.vocab, opt.merges, opt.context);
}

int run_tokenize(const TokenizeOptions& opt) {
  bool files = !opt.vocab.empty() || !opt.merges.empty();
  if (opt.model.empty() == !files) {
    std::fprintf(stderr, "hwaga tokenize: give either -m MODEL or --vocab V --merges M --context N\n");
    return 2;
  }
  if (files && (opt.vocab.empty() || opt.merges.empty() || opt.context < 1)) {
    std::fprintf(stderr, "hwaga tokenize: --vocab, --merges and --context N (N >= 1) go together\n");
    return 2;
  }
  std::unique_ptr<TextTokenizer> tok = load_tokenizer(opt);
  for (size_t i = 0; i < opt.prompts.size(); ++i) {
    std::vector<int32_t> all = tok->encode_unpadded(opt.prompts[i]);
    if (all.size() > size_t(tok->context_length))
      std::fprintf(stderr, "hwaga tokenize: warning: prompt %zu has %zu tokens, truncated to the context of %d\n",
                   i + 1, all.size(), tok->context_length);
    std::vector<int32_t> ids = pad_and_truncate(std::move(all), tok->context_length, tok->pad_id);
    std::string line = "[";
    for (size_t k = 0; k < ids.size(); ++k) {
      if (k) line += ",";
      if (opt.tokens) {
        line += nlohmann::json(tok->id_to_token(ids[k])).dump();
      } else {
        line += std::to_string(ids[k]);
      }
    }
    line += "]\n";
    std::fputs(line.c_str(), stdout);
  }
  return 0;
}

Command reg("tokenize", "Print the text tokenizer's ids for prompts (one JSON array per line)", [](CLI::App& sub) {
  auto opt = std::make_shared<TokenizeOptions>();
  auto* m = sub.add_option("-m,--model", opt->model, "Model file whose metadata holds a text tokenizer");
  auto* v = sub.add_option("--vocab", opt->vocab, "CharBPE vocabulary JSON (bpe-16k-vocab.json)");
  auto* g = sub.add_option("--merges", opt->merges, "CharBPE merges (bpe-16k-merges.txt)");
  auto* c = sub.add_option("--context", opt->context, "Context length: 32 for RQ CC3M, 64 for minDALL-E")
                ->check(CLI::Range(1, 1 << 20));
  m->excludes(v)->excludes(g)->excludes(c);
  v->needs(g)->needs(c);
  g->needs(v);
  sub.add_flag("--tokens", opt->tokens, "Print token strings instead of ids");
  sub.add_option("prompts", opt->prompts, "Prompts (UTF-8)")->required();
  return [opt] { return run_tokenize(*opt); };
});

}  // namespace
}  // namespace hwaga::cli::tokenize_cmd
