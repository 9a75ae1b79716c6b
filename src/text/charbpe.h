// CharBPE: the text tokenizer of the released RQ-Transformer T2I models and minDALL-E, i.e. the
// HuggingFace `tokenizers` CharBPETokenizer(vocab, merges, unk_token="[UNK]", lowercase=True)
// with "[PAD]" registered as a special token, right padding and truncation (architecture.md §4.3).
//
//   prompt ──split_special_tokens──> "[PAD]" -> pad id, "[UNK]" -> unk id (raw text, before
//          normalisation), other pieces ──bert_normalize(lowercase)──> ──bert_pre_tokenize──>
//          words ──bpe_word──> ids
//
// BPE of one word: each char is looked up in the vocabulary, the last one with the end-of-word
// suffix "</w>" appended; a char missing from the vocabulary becomes one [UNK] (no fusing).
// Then merges are applied lowest rank first (leftmost first among equal ranks), re-checking
// each queued pair, exactly as the library's Word::merge_all does without dropout.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "text/text_tokenizer.h"

namespace hwaga {

struct CharBpeOptions {
  int context_length = 64;
  bool lowercase = true;            // the Lowercase normalizer after BertNormalizer
  std::string unk_token = "[UNK]";  // special, matched on raw text; must be in the vocabulary
  std::string pad_token = "[PAD]";  // special, matched on raw text; must be in the vocabulary
  std::string end_of_word_suffix = "</w>";
};

// Where the vocabulary and merges came from, for error messages.
struct CharBpeSource {
  std::string vocab_what = "CharBPE vocabulary";
  std::string merges_what = "CharBPE merges";
  std::vector<int> merge_lines;  // file line of each merge (1-based); empty: "merge N" is used
};

class CharBpeTokenizer final : public TextTokenizer {
 public:
  // vocab[id] is the token text of id; merges are (left, right) in rank order. Throws
  // hwaga::Error for duplicate tokens, a missing [UNK]/[PAD], or a merge whose parts or result
  // are not in the vocabulary.
  CharBpeTokenizer(std::vector<std::string> vocab,
                   std::vector<std::pair<std::string, std::string>> merges,
                   const CharBpeOptions& opt, const CharBpeSource& src = {});

  std::vector<int32_t> encode_unpadded(std::string_view prompt) const override;
  // BPEDecoder: tokens joined, the end-of-word suffix becomes a space (none after the last).
  std::string decode(std::span<const int32_t> ids, bool skip_pad = true) const override;
  std::string id_to_token(int32_t id) const override;
  std::string to_json() const override;
  nlohmann::json to_json_value() const;
  std::string type() const override { return "charbpe"; }

  static std::unique_ptr<CharBpeTokenizer> from_json(const nlohmann::json& j, const std::string& what);

  // The ids of one pre-tokenized word (normalized text, no whitespace).
  std::vector<int32_t> bpe_word(std::u32string_view word) const;
  int32_t unk_id() const { return unk_id_; }
  const CharBpeOptions& options() const { return opt_; }
  const std::vector<std::string>& vocab() const { return vocab_; }
  size_t num_merges() const { return merges_.size(); }

 private:
  CharBpeOptions opt_;
  std::vector<std::string> vocab_;                           // id -> token
  std::vector<std::pair<std::string, std::string>> merges_;  // rank -> (left, right)
  std::unordered_map<std::string, int32_t> token_to_id_;
  struct MergeTarget {
    uint32_t rank;
    int32_t new_id;
  };
  std::unordered_map<uint64_t, MergeTarget> merge_map_;  // (left id << 32 | right id) -> target
  std::vector<std::u32string> specials_;                 // pad token, unk token
  std::vector<int32_t> special_ids_;
  int32_t unk_id_ = 1;
};

// CharBPETokenizer.from_file(vocab.json, merges.txt) with the released models' settings.
// Errors name the file: bad JSON, a non-object, a non-integer or negative id, two tokens with one
// id, ids that skip a number, a merges line that is not "A B", a header other than "#version...",
// a merge part or result missing from the vocabulary.
std::unique_ptr<CharBpeTokenizer> charbpe_from_files(const std::string& vocab_path,
                                                     const std::string& merges_path,
                                                     int context_length);

}  // namespace hwaga
