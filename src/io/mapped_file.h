// A read-only, private memory mapping of a whole file (RAII). Model weights are Tensor views
// into it: hold the std::shared_ptr<MappedFile> as the tensors' keepalive.
// The mapping is PROT_READ: writing through a pointer into it faults. If another process
// truncates the file while it is mapped, reading the lost pages raises SIGBUS (as with any mmap).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace hwaga {

class MappedFile {
 public:
  // Maps `path` read-only. Throws hwaga::Error naming the path if it cannot be opened, is not a
  // regular file, or cannot be mapped. An empty file gives size() == 0 and a non-null data().
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
};

}  // namespace hwaga
