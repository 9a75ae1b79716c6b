// Tar shards -> samples (see tar_samples.h for the format and what counts as bad input).
//
// libarchive reads the tar as a stream (a file by blocks, or bytes in memory); nothing is ever
// written to disk. Only the tar format is enabled (plus libarchive's "empty" format, so that a
// 0-byte file reads as an empty shard rather than an unknown format): a shard that is not a tar
// is refused from its first block, and no decompressor sits in front of hostile bytes.
#include "data/tar_samples.h"

#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <sstream>
#include <utility>

#include "data/utf8_locale.h"

namespace hwaga::data {

// ---- stats ----

void DataStats::add(const DataStats& o) {
  samples += o.samples;
  bad_members += o.bad_members;
  bad_images += o.bad_images;
  missing_captions += o.missing_captions;
  missing_images += o.missing_images;
  empty_shards += o.empty_shards;
  bad_shards += o.bad_shards;
  ignored_members += o.ignored_members;
  shards += o.shards;
}

std::string DataStats::summary() const {
  std::ostringstream os;
  os << samples << (samples == 1 ? " sample" : " samples") << " from " << shards << (shards == 1 ? " shard" : " shards");
  std::vector<std::string> parts;
  auto part = [&](int64_t n, const char* one, const char* many) {
    if (n > 0) parts.push_back(std::to_string(n) + " " + (n == 1 ? one : many));
  };
  part(bad_members, "bad member", "bad members");
  part(bad_images, "image that does not decode", "images that do not decode");
  part(missing_captions, "sample without caption", "samples without caption");
  part(missing_images, "sample without image", "samples without image");
  part(empty_shards, "empty shard", "empty shards");
  part(bad_shards, "unreadable or damaged shard", "unreadable or damaged shards");
  if (!parts.empty()) {
    os << "; skipped: ";
    for (size_t i = 0; i < parts.size(); ++i) os << (i ? ", " : "") << parts[i];
  }
  if (ignored_members > 0) os << "; " << ignored_members << " other members ignored";
  return os.str();
}

// ---- names ----

std::pair<std::string, std::string> split_member_name(const std::string& name) {
  const size_t slash = name.rfind('/');
  const size_t base = slash == std::string::npos ? 0 : slash + 1;
  const size_t dot = name.find('.', base);
  if (dot == std::string::npos) return {name, ""};
  std::string field = name.substr(dot + 1);
  for (char& c : field)
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  return {name.substr(0, dot), field};
}

bool is_safe_member_name(const std::string& name) {
  if (name.empty() || name[0] == '/') return false;
  for (unsigned char c : name)
    if (c < 0x20 || c == 0x7f) return false;
  size_t start = 0;
  for (;;) {
    const size_t end = name.find('/', start);
    const std::string part = name.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (part == "..") return false;
    if (end == std::string::npos) return true;
    start = end + 1;
  }
}

bool is_utf8(const std::string& s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int len;
    uint32_t cp, min;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (i + size_t(len) > n) return false;
    for (int k = 1; k < len; ++k) {
      const unsigned char d = static_cast<unsigned char>(s[i + size_t(k)]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += size_t(len);
  }
  return true;
}

namespace {

bool is_image_field(const std::string& f) { return f == "png" || f == "jpg" || f == "jpeg" || f == "webp"; }

std::string trim(const std::string& s) {
  auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
  size_t b = 0, e = s.size();
  while (b < e && ws(s[b])) ++b;
  while (e > b && ws(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// A member name for messages: control characters escaped, long names shortened.
std::string printable(const std::string& name) {
  std::string out;
  for (unsigned char c : name) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(char(c));
    }
    if (out.size() > 200) return out + "...";
  }
  return out;
}

const char* archive_message(struct archive* a) {
  const char* m = archive_error_string(a);
  return m ? m : "unknown libarchive error";
}

}  // namespace

// ---- the reader ----

struct TarSampleReader::Member {
  std::string name, key, field;
  std::string data;
};

struct TarSampleReader::Group {
  std::string key;
  std::string image_name, image, caption, json;
  bool has_image = false, has_caption = false, has_json = false;
  bool spoiled = false;  // a member it needed was bad (already warned about)
};

TarSampleReader::TarSampleReader(const std::string& path, DataStats* stats, WarnFn warn_fn, bool quiet)
    : name_(path), stats_(stats), warn_(std::move(warn_fn)), quiet_(quiet) {
  Utf8LocaleScope utf8;
  ar_ = archive_read_new();
  if (!ar_) {
    open_common(ARCHIVE_FATAL);
    return;
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    warn("", "cannot open (missing or not a regular file)");
    ++stats_->bad_shards;
    end_shard();
    return;
  }
  archive_read_support_format_tar(ar_);
  archive_read_support_format_empty(ar_);
  open_common(archive_read_open_filename(ar_, path.c_str(), 1 << 16));
}

TarSampleReader::TarSampleReader(const uint8_t* data, size_t size, const std::string& name, DataStats* stats,
                                 WarnFn warn_fn, bool quiet)
    : name_(name), stats_(stats), warn_(std::move(warn_fn)), quiet_(quiet) {
  Utf8LocaleScope utf8;
  ar_ = archive_read_new();
  if (ar_) {
    archive_read_support_format_tar(ar_);
    archive_read_support_format_empty(ar_);
  }
  static const uint8_t kNone = 0;
  open_common(ar_ ? archive_read_open_memory(ar_, size ? data : &kNone, size) : ARCHIVE_FATAL);
}

void TarSampleReader::open_common(int rc) {
  if (rc == ARCHIVE_OK) return;
  warn("", std::string("not a tar file (") + (ar_ ? archive_message(ar_) : "libarchive could not start") + ")");
  ++stats_->bad_shards;
  end_shard();
}

TarSampleReader::~TarSampleReader() {
  if (ar_) archive_read_free(ar_);
}

void TarSampleReader::end_shard() {
  if (done_) return;
  done_ = true;
  ++stats_->shards;
  if (ar_) {
    archive_read_free(ar_);
    ar_ = nullptr;
  }
}

void TarSampleReader::warn(const std::string& member, const std::string& what) {
  if (quiet_) return;
  ++warnings_;
  if (warnings_ > kMaxWarningsPerShard + 1) return;
  std::string line = "hwaga: warning: shard " + name_ + ": ";
  if (warnings_ == kMaxWarningsPerShard + 1)
    line += "more problems; further warnings for this shard are not shown (they are counted)";
  else
    line += (member.empty() ? "" : (member[0] == '\n' ? "sample " + printable(member.substr(1)) : "member " + printable(member)) + ": ") + what;
  if (warn_)
    warn_(line);
  else
    std::fprintf(stderr, "%s\n", line.c_str());
}

// Reads the next member that belongs to a sample (image, caption or json; its data read) into
// m. Members that are skipped (bad, ignored, folders) are counted here and never returned.
bool TarSampleReader::read_member(Member& m) {
  for (;;) {
    if (done_) return false;
    struct archive_entry* e = nullptr;
    const int rc = archive_read_next_header(ar_, &e);
    if (rc == ARCHIVE_EOF) {
      if (members_ == 0) {
        warn("", "empty shard (no member)");
        ++stats_->empty_shards;
      }
      end_shard();
      return false;
    }
    if (rc == ARCHIVE_RETRY) {
      // A damaged header: libarchive drops that block and looks for the next header. A run of
      // damaged blocks (a header and its data) counts as one bad member.
      if (!in_bad_run_) {
        warn("", "damaged member header at member " + std::to_string(members_ + 1) + " skipped (" +
                     archive_message(ar_) + ")");
        ++stats_->bad_members;
        in_bad_run_ = true;
      }
      ++members_;
      continue;
    }
    if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) {
      warn("", std::string(members_ == 0 ? "not a tar file: " : "damaged or truncated after ") +
                   (members_ == 0 ? "" : std::to_string(members_) + " members: ") + archive_message(ar_));
      ++stats_->bad_shards;
      end_shard();
      return false;
    }
    in_bad_run_ = false;
    ++members_;

    const char* n = archive_entry_pathname_utf8(e);
    if (!n) n = archive_entry_pathname(e);
    m.name = n ? n : "";
    const mode_t type = archive_entry_filetype(e);
    if (type == AE_IFDIR) {
      ++stats_->ignored_members;
      continue;
    }
    if (archive_entry_hardlink(e) || type != AE_IFREG) {
      const char* kind = archive_entry_hardlink(e) ? "hard link"
                         : type == AE_IFLNK       ? "symbolic link"
                         : type == AE_IFCHR       ? "character device"
                         : type == AE_IFBLK       ? "block device"
                         : type == AE_IFIFO       ? "FIFO"
                         : type == AE_IFSOCK      ? "socket"
                                                  : "entry of unknown type";
      warn(m.name, std::string(kind) + " skipped (only regular files are read)");
      ++stats_->bad_members;
      continue;
    }
    if (!is_safe_member_name(m.name)) {
      warn(m.name, "unsafe name skipped (empty, absolute, \"..\" or control characters)");
      ++stats_->bad_members;
      continue;
    }
    std::tie(m.key, m.field) = split_member_name(m.name);
    const bool image = is_image_field(m.field);
    if (!image && m.field != "txt" && m.field != "json") {
      ++stats_->ignored_members;
      continue;
    }
    const int64_t declared = archive_entry_size_is_set(e) ? archive_entry_size(e) : -1;
    if (declared > kMaxMemberBytes) {
      warn(m.name, "declares " + std::to_string(declared) + " bytes; members over " +
                       std::to_string(kMaxMemberBytes >> 20) + " MiB are skipped");
      ++stats_->bad_members;
      m.data.clear();
      m.field = "(too large)";
      return true;  // returned so that its sample is known to be spoiled
    }
    m.data.clear();
    if (image && skip_images_) {
      m.data.clear();
      return true;  // archive_read_next_header skips the data
    }
    if (declared > 0) m.data.reserve(size_t(declared));
    char buf[1 << 16];
    for (;;) {
      const la_ssize_t got = archive_read_data(ar_, buf, sizeof(buf));
      if (got == 0) break;
      if (got < 0) {
        warn(m.name, std::string("data cannot be read: ") + archive_message(ar_));
        ++stats_->bad_members;
        ++stats_->bad_shards;
        end_shard();
        m.field = "(unreadable)";
        return true;
      }
      if (int64_t(m.data.size()) + got > kMaxMemberBytes) {
        warn(m.name, "holds over " + std::to_string(kMaxMemberBytes >> 20) + " MiB; skipped");
        ++stats_->bad_members;
        m.field = "(too large)";
        m.data.clear();
        return true;
      }
      m.data.append(buf, size_t(got));
    }
    return true;
  }
}

void TarSampleReader::add_to_group(Group& g, Member&& m) {
  if (m.field[0] == '(') {  // too large or unreadable: already counted
    g.spoiled = true;
    return;
  }
  if (is_image_field(m.field)) {
    if (g.has_image) {
      warn(m.name, "a second image for key \"" + printable(g.key) + "\" skipped");
      ++stats_->bad_members;
      return;
    }
    g.has_image = true;
    g.image_name = std::move(m.name);
    g.image = std::move(m.data);
  } else if (m.field == "txt") {
    if (g.has_caption) {
      warn(m.name, "a second caption for key \"" + printable(g.key) + "\" skipped");
      ++stats_->bad_members;
      return;
    }
    if (!is_utf8(m.data)) {
      warn(m.name, "caption is not UTF-8; sample skipped");
      ++stats_->bad_members;
      g.spoiled = true;
      return;
    }
    g.has_caption = true;
    g.caption = trim(m.data);
  } else {  // json
    if (g.has_json) {
      warn(m.name, "a second json for key \"" + printable(g.key) + "\" skipped");
      ++stats_->bad_members;
      return;
    }
    g.has_json = true;
    g.json = std::move(m.data);
  }
}

// A finished group -> a sample, or the reason it is skipped.
bool TarSampleReader::finish_group(Group& g, RawSample& out) {
  if (g.spoiled && !(g.has_image && g.has_caption && !g.caption.empty())) return false;
  if (!g.has_image) {
    warn("\n" + g.key, "has no image (.png, .jpg, .jpeg or .webp); skipped");
    ++stats_->missing_images;
    return false;
  }
  if (!g.has_caption || g.caption.empty()) {
    warn(g.image_name, g.has_caption ? "caption is empty; sample skipped" : "sample has no caption (.txt); skipped");
    ++stats_->missing_captions;
    return false;
  }
  out.key = std::move(g.key);
  out.shard = name_;
  out.image_name = std::move(g.image_name);
  out.image = std::move(g.image);
  out.caption = std::move(g.caption);
  out.json = std::move(g.json);
  ++stats_->samples;
  return true;
}

bool TarSampleReader::next(RawSample& out) {
  Utf8LocaleScope utf8;  // member names come out as UTF-8
  Member m;
  while (read_member(m)) {
    if (pending_ && pending_->key == m.key) {
      add_to_group(*pending_, std::move(m));
      continue;
    }
    std::unique_ptr<Group> done = std::move(pending_);
    pending_ = std::make_unique<Group>();
    pending_->key = m.key;
    add_to_group(*pending_, std::move(m));
    if (done && finish_group(*done, out)) return true;
  }
  if (pending_) {
    std::unique_ptr<Group> done = std::move(pending_);
    if (finish_group(*done, out)) return true;
  }
  return false;
}

}  // namespace hwaga::data
