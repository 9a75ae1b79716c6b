// Replay driver for the fuzz targets: runs LLVMFuzzerTestOneInput on every file named on the
// command line (or every file in a named folder, in sorted order). Built with libFuzzer instead
// of this file, the same targets fuzz for real (tools/fuzz.sh).
//
//   fuzz_X [--mutate N] [--seed S] [--max-len BYTES] [--crash-dir DIR] FILE|DIR...
//
// --mutate N also runs N deterministic mutants of every input (bit flips, byte overwrites with
// boundary values, little-endian integer overwrites, ASCII number rewrites, truncations,
// insertions, duplications, erasures and splices with another input; 1-4 stacked per mutant),
// so ctest exercises more than the seeds in bounded time. The mutants depend only on S, the
// sorted input list and the file contents: a failure reruns identically.
//
// If a target crashes (sanitizer report, abort, uncaught exception, signal), the input being run
// is written to DIR/crash-<target>-<input index>-<mutant> (default DIR: the current folder) and
// its origin is printed, so it can be replayed alone: fuzz_X DIR/crash-...
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
// Sanitizer hook (weak: absent in a plain build).
extern "C" void __sanitizer_set_death_callback(void (*callback)()) __attribute__((weak));

namespace {

namespace fs = std::filesystem;

// ---- what is running now, for the crash handler (async-signal-safe writes only) ----

const std::vector<uint8_t>* g_current = nullptr;
char g_crash_path[4096];
char g_origin[4096];

void write_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::write(fd, c, n);
    if (w <= 0) return;
    c += w, n -= size_t(w);
  }
}

void save_current_input() {
  static volatile sig_atomic_t saved = 0;
  if (saved || !g_current) return;
  saved = 1;
  int fd = ::open(g_crash_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    if (!g_current->empty()) write_all(fd, g_current->data(), g_current->size());
    ::close(fd);
  }
  const char* a = "\nreplay: crashed on ";
  write_all(2, a, std::strlen(a));
  write_all(2, g_origin, std::strlen(g_origin));
  const char* b = "\nreplay: input saved to ";
  write_all(2, b, std::strlen(b));
  write_all(2, g_crash_path, std::strlen(g_crash_path));
  write_all(2, "\n", 1);
}

void on_signal(int sig) {
  save_current_input();
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

// ---- deterministic mutations ----

// splitmix64: small, good enough, and the same everywhere.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return n ? size_t(next() % n) : 0; }
};

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

const uint8_t kBytes[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x20, 0x0a, '0', '9', '-', '"', '[', '{', 0x2c, 0x3a};
const uint64_t kInts[] = {0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff,
                          0x80000000, 0xffffffff, 0x100000000ull, 0x7fffffffffffffffull,
                          0x8000000000000000ull, 0xffffffffffffffffull};
const char* kNumbers[] = {"0", "-1", "1", "3", "255", "256", "65536", "2147483647", "2147483648",
                          "-2147483649", "9223372036854775807", "18446744073709551616", "1e308", "nan", "-0", "99999999999999999999999"};

// One mutation in place. `other` is a different input for splices (may be the same).
void mutate_once(std::vector<uint8_t>& d, const std::vector<uint8_t>& other, Rng& r, size_t max_len) {
  switch (r.below(11)) {
    case 0:  // flip one bit
      if (!d.empty()) d[r.below(d.size())] ^= uint8_t(1u << r.below(8));
      break;
    case 1:  // a boundary byte
      if (!d.empty()) d[r.below(d.size())] = kBytes[r.below(sizeof kBytes)];
      break;
    case 2:  // a random byte
      if (!d.empty()) d[r.below(d.size())] = uint8_t(r.next());
      break;
    case 3: {  // a little-endian integer (1, 2, 4 or 8 bytes) with a boundary value, maybe +-1
      size_t w = size_t(1) << r.below(4);
      if (d.size() < w) break;
      uint64_t v = kInts[r.below(sizeof kInts / sizeof kInts[0])] + uint64_t(int64_t(r.below(3)) - 1);
      size_t at = r.below(d.size() - w + 1);
      for (size_t i = 0; i < w; ++i) d[at + i] = uint8_t(v >> (8 * i));
      break;
    }
    case 4: {  // rewrite an ASCII number (text formats: JSON, YAML, npy headers)
      std::vector<size_t> starts;
      for (size_t i = 0; i < d.size(); ++i)
        if (d[i] >= '0' && d[i] <= '9' && (i == 0 || d[i - 1] < '0' || d[i - 1] > '9')) starts.push_back(i);
      if (starts.empty()) break;
      size_t b = starts[r.below(starts.size())], e = b;
      while (e < d.size() && d[e] >= '0' && d[e] <= '9') ++e;
      const char* n = kNumbers[r.below(sizeof kNumbers / sizeof kNumbers[0])];
      d.erase(d.begin() + long(b), d.begin() + long(e));
      d.insert(d.begin() + long(b), n, n + std::strlen(n));
      break;
    }
    case 5:  // truncate
      d.resize(r.below(d.size() + 1));
      break;
    case 6: {  // insert 1-8 random bytes
      size_t at = r.below(d.size() + 1), n = 1 + r.below(8);
      for (size_t i = 0; i < n; ++i) d.insert(d.begin() + long(at), uint8_t(r.next()));
      break;
    }
    case 7: {  // duplicate a chunk
      if (d.empty()) break;
      size_t b = r.below(d.size()), n = 1 + r.below(std::min<size_t>(d.size() - b, 64));
      std::vector<uint8_t> chunk(d.begin() + long(b), d.begin() + long(b + n));
      d.insert(d.begin() + long(r.below(d.size() + 1)), chunk.begin(), chunk.end());
      break;
    }
    case 8: {  // erase a chunk
      if (d.empty()) break;
      size_t b = r.below(d.size()), n = 1 + r.below(std::min<size_t>(d.size() - b, 64));
      d.erase(d.begin() + long(b), d.begin() + long(b + n));
      break;
    }
    case 9: {  // splice: a prefix of this input, a suffix of the other
      size_t a = r.below(d.size() + 1), b = r.below(other.size() + 1);
      d.resize(a);
      d.insert(d.end(), other.begin() + long(b), other.end());
      break;
    }
    default: {  // overwrite a chunk with the same-length chunk of the other input
      if (d.empty() || other.empty()) break;
      size_t n = 1 + r.below(std::min<size_t>({d.size(), other.size(), 64}));
      size_t a = r.below(d.size() - n + 1), b = r.below(other.size() - n + 1);
      std::copy(other.begin() + long(b), other.begin() + long(b + n), d.begin() + long(a));
      break;
    }
  }
  if (d.size() > max_len) d.resize(max_len);
}

std::vector<uint8_t> read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) std::fprintf(stderr, "replay: cannot read %s\n", p.c_str()), std::exit(2);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void run(const std::vector<uint8_t>& d) {
  g_current = &d;
  // libFuzzer never passes a null pointer; neither do we (an empty input gets a valid one).
  static const uint8_t empty = 0;
  LLVMFuzzerTestOneInput(d.empty() ? &empty : d.data(), d.size());
  g_current = nullptr;
}

[[noreturn]] void usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [--mutate N] [--seed S] [--max-len BYTES] [--crash-dir DIR] FILE|DIR...\n", argv0);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  long mutants = 0;
  uint64_t seed = 1;
  size_t max_len = 1 << 20;
  fs::path crash_dir = ".";
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(argv[0]);
      return argv[++i];
    };
    if (a == "--mutate") mutants = std::stol(value());
    else if (a == "--seed") seed = std::stoull(value());
    else if (a == "--max-len") max_len = std::stoull(value());
    else if (a == "--crash-dir") crash_dir = value();
    else if (a.rfind("--", 0) == 0) usage(argv[0]);
    else if (fs::is_directory(a)) {
      std::vector<fs::path> in_dir;
      for (auto& e : fs::recursive_directory_iterator(a))
        if (e.is_regular_file()) in_dir.push_back(e.path());
      std::sort(in_dir.begin(), in_dir.end());
      files.insert(files.end(), in_dir.begin(), in_dir.end());
    } else if (fs::is_regular_file(a)) {
      files.push_back(a);
    } else {
      std::fprintf(stderr, "replay: no such file or folder: %s\n", a.c_str());
      return 2;
    }
  }
  if (files.empty()) usage(argv[0]);

  std::string target = fs::path(argv[0]).filename().string();
  std::error_code ec;
  fs::create_directories(crash_dir, ec);
  if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(save_current_input);
  for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL}) ::signal(sig, on_signal);

  std::vector<std::vector<uint8_t>> inputs;
  for (const auto& p : files) inputs.push_back(read_file(p));

  auto t0 = std::chrono::steady_clock::now();
  long runs = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    auto origin = [&](long m) {
      if (m < 0) std::snprintf(g_origin, sizeof g_origin, "%s", files[i].c_str());
      else std::snprintf(g_origin, sizeof g_origin, "%s, mutant %ld (--mutate %ld --seed %llu)",
                         files[i].c_str(), m, mutants, (unsigned long long)seed);
      if (m < 0) std::snprintf(g_crash_path, sizeof g_crash_path, "%s/crash-%s-%zu", crash_dir.c_str(), target.c_str(), i);
      else std::snprintf(g_crash_path, sizeof g_crash_path, "%s/crash-%s-%zu-%ld", crash_dir.c_str(), target.c_str(), i, m);
    };
    origin(-1);
    run(inputs[i]), ++runs;
    // The stream of one input depends on the seed and the file's name (not its index), so adding
    // a seed file changes the mutants of the others only through their splice partners.
    Rng r{seed ^ fnv1a(files[i].filename().string())};
    for (long m = 0; m < mutants; ++m) {
      std::vector<uint8_t> d = inputs[i];
      const auto& other = inputs[r.below(inputs.size())];
      size_t stack = 1 + r.below(4);
      for (size_t k = 0; k < stack; ++k) mutate_once(d, other, r, max_len);
      origin(m);
      run(d), ++runs;
    }
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("replayed %zu inputs, %ld runs in all (--mutate %ld --seed %llu), %.1f s\n", inputs.size(), runs,
              mutants, (unsigned long long)seed, s);
  return 0;
}
