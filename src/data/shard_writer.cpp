// Tar shard writer: libarchive writes through a callback into an AtomicFile.
#include "data/shard_writer.h"

#include <archive.h>
#include <archive_entry.h>

#include "core/error.h"
#include "data/tar_samples.h"
#include "data/utf8_locale.h"
#include "io/atomic_file.h"

namespace hwaga::data {

struct ShardWriter::Open {
  std::unique_ptr<AtomicFile> file;
  struct archive* ar = nullptr;
  std::string io_error;  // the AtomicFile's message when a write fails (disk full...)
  ~Open() {
    if (ar) archive_write_free(ar);  // an unfinished shard; then AtomicFile removes the file
  }
  static la_ssize_t write_cb(struct archive*, void* client, const void* buf, size_t n) {
    auto* o = static_cast<Open*>(client);
    return o->file->try_write(buf, n, &o->io_error) ? la_ssize_t(n) : la_ssize_t(-1);
  }
  const char* message() const {
    if (!io_error.empty()) return io_error.c_str();
    const char* m = ar ? archive_error_string(ar) : nullptr;
    return m ? m : "libarchive error";
  }
};

namespace {

uint64_t padded(uint64_t n) { return (n + 511) / 512 * 512; }

// Header bytes of one member: 512, plus a pax extended header (two more blocks at most for
// the names hwaga writes) when the name does not fit ustar's 100 (+155 prefix) ASCII bytes.
uint64_t header_bytes(const std::string& name) {
  bool ascii = true;
  for (unsigned char c : name) ascii = ascii && c < 0x80;
  return ascii && name.size() <= 100 ? 512 : 512 + 512 + padded(name.size() + 64);
}

}  // namespace

ShardWriter::ShardWriter(std::function<std::string(int64_t)> name_for, int64_t max_count, uint64_t max_bytes)
    : name_for_(std::move(name_for)), max_count_(max_count), max_bytes_(max_bytes) {
  if (max_count_ < 1) fail("shard writer: max count ", max_count_, " must be at least 1");
  if (max_bytes_ < 1) fail("shard writer: max size must be at least 1 byte");
}

ShardWriter::~ShardWriter() = default;  // an unfinished shard: Open's AtomicFile removes it

uint64_t ShardWriter::sample_bytes(const std::string& key,
                                   const std::vector<std::pair<std::string, std::string_view>>& fields) {
  uint64_t n = 0;
  for (const auto& [field, data] : fields) n += header_bytes(key + "." + field) + padded(data.size());
  return n;
}

void ShardWriter::start_shard() {
  const std::string path = name_for_(int64_t(written_.size()));
  Utf8LocaleScope utf8;
  auto o = std::make_unique<Open>();
  o->file = std::make_unique<AtomicFile>(path);
  o->ar = archive_write_new();
  if (!o->ar) fail("cannot write shard ", path, ": libarchive could not start");
  // pax_restricted: ustar headers, with a pax extension only for long or non-ASCII names.
  if (archive_write_set_format_pax_restricted(o->ar) != ARCHIVE_OK ||
      archive_write_add_filter_none(o->ar) != ARCHIVE_OK)
    fail("cannot write shard ", path, ": ", o->message());
  // No padding of the last block to 10 KiB: the tar ends after its two zero blocks.
  archive_write_set_bytes_in_last_block(o->ar, 1);
  if (archive_write_open2(o->ar, o.get(), nullptr, &Open::write_cb, nullptr, nullptr) != ARCHIVE_OK)
    fail("cannot write shard ", path, ": ", o->message());
  cur_ = std::move(o);
  cur_count_ = 0;
  cur_bytes_ = 1024;  // the end-of-archive blocks
}

void ShardWriter::add(const std::string& key, const std::vector<std::pair<std::string, std::string_view>>& fields) {
  if (!is_safe_member_name(key) || split_member_name(key).first != key)
    fail("shard writer: key \"", key, "\" is not usable (absolute, \"..\", control characters or a dot in its last part)");
  const uint64_t bytes = sample_bytes(key, fields);
  if (cur_ && (cur_count_ >= max_count_ || (cur_count_ > 0 && cur_bytes_ + bytes > max_bytes_))) close_shard();
  if (!cur_) start_shard();
  Utf8LocaleScope utf8;  // UTF-8 names in the pax headers whatever the process locale
  Open& o = *cur_;
  const std::string& path = o.file->path();
  for (const auto& [field, data] : fields) {
    if (field.empty()) fail("shard writer: empty field name for key \"", key, "\"");
    const std::string name = key + "." + field;
    struct archive_entry* e = archive_entry_new();
    if (!e) fail("cannot write shard ", path, ": out of memory");
    archive_entry_set_pathname_utf8(e, name.c_str());
    archive_entry_set_size(e, la_int64_t(data.size()));
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_mtime(e, 0, 0);
    const int rc = archive_write_header(o.ar, e);
    archive_entry_free(e);
    if (rc != ARCHIVE_OK)
      fail("cannot write shard ", path, ": member ", name, ": ", o.message());
    if (!data.empty() && archive_write_data(o.ar, data.data(), data.size()) != la_ssize_t(data.size()))
      fail("cannot write shard ", path, ": member ", name, ": ", o.message());
  }
  ++cur_count_;
  cur_bytes_ += bytes;
}

void ShardWriter::close_shard() {
  Utf8LocaleScope utf8;
  Open& o = *cur_;
  if (archive_write_close(o.ar) != ARCHIVE_OK)
    fail("cannot write shard ", o.file->path(), ": ", o.message());
  archive_write_free(o.ar);
  o.ar = nullptr;
  o.file->commit();
  written_.push_back(o.file->path());
  cur_.reset();
}

std::vector<std::string> ShardWriter::finish() {
  if (cur_) close_shard();
  return written_;
}

}  // namespace hwaga::data
