// SentencePiece text tokenizer: trained in memory on generated English and Korean captions,
// encoded with the TextTokenizer padding rule, carried through its JSON form.
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "text/spm_tokenizer.h"
#include "text/text_tokenizer.h"
#include "test_util.h"

using namespace hwaga;

namespace {

// ~200 captions in the style of the emoji data: "a red cat running" / "빨간 고양이가 달린다".
std::vector<std::string> captions() {
  const char* colors[] = {"red", "blue", "green", "yellow", "black", "white", "purple", "orange"};
  const char* animals[] = {"cat", "dog", "tiger", "rabbit", "fox", "bird", "fish", "horse"};
  const char* acts[] = {"running", "sleeping", "smiling", "jumping", "eating an apple", "in the snow"};
  const char* ko_colors[] = {"빨간", "파란", "초록", "노란", "검은", "하얀", "보라", "주황"};
  const char* ko_animals[] = {"고양이", "강아지", "호랑이", "토끼", "여우", "새", "물고기", "말"};
  const char* ko_acts[] = {"달린다", "잔다", "웃는다", "뛴다", "사과를 먹는다", "눈 속에 있다"};
  std::vector<std::string> out;
  std::mt19937 rng(7);
  for (int i = 0; i < 100; ++i) {
    out.push_back(std::string("a ") + colors[rng() % 8] + " " + animals[rng() % 8] + " " + acts[rng() % 6]);
    out.push_back(std::string(ko_colors[rng() % 8]) + " " + ko_animals[rng() % 8] + " " + ko_acts[rng() % 6]);
  }
  return out;
}

const SpmTokenizer& trained() {
  static std::unique_ptr<SpmTokenizer> tok = [] {
    SpmTrainOptions opt;
    opt.vocab_size = 80;
    opt.context_length = 16;
    return SpmTokenizer::train(captions(), opt);
  }();
  return *tok;
}

using test::error_of;  // "" if no hwaga::Error was thrown

}  // namespace

TEST(Spm, TrainsWithPadZeroAndUnkOne) {
  const auto& tok = trained();
  EXPECT_EQ(tok.type(), "spm");
  EXPECT_EQ(tok.vocab_size, 80);
  EXPECT_EQ(tok.context_length, 16);
  EXPECT_EQ(tok.pad_id, 0);
  EXPECT_TRUE(tok.is_unknown(1));
  EXPECT_FALSE(tok.is_unknown(0));
}

TEST(Spm, EncodesPaddedToTheContext) {
  const auto& tok = trained();
  auto raw = tok.encode_unpadded("a red cat running");
  ASSERT_FALSE(raw.empty());
  ASSERT_LT(raw.size(), 16u);
  auto ids = tok.encode("a red cat running");
  ASSERT_EQ(ids.size(), 16u);
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(ids[i], i < raw.size() ? raw[i] : 0) << i;
  for (int32_t id : raw) EXPECT_NE(id, 0);  // pad is never produced by the model itself
  EXPECT_EQ(tok.decode(ids), "a red cat running");
  EXPECT_EQ(tok.encode(""), std::vector<int32_t>(16, 0));
  // Truncation keeps the first context_length ids.
  std::string long_text;
  for (int i = 0; i < 20; ++i) long_text += "a blue horse jumping ";
  auto all = tok.encode_unpadded(long_text);
  ASSERT_GT(all.size(), 16u);
  EXPECT_EQ(tok.encode(long_text), std::vector<int32_t>(all.begin(), all.begin() + 16));
}

TEST(Spm, KoreanTextMapsToKnownPieces) {
  const auto& tok = trained();
  for (const char* s : {"빨간 고양이 달린다", "하얀 토끼 사과를 먹는다", "여우"}) {
    auto ids = tok.encode_unpadded(s);
    ASSERT_FALSE(ids.empty()) << s;
    for (int32_t id : ids) EXPECT_FALSE(tok.is_unknown(id)) << s << " id " << id << " " << tok.id_to_token(id);
    EXPECT_EQ(tok.decode(ids), s);
  }
  // A script never seen in training does give unk.
  auto ids = tok.encode_unpadded("東京");
  bool any_unk = false;
  for (int32_t id : ids) any_unk |= tok.is_unknown(id);
  EXPECT_TRUE(any_unk);
}

TEST(Spm, JsonRoundTripEncodesIdentically) {
  const auto& tok = trained();
  std::string js = tok.to_json();
  auto j = nlohmann::json::parse(js);
  EXPECT_EQ(j.at("type"), "spm");
  EXPECT_EQ(j.at("context_length"), 16);
  auto back = text_tokenizer_from_json_text(js, "test");
  EXPECT_EQ(back->type(), "spm");
  EXPECT_EQ(back->vocab_size, tok.vocab_size);
  EXPECT_EQ(back->pad_id, tok.pad_id);
  EXPECT_EQ(dynamic_cast<const SpmTokenizer&>(*back).model_proto(), tok.model_proto());
  for (const auto& s : captions()) EXPECT_EQ(back->encode(s), tok.encode(s)) << s;
  EXPECT_EQ(back->to_json(), js);
}

TEST(Spm, Base64RoundTripAndErrors) {
  std::mt19937 rng(3);
  for (size_t n = 0; n < 40; ++n) {
    std::string bytes(n, '\0');
    for (auto& c : bytes) c = char(rng() & 0xFF);
    std::string enc = base64_encode(bytes);
    EXPECT_EQ(enc.size(), (n + 2) / 3 * 4);
    EXPECT_EQ(base64_decode(enc, "t"), bytes) << n;
  }
  EXPECT_EQ(base64_encode("hwaga"), "aHdhZ2E=");
  EXPECT_EQ(base64_decode("aHdhZ2E=", "t"), "hwaga");
  EXPECT_NE(error_of([] { base64_decode("aHdhZ2E", "field m"); }).find("field m"), std::string::npos);
  EXPECT_NE(error_of([] { base64_decode("aH*hZ2E=", "t"); }).find("offset 2"), std::string::npos);
  EXPECT_NE(error_of([] { base64_decode("aH=hZ2E=", "t"); }), "");
  EXPECT_NE(error_of([] { base64_decode("a===", "t"); }), "");
}

TEST(Spm, Errors) {
  const auto& tok = trained();
  EXPECT_EQ(error_of([&] { tok.encode("ok \xfe"); }), "prompt is not valid UTF-8 at byte 3");
  std::string e = error_of([] { SpmTokenizer("not a model proto", 8, "model.safetensors tokenizer"); });
  EXPECT_NE(e.find("model.safetensors tokenizer"), std::string::npos) << e;
  EXPECT_NE(e.find("not a loadable SentencePiece model"), std::string::npos) << e;
  e = error_of([] {
    text_tokenizer_from_json_text(R"({"type":"spm","context_length":8,"model":"!!!!"})", "meta");
  });
  EXPECT_NE(e.find("meta \"model\""), std::string::npos) << e;
  e = error_of([] { text_tokenizer_from_json_text(R"({"type":"spm","model":""})", "meta"); });
  EXPECT_NE(e.find("context_length"), std::string::npos) << e;
  e = error_of([] {
    SpmTrainOptions opt;
    opt.vocab_size = 5000;  // far more pieces than 200 short captions hold
    SpmTokenizer::train(captions(), opt);
  });
  EXPECT_NE(e.find("SentencePiece training failed"), std::string::npos) << e;
  e = error_of([] { SpmTokenizer::train({"fine", "bad \xc3"}, SpmTrainOptions{}); });
  EXPECT_EQ(e, "training sentence 1 is not valid UTF-8 at byte 4");
  EXPECT_NE(error_of([&] { tok.id_to_token(80); }).find("outside the vocabulary"), std::string::npos);
}
