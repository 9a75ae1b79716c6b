// A small read-only zip reader for the container torch.save writes (PyTorch >= 1.6): it reads the
// end-of-central-directory record (and its zip64 form, needed past 4 GiB or 65535 entries), the
// central directory (with zip64 extra fields) and each entry's local header. Entries are returned
// as spans into the bytes (an mmap of the file), so a 15 GB checkpoint costs no copy. Only stored
// (uncompressed) entries can be read; torch.save never compresses. Multi-disk archives,
// encryption and compression are refused with an error naming the file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace hwaga {

// The whole bytes of a file: a private read-only mmap, or an owned copy of a memory buffer.
class FileBytes {
 public:
  // Maps `path` read-only. Throws hwaga::Error naming `path` when it cannot be opened or mapped.
  static std::shared_ptr<const FileBytes> map(const std::string& path);
  // Copies `size` bytes (tests, fuzzing).
  static std::shared_ptr<const FileBytes> copy(const void* data, size_t size);
  ~FileBytes();
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  FileBytes() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
};

struct ZipEntry {
  std::string name;
  uint16_t flags = 0;
  uint16_t method = 0;  // 0 stored, 8 deflate
  uint32_t crc32 = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t local_header_offset = 0;
};

class ZipReader {
 public:
  // Parses the central directory of `bytes`; `path` names the file in every error.
  ZipReader(std::shared_ptr<const FileBytes> bytes, std::string path);

  const std::vector<ZipEntry>& entries() const { return entries_; }
  // nullptr when there is no entry of that exact name.
  const ZipEntry* find(std::string_view name) const;
  // The bytes of a stored entry, after checking its local header and that it lies in the file.
  // Throws for compressed or encrypted entries.
  std::span<const uint8_t> data(const ZipEntry& e) const;
  // Throws when the CRC-32 of the entry's bytes differs from the central directory's.
  void verify_crc(const ZipEntry& e) const;

  const std::string& path() const { return path_; }
  const std::shared_ptr<const FileBytes>& bytes() const { return bytes_; }

 private:
  std::shared_ptr<const FileBytes> bytes_;
  std::string path_;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, size_t> index_;
};

// CRC-32 (the zip / zlib polynomial), continuing from `crc`.
uint32_t crc32_update(uint32_t crc, const uint8_t* data, size_t n);

}  // namespace hwaga
