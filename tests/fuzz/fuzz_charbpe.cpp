// Fuzz target: arbitrary bytes as a prompt for the released CharBPE vocabulary (context 64).
// Valid UTF-8 (judged independently by ICU) must encode to exactly 64 in-range ids; anything
// else must throw hwaga::Error "prompt is not valid UTF-8 at byte N" with N inside the input.
// The vocabulary comes from $HWAGA_SHARED_DIR/data/bpe16k, else ../shared beside the checkout.
#include <unicode/ustring.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "core/error.h"
#include "text/charbpe.h"

namespace {

const hwaga::CharBpeTokenizer& tokenizer() {
  static std::unique_ptr<hwaga::CharBpeTokenizer> tok = [] {
    std::filesystem::path shared;
    if (const char* env = std::getenv("HWAGA_SHARED_DIR")) shared = env;
    else shared = std::filesystem::path(__FILE__).parent_path() / "../../../shared";
    auto dir = shared / "data/bpe16k";
    return hwaga::charbpe_from_files((dir / "bpe-16k-vocab.json").string(), (dir / "bpe-16k-merges.txt").string(), 64);
  }();
  return *tok;
}

bool icu_says_valid_utf8(const uint8_t* data, size_t size) {
  UErrorCode err = U_ZERO_ERROR;
  int32_t len = 0;
  u_strFromUTF8(nullptr, 0, &len, reinterpret_cast<const char*>(data), int32_t(size), &err);
  return err == U_BUFFER_OVERFLOW_ERROR || U_SUCCESS(err) || err == U_STRING_NOT_TERMINATED_WARNING;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 1 << 16) return 0;
  const auto& tok = tokenizer();
  std::string prompt(reinterpret_cast<const char*>(data), size);
  bool valid = icu_says_valid_utf8(data, size);
  try {
    auto ids = tok.encode(prompt);
    if (!valid) std::fprintf(stderr, "fuzz_charbpe: invalid UTF-8 accepted\n"), std::abort();
    if (ids.size() != 64) std::abort();
    for (int32_t id : ids)
      if (id < 0 || id >= tok.vocab_size) std::abort();
    (void)tok.decode(ids);
  } catch (const hwaga::Error& e) {
    std::string msg = e.what();
    const std::string want = "prompt is not valid UTF-8 at byte ";
    if (valid || msg.rfind(want, 0) != 0) std::fprintf(stderr, "fuzz_charbpe: unexpected error: %s\n", e.what()), std::abort();
    if (std::stoull(msg.substr(want.size())) >= size) std::abort();
  }
  return 0;
}
