// A SentencePiece text tokenizer over Debian's libsentencepiece, for models that hwaga trains on
// its own captions (English and Korean). The model travels as the serialized ModelProto bytes
// (base64 in the JSON form), so nothing is read from disk at run time.
//
// Ids follow the TextTokenizer rule: the model's ids, truncated to context_length and
// right-padded with the model's pad id. `train` makes models with pad = 0 and unk = 1 and no
// BOS/EOS, like the released CharBPE vocabulary ([PAD] = 0, [UNK] = 1); a loaded model must
// define a pad piece.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "text/text_tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace hwaga {

struct SpmTrainOptions {
  int vocab_size = 1000;              // including pad and unk
  std::string model_type = "unigram";  // unigram | bpe | char | word
  double character_coverage = 1.0;    // 1.0 keeps every Hangul syllable seen in training
  int context_length = 64;
  int num_threads = 1;                // 1: the same sentences give the same model
};

class SpmTokenizer final : public TextTokenizer {
 public:
  // `model_proto` is a serialized sentencepiece ModelProto (the bytes of a .model file).
  SpmTokenizer(std::string model_proto, int context_length,
               const std::string& what = "SentencePiece model");
  ~SpmTokenizer() override;

  std::vector<int32_t> encode_unpadded(std::string_view prompt) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_pad = true) const override;
  std::string id_to_token(int32_t id) const override;
  std::string to_json() const override;  // {"type":"spm","context_length":N,"model":"<base64>"}
  std::string type() const override { return "spm"; }
  bool is_unknown(int32_t id) const;
  const std::string& model_proto() const { return proto_; }

  static std::unique_ptr<SpmTokenizer> from_json(const nlohmann::json& j, const std::string& what);
  // Trains a model in memory (no files). Throws hwaga::Error with sentencepiece's message when
  // training fails (e.g. too few sentences for the vocabulary size).
  static std::unique_ptr<SpmTokenizer> train(const std::vector<std::string>& sentences,
                                             const SpmTrainOptions& opt);

 private:
  std::string proto_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

std::string base64_encode(std::string_view bytes);
// Throws hwaga::Error naming `what` on a character outside the base64 alphabet or bad padding.
std::string base64_decode(std::string_view text, const std::string& what);

}  // namespace hwaga
