// The text tokenizer that a text-to-image model carries in its file's metadata ("tokenizer").
// Two kinds: "charbpe" (the released models' CharBPE, charbpe.h) and "spm" (a SentencePiece
// model that hwaga trains on its own captions, spm_tokenizer.h).
//
// Every kind follows one padding rule: the prompt's ids are truncated to context_length and
// right-padded with the pad id to exactly context_length. No BOS/EOS is added.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace hwaga {

class TextTokenizer {
 public:
  virtual ~TextTokenizer() = default;

  // Exactly context_length ids: truncated, then right-padded with pad_id.
  // Throws hwaga::Error "prompt is not valid UTF-8 at byte N" on bad input.
  virtual std::vector<int32_t> encode(std::string_view prompt) const;
  // All ids of the prompt, before truncation and padding (its size tells whether `encode`
  // truncated).
  virtual std::vector<int32_t> encode_unpadded(std::string_view prompt) const = 0;
  // Text for ids, for debugging (pads included as their token text unless skip_pad).
  virtual std::string decode(std::span<const int32_t> ids, bool skip_pad = true) const = 0;
  // The token text of one id ("a</w>", "[PAD]", "▁dog").
  virtual std::string id_to_token(int32_t id) const = 0;
  // Self-contained JSON text with a "type" field; text_tokenizer_from_json reads it back.
  virtual std::string to_json() const = 0;
  virtual std::string type() const = 0;

  int context_length = 0;  // ids per prompt after padding (32 RQ CC3M, 64 minDALL-E)
  int vocab_size = 0;      // ids are 0..vocab_size-1
  int32_t pad_id = 0;      // the padding id ([PAD] = 0 in the released vocabulary)
};

// Truncates `ids` to context_length and right-pads with pad_id.
std::vector<int32_t> pad_and_truncate(std::vector<int32_t> ids, int context_length, int32_t pad_id);

// Reads what to_json() wrote. `what` names the source in errors (e.g. "model.safetensors
// metadata \"tokenizer\"").
std::unique_ptr<TextTokenizer> text_tokenizer_from_json(const nlohmann::json& j,
                                                        const std::string& what = "tokenizer JSON");
std::unique_ptr<TextTokenizer> text_tokenizer_from_json_text(std::string_view text,
                                                             const std::string& what = "tokenizer JSON");

}  // namespace hwaga
