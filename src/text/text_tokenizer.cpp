// The common text-tokenizer interface and the JSON form that travels in a model file.
#include "text/text_tokenizer.h"

#include "core/error.h"
#include "text/charbpe.h"
#include "text/spm_tokenizer.h"

namespace hwaga {

std::vector<int32_t> pad_and_truncate(std::vector<int32_t> ids, int context_length, int32_t pad_id) {
  HWAGA_CHECK(context_length >= 1, "context_length must be >= 1, got ", context_length);
  ids.resize(size_t(context_length), pad_id);
  return ids;
}

std::vector<int32_t> TextTokenizer::encode(std::string_view prompt) const {
  return pad_and_truncate(encode_unpadded(prompt), context_length, pad_id);
}

std::unique_ptr<TextTokenizer> text_tokenizer_from_json(const nlohmann::json& j, const std::string& what) {
  if (!j.is_object()) fail(what, ": expected a JSON object with a \"type\" field, found ", j.type_name());
  if (!j.contains("type") || !j.at("type").is_string())
    fail(what, ": missing the string field \"type\" (\"charbpe\" or \"spm\")");
  const std::string type = j.at("type").get<std::string>();
  if (type == "charbpe") return CharBpeTokenizer::from_json(j, what);
  if (type == "spm") return SpmTokenizer::from_json(j, what);
  fail(what, ": unknown tokenizer type \"", type, "\", expected \"charbpe\" or \"spm\"");
}

std::unique_ptr<TextTokenizer> text_tokenizer_from_json_text(std::string_view text, const std::string& what) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(what, ": not valid JSON (", e.what(), ")");
  }
  return text_tokenizer_from_json(j, what);
}

}  // namespace hwaga
