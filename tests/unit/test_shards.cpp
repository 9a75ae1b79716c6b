// Tar shards for training (src/data): writer -> reader round trip with exact pixels, shard
// lists, determinism, mid-epoch resume (across an epoch boundary too), random crop / flip, and
// every kind of bad input counted once. Hostile tars are made by hand here (an independent
// ustar writer), not with the writer under test.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "data/pack_sources.h"
#include "data/shard_dataset.h"
#include "data/shard_writer.h"
#include "data/tar_samples.h"
#include "io/image.h"
#include "test_util.h"

using namespace hwaga;
using namespace hwaga::data;
using hwaga::test::TempDirTest;

namespace {

// ---- an independent ustar writer ----

std::string tar_header(const std::string& name, uint64_t size, char type, const std::string& link = "") {
  std::string h(512, '\0');
  std::memcpy(&h[0], name.data(), std::min<size_t>(100, name.size()));
  std::snprintf(&h[100], 8, "%07o", 0644);
  std::snprintf(&h[108], 8, "%07o", 0);
  std::snprintf(&h[116], 8, "%07o", 0);
  std::snprintf(&h[124], 12, "%011llo", (unsigned long long)size);
  std::snprintf(&h[136], 12, "%011o", 0);
  h[156] = type;
  std::memcpy(&h[157], link.data(), std::min<size_t>(100, link.size()));
  std::memcpy(&h[257], "ustar", 6);
  std::memcpy(&h[263], "00", 2);
  std::memset(&h[148], ' ', 8);
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  std::snprintf(&h[148], 8, "%06o", sum);
  h[155] = ' ';
  return h;
}

std::string tar_member(const std::string& name, const std::string& data, char type = '0') {
  std::string m = tar_header(name, data.size(), type) + data;
  m.append((512 - data.size() % 512) % 512, '\0');
  return m;
}

std::string tar_end() { return std::string(1024, '\0'); }

// ---- pictures ----

// Deterministic RGB pixels [h][w][3] that differ per (x, y, tag).
std::vector<uint8_t> pixels(int w, int h, int tag) {
  std::vector<uint8_t> p(size_t(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      uint8_t* q = &p[(size_t(y) * w + x) * 3];
      q[0] = uint8_t(x * 3 + tag * 17);
      q[1] = uint8_t(y * 5 + tag * 31);
      q[2] = uint8_t((x * y + tag * 7) & 0xff);
    }
  return p;
}

std::string png_bytes(const std::string& dir, int w, int h, int tag) {
  const std::string path = dir + "/tmp-" + std::to_string(tag) + ".png";
  auto px = pixels(w, h, tag);
  write_png_rgb8(path, px.data(), w, h, {});
  std::string b = test::read_all(path);
  std::filesystem::remove(path);
  return b;
}

// Expected model input for an un-resized window: pixel/127.5 - 1 at (x0 + x, y0 + y), optionally flipped.
bool window_equals(const Tensor& t, const std::vector<uint8_t>& px, int w, int S, int x0, int y0, bool flip) {
  const float* o = t.f32();
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x) {
        const int sx = flip ? x0 + S - 1 - x : x0 + x;
        const float want = px[(size_t(y0 + y) * w + sx) * 3 + c] / 127.5f - 1.0f;
        if (o[(size_t(c) * S + y) * S + x] != want) return false;
      }
  return true;
}

// nshards shards of `per` samples each ("s<shard>/<i>" keys, w x h PNGs with tag shard*1000+i).
std::vector<std::string> make_shards(const std::string& dir, int nshards, int per, int w, int h) {
  std::vector<std::string> out;
  for (int s = 0; s < nshards; ++s) {
    char name[64];
    std::snprintf(name, sizeof(name), "/d-%05d.tar", s);
    ShardWriter wr([&](int64_t) { return dir + name; }, 1 << 20, uint64_t(1) << 40);
    for (int i = 0; i < per; ++i) {
      const std::string png = png_bytes(dir, w, h, s * 1000 + i);
      const std::string cap = "caption " + std::to_string(s) + "/" + std::to_string(i);
      wr.add("s" + std::to_string(s) + "/" + std::to_string(i), {{"png", png}, {"txt", cap}});
    }
    auto written = wr.finish();
    out.push_back(written.at(0));
  }
  return out;
}

std::string tensor_bytes(const Tensor& t) { return std::string(static_cast<const char*>(t.data()), t.nbytes()); }

// Keys and image bytes of batches, for exact comparisons.
std::vector<std::string> flatten(const std::vector<std::vector<Sample>>& batches) {
  std::vector<std::string> out;
  for (const auto& b : batches)
    for (const auto& s : b) out.push_back(s.key + "|" + std::to_string(s.epoch) + "|" + tensor_bytes(s.image));
  return out;
}

ShardOptions base_options(const std::vector<std::string>& shards, int S) {
  ShardOptions o;
  o.shards = shards;
  o.image_size = S;
  o.random_crop = true;
  o.flip = true;
  o.shuffle_buffer = 8;
  o.seed = 1;
  o.threads = 2;
  o.warn = [](const std::string&) {};
  return o;
}

// Reads every sample of tar bytes in memory, collecting the warnings.
struct ReadResult {
  std::vector<RawSample> samples;
  DataStats stats;
  std::vector<std::string> warnings;
};
ReadResult read_mem(const std::string& bytes, const std::string& name = "mem.tar") {
  ReadResult r;
  TarSampleReader rd(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name, &r.stats,
                     [&](const std::string& w) { r.warnings.push_back(w); });
  RawSample s;
  while (rd.next(s)) r.samples.push_back(s);
  return r;
}

}  // namespace

// ---------------------------------------------------------------- names and lists

TEST(Shards, MemberNames) {
  EXPECT_EQ(split_member_name("a/b.c/x.tar.GZ"), (std::pair<std::string, std::string>("a/b.c/x", "tar.gz")));
  EXPECT_EQ(split_member_name("0001.png"), (std::pair<std::string, std::string>("0001", "png")));
  EXPECT_EQ(split_member_name("dir/noext"), (std::pair<std::string, std::string>("dir/noext", "")));
  EXPECT_TRUE(is_safe_member_name("a/b/c.png"));
  EXPECT_TRUE(is_safe_member_name("a..b.png"));
  EXPECT_FALSE(is_safe_member_name("/etc/passwd"));
  EXPECT_FALSE(is_safe_member_name("../x.png"));
  EXPECT_FALSE(is_safe_member_name("a/../../x.png"));
  EXPECT_FALSE(is_safe_member_name("a/.."));
  EXPECT_FALSE(is_safe_member_name(""));
  EXPECT_FALSE(is_safe_member_name("a\nb.png"));
  EXPECT_EQ(key_from_path("a/b.c.png"), "a/b_c");
  EXPECT_EQ(key_from_path("../up/x.jpg"), "up/x");
  EXPECT_EQ(key_from_path("/abs/./y.jpeg"), "abs/y");
  EXPECT_EQ(key_from_path(".png"), "_png");  // a dot file: no extension
  EXPECT_EQ(key_from_path("../.."), "sample");
  EXPECT_TRUE(is_utf8("빨간 사과"));
  EXPECT_FALSE(is_utf8("\xc0\xaf"));      // overlong
  EXPECT_FALSE(is_utf8("\xed\xa0\x80"));  // surrogate
  EXPECT_FALSE(is_utf8("abc\xe2\x82"));   // cut
}

class ShardsDir : public TempDirTest {};

TEST_F(ShardsDir, ExpandShards) {
  for (int i = 0; i < 12; ++i) {
    char n[32];
    std::snprintf(n, sizeof(n), "/e-%05d.tar", i);
    test::write_bytes(dir + n, "x");
  }
  test::write_bytes(p("notes.txt"), "x");
  auto all = expand_shards(dir);
  ASSERT_EQ(all.size(), 12u);
  EXPECT_EQ(all[0], dir + "/e-00000.tar");
  EXPECT_EQ(all[11], dir + "/e-00011.tar");
  EXPECT_EQ(expand_shards(dir + "/"), all);
  auto r = expand_shards(dir + "/e-{00002..00004}.tar");
  EXPECT_EQ(r, (std::vector<std::string>{dir + "/e-00002.tar", dir + "/e-00003.tar", dir + "/e-00004.tar"}));
  auto c = expand_shards(dir + "/e-00007.tar," + dir + "/e-0000[0-1].tar");
  EXPECT_EQ(c, (std::vector<std::string>{dir + "/e-00007.tar", dir + "/e-00000.tar", dir + "/e-00001.tar"}));
  EXPECT_EQ(expand_shards(dir + "/e-*.tar"), all);
  // errors name the spec and what is missing
  std::string e = test::error_of([&] { expand_shards(dir + "/e-{00010..00013}.tar"); });
  EXPECT_NE(e.find("e-00012.tar does not exist"), std::string::npos) << e;
  e = test::error_of([&] { expand_shards(dir + "/zz-*.tar"); });
  EXPECT_NE(e.find("matches no file"), std::string::npos) << e;
  e = test::error_of([&] { expand_shards(dir + "/nope.tar"); });
  EXPECT_NE(e.find("nope.tar"), std::string::npos) << e;
  e = test::error_of([&] { expand_shards(dir + "/e-{3..x}.tar"); });
  EXPECT_NE(e.find("{FIRST..LAST}"), std::string::npos) << e;
  std::filesystem::create_directory(p("empty"));
  e = test::error_of([&] { expand_shards(p("empty")); });
  EXPECT_NE(e.find("no .tar file"), std::string::npos) << e;
  e = test::error_of([&] { expand_shards(",b.tar"); });
  EXPECT_NE(e.find("empty entry"), std::string::npos) << e;
}

// ---------------------------------------------------------------- round trip

TEST_F(ShardsDir, RoundTripExactPixels) {
  const std::string png0 = png_bytes(dir, 64, 64, 1), png1 = png_bytes(dir, 64, 64, 2);
  const std::string json = R"({"captions":["red apple, google style","빨간 사과, 구글 스타일"]})";
  ShardWriter w([&](int64_t i) { return p("rt-" + std::to_string(i) + ".tar"); }, 100, 1 << 30);
  w.add("emoji/apple", {{"png", png0}, {"txt", "red apple"}, {"json", json}});
  w.add("emoji/사과", {{"png", png1}, {"txt", "빨간 사과"}});
  auto shards = w.finish();
  ASSERT_EQ(shards.size(), 1u);

  ShardOptions o = base_options(shards, 64);
  std::vector<Sample> got;
  DataStats st = for_each_sample(o, [&](Sample&& s) { got.push_back(std::move(s)); });
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(st.samples, 2);
  EXPECT_EQ(st.problems(), 0);
  EXPECT_EQ(got[0].key, "emoji/apple");
  EXPECT_EQ(got[0].caption, "red apple");
  EXPECT_EQ(got[0].json, json);
  EXPECT_EQ(got[0].shard, shards[0]);
  EXPECT_EQ(got[1].key, "emoji/사과");
  EXPECT_EQ(got[1].caption, "빨간 사과");
  EXPECT_EQ(got[1].json, "");
  // S = 64 = the picture: no resampling, every value exactly pixel/127.5 - 1.
  ASSERT_EQ(got[0].image.shape(), (Shape{3, 64, 64}));
  EXPECT_TRUE(window_equals(got[0].image, pixels(64, 64, 1), 64, 64, 0, 0, false));
  EXPECT_TRUE(window_equals(got[1].image, pixels(64, 64, 2), 64, 64, 0, 0, false));
  // ... and the same tensor load_image_for_model makes of the picture (at a resampling size too).
  for (int S : {64, 40}) {
    o.image_size = S;
    std::vector<Sample> g2;
    for_each_sample(o, [&](Sample&& s) { g2.push_back(std::move(s)); });
    Tensor ref = decode_image_for_model(reinterpret_cast<const uint8_t*>(png0.data()), png0.size(), S, "ref");
    EXPECT_EQ(tensor_bytes(g2[0].image), tensor_bytes(ref)) << "S=" << S;
  }

  // The writer's output is a plain tar: the hand-made reader path agrees on member names.
  auto r = read_mem(test::read_all(shards[0]));
  ASSERT_EQ(r.samples.size(), 2u);
  EXPECT_EQ(r.samples[0].image, png0);
  EXPECT_EQ(r.samples[1].image_name, "emoji/사과.png");
}

TEST_F(ShardsDir, WriterSplitsAndIsDeterministic) {
  const std::string png = png_bytes(dir, 8, 8, 3);
  auto write = [&](const std::string& tag, int64_t max_count, uint64_t max_bytes) {
    ShardWriter w([&](int64_t i) { return p(tag + "-" + std::to_string(i) + ".tar"); }, max_count, max_bytes);
    for (int i = 0; i < 7; ++i) w.add("k" + std::to_string(i), {{"png", png}, {"txt", "c" + std::to_string(i)}});
    return w.finish();
  };
  auto a = write("a", 3, 1 << 30);
  ASSERT_EQ(a.size(), 3u);  // 3 + 3 + 1
  auto b = write("b", 3, 1 << 30);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(test::read_all(a[i]), test::read_all(b[i])) << i;
  DataStats st;
  for (const auto& s : a) {
    TarSampleReader r(s, &st, {});
    RawSample x;
    while (r.next(x)) {
    }
  }
  EXPECT_EQ(st.samples, 7);
  EXPECT_EQ(st.shards, 3);
  // by size: a sample is one 512-byte header + data blocks per member; two samples per shard
  const uint64_t one = ShardWriter::sample_bytes("k0", {{"png", png}, {"txt", "c0"}});
  auto c = write("c", 100, 1024 + 2 * one);
  EXPECT_EQ(c.size(), 4u);  // 2 + 2 + 2 + 1
  for (const auto& s : c) EXPECT_LE(std::filesystem::file_size(s), 1024 + 2 * one);
  // unusable keys are refused
  ShardWriter w([&](int64_t) { return p("bad.tar"); }, 10, 1 << 20);
  EXPECT_NE(test::error_of([&] { w.add("../x", {{"txt", "t"}}); }).find("not usable"), std::string::npos);
  EXPECT_NE(test::error_of([&] { w.add("a.b", {{"txt", "t"}}); }).find("not usable"), std::string::npos);
}

TEST_F(ShardsDir, WriterFailureLeavesNoFile) {
  const std::string png = png_bytes(dir, 8, 8, 3);
  std::string e = test::error_of([&] {
    ShardWriter w([&](int64_t) { return p("missing/x.tar"); }, 10, 1 << 20);
    w.add("k", {{"png", png}, {"txt", "t"}});
  });
  EXPECT_NE(e.find("missing/x.tar"), std::string::npos) << e;
  {
    ShardWriter w([&](int64_t) { return p("unfinished.tar"); }, 10, 1 << 20);
    w.add("k", {{"png", png}, {"txt", "t"}});
  }  // destroyed without finish()
  for (const auto& entry : std::filesystem::directory_iterator(dir)) ADD_FAILURE() << "left behind: " << entry.path();
}

// ---------------------------------------------------------------- determinism and resume

TEST_F(ShardsDir, DeterministicPerSeed) {
  auto shards = make_shards(dir, 3, 10, 24, 16);  // 30 samples, random crops along x
  auto run = [&](uint64_t seed, int threads, int B, int n) {
    ShardOptions o = base_options(shards, 16);
    o.seed = seed;
    o.threads = threads;
    ShardDataset ds(o);
    std::vector<std::vector<Sample>> out;
    for (int i = 0; i < n; ++i) out.push_back(ds.next_batch(B));
    return flatten(out);
  };
  const auto a = run(1, 2, 4, 10), b = run(1, 2, 4, 10);
  EXPECT_EQ(a, b);
  EXPECT_EQ(run(1, 1, 4, 10), a);  // thread count does not matter
  EXPECT_EQ(run(1, 3, 8, 5), a);   // nor the batch size
  EXPECT_NE(run(2, 2, 4, 10), a);  // another seed: another order
  // every epoch holds each sample once
  ShardOptions o = base_options(shards, 16);
  ShardDataset ds(o);
  std::multiset<std::string> keys0, keys1;
  for (int i = 0; i < 15; ++i)
    for (auto& s : ds.next_batch(4)) (s.epoch == 0 ? keys0 : keys1).insert(s.key);
  EXPECT_EQ(keys0.size(), 30u);
  EXPECT_EQ(std::set<std::string>(keys0.begin(), keys0.end()).size(), 30u);
  EXPECT_EQ(keys1.size(), 30u);
  EXPECT_EQ(ds.epoch_size(), 30);
  EXPECT_EQ(ds.state(), (DataState{1, 30}));  // epoch 1 ends when a sample past it is asked for
}

TEST_F(ShardsDir, ResumeMidEpochAndAcrossBoundary) {
  auto shards = make_shards(dir, 3, 10, 24, 16);
  ShardOptions o = base_options(shards, 16);
  ShardDataset full(o);
  std::vector<std::vector<Sample>> all;
  for (int i = 0; i < 12; ++i) all.push_back(full.next_batch(4));  // 48 samples: epoch 0 ends at 30
  for (int cut : {7, 3}) {
    ShardDataset first(o);
    DataState st;
    for (int i = 0; i < cut; ++i) first.next_batch(4);
    st = first.state();
    EXPECT_EQ(st, (DataState{0, 4 * cut}));
    ShardDataset resumed(o);
    resumed.restore(st);
    std::vector<std::vector<Sample>> rest, want(all.begin() + cut, all.begin() + cut + 5);
    for (int i = 0; i < 5; ++i) rest.push_back(resumed.next_batch(4));
    EXPECT_EQ(flatten(rest), flatten(want)) << "cut after " << cut << " batches";
  }
  // a state exactly at the end of epoch 0, and one inside epoch 1
  ShardDataset a(o);
  for (int i = 0; i < 6; ++i) a.next_batch(5);
  EXPECT_EQ(a.state(), (DataState{0, 30}));
  const auto next_a = flatten({a.next_batch(5)});
  EXPECT_EQ(a.state(), (DataState{1, 5}));
  ShardDataset b(o);
  b.restore(DataState{0, 30});
  EXPECT_EQ(flatten({b.next_batch(5)}), next_a);
  const auto after = flatten({a.next_batch(5)});
  ShardDataset c(o);
  c.restore(DataState{1, 5});
  EXPECT_EQ(flatten({c.next_batch(5)}), after);
  // a state past the data says so
  ShardDataset d(o);
  std::string e = test::error_of([&] { d.restore(DataState{0, 31}); });
  EXPECT_NE(e.find("holds 30 samples"), std::string::npos) << e;
}

TEST_F(ShardsDir, RandomCropAndFlipVary) {
  // One 40 x 16 picture at S = 16: the short side is S, so each output is exactly a window.
  const std::string png = png_bytes(dir, 40, 16, 5);
  const auto px = pixels(40, 16, 5);
  ShardWriter w([&](int64_t) { return p("one.tar"); }, 10, 1 << 20);
  w.add("only", {{"png", png}, {"txt", "one"}});
  auto shards = w.finish();
  ShardOptions o = base_options(shards, 16);
  ShardDataset ds(o);
  std::set<int> offsets;
  int flips = 0;
  const int n = 200;
  for (int i = 0; i < n; ++i) {
    Sample s = std::move(ds.next_batch(1)[0]);
    int found = -1;
    bool flipped = false;
    for (int x0 = 0; x0 <= 24 && found < 0; ++x0)
      for (bool f : {false, true})
        if (found < 0 && window_equals(s.image, px, 40, 16, x0, 0, f)) found = x0, flipped = f;
    ASSERT_GE(found, 0) << "sample " << i << " is no 16 x 16 window of the picture";
    offsets.insert(found);
    flips += flipped;
  }
  // 25 possible offsets, 200 draws: all but a few appear (each is missed with p ~ 3e-4).
  EXPECT_GE(offsets.size(), 20u);
  EXPECT_GT(flips, 60);  // Binomial(200, 0.5): outside [60, 140] with p ~ 1e-8
  EXPECT_LT(flips, 140);
  // evaluation: centre crop, no flip, always the same
  o.random_crop = false;
  o.flip = false;
  ShardDataset ev(o);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(window_equals(ev.next_batch(1)[0].image, px, 40, 16, 12, 0, false));
}

// ---------------------------------------------------------------- bad input

TEST_F(ShardsDir, BadMembersCountedOnce) {
  const std::string png = png_bytes(dir, 8, 8, 9);
  std::string t;
  t += tar_member("ok1.png", png) + tar_member("ok1.txt", "first");
  t += tar_header("link.png", 0, '2', "/etc/passwd") + tar_header("hard.png", 0, '1', "ok1.png");
  t += tar_header("dev.png", 0, '3') + tar_header("fifo.png", 0, '6');
  t += tar_member("../escape.png", png) + tar_member("/abs.txt", "x");
  t += tar_header("folder/", 0, '5');
  t += tar_member("dup.png", png) + tar_member("dup.jpg", png) + tar_member("dup.txt", "two images");
  t += tar_member("nocap.png", png);
  t += tar_member("noimg.txt", "caption only");
  t += tar_member("emptycap.png", png) + tar_member("emptycap.txt", " \n");
  t += tar_member("badutf.png", png) + tar_member("badutf.txt", "\xff\xfe");
  t += tar_member("extra.png", png) + tar_member("extra.txt", "extra") + tar_member("extra.cls", "3");
  t += tar_member("ok2.PNG", png) + tar_member("ok2.txt", "  second\n");
  t += tar_end();
  auto r = read_mem(t);
  std::vector<std::string> keys;
  for (const auto& s : r.samples) keys.push_back(s.key);
  EXPECT_EQ(keys, (std::vector<std::string>{"ok1", "dup", "extra", "ok2"}));
  EXPECT_EQ(r.samples.back().caption, "second");
  EXPECT_EQ(r.stats.samples, 4);
  EXPECT_EQ(r.stats.bad_members, 4 + 2 + 1 + 1);  // links/devices, unsafe names, second image, bad UTF-8
  EXPECT_EQ(r.stats.missing_captions, 2);         // nocap, emptycap
  EXPECT_EQ(r.stats.missing_images, 1);
  EXPECT_EQ(r.stats.ignored_members, 2);          // folder/, extra.cls
  EXPECT_EQ(r.stats.bad_shards, 0);
  EXPECT_EQ(r.stats.shards, 1);
  // one warning line per problem, naming the shard and the member
  EXPECT_EQ(int64_t(r.warnings.size()), r.stats.problems());
  for (const auto& w : r.warnings)
    EXPECT_TRUE(w.rfind("hwaga: warning: shard mem.tar: member ", 0) == 0 || w.rfind("hwaga: warning: shard mem.tar: sample ", 0) == 0) << w;
  auto has = [&](const std::string& s) {
    return std::any_of(r.warnings.begin(), r.warnings.end(), [&](const std::string& w) { return w.find(s) != std::string::npos; });
  };
  EXPECT_TRUE(has("link.png: symbolic link"));
  EXPECT_TRUE(has("hard.png: hard link"));
  EXPECT_TRUE(has("dev.png: character device"));
  EXPECT_TRUE(has("fifo.png: FIFO"));
  EXPECT_TRUE(has("../escape.png: unsafe name"));
  EXPECT_TRUE(has("dup.jpg: a second image"));
  EXPECT_TRUE(has("member nocap.png: sample has no caption"));
  EXPECT_TRUE(has("sample noimg: has no image"));
  EXPECT_TRUE(has("badutf.txt: caption is not UTF-8"));
}

TEST_F(ShardsDir, DamagedTruncatedHugeEmptyNotATar) {
  const std::string png = png_bytes(dir, 8, 8, 9);
  const std::string good = tar_member("a.png", png) + tar_member("a.txt", "a");
  const std::string tail = tar_member("z.png", png) + tar_member("z.txt", "z") + tar_end();
  {  // a damaged header (checksum) between two samples: one bad member, both samples read
    std::string bad = tar_member("b.png", png);
    bad[0] = 'X';  // the checksum no longer matches
    auto r = read_mem(good + bad + tar_member("b.txt", "b") + tail);
    EXPECT_EQ(r.stats.bad_members, 1);
    EXPECT_EQ(r.stats.missing_images, 1);  // b.txt lost its image
    EXPECT_EQ(r.stats.samples, 2);
    EXPECT_EQ(r.stats.bad_shards, 0);
    ASSERT_EQ(r.warnings.size(), 2u);
    EXPECT_NE(r.warnings[0].find("damaged member header at member 3"), std::string::npos) << r.warnings[0];
  }
  {  // truncated in the middle of a member: the samples before it are kept
    std::string t = good + tail;
    t.resize(good.size() + 700);
    auto r = read_mem(t);
    EXPECT_EQ(r.stats.samples, 1);
    EXPECT_EQ(r.stats.bad_shards, 1);
    EXPECT_EQ(r.stats.bad_members, 1);
    ASSERT_FALSE(r.warnings.empty());
    EXPECT_NE(r.warnings.back().find("z.png"), std::string::npos) << r.warnings.back();
  }
  {  // a member declaring ~8 GB (data absent): skipped unread, then the tar ends early
    auto r = read_mem(good + tar_header("huge.png", 077777777777ull, '0') + tar_member("huge.txt", "h") + tail);
    EXPECT_EQ(r.stats.samples, 1);
    EXPECT_EQ(r.stats.bad_members, 1);
    EXPECT_EQ(r.stats.bad_shards, 1);
    EXPECT_EQ(r.warnings.size(), 2u);
    EXPECT_NE(r.warnings.at(0).find("huge.png: declares 8589934591 bytes"), std::string::npos) << r.warnings.at(0);
  }
  {  // empty: 0 bytes, and a tar with only its end blocks
    auto r0 = read_mem("");
    auto r1 = read_mem(tar_end());
    EXPECT_EQ(r0.stats.empty_shards + r1.stats.empty_shards, 2);
    EXPECT_EQ(r0.stats.bad_shards + r1.stats.bad_shards, 0);
  }
  {  // not a tar
    auto r = read_mem(std::string(3000, 'x'));
    EXPECT_EQ(r.stats.bad_shards, 1);
    EXPECT_EQ(r.warnings.size(), 1u);
    EXPECT_NE(r.warnings.at(0).find("not a tar"), std::string::npos) << r.warnings.at(0);
  }
  {  // a missing file
    DataStats st;
    std::vector<std::string> w;
    TarSampleReader rd(p("gone.tar"), &st, [&](const std::string& s) { w.push_back(s); });
    RawSample s;
    EXPECT_FALSE(rd.next(s));
    EXPECT_EQ(st.bad_shards, 1);
    ASSERT_EQ(w.size(), 1u);
    EXPECT_NE(w[0].find("gone.tar"), std::string::npos);
  }
}

TEST_F(ShardsDir, ThousandsOfTinyMembers) {
  std::string t;
  for (int i = 0; i < 3000; ++i) t += tar_member("k" + std::to_string(i) + ".txt", "c");  // captions only
  for (int i = 0; i < 2000; ++i) t += tar_member("x" + std::to_string(i) + ".cls", "1");
  t += tar_end();
  auto r = read_mem(t);
  EXPECT_EQ(r.stats.samples, 0);
  EXPECT_EQ(r.stats.missing_images, 3000);
  EXPECT_EQ(r.stats.ignored_members, 2000);
  EXPECT_EQ(int(r.warnings.size()), kMaxWarningsPerShard + 1);  // then one "not shown" line
  EXPECT_NE(r.warnings.back().find("further warnings"), std::string::npos);
}

TEST_F(ShardsDir, DatasetCountsBadImagesAndShards) {
  auto shards = make_shards(dir, 1, 6, 16, 16);
  // a shard with an image that does not decode and one without caption
  const std::string png = png_bytes(dir, 16, 16, 77);
  test::write_bytes(p("bad.tar"), tar_member("junk.png", "not a picture at all") + tar_member("junk.txt", "junk") +
                                      tar_member("nocap.png", png) + tar_member("fine.png", png) +
                                      tar_member("fine.txt", "fine") + tar_end());
  test::write_bytes(p("empty.tar"), "");
  test::write_bytes(p("text.tar"), std::string(2000, 'q'));
  shards.push_back(p("bad.tar"));
  shards.push_back(p("empty.tar"));
  shards.push_back(p("text.tar"));
  ShardOptions o = base_options(shards, 16);
  std::vector<std::string> warnings;
  o.warn = [&](const std::string& w) { warnings.push_back(w); };
  ShardDataset ds(o);
  std::multiset<std::string> keys;
  for (int i = 0; i < 6; ++i)
    for (auto& s : ds.next_batch(3)) keys.insert(s.key);  // 18 = 2 epochs of 7 good + 4
  EXPECT_EQ(ds.epoch_size(), 8);                         // 6 + junk + fine
  const DataStats& st = ds.stats();
  EXPECT_EQ(st.bad_images, 1);
  EXPECT_EQ(st.missing_captions, 1);
  EXPECT_EQ(st.empty_shards, 1);
  EXPECT_EQ(st.bad_shards, 1);
  EXPECT_EQ(st.shards, 4);
  EXPECT_EQ(keys.count("junk"), 0u);
  EXPECT_EQ(keys.count("fine"), 2u);
  // each problem warned once, though the shards were read twice
  EXPECT_EQ(warnings.size(), 4u);
  const std::string sum = st.summary();
  EXPECT_NE(sum.find("1 image that does not decode"), std::string::npos) << sum;
  EXPECT_NE(sum.find("1 empty shard"), std::string::npos) << sum;

  // for_each_sample: the same counts in one ordered pass
  std::vector<std::string> order;
  DataStats fs = for_each_sample(o, [&](Sample&& s) { order.push_back(s.key); });
  EXPECT_EQ(order.size(), 7u);
  EXPECT_EQ(order.front(), "s0/0");
  EXPECT_EQ(order.back(), "fine");
  EXPECT_EQ(fs.bad_images, 1);
  EXPECT_EQ(fs.bad_shards, 1);
}

TEST_F(ShardsDir, AllDataBadIsAnError) {
  test::write_bytes(p("e.tar"), "");
  test::write_bytes(p("t.tar"), std::string(2000, 'q'));
  ShardOptions o = base_options({p("e.tar"), p("t.tar")}, 16);
  ShardDataset ds(o);
  std::string e = test::error_of([&] { ds.next_batch(2); });
  EXPECT_NE(e.find("no usable sample"), std::string::npos) << e;
  EXPECT_NE(e.find("e.tar"), std::string::npos) << e;
  e = test::error_of([&] { for_each_sample(o, [](Sample&&) {}); });
  EXPECT_NE(e.find("no usable sample"), std::string::npos) << e;
  // samples whose images never decode: an error after at most two epochs, not an endless loop
  test::write_bytes(p("junk.tar"), tar_member("a.png", "nope") + tar_member("a.txt", "a") +
                                       tar_member("b.jpg", "\xff\xd8\xff garbage") + tar_member("b.txt", "b") + tar_end());
  ShardDataset dj(base_options({p("junk.tar")}, 16));
  e = test::error_of([&] { dj.next_batch(1); });
  EXPECT_NE(e.find("no image decodes"), std::string::npos) << e;
  EXPECT_NE(e.find("junk.tar"), std::string::npos) << e;
  // bad options
  ShardOptions bad = o;
  bad.image_size = 0;
  EXPECT_NE(test::error_of([&] { ShardDataset x(bad); }).find("image size"), std::string::npos);
  bad = o;
  bad.shards.clear();
  EXPECT_NE(test::error_of([&] { ShardDataset x(bad); }).find("no shard"), std::string::npos);
}
