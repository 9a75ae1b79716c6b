// sample/sampling_defaults.h: the "sampling" metadata of a model file, parsed, checked, written.
#include <gtest/gtest.h>

#include "core/error.h"
#include "sample/sampling_defaults.h"

namespace hwaga {
namespace {

std::string error_of(const std::string& text) {
  try {
    sampling_defaults_from_json_text(text, "m.safetensors metadata \"sampling\"");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(SamplingDefaults, RoundTripKeepsEveryFieldAndTheShortestDecimals) {
  SamplingDefaults d;
  d.top_k = std::vector<int>{64, 32, 16, 8};
  d.top_p = std::vector<float>{0.9f};
  d.temperature = 0.7f;
  d.cfg = 2.5f;
  d.rerank = 16;
  const std::string text = sampling_defaults_to_json_text(d);
  EXPECT_EQ(text, R"({"cfg":2.5,"rerank":16,"temperature":0.7,"top_k":[64,32,16,8],"top_p":[0.9]})");
  const SamplingDefaults r = sampling_defaults_from_json_text(text, "x");
  EXPECT_EQ(*r.top_k, *d.top_k);
  EXPECT_EQ(*r.top_p, *d.top_p);
  EXPECT_EQ(*r.temperature, 0.7f);  // the same f32 after the round trip
  EXPECT_EQ(*r.cfg, 2.5f);
  EXPECT_EQ(*r.rerank, 16);
  EXPECT_EQ(describe_sampling_defaults(r), "top-k 64,32,16,8, top-p 0.9, temperature 0.7, cfg 2.5, rerank 16");
}

TEST(SamplingDefaults, EmptyListMeansNoneAndAbsentMeansFamilyDefault) {
  const SamplingDefaults d = sampling_defaults_from_json_text(R"({"top_k": []})", "x");
  ASSERT_TRUE(d.top_k.has_value());
  EXPECT_TRUE(d.top_k->empty());
  EXPECT_FALSE(d.top_p.has_value());
  EXPECT_FALSE(d.temperature.has_value());
  EXPECT_EQ(describe_sampling_defaults(d), "top-k none");
  EXPECT_TRUE(sampling_defaults_from_json_text("{}", "x").empty());
  EXPECT_EQ(sampling_defaults_to_json_text(SamplingDefaults{}), "{}");
}

TEST(SamplingDefaults, BadFieldsAreNamed) {
  EXPECT_NE(error_of("{").find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of("[1]").find("expected a JSON object"), std::string::npos);
  EXPECT_NE(error_of(R"({"top_k": [0]})").find("\"top_k\" holds 0"), std::string::npos);
  EXPECT_NE(error_of(R"({"top_k": [2.5]})").find("whole numbers"), std::string::npos);
  EXPECT_NE(error_of(R"({"top_k": 5})").find("must be a list"), std::string::npos);
  EXPECT_NE(error_of(R"({"top_p": [0]})").find("(0, 1]"), std::string::npos);
  EXPECT_NE(error_of(R"({"top_p": [1.5]})").find("(0, 1]"), std::string::npos);
  EXPECT_NE(error_of(R"({"temperature": 0})").find("\"temperature\""), std::string::npos);
  EXPECT_NE(error_of(R"({"temperature": "hot"})").find("must be a number"), std::string::npos);
  EXPECT_NE(error_of(R"({"cfg": null})").find("\"cfg\""), std::string::npos);
  EXPECT_NE(error_of(R"({"topk": [5]})").find("unknown field \"topk\""), std::string::npos);
  EXPECT_NE(error_of(R"({"rerank": -1})").find("\"rerank\" is -1"), std::string::npos);
  EXPECT_NE(error_of(R"({"rerank": 2.5})").find("whole number"), std::string::npos);
  EXPECT_NE(error_of(R"({"rerank": 100001})").find("[0, 100000]"), std::string::npos);
  EXPECT_EQ(error_of(R"({"top_k": [5], "cfg": -1})"), "");  // a negative scale is allowed
  // every message starts with where the text came from
  EXPECT_EQ(error_of("{").rfind("m.safetensors metadata \"sampling\"", 0), 0u);
}

TEST(SamplingDefaults, ModelChecksUseTheFamilyRules) {
  SamplingDefaults d;
  d.top_k = std::vector<int>{8, 4};  // two values for depth 4
  EXPECT_THROW(validate_sampling_defaults(d, SamplerSemantics::RqTransformer, 4, 512, "w"), Error);
  d.top_k = std::vector<int>{8, 4, 2, 1};
  EXPECT_NO_THROW(validate_sampling_defaults(d, SamplerSemantics::RqTransformer, 4, 512, "w"));
  d.top_k = std::vector<int>{2048};  // RQ caps top-k at K; minDALL-E refuses it
  EXPECT_NO_THROW(validate_sampling_defaults(d, SamplerSemantics::RqTransformer, 4, 512, "w"));
  EXPECT_THROW(validate_sampling_defaults(d, SamplerSemantics::MinDalle, 1, 512, "w"), Error);
}

}  // namespace
}  // namespace hwaga
