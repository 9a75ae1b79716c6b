#include "io/zip_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace hwaga {

// ---- FileBytes ----

std::shared_ptr<const FileBytes> FileBytes::map(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, ": cannot open (", std::strerror(errno), ")");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail(path, ": cannot stat (", std::strerror(e), ")");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, ": not a regular file");
  }
  std::shared_ptr<FileBytes> fb(new FileBytes());
  fb->size_ = size_t(st.st_size);
  if (fb->size_ > 0) {
    void* p = ::mmap(nullptr, fb->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      fail(path, ": cannot map ", fb->size_, " bytes (", std::strerror(e), ")");
    }
    fb->data_ = static_cast<const uint8_t*>(p);
    fb->mapped_ = true;
  }
  ::close(fd);  // the mapping stays valid
  return fb;
}

std::shared_ptr<const FileBytes> FileBytes::copy(const void* data, size_t size) {
  std::shared_ptr<FileBytes> fb(new FileBytes());
  // 64-byte aligned like a page-aligned mapping, so that stored entries can be viewed in place.
  size_t n = (size + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, n ? n : 64);
  if (!p) fail("out of memory copying ", size, " bytes");
  if (size) std::memcpy(p, data, size);
  fb->data_ = static_cast<const uint8_t*>(p);
  fb->size_ = size;
  return fb;
}

FileBytes::~FileBytes() {
  if (mapped_)
    ::munmap(const_cast<uint8_t*>(data_), size_);
  else
    std::free(const_cast<uint8_t*>(data_));
}

// ---- little-endian field reads, always bounds-checked by the caller ----

static uint16_t rd16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
static uint32_t rd32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
static uint64_t rd64(const uint8_t* p) { return uint64_t(rd32(p)) | (uint64_t(rd32(p + 4)) << 32); }

static constexpr uint32_t kSigLocal = 0x04034b50;
static constexpr uint32_t kSigCentral = 0x02014b50;
static constexpr uint32_t kSigEocd = 0x06054b50;
static constexpr uint32_t kSigEocd64 = 0x06064b50;
static constexpr uint32_t kSigEocd64Locator = 0x07064b50;
static constexpr size_t kEocdSize = 22, kEocd64Size = 56, kLocatorSize = 20, kCentralSize = 46,
                        kLocalSize = 30;

// a + b <= limit without overflow
static bool fits(uint64_t a, uint64_t b, uint64_t limit) { return a <= limit && b <= limit - a; }

ZipReader::ZipReader(std::shared_ptr<const FileBytes> bytes, std::string path)
    : bytes_(std::move(bytes)), path_(std::move(path)) {
  const uint8_t* d = bytes_->data();
  const uint64_t n = bytes_->size();
  const bool zip_magic = n >= 4 && rd32(d) == kSigLocal;
  auto no_eocd = [&]() {
    if (zip_magic) fail(path_, ": zip archive is truncated (no end-of-central-directory record)");
    if (n >= 2 && d[0] == 0x80 && d[1] <= 5)
      fail(path_, ": legacy (PyTorch < 1.6) torch.save format, which hwaga does not read; "
                  "re-save it with a newer PyTorch (torch.save(torch.load(f), f))");
    fail(path_, ": not a zip archive (expected a torch.save checkpoint, PyTorch >= 1.6)");
  };
  if (n < kEocdSize) no_eocd();

  // The EOCD record sits at the end, followed by a comment of at most 65535 bytes.
  uint64_t eocd = UINT64_MAX;
  uint64_t lowest = n - kEocdSize > 65535 ? n - kEocdSize - 65535 : 0;
  for (uint64_t p = n - kEocdSize + 1; p-- > lowest;) {
    if (rd32(d + p) == kSigEocd && p + kEocdSize + rd16(d + p + 20) <= n) {
      eocd = p;
      break;
    }
  }
  if (eocd == UINT64_MAX) no_eocd();

  const uint8_t* e = d + eocd;
  uint64_t disk = rd16(e + 4), cd_disk = rd16(e + 6);
  uint64_t count_disk = rd16(e + 8), count = rd16(e + 10);
  uint64_t cd_size = rd32(e + 12), cd_offset = rd32(e + 16);

  // zip64: a locator just before the EOCD points at the zip64 EOCD record.
  if (eocd >= kLocatorSize && rd32(d + eocd - kLocatorSize) == kSigEocd64Locator) {
    const uint8_t* loc = d + eocd - kLocatorSize;
    uint64_t off = rd64(loc + 8);
    if (!fits(off, kEocd64Size, eocd - kLocatorSize) || rd32(d + off) != kSigEocd64)
      fail(path_, ": bad zip64 end-of-central-directory locator (points at offset ", off,
           ", which holds no zip64 record)");
    const uint8_t* z = d + off;
    disk = rd32(z + 16);
    cd_disk = rd32(z + 20);
    count_disk = rd64(z + 24);
    count = rd64(z + 32);
    cd_size = rd64(z + 40);
    cd_offset = rd64(z + 48);
  } else if (count == 0xffff || cd_size == 0xffffffffu || cd_offset == 0xffffffffu) {
    fail(path_, ": zip64 archive without its zip64 end-of-central-directory locator (truncated?)");
  }
  if (disk != 0 || cd_disk != 0 || count_disk != count)
    fail(path_, ": multi-disk zip archives are not supported");
  if (!fits(cd_offset, cd_size, eocd))
    fail(path_, ": central directory (offset ", cd_offset, ", ", cd_size,
         " bytes) lies outside the file (truncated?)");
  if (count > cd_size / kCentralSize)
    fail(path_, ": central directory claims ", count, " entries in ", cd_size, " bytes");

  entries_.reserve(size_t(count));
  uint64_t p = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < count; ++i) {
    if (!fits(p, kCentralSize, cd_end) || rd32(d + p) != kSigCentral)
      fail(path_, ": bad central directory entry ", i, " at offset ", p);
    const uint8_t* c = d + p;
    ZipEntry z;
    z.flags = rd16(c + 8);
    z.method = rd16(c + 10);
    z.crc32 = rd32(c + 16);
    z.compressed_size = rd32(c + 20);
    z.uncompressed_size = rd32(c + 24);
    uint64_t name_len = rd16(c + 28), extra_len = rd16(c + 30), comment_len = rd16(c + 32);
    uint64_t disk_start = rd16(c + 34);
    z.local_header_offset = rd32(c + 42);
    if (!fits(p + kCentralSize, name_len + extra_len + comment_len, cd_end))
      fail(path_, ": central directory entry ", i, " runs past the directory's end");
    z.name.assign(reinterpret_cast<const char*>(c + kCentralSize), size_t(name_len));

    // zip64 extended information: 8-byte values for exactly the fields saturated above.
    const uint8_t* x = c + kCentralSize + name_len;
    const uint8_t* x_end = x + extra_len;
    while (x_end - x >= 4) {
      uint16_t id = rd16(x), len = rd16(x + 2);
      if (len > x_end - x - 4) fail(path_, ": entry '", z.name, "': bad extra field length");
      if (id == 0x0001) {
        const uint8_t* f = x + 4;
        const uint8_t* f_end = f + len;
        auto take64 = [&](uint64_t& v) {
          if (f_end - f < 8) fail(path_, ": entry '", z.name, "': zip64 extra field too short");
          v = rd64(f);
          f += 8;
        };
        if (z.uncompressed_size == 0xffffffffu) take64(z.uncompressed_size);
        if (z.compressed_size == 0xffffffffu) take64(z.compressed_size);
        if (z.local_header_offset == 0xffffffffu) take64(z.local_header_offset);
        if (disk_start == 0xffff) {
          if (f_end - f < 4) fail(path_, ": entry '", z.name, "': zip64 extra field too short");
          disk_start = rd32(f);
        }
      }
      x += 4 + len;
    }
    if (disk_start != 0) fail(path_, ": entry '", z.name, "' starts on another disk");
    if (!index_.emplace(z.name, entries_.size()).second)
      fail(path_, ": zip archive holds entry '", z.name, "' twice");
    entries_.push_back(std::move(z));
    p += kCentralSize + name_len + extra_len + comment_len;
  }
}

const ZipEntry* ZipReader::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &entries_[it->second];
}

std::span<const uint8_t> ZipReader::data(const ZipEntry& e) const {
  const uint8_t* d = bytes_->data();
  const uint64_t n = bytes_->size();
  if (e.flags & 1) fail(path_, ": entry '", e.name, "' is encrypted");
  if (e.method != 0)
    fail(path_, ": entry '", e.name, "' is compressed (zip method ", e.method,
         "); torch.save stores entries uncompressed, so re-save the checkpoint with torch.save");
  if (e.compressed_size != e.uncompressed_size)
    fail(path_, ": stored entry '", e.name, "' has compressed size ", e.compressed_size,
         " != uncompressed size ", e.uncompressed_size);
  uint64_t h = e.local_header_offset;
  if (!fits(h, kLocalSize, n) || rd32(d + h) != kSigLocal)
    fail(path_, ": entry '", e.name, "': no local file header at offset ", h, " (truncated?)");
  const uint64_t name_len = rd16(d + h + 26);
  if (name_len != e.name.size() || !fits(h + kLocalSize, name_len, n) ||
      std::memcmp(d + h + kLocalSize, e.name.data(), e.name.size()) != 0)
    fail(path_, ": entry '", e.name, "': its local file header at offset ", h, " names another entry");
  uint64_t start = h + kLocalSize + name_len + rd16(d + h + 28);
  if (!fits(start, e.compressed_size, n))
    fail(path_, ": entry '", e.name, "' (", e.compressed_size, " bytes at offset ", start,
         ") runs past the end of the file (", n, " bytes; truncated?)");
  return {d + start, size_t(e.compressed_size)};
}

static const std::array<uint32_t, 256>& crc_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  return table;
}

uint32_t crc32_update(uint32_t crc, const uint8_t* data, size_t n) {
  const auto& t = crc_table();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = t[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

void ZipReader::verify_crc(const ZipEntry& e) const {
  std::span<const uint8_t> s = data(e);
  uint32_t c = crc32_update(0, s.data(), s.size());
  if (c != e.crc32)
    fail(path_, ": entry '", e.name, "' is corrupt (CRC-32 ", c, ", the archive says ", e.crc32, ")");
}

}  // namespace hwaga
