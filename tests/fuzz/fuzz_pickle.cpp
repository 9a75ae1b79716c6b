// Fuzz target: arbitrary bytes as a bare pickle for the restricted unpickler (io/pickle.h) on its
// own, without the zip container in front (fuzz_torch_checkpoint covers the two together).
// Must either parse or throw hwaga::Error. On success: no more values than the limit allows, and
// the whole value graph (cycles are possible: walked with a visited set) is consistent: every
// item pointer non-null, dicts of even length, Storage and Tensor values carrying their refs,
// tensor size/stride tuples of equal length within max_dims; describe() and dict_get() run on
// every value.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <unordered_set>
#include <vector>

#include "core/error.h"
#include "io/pickle.h"

namespace {

namespace pk = hwaga::pickle;

[[noreturn]] void bad(const char* what) {
  std::fprintf(stderr, "fuzz_pickle: %s\n", what);
  std::abort();
}

void walk(const pk::Value* root, const pk::Limits& lim, size_t value_count) {
  std::unordered_set<const pk::Value*> seen;
  std::vector<const pk::Value*> todo{root};
  while (!todo.empty()) {
    const pk::Value* v = todo.back();
    todo.pop_back();
    if (!v) bad("null value pointer");
    if (!seen.insert(v).second) continue;
    if (seen.size() > value_count) bad("more reachable values than the arena holds");
    (void)pk::describe(v);
    (void)pk::kind_name(v->kind);
    switch (v->kind) {
      case pk::Kind::Dict:
        if (v->items.size() % 2) bad("dict with an odd number of items");
        (void)pk::dict_get(v, "state_dict");
        break;
      case pk::Kind::Storage:
        if (!v->storage) bad("storage value without a StorageRef");
        break;
      case pk::Kind::Tensor:
        if (!v->tensor) bad("tensor value without a TensorRef");
        if (v->tensor->size.size() > lim.max_dims || v->tensor->stride.size() > lim.max_dims)
          bad("tensor with more dims than max_dims");
        if (v->tensor->storage) todo.push_back(v->tensor->storage);
        break;
      default:
        break;
    }
    for (const pk::Value* it : v->items) todo.push_back(it);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  pk::Limits lim;
  lim.max_values = 1 << 16;  // keeps memory small under the fuzzer
  lim.max_stack = 1 << 16;
  lim.max_memo = 1 << 16;
  try {
    pk::Pickle p = pk::parse(data, size, "fuzz.pkl", lim);
    if (p.value_count() > lim.max_values) bad("more values than Limits::max_values");
    if (p.root()) walk(p.root(), lim, p.value_count());
  } catch (const hwaga::Error&) {
  }
  return 0;
}
