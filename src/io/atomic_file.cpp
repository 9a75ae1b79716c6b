#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>

#include "core/error.h"

namespace hwaga {

// A random 6-character suffix; the file is created with O_EXCL (like mkstemp) but with mode
// 0666 so that the umask applies as for any ordinary file (mkstemp would force 0600).
static std::string random_suffix() {
  static std::atomic<uint64_t> counter{0};
  static const char kChars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  uint64_t seed = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count()) ^
                  (uint64_t(::getpid()) << 32) ^ (counter.fetch_add(1) * 0x9E3779B97F4A7C15ull);
  std::mt19937_64 rng(seed ^ std::random_device{}());
  std::string s(6, 'x');
  for (char& c : s) c = kChars[rng() % (sizeof(kChars) - 1)];
  return s;
}

static std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  if (path_.empty()) fail("cannot write a file with an empty path");
  if (path_.back() == '/') fail("cannot write ", path_, ": the path names a folder");
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string tmp = path_ + ".tmp-" + random_suffix();
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      fd_ = fd;
      temp_path_ = std::move(tmp);
      return;
    }
    if (errno != EEXIST)
      fail("cannot write ", path_, ": creating the temporary file ", tmp, " failed: ", std::strerror(errno));
  }
  fail("cannot write ", path_, ": no free temporary file name after 100 tries");
}

AtomicFile::~AtomicFile() {
  if (!committed_) abandon();
}

void AtomicFile::abandon() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!committed_ && !temp_path_.empty()) {
    ::unlink(temp_path_.c_str());
    temp_path_.clear();
  }
}

bool AtomicFile::try_write(const void* data, size_t n, std::string* err) noexcept {
  if (fd_ < 0) {
    if (err) *err = "file already closed";
    return false;
  }
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t k = ::write(fd_, p, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      if (err) *err = std::strerror(errno);
      return false;
    }
    p += k;
    n -= size_t(k);
    written_ += size_t(k);
  }
  return true;
}

void AtomicFile::write(const void* data, size_t n) {
  std::string err;
  if (!try_write(data, n, &err)) {
    abandon();
    fail("cannot write ", path_, ": ", err);
  }
}

void AtomicFile::commit() {
  if (committed_) return;
  if (fd_ < 0) fail("cannot write ", path_, ": the temporary file was already abandoned");
  if (::fsync(fd_) != 0) {
    int e = errno;
    abandon();
    fail("cannot write ", path_, ": fsync failed: ", std::strerror(e));
  }
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) {
    int e = errno;
    abandon();
    fail("cannot write ", path_, ": close failed: ", std::strerror(e));
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    int e = errno;
    abandon();
    fail("cannot write ", path_, ": renaming ", temp_path_, " failed: ", std::strerror(e));
  }
  committed_ = true;
  // Make the rename itself durable; failure here does not undo anything, so it is ignored.
  int dfd = ::open(parent_dir(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, const void* data, size_t n) {
  AtomicFile f(path);
  f.write(data, n);
  f.commit();
}

}  // namespace hwaga
