// BertNormalizer + Lowercase + BertPreTokenizer + special-token splitting (see normalizer.h).
#include "text/normalizer.h"

#include <unicode/uchar.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>

#include "core/error.h"

namespace hwaga::text {

// ---- UTF-8 ----

std::u32string utf8_decode(std::string_view s, std::string_view what) {
  std::u32string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  auto bad = [&](size_t at) { fail(what, " is not valid UTF-8 at byte ", at); };
  while (i < n) {
    unsigned b0 = p[i];
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    }
    int len;
    char32_t c, min;
    if ((b0 & 0xE0) == 0xC0) len = 2, c = b0 & 0x1F, min = 0x80;
    else if ((b0 & 0xF0) == 0xE0) len = 3, c = b0 & 0x0F, min = 0x800;
    else if ((b0 & 0xF8) == 0xF0) len = 4, c = b0 & 0x07, min = 0x10000;
    else bad(i);
    if (i + len > n) bad(i);
    for (int k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) bad(i);
      c = (c << 6) | (p[i + k] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) bad(i);
    out.push_back(c);
    i += len;
  }
  return out;
}

void utf8_append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(char(c));
  } else if (c < 0x800) {
    out.push_back(char(0xC0 | (c >> 6)));
    out.push_back(char(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(char(0xE0 | (c >> 12)));
    out.push_back(char(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(char(0x80 | (c & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (c >> 18)));
    out.push_back(char(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(char(0x80 | (c & 0x3F)));
  }
}

std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) utf8_append(out, c);
  return out;
}

// ---- character classes ----

namespace {

// The `unicode_categories` crate that the library uses was generated from UnicodeData 8.0.
// A code point counts in one of its tables when it was assigned by 8.0 and its category then
// is the one asked for. Categories of assigned code points are stable except for the two
// punctuation marks that later moved out of P* (handled in bert_is_punctuation).
bool assigned_by_unicode_8(char32_t c) {
  UVersionInfo age;
  u_charAge(UChar32(c), age);
  return age[0] != 0 && (age[0] < 8 || (age[0] == 8 && age[1] == 0));
}

bool is_ascii_punctuation(char32_t c) {
  return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
         (c >= 0x7B && c <= 0x7E);
}

}  // namespace

bool bert_is_whitespace(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);  // \t \n \v \f \r
  return u_hasBinaryProperty(UChar32(c), UCHAR_WHITE_SPACE);
}

bool bert_is_control(char32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  if (c < 0x20 || c == 0x7F) return true;
  if (c < 0x80) return false;
  int8_t t = u_charType(UChar32(c));
  if (t != U_CONTROL_CHAR && t != U_FORMAT_CHAR && t != U_PRIVATE_USE_CHAR) return false;
  return assigned_by_unicode_8(c);
}

bool bert_is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

bool bert_is_punctuation(char32_t c) {
  if (c < 0x80) return is_ascii_punctuation(c);
  // Po in Unicode 8.0, since moved: U+166D CANADIAN SYLLABICS CHI SIGN (now So) and
  // U+111C9 SHARADA SANDHI MARK (now Mn).
  if (c == 0x166D || c == 0x111C9) return true;
  switch (u_charType(UChar32(c))) {
    case U_DASH_PUNCTUATION:
    case U_START_PUNCTUATION:
    case U_END_PUNCTUATION:
    case U_CONNECTOR_PUNCTUATION:
    case U_OTHER_PUNCTUATION:
    case U_INITIAL_PUNCTUATION:
    case U_FINAL_PUNCTUATION:
      return assigned_by_unicode_8(c);
    default:
      return false;
  }
}

namespace {

// Lowercase pairs from Unicode 16 and 17, which the library's Rust standard library knows and
// Debian's ICU 72 (Unicode 15) does not: {first, last, delta} or, with last == 0, {c, lower}.
struct LowerRange {
  char32_t first, last;
  int32_t delta_or_target;
};
constexpr LowerRange kLowerAfterIcu[] = {
    {0x1C89, 0, 0x1C8A},   {0xA7CB, 0, 0x0264},   {0xA7CC, 0, 0xA7CD},
    {0xA7CE, 0, 0xA7CF},   {0xA7D2, 0, 0xA7D3},   {0xA7D4, 0, 0xA7D5},
    {0xA7DA, 0, 0xA7DB},   {0xA7DC, 0, 0x019B},   {0x10D50, 0x10D65, 0x20},
    {0x16EA0, 0x16EB8, 0x1B},
};

bool lower_after_icu(char32_t c, char32_t* lower) {
  for (const auto& r : kLowerAfterIcu) {
    if (r.last == 0 && c == r.first) return *lower = char32_t(r.delta_or_target), true;
    if (r.last != 0 && c >= r.first && c <= r.last) return *lower = char32_t(int32_t(c) + r.delta_or_target), true;
  }
  return false;
}

}  // namespace

void append_lowercase(std::u32string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
    return;
  }
  if (!u_hasBinaryProperty(UChar32(c), UCHAR_CHANGES_WHEN_LOWERCASED)) {
    char32_t l;
    out.push_back(lower_after_icu(c, &l) ? l : c);
    return;
  }
  // Full case mapping of one code point in the root locale: no language rules, and with no
  // neighbours the final-sigma condition never holds, which is what Rust's char::to_lowercase
  // gives.
  UChar src[2], dst[8];
  int32_t src_len = 0;
  U16_APPEND_UNSAFE(src, src_len, UChar32(c));
  UErrorCode err = U_ZERO_ERROR;
  int32_t n = u_strToLower(dst, 8, src, src_len, "", &err);
  HWAGA_CHECK(U_SUCCESS(err) && n <= 8, "ICU u_strToLower failed for U+", std::hex, uint32_t(c));
  for (int32_t i = 0; i < n;) {
    UChar32 l;
    U16_NEXT(dst, i, n, l);
    out.push_back(char32_t(l));
  }
}

// ---- normalizer and pre-tokenizer ----

std::u32string bert_normalize(std::u32string_view text, bool lowercase) {
  std::u32string out;
  out.reserve(text.size() + 8);
  for (char32_t c : text) {
    // clean_text: drop NUL, U+FFFD and controls; every whitespace char becomes ' '.
    if (c == 0 || c == 0xFFFD || bert_is_control(c)) continue;
    if (bert_is_whitespace(c)) c = ' ';
    // handle_chinese_chars: spaces around each CJK ideograph.
    bool cjk = bert_is_chinese_char(c);
    if (cjk) out.push_back(' ');
    if (lowercase) append_lowercase(out, c);
    else out.push_back(c);
    if (cjk) out.push_back(' ');
  }
  return out;
}

std::vector<std::u32string> bert_pre_tokenize(std::u32string_view s) {
  std::vector<std::u32string> words;
  std::u32string cur;
  auto flush = [&] {
    if (!cur.empty()) words.push_back(std::move(cur)), cur.clear();
  };
  for (char32_t c : s) {
    if (bert_is_whitespace(c)) {
      flush();
    } else if (bert_is_punctuation(c)) {
      flush();
      words.emplace_back(1, c);
    } else {
      cur.push_back(c);
    }
  }
  flush();
  return words;
}

std::vector<TextPiece> split_special_tokens(std::u32string_view text,
                                            const std::vector<std::u32string>& specials) {
  std::vector<TextPiece> pieces;
  size_t plain_start = 0, i = 0;
  while (i < text.size()) {
    int best = -1;
    size_t best_len = 0;
    for (size_t k = 0; k < specials.size(); ++k) {
      const auto& sp = specials[k];
      if (sp.size() > best_len && text.substr(i, sp.size()) == sp) best = int(k), best_len = sp.size();
    }
    if (best < 0) {
      ++i;
      continue;
    }
    if (i > plain_start) pieces.push_back({std::u32string(text.substr(plain_start, i - plain_start)), -1});
    pieces.push_back({specials[best], best});
    i += best_len;
    plain_start = i;
  }
  if (text.size() > plain_start) pieces.push_back({std::u32string(text.substr(plain_start)), -1});
  return pieces;
}

}  // namespace hwaga::text
