// safetensors reader/writer and the hwaga model-file checks.
//
// File layout: u64 little-endian N | N bytes of JSON header | data section.
// Header: {"__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [..],
//          "data_offsets": [begin, end]}} with offsets relative to the data section.
#include "io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <set>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/mapped_file.h"

namespace hwaga {

static_assert(std::endian::native == std::endian::little, "hwaga assumes a little-endian host");

using json = nlohmann::json;

namespace {

// A JSON-quoted name for error messages (control characters escaped, bad UTF-8 replaced).
std::string quote(const std::string& s) {
  return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

// The dtypes hwaga accepts, in the safetensors spelling (exact match; no aliases).
bool dtype_from_safetensors(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> kTable[] = {
      {"F32", DType::F32}, {"BF16", DType::BF16}, {"F16", DType::F16},
      {"I32", DType::I32}, {"I64", DType::I64},   {"U8", DType::U8}};
  for (const auto& [name, t] : kTable)
    if (s == name) {
      *out = t;
      return true;
    }
  return false;
}

// Parses the header JSON, refusing duplicate keys in any object (nlohmann would silently keep
// the last one, so two tensors of one name would otherwise alias without notice).
json parse_header_json(const char* begin, const char* end, const std::string& path) {
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto cb = [&](int /*depth*/, json::parse_event_t ev, json& parsed) -> bool {
    if (ev == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (ev == json::parse_event_t::key && !open_objects.empty()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(begin, end, cb);
  } catch (const json::exception& e) {
    fail(path, ": safetensors header is not valid JSON: ", e.what());
  }
  if (!duplicate.empty()) fail(path, ": safetensors header: duplicate key ", quote(duplicate));
  return j;
}

uint64_t get_u64(const json& v, const std::string& path, const std::string& what) {
  if (!v.is_number_unsigned())
    fail(path, ": safetensors header: ", what, ": expected a non-negative integer, found ", v.dump());
  return v.get<uint64_t>();
}

}  // namespace

SafetensorsFile parse_safetensors(const uint8_t* data, size_t size, std::shared_ptr<void> keepalive,
                                  const std::string& path) {
  if (size < 8) fail(path, ": not a safetensors file: ", size, " bytes, shorter than the 8-byte header length");
  uint64_t n;
  std::memcpy(&n, data, 8);
  if (n > kSafetensorsMaxHeader)
    fail(path, ": not a safetensors file: header length ", n, " bytes exceeds the ", kSafetensorsMaxHeader,
         "-byte limit");
  if (n > size - 8)
    fail(path, ": safetensors header length ", n, " bytes exceeds the file (", size - 8,
         " bytes after the length field); truncated file?");
  const char* hbegin = reinterpret_cast<const char*>(data + 8);
  json header = parse_header_json(hbegin, hbegin + n, path);
  if (!header.is_object())
    fail(path, ": safetensors header: expected a JSON object, found ", header.type_name());

  const uint8_t* base = data + 8 + n;
  const uint64_t data_size = size - 8 - n;

  SafetensorsFile out;
  out.path = path;
  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& entry = it.value();
    if (name == "__metadata__") {
      if (entry.is_null()) continue;
      if (!entry.is_object())
        fail(path, ": safetensors header: __metadata__: expected an object of strings, found ", entry.type_name());
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string())
          fail(path, ": safetensors header: __metadata__ ", quote(m.key()), ": expected a string value, found ",
               m.value().type_name());
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string what = "tensor " + quote(name);
    if (!entry.is_object()) fail(path, ": safetensors header: ", what, ": expected an object, found ", entry.type_name());
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!entry.contains(field)) fail(path, ": safetensors header: ", what, ": missing field \"", field, "\"");

    const json& jd = entry["dtype"];
    DType dtype;
    if (!jd.is_string() || !dtype_from_safetensors(jd.get<std::string>(), &dtype))
      fail(path, ": safetensors header: ", what, ": unsupported dtype ", jd.dump(-1, ' ', false, json::error_handler_t::replace),
           " (hwaga reads F32, BF16, F16, I32, I64, U8)");

    const json& js = entry["shape"];
    if (!js.is_array()) fail(path, ": safetensors header: ", what, ": shape: expected an array, found ", js.type_name());
    Shape shape;
    uint64_t numel = 1;
    for (size_t i = 0; i < js.size(); ++i) {
      uint64_t d = get_u64(js[i], path, what + " shape[" + std::to_string(i) + "]");
      if (d > uint64_t(std::numeric_limits<int64_t>::max()) || __builtin_mul_overflow(numel, d, &numel) ||
          numel > uint64_t(std::numeric_limits<int64_t>::max()))
        fail(path, ": safetensors header: ", what, ": shape ", js.dump(), " has too many elements (overflow)");
      shape.push_back(int64_t(d));
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, uint64_t(dtype_size(dtype)), &nbytes))
      fail(path, ": safetensors header: ", what, ": shape ", js.dump(), " is too large (byte size overflows)");

    const json& jo = entry["data_offsets"];
    if (!jo.is_array() || jo.size() != 2)
      fail(path, ": safetensors header: ", what, ": data_offsets: expected [begin, end], found ",
           jo.dump(-1, ' ', false, json::error_handler_t::replace));
    uint64_t b = get_u64(jo[0], path, what + " data_offsets[0]");
    uint64_t e = get_u64(jo[1], path, what + " data_offsets[1]");
    if (b > e) fail(path, ": safetensors header: ", what, ": data_offsets [", b, ", ", e, "]: begin > end");
    if (e > data_size)
      fail(path, ": safetensors header: ", what, ": data_offsets [", b, ", ", e, "] exceed the data section of ",
           data_size, " bytes; truncated file?");
    if (e - b != nbytes)
      fail(path, ": safetensors header: ", what, ": data_offsets [", b, ", ", e, "] span ", e - b,
           " bytes, but ", dtype_name(dtype), " ", shape_str(shape), " needs ", nbytes);
    if (b != e) ranges.push_back({b, e, &name});

    const uint8_t* p = base + b;
    Tensor t;
    if (reinterpret_cast<uintptr_t>(p) % dtype_size(dtype) == 0) {
      t = Tensor::wrap(const_cast<uint8_t*>(p), shape, dtype, keepalive);
    } else {  // misaligned for its element type (legal in safetensors): copy, never read unaligned
      t = Tensor::empty(shape, dtype);
      std::memcpy(t.data(), p, nbytes);
    }
    out.tensors.emplace(name, std::move(t));
  }

  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].begin < ranges[i - 1].end)
      fail(path, ": safetensors header: tensors ", quote(*ranges[i - 1].name), " [", ranges[i - 1].begin, ", ",
           ranges[i - 1].end, ") and ", quote(*ranges[i].name), " [", ranges[i].begin, ", ", ranges[i].end,
           ") overlap");
  return out;
}

SafetensorsFile read_safetensors(const std::string& path) {
  std::shared_ptr<MappedFile> m = MappedFile::open(path);
  const uint8_t* data = m->data();
  size_t size = m->size();
  return parse_safetensors(data, size, std::move(m), path);
}

void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Data order: larger element sizes first, then by name (as the reference Python writer does),
  // so that with the 8-byte aligned data start every tensor is aligned to its element size
  // and the data section has no holes.
  std::vector<std::pair<const std::string*, const Tensor*>> order;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") fail("cannot write ", path, ": \"__metadata__\" is reserved, not a tensor name");
    if (!t.defined()) fail("cannot write ", path, ": tensor ", quote(name), " is undefined");
    if (t.device() != Device::CPU)
      fail("cannot write ", path, ": tensor ", quote(name), " is on ", device_name(t.device()),
           "; copy it to the host first");
    order.emplace_back(&name, &t);
  }
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    size_t sa = dtype_size(a.second->dtype()), sb = dtype_size(b.second->dtype());
    return sa != sb ? sa > sb : *a.first < *b.first;
  });

  json header = json::object();
  if (!metadata.empty()) {
    json m = json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : order) {
    uint64_t nb = t->nbytes();
    header[*name] = {{"dtype", safetensors_dtype_name(t->dtype())},
                     {"shape", t->shape()},
                     {"data_offsets", {offset, offset + nb}}};
    offset += nb;
  }
  std::string text;
  try {
    text = header.dump();  // keys sorted (std::map), compact: deterministic bytes
  } catch (const json::exception& e) {
    fail("cannot write ", path, ": a tensor name or metadata string is not valid UTF-8 (", e.what(), ")");
  }
  // Pad with spaces so that the data section starts 8-byte aligned, as the spec recommends.
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  uint64_t n = text.size();
  uint8_t len[8];
  std::memcpy(len, &n, 8);

  AtomicFile f(path);
  f.write(len, 8);
  f.write(text);
  for (const auto& [name, t] : order)
    if (t->nbytes() > 0) f.write(t->data(), t->nbytes());
  f.commit();
}

void check_model_metadata(const SafetensorsFile& file) {
  const auto& md = file.metadata;
  auto fmt = md.find("format");
  if (fmt == md.end())
    fail(file.path, ": not a hwaga model file: metadata has no \"format\" (expected \"", kModelFormat,
         "\"); convert released checkpoints with `hwaga convert`");
  if (fmt->second != kModelFormat)
    fail(file.path, ": not a hwaga model file: metadata \"format\" is ", quote(fmt->second), ", expected \"",
         kModelFormat, "\"");
  auto ver = md.find("version");
  if (ver == md.end()) fail(file.path, ": hwaga model file has no metadata \"version\" (expected \"", kModelFormatVersion, "\")");
  if (ver->second != std::to_string(kModelFormatVersion))
    fail(file.path, ": unknown version ", ver->second, " (this hwaga reads version ", kModelFormatVersion, ")");
  model_config(file);
}

json model_config(const SafetensorsFile& file) {
  auto it = file.metadata.find("config");
  if (it == file.metadata.end()) fail(file.path, ": hwaga model file has no metadata \"config\"");
  json j;
  try {
    j = json::parse(it->second);
  } catch (const json::exception& e) {
    fail(file.path, ": metadata \"config\" is not valid JSON: ", e.what());
  }
  if (!j.is_object()) fail(file.path, ": metadata \"config\": expected a JSON object, found ", j.type_name());
  return j;
}

SafetensorsFile read_model_file(const std::string& path) {
  SafetensorsFile f = read_safetensors(path);
  check_model_metadata(f);
  return f;
}

}  // namespace hwaga
