// Replay driver for the fuzz targets: runs LLVMFuzzerTestOneInput on every file named on the
// command line (or every file in a named folder). Built with libFuzzer instead of this file,
// the same targets fuzz: clang++ -fsanitize=fuzzer,address tests/fuzz/fuzz_X.cpp ...
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

static void run_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::vector<char> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(buf.data()), buf.size());
}

int main(int argc, char** argv) {
  int n = 0;
  for (int i = 1; i < argc; ++i) {
    std::filesystem::path p(argv[i]);
    if (std::filesystem::is_directory(p)) {
      for (auto& e : std::filesystem::recursive_directory_iterator(p))
        if (e.is_regular_file()) run_file(e.path()), ++n;
    } else {
      run_file(p), ++n;
    }
  }
  std::printf("replayed %d inputs\n", n);
  return 0;
}
