// Fuzz target: arbitrary bytes as a tar shard for the sample assembler (data/tar_samples.h),
// read from memory through libarchive exactly as shard files are.
//
// Bad input never throws and never crashes: every sample that comes out has a key usable as a
// member name, a non-empty trimmed UTF-8 caption and members within kMaxMemberBytes; the
// counts add up (each sample counted once, no negative count, one shard read); warnings stay
// within the per-shard limit. The reader runs twice, the second time skipping image data (as
// `hwaga shards ls` does). (The two runs may differ where a tar is cut inside an image: read, it
// is a damaged member; skipped, the damage is found at the next header.)
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "data/tar_samples.h"

namespace {

[[noreturn]] void bad(const char* what) {
  std::fprintf(stderr, "fuzz_shard: %s\n", what);
  std::abort();
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::vector<std::string> read_all(const uint8_t* data, size_t size, bool skip_images) {
  using namespace hwaga::data;
  DataStats st;
  int warnings = 0;
  std::vector<std::string> seen;
  {
    TarSampleReader r(data, size, "fuzz.tar", &st, [&](const std::string& line) {
      ++warnings;
      if (line.find("fuzz.tar") == std::string::npos) bad("warning does not name the shard");
    });
    r.set_skip_images(skip_images);
    RawSample s;
    while (r.next(s)) {
      if (!is_safe_member_name(s.key) || split_member_name(s.key).first != s.key) bad("unusable key");
      if (s.caption.empty() || is_space(s.caption.front()) || is_space(s.caption.back())) bad("caption not trimmed");
      if (!is_utf8(s.caption)) bad("caption not UTF-8");
      if (int64_t(s.image.size()) > kMaxMemberBytes || int64_t(s.json.size()) > kMaxMemberBytes) bad("member too large");
      if (skip_images && !s.image.empty()) bad("image read although skipped");
      if (s.shard != "fuzz.tar") bad("wrong shard name");
      seen.push_back(s.key + '\n' + s.caption + '\n' + s.json);
    }
    if (r.next(s)) bad("a sample after the end");
  }
  if (st.samples != int64_t(seen.size())) bad("sample count differs from the samples read");
  if (st.shards != 1) bad("not exactly one shard counted");
  if (st.bad_members < 0 || st.missing_captions < 0 || st.missing_images < 0 || st.ignored_members < 0) bad("negative count");
  if (st.bad_shards + st.empty_shards > 1) bad("one shard counted as bad twice");
  if (warnings > kMaxWarningsPerShard + 1) bad("too many warning lines");
  return seen;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)read_all(data, size, false);
  (void)read_all(data, size, true);
  return 0;
}
