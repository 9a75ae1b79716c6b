// The text front end of the released models' CharBPE tokenizer, step by step as the HuggingFace
// `tokenizers` library (Rust core) does it (architecture.md §4.3):
//
//   raw UTF-8 ──utf8_decode──> code points
//     ──split_special_tokens──> pieces: special ("[PAD]", "[UNK]": matched on the RAW text) or plain
//     plain pieces ──bert_normalize──> BertNormalizer(clean_text, handle_chinese_chars,
//                                        strip_accents = lowercase = false) then Lowercase
//                 ──bert_pre_tokenize──> words: split on whitespace (removed) and on every
//                                        punctuation char (kept as its own word)
//
// Character classes copy the library's own definitions, which are NOT plain current Unicode:
//   - whitespace: '\t' '\n' '\r' or Rust's char::is_whitespace (the White_Space property).
//   - control ("cleaned away"): the `unicode_categories` crate's Cc ∪ Cf ∪ Co. Its tables are frozen
//     at Unicode 8.0, so a Cf char added later (U+08E2, U+110CD, U+13430, ...) is NOT removed.
//     Unassigned code points (Cn) are kept. '\t' '\n' '\r' are not controls.
//   - punctuation: ASCII punctuation (all 32 printable non-alphanumerics, incl. $ + < = > ^ ` | ~)
//     or the crate's P* categories, again as of Unicode 8.0 (so U+166D and U+111C9, Po back then,
//     still split; U+2E43 and later do not). Symbols (S*) are never split.
//   - CJK: the library's fixed list of CJK Unified Ideograph / Compatibility blocks.
//   - lowercase: Rust's char::to_lowercase, one code point at a time (full mapping, so İ becomes
//     i + U+0307; no final-sigma context, so Σ always becomes σ).
// ICU supplies the categories, White_Space, the age of each code point and the case mappings.
// These rules were checked against the library (tokenizers 0.23.2) on all 1,112,064 code points.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hwaga::text {

// Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF). Throws hwaga::Error
// "<what> is not valid UTF-8 at byte N" with N the 0-based offset of the first bad byte.
std::u32string utf8_decode(std::string_view s, std::string_view what = "prompt");
void utf8_append(std::string& out, char32_t c);
std::string utf8_encode(std::u32string_view s);

bool bert_is_whitespace(char32_t c);
bool bert_is_control(char32_t c);
bool bert_is_chinese_char(char32_t c);
bool bert_is_punctuation(char32_t c);
// Appends Rust's c.to_lowercase() (one to three code points).
void append_lowercase(std::u32string& out, char32_t c);

// BertNormalizer(clean_text=true, handle_chinese_chars=true, strip_accents=false,
// lowercase=false), then the Lowercase normalizer when `lowercase`.
std::u32string bert_normalize(std::u32string_view text, bool lowercase);

// BertPreTokenizer on normalized text: whitespace separates words and is dropped; each
// punctuation char is a word of its own. No empty words.
std::vector<std::u32string> bert_pre_tokenize(std::u32string_view normalized);

// Splits raw text on exact occurrences of the special tokens (leftmost match first, the longest
// at a position). A piece with special >= 0 is specials[special]; other pieces are plain text,
// never empty.
struct TextPiece {
  std::u32string text;
  int special = -1;
};
std::vector<TextPiece> split_special_tokens(std::u32string_view text,
                                            const std::vector<std::u32string>& specials);

}  // namespace hwaga::text
