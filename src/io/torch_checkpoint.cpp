#include "io/torch_checkpoint.h"

#include <bit>
#include <cstring>
#include <set>

#include "core/error.h"
#include "io/pickle.h"
#include "io/zip_reader.h"

namespace hwaga {

static_assert(std::endian::native == std::endian::little, "hwaga reads little-endian checkpoints in place");

using pickle::Kind;
using pickle::Value;

struct TorchCheckpoint::Impl {
  std::string path;
  TorchCheckpointOptions options;
  std::unique_ptr<ZipReader> zip;
  std::string prefix;  // "<archive name>/"
  pickle::Pickle pkl;
};

namespace {

constexpr uint64_t kMaxPickleBytes = uint64_t(1) << 30;
constexpr int kMaxNesting = 16;

struct ElementType {
  bool supported = false;
  DType dtype = DType::F32;
  size_t size = 0;  // 0: unknown type
};

// The storage-class spelling of a scalar type ("Float" as in torch.FloatStorage).
ElementType element_type(const std::string& t) {
  if (t == "Float") return {true, DType::F32, 4};
  if (t == "Half") return {true, DType::F16, 2};
  if (t == "BFloat16") return {true, DType::BF16, 2};
  if (t == "Long") return {true, DType::I64, 8};
  if (t == "Int") return {true, DType::I32, 4};
  if (t == "Byte") return {true, DType::U8, 1};
  if (t == "Bool") return {true, DType::U8, 1};  // torch stores bools as one byte 0/1
  if (t == "Double" || t == "ComplexFloat") return {false, DType::F32, 8};
  if (t == "Short" || t == "ComplexHalf") return {false, DType::F32, t == "Short" ? 2u : 4u};
  if (t == "Char" || t == "QUInt8" || t == "QInt8") return {false, DType::F32, 1};
  if (t == "ComplexDouble") return {false, DType::F32, 16};
  if (t == "QInt32") return {false, DType::F32, 4};
  return {};
}

// Element size of a storage class name; 0 when unknown.
size_t storage_element_size(const std::string& type) {
  if (type == "UntypedStorage" || type == "ByteStorage") return 1;
  if (type.size() > 7 && type.ends_with("Storage")) return element_type(type.substr(0, type.size() - 7)).size;
  return 0;
}

bool mul_ok(int64_t a, int64_t b, int64_t& out) { return !__builtin_mul_overflow(a, b, &out); }
bool add_ok(int64_t a, int64_t b, int64_t& out) { return !__builtin_add_overflow(a, b, &out); }

std::string ints_str(const std::vector<int64_t>& v) { return shape_str(v); }
std::string view_str(const pickle::TensorRef& t) {
  return "size " + ints_str(t.size) + ", stride " + ints_str(t.stride) + ", offset " + std::to_string(t.offset);
}

// Copies a strided view (element offsets from `src`) into contiguous `dst`.
void gather(uint8_t* dst, const uint8_t* src, const Shape& size, const std::vector<int64_t>& stride, size_t es) {
  const size_t nd = size.size();
  if (nd == 0) {
    std::memcpy(dst, src, es);
    return;
  }
  const int64_t inner = size[nd - 1], istride = stride[nd - 1];
  const int64_t outer = shape_numel(size) / inner;
  std::vector<int64_t> idx(nd, 0);
  int64_t base = 0;  // element offset of the current row
  for (int64_t o = 0; o < outer; ++o) {
    if (istride == 1) {
      std::memcpy(dst, src + size_t(base) * es, size_t(inner) * es);
    } else {
      for (int64_t j = 0; j < inner; ++j) std::memcpy(dst + size_t(j) * es, src + size_t(base + j * istride) * es, es);
    }
    dst += size_t(inner) * es;
    for (size_t d = nd - 1; d-- > 0;) {  // next row: odometer over the outer dimensions
      if (++idx[d] < size[d]) {
        base += stride[d];
        break;
      }
      base -= stride[d] * (size[d] - 1);
      idx[d] = 0;
    }
  }
}

class Reader {
 public:
  Reader(const TorchCheckpoint::Impl& ck, const std::string& key) : ck_(ck), key_(key.empty() ? "top-level" : key) {}

  void flatten(const Value* v, const std::string& name, TensorMap& out, int depth) {
    if (depth > kMaxNesting)
      fail(ck_.path, ": ", key_, " entry '", name, "' is nested more than ", kMaxNesting, " dicts deep (or cyclic)");
    for (size_t i = 0; i + 1 < v->items.size(); i += 2) {
      const Value* k = v->items[i];
      const Value* x = v->items[i + 1];
      std::string part;
      if (k->kind == Kind::Str) part = k->text;
      else if (k->kind == Kind::Int) part = std::to_string(k->integer);
      else fail(ck_.path, ": ", key_, " has a key that is a ", pickle::describe(k), ", not a string");
      std::string child = name.empty() ? part : name + "." + part;
      if (x->kind == Kind::Tensor) out[child] = read(*x->tensor, child);
      else if (x->kind == Kind::Dict) flatten(x, child, out, depth + 1);
      else if (x->kind == Kind::Object)
        fail(ck_.path, ": ", key_, " entry '", child, "' is built by '", x->text, "', which hwaga does not execute");
      else fail(ck_.path, ": ", key_, " entry '", child, "' is not a tensor but ", pickle::describe(x));
    }
  }

 private:
  template <typename... Args>
  [[noreturn]] void bad(const std::string& name, Args&&... args) {
    fail(ck_.path, ": ", key_, " entry '", name, "' ", std::forward<Args>(args)...);
  }

  Tensor read(const pickle::TensorRef& t, const std::string& name) {
    const ElementType et = element_type(t.scalar_type);
    if (!et.supported)
      bad(name, "has dtype ", t.scalar_type, ", which hwaga does not read (f32, bf16, f16, i64, i32, u8, bool)");
    const pickle::StorageRef& s = *t.storage->storage;
    const int64_t es = int64_t(et.size);
    if (t.size.size() != t.stride.size())
      bad(name, "has size ", ints_str(t.size), " but stride ", ints_str(t.stride));
    if (t.offset < 0) bad(name, "has a negative storage offset ", t.offset);
    int64_t numel = 1, last = t.offset;  // `last`: the highest element index read
    for (size_t d = 0; d < t.size.size(); ++d) {
      if (t.size[d] < 0 || t.stride[d] < 0)
        bad(name, "has a negative size or stride (size ", ints_str(t.size), ", stride ", ints_str(t.stride), ")");
      int64_t span = 0;
      if (!mul_ok(numel, t.size[d], numel) || (t.size[d] > 0 && !mul_ok(t.size[d] - 1, t.stride[d], span)) ||
          !add_ok(last, span, last))
        bad(name, "has a size that overflows (", view_str(t), ")");
    }
    int64_t need = 0;  // bytes of the storage the view reads
    if (numel > 0 && (!add_ok(last, 1, need) || !mul_ok(need, es, need)))
      bad(name, "has a size that overflows (", view_str(t), ")");
    int64_t nbytes = 0;  // of the contiguous result
    if (!mul_ok(numel, es, nbytes)) bad(name, "has a size that overflows (", view_str(t), ")");

    const std::string entry_name = ck_.prefix + "data/" + s.key;
    const ZipEntry* e = ck_.zip->find(entry_name);
    if (!e)
      bad(name, "needs storage '", s.key, "', which is missing from the archive (no entry '", entry_name, "')");
    std::span<const uint8_t> bytes = ck_.zip->data(*e);
    if (ck_.options.verify_crc && verified_.insert(entry_name).second) ck_.zip->verify_crc(*e);
    int64_t declared = INT64_MAX;  // the storage size its persistent id states
    const size_t ses = storage_element_size(s.type);
    if (ses && (s.numel < 0 || !mul_ok(s.numel, int64_t(ses), declared)))
      bad(name, "has storage '", s.key, "' with a bad element count ", s.numel);
    if (uint64_t(need) > bytes.size() || need > declared)
      bad(name, "(", view_str(t), ") reads ",
          need, " bytes of storage '", s.key, "', which holds only ", std::min<uint64_t>(bytes.size(), uint64_t(declared)),
          " bytes");

    Shape shape(t.size.begin(), t.size.end());
    if (numel == 0) return Tensor::empty(shape, et.dtype);
    bool contiguous = true;
    int64_t expect = 1;
    for (size_t d = shape.size(); d-- > 0;) {
      if (shape[d] != 1 && t.stride[d] != expect) contiguous = false;
      expect *= shape[d];
    }
    const uint8_t* src = bytes.data() + size_t(t.offset) * size_t(es);
    if (contiguous && reinterpret_cast<uintptr_t>(src) % size_t(es) == 0) {
      // A read-only view into the mapping; the tensor keeps the mapping alive.
      std::shared_ptr<void> keepalive(ck_.zip->bytes(), const_cast<uint8_t*>(src));
      return Tensor::wrap(const_cast<uint8_t*>(src), shape, et.dtype, std::move(keepalive));
    }
    Tensor out = Tensor::empty(shape, et.dtype);
    gather(static_cast<uint8_t*>(out.data()), src, shape, t.stride, size_t(es));
    return out;
  }

  const TorchCheckpoint::Impl& ck_;
  std::string key_;
  std::set<std::string> verified_;
};

std::shared_ptr<TorchCheckpoint::Impl> open_impl(std::shared_ptr<const FileBytes> bytes, const std::string& path,
                                                 const TorchCheckpointOptions& options) {
  auto ck = std::make_shared<TorchCheckpoint::Impl>();
  ck->path = path;
  ck->options = options;
  ck->zip = std::make_unique<ZipReader>(std::move(bytes), path);

  // <archive name>/data.pkl, at the top of the archive.
  const ZipEntry* pkl = nullptr;
  for (const ZipEntry& e : ck->zip->entries()) {
    const std::string& n = e.name;
    if (n.size() > 9 && n.ends_with("/data.pkl") && n.find('/') == n.size() - 9) {
      if (pkl) fail(path, ": archive holds two data.pkl entries ('", pkl->name, "' and '", n, "')");
      pkl = &e;
    }
  }
  if (!pkl) {
    for (const ZipEntry& e : ck->zip->entries())
      if (e.name.ends_with("/constants.pkl"))
        fail(path, ": a TorchScript archive (torch.jit.save), not a torch.save checkpoint; "
                   "save the model's state_dict with torch.save instead");
    fail(path, ": zip archive without a <name>/data.pkl entry: not a torch.save checkpoint");
  }
  ck->prefix = pkl->name.substr(0, pkl->name.size() - 8);

  if (const ZipEntry* bo = ck->zip->find(ck->prefix + "byteorder")) {
    std::span<const uint8_t> s = ck->zip->data(*bo);
    std::string order(reinterpret_cast<const char*>(s.data()), std::min<size_t>(s.size(), 16));
    while (!order.empty() && (order.back() == '\n' || order.back() == ' ')) order.pop_back();
    if (order != "little")
      fail(path, ": byte order '", order, "' (", bo->name, "); hwaga reads little-endian checkpoints only");
  }

  if (pkl->uncompressed_size > kMaxPickleBytes)
    fail(path, ": ", pkl->name, " is ", pkl->uncompressed_size, " bytes, more than the ", kMaxPickleBytes, " hwaga accepts");
  std::span<const uint8_t> data = ck->zip->data(*pkl);
  if (pkl->crc32 != 0) ck->zip->verify_crc(*pkl);  // 0: written without CRCs
  ck->pkl = pickle::parse(data.data(), data.size(), path + ": " + pkl->name);
  return ck;
}

}  // namespace

TorchCheckpoint TorchCheckpoint::open(const std::string& path, const TorchCheckpointOptions& options) {
  TorchCheckpoint c;
  c.impl_ = open_impl(FileBytes::map(path), path, options);
  return c;
}

TorchCheckpoint TorchCheckpoint::from_memory(const void* data, size_t size, const std::string& name,
                                             const TorchCheckpointOptions& options) {
  TorchCheckpoint c;
  c.impl_ = open_impl(FileBytes::copy(data, size), name, options);
  return c;
}

const std::string& TorchCheckpoint::path() const { return impl_->path; }

std::vector<std::string> TorchCheckpoint::keys() const {
  std::vector<std::string> out;
  std::set<std::string> seen;
  const Value* root = impl_->pkl.root();
  if (root->kind != Kind::Dict) return out;
  for (size_t i = 0; i + 1 < root->items.size(); i += 2)
    if (root->items[i]->kind == Kind::Str && seen.insert(root->items[i]->text).second)
      out.push_back(root->items[i]->text);
  return out;
}

bool TorchCheckpoint::has(const std::string& key) const { return pickle::dict_get(impl_->pkl.root(), key) != nullptr; }

std::vector<std::pair<std::string, std::string>> TorchCheckpoint::summary() const {
  std::vector<std::pair<std::string, std::string>> out;
  const Value* root = impl_->pkl.root();
  if (root->kind != Kind::Dict) return {{"", pickle::describe(root)}};
  for (const std::string& k : keys()) out.emplace_back(k, pickle::describe(pickle::dict_get(root, k)));
  return out;
}

TensorMap TorchCheckpoint::tensors(const std::string& key) const {
  const Impl& ck = *impl_;
  const Value* root = ck.pkl.root();
  const Value* v = root;
  if (!key.empty()) {
    if (root->kind == Kind::Object)
      fail(ck.path, ": the top level is an object built by '", root->text,
           "' (a whole pickled model?), not a dict with a '", key, "' entry; save model.state_dict() instead");
    if (root->kind != Kind::Dict)
      fail(ck.path, ": the top level is not a dict with a '", key, "' entry but ", pickle::describe(root));
    v = pickle::dict_get(root, key);
    if (!v) {
      std::string ks;
      for (const std::string& k : keys()) ks += (ks.empty() ? "" : ", ") + k;
      fail(ck.path, ": no '", key, "' entry (top-level keys: ", ks.empty() ? "none" : ks, ")");
    }
  }
  const std::string label = key.empty() ? "the top level" : "'" + key + "'";
  if (v->kind == Kind::Object)
    fail(ck.path, ": ", label, " is an object built by '", v->text, "', which hwaga does not execute");
  if (v->kind != Kind::Dict) fail(ck.path, ": ", label, " is not a dict of tensors but ", pickle::describe(v));
  TensorMap out;
  Reader(ck, key).flatten(v, "", out, 0);
  return out;
}

TensorMap TorchCheckpoint::tensors_first_of(const std::vector<std::string>& keys) const {
  for (const std::string& k : keys)
    if (k.empty() || has(k)) return tensors(k);
  std::string want, have;
  for (const std::string& k : keys) want += (want.empty() ? "'" : ", '") + k + "'";
  for (const std::string& k : this->keys()) have += (have.empty() ? "" : ", ") + k;
  fail(impl_->path, ": none of the entries ", want, " (top-level keys: ", have.empty() ? "none" : have, ")");
}

TensorMap load_torch_state_dict(const std::string& path, const std::string& key) {
  return TorchCheckpoint::open(path).tensors(key);
}

TensorMap load_torch_state_dict_first_of(const std::string& path, const std::vector<std::string>& keys) {
  return TorchCheckpoint::open(path).tensors_first_of(keys);
}

}  // namespace hwaga
