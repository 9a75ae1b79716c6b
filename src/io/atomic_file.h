// Atomic file replacement: write everything to `<path>.tmp-XXXXXX` in the same folder, fsync,
// then rename over `path`. Readers see the old file or the complete new one, never a torn one;
// on any failure (or if the writer is destroyed before commit()) the temporary file is removed
// and `path` is untouched.
//
//   AtomicFile f(path);          // throws naming `path` if the folder is missing, read-only...
//   f.write(header, n); ...
//   f.commit();                  // fsync + rename (+ best-effort fsync of the folder)
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace hwaga {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();  // removes the temporary file unless commit() succeeded
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Appends bytes; throws hwaga::Error naming the path on failure (disk full...).
  void write(const void* data, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  // Non-throwing variant for C callbacks (libpng): false and *err set on failure.
  bool try_write(const void* data, size_t n, std::string* err) noexcept;
  // Makes the file visible at path(). Throws on failure (the temporary file is removed).
  void commit();
  // Removes the temporary file now (commit() is no longer possible).
  void abandon() noexcept;

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  size_t bytes_written() const { return written_; }

 private:
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  size_t written_ = 0;
  bool committed_ = false;
};

// One-shot helper: the whole file content at once.
void write_file_atomic(const std::string& path, const void* data, size_t n);
inline void write_file_atomic(const std::string& path, std::string_view s) {
  write_file_atomic(path, s.data(), s.size());
}

}  // namespace hwaga
