// The stage-2 code cache and its batches (src/train/code_cache): sampling groups read from the
// json, the file round trip with groups, old (version-1) caches refused by name, and the data
// order: plain epochs are permutations, balanced epochs draw every group equally often, and both
// depend on (seed, position) only; --cfg-drop rows get the all-PAD text, also by (seed, position).
#include <cstring>
#include <map>
#include <set>

#include "io/safetensors.h"
#include "test_util.h"
#include "text/text_tokenizer.h"
#include "train/code_cache.h"

using namespace hwaga;
using namespace hwaga::train;
using hwaga::test::TempDir;

namespace {

// A tokenizer that never runs: these tests draw sample positions, not text.
struct NoTokenizer final : TextTokenizer {
  NoTokenizer() { context_length = 1; }
  std::vector<int32_t> encode_unpadded(std::string_view) const override { return {}; }
  std::string decode(std::span<const int32_t>, bool) const override { return {}; }
  std::string id_to_token(int32_t) const override { return {}; }
  std::string to_json() const override { return "{}"; }
  std::string type() const override { return "none"; }
};

// N samples of 1x1x1 codes (code n = n), one caption each; groups as given.
CodeCache make_cache(int64_t N, std::vector<int32_t> groups) {
  CodeCache c;
  c.codes = Tensor::empty({N, 1, 1, 1}, DType::I32);
  for (int64_t n = 0; n < N; ++n) {
    c.codes.ptr<int32_t>()[n] = int32_t(n);
    c.captions.push_back({"caption " + std::to_string(n)});
  }
  c.groups = std::move(groups);
  return c;
}

// Runs f, which must throw hwaga::Error with `part` in its message.
template <class F>
void expect_error(F&& f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one with: " << part;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(CodeCache, SampleGroupFromJson) {
  EXPECT_EQ(sample_group(R"({"group": "google/1F34E", "captions": []})"), "google/1F34E");
  EXPECT_EQ(sample_group(R"({"group": 17})"), "17");
  EXPECT_EQ(sample_group(R"({"captions": ["a"]})"), "");
  EXPECT_EQ(sample_group(R"({"group": ["a"]})"), "");
  EXPECT_EQ(sample_group("{oops"), "");
  EXPECT_EQ(sample_group(""), "");
}

TEST(CodeCache, FileRoundTripKeepsGroupsAndRefusesVersionOne) {
  TempDir tmp;
  const CodeCache c = make_cache(5, {0, 1, 0, 2, 1});
  const nlohmann::json source = {{"shards", nlohmann::json::array()}};
  write_code_cache(tmp.p("codes.safetensors"), c, source);
  nlohmann::json back_source;
  const CodeCache r = read_code_cache(tmp.p("codes.safetensors"), &back_source);
  EXPECT_EQ(r.groups, c.groups);
  EXPECT_EQ(r.captions, c.captions);
  EXPECT_EQ(back_source, source);

  // No groups in memory: every sample is its own group on disk.
  write_code_cache(tmp.p("plain.safetensors"), make_cache(3, {}), source);
  EXPECT_EQ(read_code_cache(tmp.p("plain.safetensors")).groups, (std::vector<int32_t>{0, 1, 2}));

  // A version-1 cache (written before groups) and a group out of range are refused, naming the file.
  SafetensorsFile f = read_safetensors(tmp.p("codes.safetensors"));
  TensorMap tensors;
  for (auto& [k, t] : f.tensors) tensors[k] = t.clone();
  std::map<std::string, std::string> meta = f.metadata;
  meta["version"] = "1";
  write_safetensors(tmp.p("v1.safetensors"), tensors, meta);
  expect_error([&] { read_code_cache(tmp.p("v1.safetensors")); }, "v1.safetensors: code cache version \"1\"");
  meta["version"] = "2";
  Tensor bad = Tensor::empty({5}, DType::I32);
  for (int i = 0; i < 5; ++i) bad.ptr<int32_t>()[i] = i == 3 ? 9 : 0;
  tensors["groups"] = bad;
  write_safetensors(tmp.p("bad.safetensors"), tensors, meta);
  expect_error([&] { read_code_cache(tmp.p("bad.safetensors")); }, "sample 3 has group 9");
}

TEST(CodeBatcher, PlainEpochsArePermutations) {
  const NoTokenizer tok;
  const CodeCache c = make_cache(10, {0, 0, 0, 0, 0, 0, 0, 0, 0, 1});
  CodeBatcher b(c, tok, 5);
  for (int64_t e = 0; e < 3; ++e) {
    std::set<int64_t> seen;
    for (int64_t i = 0; i < 10; ++i) seen.insert(b.sample_at(e * 10 + i));
    EXPECT_EQ(seen.size(), 10u) << "epoch " << e;
  }
}

TEST(CodeBatcher, BalancedEpochsDrawEveryGroupEquallyOften) {
  const NoTokenizer tok;
  // group 0: nine samples (one emoji in nine skin tones), groups 1..3: one sample each
  const CodeCache c = make_cache(12, {0, 1, 0, 0, 2, 0, 0, 3, 0, 0, 0, 0});
  CodeBatcher b(c, tok, 5, /*balance=*/true), again(c, tok, 5, true), other(c, tok, 6, true);
  std::map<int64_t, int> member_draws;
  bool differs = false;
  for (int64_t e = 0; e < 40; ++e) {
    std::map<int32_t, int> per_group;
    for (int64_t i = 0; i < 12; ++i) {
      const int64_t g = e * 12 + i, n = b.sample_at(g);
      ASSERT_GE(n, 0);
      ASSERT_LT(n, 12);
      ++per_group[c.groups[size_t(n)]];
      ++member_draws[n];
      EXPECT_EQ(again.sample_at(g), n) << "not a function of (seed, position)";
      differs |= other.sample_at(g) != n;
    }
    // 12 draws over 4 groups: three rounds, each group once per round
    for (int32_t grp = 0; grp < 4; ++grp) EXPECT_EQ(per_group[grp], 3) << "epoch " << e << " group " << grp;
  }
  EXPECT_TRUE(differs) << "another seed gave the same order";
  // every member of the big group is drawn (120 draws of 9 members), each far less than the singletons
  for (int64_t n = 0; n < 12; ++n) {
    EXPECT_GT(member_draws[n], 0) << "sample " << n;
    if (c.groups[size_t(n)] == 0) EXPECT_LT(member_draws[n], 40) << "sample " << n;
    else EXPECT_EQ(member_draws[n], 120) << "sample " << n;
  }
  // The batch of a step reads the drawn samples' codes.
  const RqBatch batch = CodeBatcher(c, tok, 5, true).batch(3, 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(batch.codes.ptr<int32_t>()[i], int32_t(b.sample_at(12 + i)));
}

// A tokenizer whose every caption is the ids {7, 8}, padded with 0 to three ids.
struct TwoIdTokenizer final : TextTokenizer {
  TwoIdTokenizer() { context_length = 3; pad_id = 0; }
  std::vector<int32_t> encode_unpadded(std::string_view) const override { return {7, 8}; }
  std::string decode(std::span<const int32_t>, bool) const override { return {}; }
  std::string id_to_token(int32_t) const override { return {}; }
  std::string to_json() const override { return "{}"; }
  std::string type() const override { return "two-id"; }
};

TEST(CodeBatcher, CfgDropGivesAShareOfRowsTheAllPadText) {
  const TwoIdTokenizer tok;
  const CodeCache c = make_cache(50, {});
  CodeBatcher off(c, tok, 3), drop(c, tok, 3), again(c, tok, 3), other(c, tok, 4);
  drop.set_uncond_prob(0.25);
  again.set_uncond_prob(0.25);
  other.set_uncond_prob(0.25);
  const int B = 8, steps = 500;
  int64_t uncond = 0;
  bool differs = false;
  for (int64_t s = 0; s < steps; ++s) {
    const RqBatch a = drop.batch(s, B), plain = off.batch(s, B);
    for (int i = 0; i < B; ++i) {
      const int64_t g = s * B + i;
      const int32_t* t = a.text.ptr<int32_t>() + i * 3;
      const int32_t* p = plain.text.ptr<int32_t>() + i * 3;
      ASSERT_EQ(p[0], 7);  // --cfg-drop 0: every row keeps its caption
      ASSERT_EQ(p[2], 0);
      // the image targets never change; the text is the caption or all PAD, as unconditional() says
      ASSERT_EQ(a.codes.ptr<int32_t>()[i], plain.codes.ptr<int32_t>()[i]);
      const bool u = drop.unconditional(g);
      EXPECT_EQ(t[0], u ? 0 : 7) << "position " << g;
      EXPECT_EQ(t[1], u ? 0 : 8) << "position " << g;
      EXPECT_EQ(t[2], 0);
      EXPECT_EQ(again.unconditional(g), u) << "not a function of (seed, position)";
      differs |= other.unconditional(g) != u;
      uncond += u;
    }
  }
  EXPECT_TRUE(differs) << "another seed dropped the same rows";
  // 4000 draws at p = 0.25: mean 1000, standard deviation 27; +-5 sigma
  EXPECT_GT(uncond, 1000 - 137);
  EXPECT_LT(uncond, 1000 + 137);
  expect_error([&] { off.set_uncond_prob(1.0); }, "[0, 1)");
  expect_error([&] { off.set_uncond_prob(-0.1); }, "[0, 1)");
}

// --code-noise: a share of the INPUT codes are uniform codes in [0, K), as a function of (seed,
// position); the targets (codes), the text and the sample order do not change.
TEST(CodeBatcher, CodeNoiseReplacesAShareOfTheInputCodesOnly) {
  const TwoIdTokenizer tok;
  constexpr int64_t N = 40, per = 2 * 2 * 4, K = 64;
  CodeCache c;
  c.codes = Tensor::empty({N, 2, 2, 4}, DType::I32);
  for (int64_t i = 0; i < N * per; ++i) c.codes.ptr<int32_t>()[i] = int32_t((i * 7) % K);
  for (int64_t n = 0; n < N; ++n) c.captions.push_back({"caption " + std::to_string(n)});
  CodeBatcher off(c, tok, 3), noisy(c, tok, 3), again(c, tok, 3), other(c, tok, 4);
  noisy.set_code_noise(0.3, K);
  again.set_code_noise(0.3, K);
  other.set_code_noise(0.3, K);
  const int B = 8, steps = 100;
  int64_t changed = 0;
  std::vector<int64_t> seen(K, 0);
  bool differs = false;
  for (int64_t s = 0; s < steps; ++s) {
    const RqBatch plain = off.batch(s, B), a = noisy.batch(s, B), a2 = again.batch(steps - 1 - s, B);
    ASSERT_FALSE(plain.input_codes.defined()) << "no noise: the codes are the inputs";
    ASSERT_TRUE(a.input_codes.defined());
    ASSERT_EQ(std::memcmp(plain.codes.data(), a.codes.data(), size_t(a.codes.nbytes())), 0) << "targets changed";
    ASSERT_EQ(std::memcmp(plain.text.data(), a.text.data(), size_t(a.text.nbytes())), 0);
    const RqBatch o = other.batch(s, B);
    differs |= std::memcmp(o.input_codes.data(), a.input_codes.data(), size_t(a.codes.nbytes())) != 0;
    for (int64_t i = 0; i < B * per; ++i) {
      const int32_t x = a.input_codes.ptr<int32_t>()[i];
      ASSERT_GE(x, 0);
      ASSERT_LT(x, K);
      if (x != a.codes.ptr<int32_t>()[i]) {
        ++changed;
        ++seen[size_t(x)];
      }
    }
    // the same (seed, step) gives the same noise, whatever was asked before
    const RqBatch b2 = again.batch(s, B);
    EXPECT_EQ(std::memcmp(b2.input_codes.data(), a.input_codes.data(), size_t(a.codes.nbytes())), 0) << "step " << s;
    (void)a2;
  }
  EXPECT_TRUE(differs) << "another seed drew the same noise";
  // 12800 codes, each changed with p = 0.3 * 63/64 = 0.2953: mean 3780, sd 52; +-5 sigma
  EXPECT_GT(changed, 3780 - 260);
  EXPECT_LT(changed, 3780 + 260);
  for (int64_t k = 0; k < K; ++k) EXPECT_GT(seen[size_t(k)], 20) << "replacement " << k << " (mean 59)";
  expect_error([&] { off.set_code_noise(1.0, K); }, "[0, 1)");
  expect_error([&] { off.set_code_noise(-0.1, K); }, "[0, 1)");
  expect_error([&] { off.set_code_noise(0.1, 0); }, "vocabulary size");
}
