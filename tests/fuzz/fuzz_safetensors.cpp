// Fuzz target: arbitrary bytes as a safetensors file. Must either parse or throw hwaga::Error;
// on success every tensor's bytes are read (so ASan sees any view outside the buffer) and the
// model-file checks run too.
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto buf = std::make_shared<std::vector<uint8_t>>(data, data + size);
  try {
    hwaga::SafetensorsFile f = hwaga::parse_safetensors(buf->data(), buf->size(), buf, "fuzz.safetensors");
    volatile uint8_t sink = 0;
    for (const auto& [name, t] : f.tensors) {
      const auto* p = static_cast<const uint8_t*>(t.data());
      for (size_t i = 0; i < t.nbytes(); ++i) sink = uint8_t(sink + p[i]);
    }
    (void)sink;
    hwaga::check_model_metadata(f);
  } catch (const hwaga::Error&) {
  }
  return 0;
}
