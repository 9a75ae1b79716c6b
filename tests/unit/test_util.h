// Helpers shared by the unit tests (tests/unit/test_*.cpp; each file is its own executable, so
// everything here is inline). Only plumbing lives here: temp folders, whole-file I/O, running
// the Python references, the fixture cache, .npy reading, random tensors and the element-wise
// comparison. What a test checks stays in the test.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace hwaga::test {

namespace fs = std::filesystem;

// ---- files ----

// The whole file; throws std::runtime_error("cannot read PATH") if it cannot be opened.
inline std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

// The whole file, or "" if it cannot be opened (for tests that compare contents).
inline std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// ---- temp folders ----

// A fresh folder under the system temp dir (mkdtemp), removed with everything in it at scope exit.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& prefix = "hwaga-test") {
    std::string tmpl = (fs::temp_directory_path() / (prefix + "-XXXXXX")).string();
    char* p = mkdtemp(tmpl.data());
    if (!p) throw std::runtime_error("mkdtemp failed for " + tmpl);
    path = p;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  // PATH/name as a string.
  std::string p(const std::string& name) const { return (path / name).string(); }
  // Writes `content` to PATH/name and returns that path.
  std::string write(const std::string& name, const std::string& content) const {
    write_bytes(p(name), content);
    return p(name);
  }
};

// A GoogleTest fixture with its own temp folder `dir` (made in SetUp, removed in TearDown).
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override { tmp_ = std::make_unique<TempDir>(); dir = tmp_->path.string(); }
  void TearDown() override { tmp_.reset(); }
  std::string p(const std::string& name) const { return (fs::path(dir) / name).string(); }
  std::string dir;

 private:
  std::unique_ptr<TempDir> tmp_;
};

// ---- errors ----

// The message of the hwaga::Error that f throws, or `none` ("" by default) if it throws none.
template <typename F>
std::string error_of(F&& f, const char* none = "") {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return none;
}

// ---- Python references and the fixture cache ----

// Runs a shell command with stdout discarded; a fatal test failure if it exits non-zero.
inline void run_quiet(const std::string& cmd) {
  int rc = std::system((cmd + " > /dev/null").c_str());
  ASSERT_EQ(rc, 0) << "command failed: " << cmd;
}

// <build>/test_fixtures/<tag>-<hash of the scripts' text>: edit a script and the fixtures that
// depend on it are made again.
inline std::string fixture_cache_dir(const std::string& tag, std::initializer_list<std::string> scripts) {
  std::string text;
  for (const std::string& s : scripts) text += read_all(s);
  std::ostringstream os;
  os << HWAGA_BINARY_DIR << "/test_fixtures/" << tag << "-" << std::hex << std::hash<std::string>{}(text);
  return os.str();
}

// Makes `dir` once per build tree: `make(tmp)` fills a private folder that is then renamed into
// place (with a DONE marker), so parallel ctest processes never see a half-made one. If make
// records a fatal failure the private folder is removed and `dir` is left unmade.
inline void make_fixture_once(const std::string& dir, const std::function<void(const std::string& tmp)>& make) {
  if (fs::exists(dir + "/DONE")) return;
  const std::string tmp = dir + ".tmp-" + std::to_string(getpid());
  fs::create_directories(tmp);
  make(tmp);
  if (::testing::Test::HasFatalFailure()) {
    fs::remove_all(tmp);
    return;
  }
  std::ofstream(tmp + "/DONE") << "ok\n";
  std::error_code ec;
  fs::rename(tmp, dir, ec);
  if (ec) fs::remove_all(tmp);  // another process got there first
}

// .npy v1.0 reader for the reference outputs (independent of src/io): <f4 -> f32, <i8 -> int32.
inline Tensor read_npy_ref(const std::string& path) {
  std::string b = read_all(path);
  uint16_t len;
  std::memcpy(&len, b.data() + 8, 2);
  std::string hdr = b.substr(10, len);
  Shape s;
  size_t p = hdr.find("'shape': (") + 10;
  while (hdr[p] != ')') {
    if (isdigit(hdr[p])) {
      size_t e;
      s.push_back(std::stoll(hdr.substr(p), &e));
      p += e;
    } else {
      ++p;
    }
  }
  const char* data = b.data() + 10 + len;
  if (hdr.find("<f4") != std::string::npos) {
    Tensor t = Tensor::empty(s);
    std::memcpy(t.data(), data, t.nbytes());
    return t;
  }
  EXPECT_NE(hdr.find("<i8"), std::string::npos) << path << ": " << hdr;
  Tensor t = Tensor::empty(s, DType::I32);
  for (int64_t i = 0; i < t.numel(); ++i) {
    int64_t v;
    std::memcpy(&v, data + 8 * i, 8);
    t.ptr<int32_t>()[i] = int32_t(v);
  }
  return t;
}

// ---- numerics ----

// f32 tensor of offset + scale * N(0,1), from std::mt19937(seed).
inline Tensor randn(Shape s, uint32_t seed, float scale = 1.0f, float offset = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Tensor t = Tensor::empty(std::move(s));
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = offset + scale * nd(rng);
  return t;
}

// Every element of the f32 tensor `got` within atol + rtol * |want| of the double reference;
// reports the first 5 that are not and the count.
inline void expect_close(const Tensor& got, const std::vector<double>& want, double atol, double rtol,
                         const char* what) {
  ASSERT_EQ(got.numel(), int64_t(want.size())) << what;
  int bad = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double g = got.f32()[i], w = want[size_t(i)];
    if (!(std::fabs(g - w) <= atol + rtol * std::fabs(w))) {
      if (++bad <= 5) ADD_FAILURE() << what << ": element " << i << " got " << g << " want " << w;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " elements out of tolerance";
}

}  // namespace hwaga::test
