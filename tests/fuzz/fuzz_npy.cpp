// Fuzz target: arbitrary bytes as an .npy file. Must either parse or throw hwaga::Error; a parsed
// array must survive a round trip through hwaga's own encoding unchanged.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"
#include "io/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  hwaga::Tensor t;
  try {
    t = hwaga::parse_npy(data, size, "fuzz.npy");
  } catch (const hwaga::Error&) {
    return 0;
  }
  std::string bytes = hwaga::npy_preamble(t);
  bytes.append(static_cast<const char*>(t.data()), t.nbytes());
  hwaga::Tensor r = hwaga::parse_npy(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "roundtrip.npy");
  if (r.dtype() != t.dtype() || r.shape() != t.shape() ||
      (t.nbytes() && std::memcmp(r.data(), t.data(), t.nbytes()) != 0))
    std::abort();
  return 0;
}
