// CharBPE tokenizer against the real HuggingFace `tokenizers` library: the golden files in
// shared/data/bpe16k (40 prompts at context 32 and 64, ids and tokens, exact), the library's
// per-code-point behaviour (data/charbpe/bert_chars.txt), and unit cases for each step.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "text/charbpe.h"
#include "text/normalizer.h"
#include "text/text_tokenizer.h"
#include "test_util.h"

using namespace hwaga;
namespace fs = std::filesystem;

namespace {

const std::string kDir = std::string(HWAGA_SHARED_DIR) + "/data/bpe16k";

const CharBpeTokenizer& released(int ctx) {
  static std::unique_ptr<CharBpeTokenizer> t32 =
      charbpe_from_files(kDir + "/bpe-16k-vocab.json", kDir + "/bpe-16k-merges.txt", 32);
  static std::unique_ptr<CharBpeTokenizer> t64 =
      charbpe_from_files(kDir + "/bpe-16k-vocab.json", kDir + "/bpe-16k-merges.txt", 64);
  return ctx == 32 ? *t32 : *t64;
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << "cannot open " << path;
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

std::u32string U(const char* utf8) { return text::utf8_decode(utf8); }

using test::error_of;  // "" if no hwaga::Error was thrown

using test::TempDir;

// A tiny vocabulary: [PAD] [UNK] a b c a</w> b</w> c</w> ab ab</w> abc</w>.
const char* kTinyVocab =
    R"({"[PAD]":0,"[UNK]":1,"a":2,"b":3,"c":4,"a</w>":5,"b</w>":6,"c</w>":7,"ab":8,"ab</w>":9,"abc</w>":10})";
const char* kTinyMerges = "#version: 0.2\na b\na b</w>\nab c</w>\n";

}  // namespace

// ---- the golden files: every line, ids and tokens ----

class Golden : public ::testing::TestWithParam<int> {};

TEST_P(Golden, EveryLineMatchesTheLibrary) {
  const int ctx = GetParam();
  const auto& tok = released(ctx);
  auto lines = read_jsonl(kDir + "/golden-ctx" + std::to_string(ctx) + ".jsonl");
  ASSERT_EQ(lines.size(), 40u);
  for (const auto& g : lines) {
    const std::string prompt = g.at("prompt");
    std::vector<int32_t> want = g.at("ids").get<std::vector<int32_t>>();
    std::vector<std::string> want_tok = g.at("tokens").get<std::vector<std::string>>();
    std::vector<int32_t> got = tok.encode(prompt);
    ASSERT_EQ(got.size(), size_t(ctx)) << prompt;
    EXPECT_EQ(got, want) << "prompt: " << g.at("prompt").dump();
    std::vector<std::string> got_tok;
    for (int32_t id : got) got_tok.push_back(tok.id_to_token(id));
    EXPECT_EQ(got_tok, want_tok) << "prompt: " << g.at("prompt").dump();
  }
}

INSTANTIATE_TEST_SUITE_P(Contexts, Golden, ::testing::Values(32, 64));

TEST(CharBpe, LoadsTheReleasedFilesQuickly) {
  auto t0 = std::chrono::steady_clock::now();
  auto tok = charbpe_from_files(kDir + "/bpe-16k-vocab.json", kDir + "/bpe-16k-merges.txt", 64);
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("loaded 16384 tokens + %zu merges in %.1f ms\n", tok->num_merges(), ms);
  EXPECT_EQ(tok->vocab_size, 16384);
  EXPECT_EQ(tok->num_merges(), 14425u);
  EXPECT_EQ(tok->pad_id, 0);
  EXPECT_EQ(tok->unk_id(), 1);
  EXPECT_EQ(tok->context_length, 64);
  // Milliseconds in a release build; the bound leaves room for sanitizer builds on a busy CI.
  EXPECT_LT(ms, 3000.0);
}

// ---- the library's behaviour on every code point ----

TEST(CharBpe, CharClassesMatchLibraryOnEveryCodePoint) {
  std::ifstream f(std::string(HWAGA_SOURCE_DIR) + "/tests/unit/data/charbpe/bert_chars.txt");
  ASSERT_TRUE(f.good());
  struct Row {
    std::string norm, pre;
  };
  std::vector<std::pair<std::pair<uint32_t, uint32_t>, Row>> rows;
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ss(line);
    std::string a, b, n, p;
    ss >> a >> b >> n >> p;
    rows.push_back({{uint32_t(std::stoul(a, nullptr, 16)), uint32_t(std::stoul(b, nullptr, 16))}, {n, p}});
  }
  ASSERT_GT(rows.size(), 800u);
  size_t r = 0, checked = 0, bad = 0;
  for (uint32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    while (r < rows.size() && rows[r].first.second < cp) ++r;
    Row want{"K", "N"};
    if (r < rows.size() && rows[r].first.first <= cp) want = rows[r].second;
    if (want.norm[0] == 'L') {
      std::ostringstream os;
      int d = std::stoi(want.norm.substr(1));
      os << "L" << (d >= 0 ? "+" : "") << d;
      want.norm = os.str();
    }
    std::u32string in = U"a";
    in.push_back(cp);
    in += U"b";
    std::u32string n = text::bert_normalize(in, true);
    std::u32string mid = n.size() >= 2 ? n.substr(1, n.size() - 2) : U"";
    std::string got_norm;
    if (n == U"ab") got_norm = "D";
    else if (n == U"a b") got_norm = "W";
    else if (mid == std::u32string(U" ") + char32_t(cp) + U" ") got_norm = "C";
    else if (mid.size() == 1 && mid[0] == cp) got_norm = "K";
    else if (mid.size() == 1) got_norm = (int(mid[0]) - int(cp) >= 0 ? "L+" : "L") + std::to_string(int(mid[0]) - int(cp));
    else {
      std::ostringstream os;
      os << "M:" << std::hex;
      for (size_t i = 0; i < mid.size(); ++i) os << (i ? "+" : "") << uint32_t(mid[i]);
      got_norm = os.str();
    }
    std::u32string pin = U"x";
    pin.push_back(cp);
    pin += U"y";
    auto words = text::bert_pre_tokenize(pin);
    std::string got_pre = words.size() == 3 ? "P" : words.size() == 2 ? "S" : words.size() == 1 ? "N" : "?";
    ++checked;
    if (got_norm != want.norm || got_pre != want.pre) {
      if (++bad <= 20)
        ADD_FAILURE() << "U+" << std::hex << cp << ": library " << want.norm << " " << want.pre << ", hwaga "
                      << got_norm << " " << got_pre;
    }
  }
  EXPECT_EQ(bad, 0u);
  EXPECT_EQ(checked, 1112064u);
}

// ---- normalizer pieces ----

TEST(BertNormalizer, CleansControlsAndWhitespace) {
  EXPECT_EQ(text::bert_normalize(U("control\u0007char"), true), U"controlchar");
  EXPECT_EQ(text::bert_normalize(U("zero\u200Bwidth"), true), U"zerowidth");  // Cf
  EXPECT_EQ(text::bert_normalize(std::u32string(U"a\0b", 3), true), U"ab");    // NUL
  EXPECT_EQ(text::bert_normalize(U("a\uFFFDb\u0085c"), true), U"abc");        // U+FFFD, NEL (Cc)
  EXPECT_EQ(text::bert_normalize(U("a\tb\nc\r\nd\u00A0e\u3000f"), true), U"a b c  d e f");
  // The library's category tables are Unicode 8.0 with private-use ranges expanded:
  EXPECT_EQ(text::bert_normalize(U("a\uE001b\U000F0001c"), true), U"abc");  // Co: removed
  EXPECT_EQ(text::bert_normalize(U("a\u061Cb"), true), U"ab");               // Cf since 6.3: removed
  EXPECT_EQ(text::bert_normalize(U("a\U000110CDb"), true), U("a\U000110CDb"));  // Cf since 11.0: kept
  EXPECT_EQ(text::bert_normalize(U("a\U000E0100b"), true), U("a\U000E0100b"));  // Mn: kept
}

TEST(BertNormalizer, SpacesAroundCjkOnly) {
  EXPECT_EQ(text::bert_normalize(U("漢字"), true), U(" 漢  字 "));
  EXPECT_EQ(text::bert_normalize(U("\U00020000"), true), U(" \U00020000 "));  // Extension B
  EXPECT_EQ(text::bert_normalize(U("사막 タワー"), true), U("사막 タワー"));  // Hangul, kana
}

TEST(BertNormalizer, FullLowercaseWithoutContext) {
  EXPECT_EQ(text::bert_normalize(U("İ"), true), U("i\u0307"));
  EXPECT_EQ(text::bert_normalize(U("ΣΑΣ"), true), U("σασ"));  // no final sigma
  EXPECT_EQ(text::bert_normalize(U("RÉSUMÉ Straße ẞ"), true), U("résumé straße ß"));
  EXPECT_EQ(text::bert_normalize(U("ＡＢＣ"), true), U("ａｂｃ"));  // no NFKC folding
  EXPECT_EQ(text::bert_normalize(U("Café"), false), U("Café"));     // accents kept either way
}

TEST(BertPreTokenizer, PunctuationSplitsSymbolsDoNot) {
  auto w = text::bert_pre_tokenize(U("a$b+c<d=e>f^g|h~i`j"));
  EXPECT_EQ(w.size(), 19u);
  EXPECT_EQ(text::bert_pre_tokenize(U("5€ ©2024 ±1")),
            (std::vector<std::u32string>{U("5€"), U("©2024"), U("±1")}));
  EXPECT_EQ(text::bert_pre_tokenize(U("¿qué? «oui» a—b")),
            (std::vector<std::u32string>{U("¿"), U("qué"), U("?"), U("«"), U("oui"), U("»"), U("a"), U("—"), U("b")}));
  EXPECT_EQ(text::bert_pre_tokenize(U("a\u2E43b")).size(), 1u);  // Po since Unicode 9.0: not split
  EXPECT_EQ(text::bert_pre_tokenize(U("a\u166Db")).size(), 3u);  // Po in 8.0 (So now): split
  EXPECT_EQ(text::bert_pre_tokenize(U("  a   b  ")), (std::vector<std::u32string>{U"a", U"b"}));
  EXPECT_TRUE(text::bert_pre_tokenize(U"   ").empty());
}

TEST(SpecialTokens, MatchedOnRawTextOnly) {
  const auto& tok = released(32);
  EXPECT_EQ(tok.encode_unpadded("[PAD]"), std::vector<int32_t>{0});
  EXPECT_EQ(tok.encode_unpadded("[UNK]"), std::vector<int32_t>{1});
  auto lower = tok.encode_unpadded("[pad]");
  ASSERT_EQ(lower.size(), 3u);  // "[", "pad", "]" as ordinary words
  EXPECT_EQ(tok.id_to_token(lower[0]), "[</w>");
  EXPECT_EQ(tok.id_to_token(lower[2]), "]</w>");
  // Inside a word the special token still splits it, and the pieces are normalized apart.
  auto mid = tok.encode_unpadded("dog[PAD]Cat");
  EXPECT_EQ(mid, (std::vector<int32_t>{tok.encode_unpadded("dog")[0], 0, tok.encode_unpadded("cat")[0]}));
  auto pieces = text::split_special_tokens(U"x[PAD][UNK]y[PA", {U"[PAD]", U"[UNK]"});
  ASSERT_EQ(pieces.size(), 4u);
  EXPECT_EQ(pieces[0].text, U"x");
  EXPECT_EQ(pieces[1].special, 0);
  EXPECT_EQ(pieces[2].special, 1);
  EXPECT_EQ(pieces[3].text, U"y[PA");
}

TEST(CharBpe, EmptyAndWhitespaceOnlyPromptsAreAllPads) {
  const auto& tok = released(64);
  EXPECT_EQ(tok.encode(""), std::vector<int32_t>(64, 0));
  EXPECT_EQ(tok.encode(" \t\n\r\u3000 "), std::vector<int32_t>(64, 0));
  EXPECT_EQ(tok.encode("\u200B\u0007"), std::vector<int32_t>(64, 0));  // only removed chars
}

TEST(CharBpe, UnknownCharsGiveOneUnkEach) {
  const auto& tok = released(32);
  EXPECT_EQ(tok.bpe_word(U("😀😀")), (std::vector<int32_t>{1, 1}));
  auto ids = tok.bpe_word(U("a😀😀b"));
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(tok.id_to_token(ids[0]), "a");
  EXPECT_EQ(ids[1], 1);
  EXPECT_EQ(ids[2], 1);
  EXPECT_EQ(tok.id_to_token(ids[3]), "b</w>");
}

TEST(CharBpe, MergesByRankLeftmostFirst) {
  TempDir d;
  auto tok = charbpe_from_files(d.write("v.json", kTinyVocab), d.write("m.txt", kTinyMerges), 8);
  EXPECT_EQ(tok->bpe_word(U"abc"), std::vector<int32_t>{10});    // a b -> ab, ab c</w> -> abc</w>
  EXPECT_EQ(tok->bpe_word(U"ab"), std::vector<int32_t>{9});      // a b</w> -> ab</w>
  EXPECT_EQ(tok->bpe_word(U"abab"), (std::vector<int32_t>{8, 9}));
  EXPECT_EQ(tok->bpe_word(U"aaa"), (std::vector<int32_t>{2, 2, 5}));
  EXPECT_EQ(tok->bpe_word(U"xa"), (std::vector<int32_t>{1, 5}));
  EXPECT_EQ(tok->encode("AB, c"), (std::vector<int32_t>{9, 1, 7, 0, 0, 0, 0, 0}));  // "," is not in the vocab
}

TEST(CharBpe, TruncatesToTheContext) {
  const auto& tok = released(32);
  std::string p = "a very long prompt";
  for (int i = 0; i < 60; ++i) p += " word" + std::to_string(i);
  auto all = tok.encode_unpadded(p);
  ASSERT_GT(all.size(), 32u);
  auto ids = tok.encode(p);
  EXPECT_EQ(ids, std::vector<int32_t>(all.begin(), all.begin() + 32));
}

TEST(CharBpe, DecodeJoinsTokens) {
  const auto& tok = released(32);
  EXPECT_EQ(tok.decode(tok.encode("A painting of a DOG")), "a painting of a dog");
  EXPECT_EQ(tok.decode(tok.encode("[PAD] x"), false).substr(0, 7), "[PAD]x ");
  EXPECT_NE(error_of([&] { tok.decode(std::vector<int32_t>{16384}); }).find("outside the vocabulary"),
            std::string::npos);
}

TEST(CharBpe, JsonRoundTripEncodesIdentically) {
  const auto& tok = released(64);
  std::string js = tok.to_json();
  auto j = nlohmann::json::parse(js);
  EXPECT_EQ(j.at("type"), "charbpe");
  EXPECT_EQ(j.at("vocab").size(), 16384u);
  EXPECT_EQ(j.at("merges").size(), 14425u);
  EXPECT_EQ(j.at("merges")[0], "t h");
  auto back = text_tokenizer_from_json_text(js);
  EXPECT_EQ(back->type(), "charbpe");
  EXPECT_EQ(back->context_length, 64);
  EXPECT_EQ(back->vocab_size, 16384);
  EXPECT_EQ(back->to_json(), js);
  for (const auto& g : read_jsonl(kDir + "/golden-ctx64.jsonl")) {
    const std::string p = g.at("prompt");
    EXPECT_EQ(back->encode(p), tok.encode(p)) << p;
    EXPECT_EQ(back->encode(p), g.at("ids").get<std::vector<int32_t>>()) << p;
  }
}

// ---- errors ----

TEST(CharBpeErrors, InvalidUtf8NamesTheByte) {
  const auto& tok = released(32);
  EXPECT_EQ(error_of([&] { tok.encode("\xff"); }), "prompt is not valid UTF-8 at byte 0");
  EXPECT_EQ(error_of([&] { tok.encode("ab\xc3"); }), "prompt is not valid UTF-8 at byte 2");
  EXPECT_EQ(error_of([&] { tok.encode("a\xc0\xafz"); }), "prompt is not valid UTF-8 at byte 1");  // overlong
  EXPECT_EQ(error_of([&] { tok.encode("xy\xed\xa0\x80"); }), "prompt is not valid UTF-8 at byte 2");  // surrogate
  EXPECT_EQ(error_of([&] { tok.encode("\xf4\x90\x80\x80"); }), "prompt is not valid UTF-8 at byte 0");  // > U+10FFFF
  EXPECT_EQ(error_of([&] { tok.encode("caf\xc3\xa9 \xe2\x82"); }), "prompt is not valid UTF-8 at byte 6");
}

TEST(CharBpeErrors, BadFilesNameTheFileAndProblem) {
  TempDir d;
  std::string merges = d.write("m.txt", kTinyMerges), vocab = d.write("v.json", kTinyVocab);
  auto err = [&](const std::string& v, const std::string& m) {
    return error_of([&] { charbpe_from_files(v, m, 8); });
  };
  auto has = [](const std::string& msg, const std::string& part) {
    return msg.find(part) != std::string::npos;
  };
  std::string e = err(d.path / "missing.json", merges);
  EXPECT_TRUE(has(e, "missing.json") && has(e, "cannot open")) << e;
  e = err(d.write("bad.json", "{\"a\": 0,"), merges);
  EXPECT_TRUE(has(e, "bad.json") && has(e, "not valid JSON")) << e;
  e = err(d.write("arr.json", "[\"a\"]"), merges);
  EXPECT_TRUE(has(e, "arr.json") && has(e, "expected a JSON object")) << e;
  e = err(d.write("dup.json", R"({"[PAD]":0,"[UNK]":1,"a":1})"), merges);
  EXPECT_TRUE(has(e, "dup.json") && has(e, "id 1 is given to both")) << e;
  e = err(d.write("gap.json", R"({"[PAD]":0,"[UNK]":1,"a":3})"), merges);
  EXPECT_TRUE(has(e, "gap.json") && has(e, "skipped or repeated")) << e;
  e = err(d.write("neg.json", R"({"[PAD]":0,"[UNK]":-1})"), merges);
  EXPECT_TRUE(has(e, "neg.json") && has(e, "non-negative integer")) << e;
  e = err(d.write("str.json", R"({"[PAD]":0,"[UNK]":"1"})"), merges);
  EXPECT_TRUE(has(e, "str.json") && has(e, "non-negative integer")) << e;
  e = err(d.write("nounk.json", R"({"[PAD]":0,"a":1,"b":2,"b</w>":3,"ab":4,"ab</w>":5})"), merges);
  EXPECT_TRUE(has(e, "nounk.json") && has(e, "unk token \"[UNK]\"")) << e;

  e = err(vocab, d.write("hdr.txt", "# merges\na b\n"));
  EXPECT_TRUE(has(e, "hdr.txt") && has(e, "line 1") && has(e, "bad header")) << e;
  e = err(vocab, d.write("three.txt", "#version: 0.2\na b\na b c\n"));
  EXPECT_TRUE(has(e, "three.txt") && has(e, "line 3") && has(e, "two tokens")) << e;
  e = err(vocab, d.write("json.txt", kTinyVocab));
  EXPECT_TRUE(has(e, "json.txt") && has(e, "line 1")) << e;
  e = err(vocab, d.write("blank.txt", "#version: 0.2\na b\n\nab c</w>\n"));
  EXPECT_TRUE(has(e, "blank.txt") && has(e, "line 3")) << e;
  e = err(vocab, d.write("res.txt", "#version: 0.2\na b\nb c</w>\n"));
  EXPECT_TRUE(has(e, "res.txt") && has(e, "line 3") && has(e, "merge result \"bc</w>\"")) << e;
  e = err(vocab, d.write("part.txt", "#version: 0.2\nq b\n"));
  EXPECT_TRUE(has(e, "part.txt") && has(e, "line 2") && has(e, "\"q\" is not in the vocabulary")) << e;
  // CRLF line ends are accepted, like the library's line reader.
  EXPECT_EQ(err(vocab, d.write("crlf.txt", "#version: 0.2\r\na b\r\na b</w>\r\nab c</w>\r\n")), "");
}

TEST(CharBpeErrors, BadJsonNamesTheField) {
  auto err = [](const std::string& js) { return error_of([&] { text_tokenizer_from_json_text(js, "m.safetensors tokenizer"); }); };
  auto has = [](const std::string& msg, const std::string& part) {
    return msg.find(part) != std::string::npos;
  };
  std::string e = err("{");
  EXPECT_TRUE(has(e, "m.safetensors tokenizer") && has(e, "not valid JSON")) << e;
  e = err(R"({"type":"wordpiece"})");
  EXPECT_TRUE(has(e, "unknown tokenizer type \"wordpiece\"")) << e;
  e = err(R"([1,2])");
  EXPECT_TRUE(has(e, "expected a JSON object")) << e;
  auto good = nlohmann::json::parse(released(32).to_json());
  auto without = [&](const char* key) {
    auto j = good;
    j.erase(key);
    return err(j.dump());
  };
  for (const char* key : {"vocab", "merges", "context_length", "lowercase", "unk_token"}) {
    e = without(key);
    EXPECT_TRUE(has(e, std::string("\"") + key + "\"")) << e;
  }
  auto j = good;
  j["merges"][5] = "th";
  e = err(j.dump());
  EXPECT_TRUE(has(e, "\"merges\"[5]")) << e;
  j = good;
  j["merges"][7] = "zzzq e";
  e = err(j.dump());
  EXPECT_TRUE(has(e, "\"merges\": merge 8") && has(e, "\"zzzq\"")) << e;
  j = good;
  j["context_length"] = 0;
  e = err(j.dump());
  EXPECT_TRUE(has(e, "context_length")) << e;
  j = good;
  j["vocab"][3] = "!";  // duplicate of id 2
  e = err(j.dump());
  EXPECT_TRUE(has(e, "appears twice")) << e;
}
