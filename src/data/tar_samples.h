// WebDataset-style tar shards, read as a stream of samples (libarchive; nothing is extracted).
//
// A shard is a tar whose members are grouped into samples by key: the member name up to the
// first dot of its basename ("emoji/0001.png" -> key "emoji/0001", field "png"; folders are
// part of the key). The members of one sample are adjacent. The fields hwaga reads:
//
//   <key>.png | .jpg | .jpeg | .webp   the image (encoded bytes; hwaga decodes PNG, JPEG, BMP
//                                      and GIF content whatever the extension says, not WebP)
//   <key>.txt                          the caption (UTF-8; surrounding whitespace trimmed)
//   <key>.json                         optional metadata (kept as text)
//
// Other fields are ignored (counted in DataStats::ignored_members). A sample needs an image and
// a non-empty caption; anything else is counted, warned about once and skipped, never fatal:
//
//   bad_members       symlinks, hard links, devices, FIFOs; names that are absolute, hold a ".."
//                     component or are empty; members over kMaxMemberBytes; a second image or
//                     caption for one key; a caption that is not UTF-8; damaged headers (a run
//                     of them counts once); a member whose data ends early
//   missing_captions  a sample with an image but no (or an empty) caption
//   missing_images    a sample with a caption but no image
//   empty_shards      a shard with no member at all (a 0-byte file included)
//   bad_shards        not a tar, unreadable, or truncated / corrupt part-way (the samples
//                     read before the damage are kept)
//   bad_images        images that fail to decode (counted by the dataset, which decodes)
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

struct archive;  // libarchive

namespace hwaga::data {

// Members larger than this are skipped (bad member) without reading their data.
inline constexpr int64_t kMaxMemberBytes = int64_t(64) << 20;
// Warning lines printed per shard; the rest are counted only (hostile shards hold millions).
inline constexpr int kMaxWarningsPerShard = 20;

struct DataStats {
  int64_t samples = 0;          // complete samples (image + caption) read; those whose image
                                // then fails to decode are also counted in bad_images
  int64_t bad_members = 0;
  int64_t bad_images = 0;
  int64_t missing_captions = 0;
  int64_t missing_images = 0;
  int64_t empty_shards = 0;
  int64_t bad_shards = 0;
  int64_t ignored_members = 0;  // fields hwaga does not read (.cls, .npy, ...) and folders
  int64_t shards = 0;           // shards read to their end (or to their damage)

  void add(const DataStats& o);
  int64_t problems() const {
    return bad_members + bad_images + missing_captions + missing_images + empty_shards + bad_shards;
  }
  // "120 samples from 3 shards; skipped: 2 bad members, 1 image that does not decode, ..."
  std::string summary() const;
};

// One sample as stored: encoded image bytes, caption, optional json.
struct RawSample {
  std::string key;
  std::string shard;       // the shard's name as given
  std::string image_name;  // the image member's name (for messages)
  std::string image;       // encoded bytes
  std::string caption;     // trimmed UTF-8, non-empty
  std::string json;        // "" when the sample has none
};

// Receives each warning line (without the trailing newline). Empty: print to stderr.
using WarnFn = std::function<void(const std::string&)>;

// The key and field of a member name: "a/b.c/x.tar.gz" -> {"a/b.c/x", "tar.gz"}; the field is
// lower-cased. A name without a dot in its basename has an empty field.
std::pair<std::string, std::string> split_member_name(const std::string& name);
// Whether a member name may be used as a key: not empty, not absolute, no ".." component,
// no NUL or control character.
bool is_safe_member_name(const std::string& name);
// Whether s is valid UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
bool is_utf8(const std::string& s);

// Reads one shard's samples in order, pulling members from libarchive as needed.
//
//   TarSampleReader r(path, stats, warn);      // never throws for bad data: see the counts
//   RawSample s; while (r.next(s)) use(s);
//
// `stats` (not owned) receives the counts; warnings go to `warn` when `quiet` is false.
class TarSampleReader {
 public:
  // A shard file. A missing or unreadable file counts as a bad shard.
  TarSampleReader(const std::string& path, DataStats* stats, WarnFn warn, bool quiet = false);
  // Tar bytes in memory (not copied: they must outlive the reader); `name` names them.
  TarSampleReader(const uint8_t* data, size_t size, const std::string& name, DataStats* stats, WarnFn warn,
                  bool quiet = false);
  ~TarSampleReader();
  TarSampleReader(const TarSampleReader&) = delete;
  TarSampleReader& operator=(const TarSampleReader&) = delete;

  // The next complete sample; false at the end of the shard (or at its damage).
  bool next(RawSample& out);
  // If `skip_images` is set, image members are not read (their bytes stay empty): for listing.
  void set_skip_images(bool skip) { skip_images_ = skip; }

 private:
  struct Member;
  struct Group;
  bool read_member(Member& m);  // false at the end of the shard
  void add_to_group(Group& g, Member&& m);
  bool finish_group(Group& g, RawSample& out);
  // One warning line naming the shard and `member` (or the sample, for "\n" + key).
  void warn(const std::string& member, const std::string& what);
  void open_common(int rc);
  void end_shard();

  std::string name_;
  DataStats* stats_;
  WarnFn warn_;
  bool quiet_;
  bool skip_images_ = false;
  struct archive* ar_ = nullptr;
  std::unique_ptr<Group> pending_;  // the sample being assembled
  int64_t members_ = 0;             // entries seen (any kind)
  int warnings_ = 0;
  bool in_bad_run_ = false;         // inside a run of damaged headers
  bool done_ = false;
};

}  // namespace hwaga::data
