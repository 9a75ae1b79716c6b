// Fuzz target: arbitrary bytes as a torch.save checkpoint (zip + data.pkl + storages), and the
// same bytes as a bare pickle. Anything may be refused with hwaga::Error; nothing may crash, leak
// or read out of bounds. Seeds: /usr/bin/python3 tests/unit/torch_fixtures.py OUT --seeds DIR.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "io/pickle.h"
#include "io/torch_checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    hwaga::TorchCheckpoint ck = hwaga::TorchCheckpoint::from_memory(data, size, "fuzz.pt");
    ck.summary();
    for (const std::string& key : ck.keys()) {
      try {
        hwaga::TensorMap m = ck.tensors(key);
        for (auto& [name, t] : m) {  // touch every byte that a view claims
          volatile uint8_t sink = 0;
          const uint8_t* p = static_cast<const uint8_t*>(t.data());
          for (size_t i = 0; i < t.nbytes(); ++i) sink = sink ^ p[i];
        }
      } catch (const hwaga::Error&) {
      }
    }
    try {
      ck.tensors("");
    } catch (const hwaga::Error&) {
    }
  } catch (const hwaga::Error&) {
  }
  try {
    hwaga::pickle::Limits lim;
    lim.max_values = 1 << 16;  // keeps memory small under the fuzzer
    hwaga::pickle::Pickle p = hwaga::pickle::parse(data, size, "fuzz.pkl", lim);
    hwaga::pickle::describe(p.root());
  } catch (const hwaga::Error&) {
  }
  return 0;
}
