// A restricted unpickler (pickle protocols 0-5) that builds a tree of plain values and never
// calls anything the data names. It knows exactly these callables:
//   collections.OrderedDict                      -> an empty dict (filled by SETITEMS)
//   torch._utils._rebuild_tensor(_v2, _v3)       -> a TensorRef (a strided view of a storage)
//   torch._utils._rebuild_parameter(_with_state) -> the tensor it wraps
//   torch._tensor._rebuild_from_type_v2          -> the above, for torch.Tensor / nn.Parameter
// and torch's persistent ids ('storage', torch.<T>Storage, key, location, numel) -> a StorageRef.
// Every other global (optimizer classes, OmegaConf, Lightning, os.system...) is an opaque
// placeholder: calling, constructing or BUILDing it gives another placeholder that remembers the
// global's name. Input sizes are bounded (objects, stack, memo, text lines) and every read is
// checked against the remaining bytes; errors are hwaga::Error naming the data and the offset.
#pragma once
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace hwaga::pickle {

enum class Kind : uint8_t {
  None, Bool, Int, BigInt, Float, Str, Bytes, List, Tuple, Dict, Set,
  Global,   // a module attribute, unresolved: text = "module.name"
  Object,   // a placeholder for anything built by a callable outside the allowed set
  Storage,  // a torch storage persistent id
  Tensor,   // a torch tensor rebuilt by torch._utils._rebuild_tensor_v2 and friends
};
const char* kind_name(Kind k);  // "None", "bool", "int", ..., "object", "storage", "tensor"

struct Value;

// ('storage', torch.FloatStorage, '0', 'cpu', 6): the storage lives at <archive>/data/<key>.
struct StorageRef {
  std::string type;  // the storage class's last name component: "FloatStorage", "UntypedStorage"
  std::string key;
  std::string location;
  int64_t numel = 0;  // in elements of `type` (bytes for UntypedStorage)
};

// A strided view of a storage, as _rebuild_tensor_v2(storage, offset, size, stride, ...) makes it.
// Only the structure is checked here; sizes, strides and bounds are checked when it is read.
struct TensorRef {
  const Value* storage = nullptr;  // Kind::Storage
  std::string scalar_type;         // "Float", "Half", "BFloat16", "Long", "Int", "Byte", "Bool", ...
  int64_t offset = 0;              // in elements
  std::vector<int64_t> size, stride;
  bool requires_grad = false;
};

struct Value {
  Kind kind = Kind::None;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0;
  // Str/Bytes: the contents. Global: "module.name". Object: the global that built it.
  std::string text;
  // List/Tuple/Set: the items. Dict: key, value, key, value... in insertion order; a repeated
  // key appears again later and the later value wins.
  std::vector<const Value*> items;
  std::unique_ptr<StorageRef> storage;
  std::unique_ptr<TensorRef> tensor;
};

struct Limits {
  size_t max_values = size_t(1) << 23;  // objects created
  size_t max_stack = size_t(1) << 22;   // stack items, marks included
  size_t max_memo = size_t(1) << 22;    // memo entries
  size_t max_line = 1 << 16;            // text-form arguments (protocol 0 lines)
  size_t max_dims = 64;                 // tensor size/stride tuple length
};

// The parsed pickle. Values live in an arena owned by this object (cycles are possible).
class Pickle {
 public:
  const Value* root() const { return root_; }
  size_t value_count() const { return arena_ ? arena_->size() : 0; }

 private:
  friend Pickle parse(const uint8_t*, size_t, const std::string&, const Limits&);
  std::unique_ptr<std::deque<Value>> arena_;
  const Value* root_ = nullptr;
};

// Parses `size` bytes up to STOP. `what` names the data in errors ("model.pt: data.pkl").
Pickle parse(const uint8_t* data, size_t size, const std::string& what, const Limits& limits = {});

// The value of a Str key in a dict (the last one when repeated), or nullptr.
const Value* dict_get(const Value* dict, std::string_view key);
// A one-line description: "int 3", "str 'abc'", "dict of 12 entries", "tensor Float [3, 4]",
// "object built by 'omegaconf.dictconfig.DictConfig' (not executed)".
std::string describe(const Value* v);

}  // namespace hwaga::pickle
