// NumPy .npy reader/writer.
//
// Layout: "\x93NUMPY" | major u8 | minor u8 | header length (u16 for 1.0, u32 for 2.0/3.0) |
// header: a Python dict literal {'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }
// padded with spaces and ended by '\n' | raw C-order data.
#include "io/npy.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/mapped_file.h"

namespace hwaga {

namespace {

// A minimal parser for the header dict: only the literals NumPy writes (quoted strings,
// True/False, tuples of non-negative integers).
struct HeaderParser {
  const char* p;
  const char* end;
  const std::string& path;

  [[noreturn]] void bad(const std::string& what) const {
    fail(path, ": .npy header: ", what);
  }
  void skip_ws() {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) ++p;
  }
  bool eat(char c) {
    skip_ws();
    if (p < end && *p == c) {
      ++p;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) bad(std::string("expected '") + c + "'" + found());
  }
  std::string found() const {
    if (p >= end) return ", found the end of the header";
    std::string s(p, size_t(std::min<ptrdiff_t>(end - p, 16)));
    for (char& c : s)
      if (static_cast<unsigned char>(c) < 32 || static_cast<unsigned char>(c) > 126) c = '?';
    return ", found \"" + s + "\"";
  }
  bool at(char c) {
    skip_ws();
    return p < end && *p == c;
  }
  std::string string() {
    skip_ws();
    if (p >= end || (*p != '\'' && *p != '"')) bad("expected a quoted string" + found());
    char q = *p++;
    const char* s = p;
    while (p < end && *p != q) {
      if (*p == '\\') bad("escape sequences are not supported in header strings");
      ++p;
    }
    if (p >= end) bad("unterminated string");
    std::string out(s, p);
    ++p;
    return out;
  }
  bool boolean() {
    skip_ws();
    if (end - p >= 4 && std::memcmp(p, "True", 4) == 0) return p += 4, true;
    if (end - p >= 5 && std::memcmp(p, "False", 5) == 0) return p += 5, false;
    bad("expected True or False" + found());
  }
  uint64_t integer() {
    skip_ws();
    if (p >= end || *p < '0' || *p > '9') bad("expected a non-negative integer" + found());
    uint64_t v = 0;
    while (p < end && *p >= '0' && *p <= '9') {
      if (__builtin_mul_overflow(v, uint64_t(10), &v) || __builtin_add_overflow(v, uint64_t(*p - '0'), &v))
        bad("shape dimension overflows");
      ++p;
    }
    if (p < end && *p == 'L') ++p;  // Python 2 long literal
    return v;
  }
  std::vector<uint64_t> tuple() {
    expect('(');
    std::vector<uint64_t> v;
    bool trailing_comma = false;
    while (!at(')')) {
      v.push_back(integer());
      trailing_comma = eat(',');
      if (!trailing_comma && !at(')')) bad("expected ',' or ')' in shape" + found());
    }
    ++p;
    if (v.size() == 1 && !trailing_comma) bad("shape (n) is not a tuple; expected (n,)");
    return v;
  }
};

struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<uint64_t> shape;
};

NpyHeader parse_header(const char* b, const char* e, const std::string& path) {
  HeaderParser hp{b, e, path};
  NpyHeader h;
  bool have_descr = false, have_order = false, have_shape = false;
  hp.expect('{');
  while (!hp.at('}')) {
    std::string key = hp.string();
    hp.expect(':');
    if (key == "descr") {
      if (have_descr) hp.bad("duplicate key 'descr'");
      if (hp.at('[')) fail(path, ": structured (record) dtypes are not supported; expected '<i4', '<i8' or '<f4'");
      h.descr = hp.string();
      have_descr = true;
    } else if (key == "fortran_order") {
      if (have_order) hp.bad("duplicate key 'fortran_order'");
      h.fortran_order = hp.boolean();
      have_order = true;
    } else if (key == "shape") {
      if (have_shape) hp.bad("duplicate key 'shape'");
      h.shape = hp.tuple();
      have_shape = true;
    } else {
      hp.bad("unexpected key '" + key + "' (expected descr, fortran_order, shape)");
    }
    if (!hp.eat(',') && !hp.at('}')) hp.bad("expected ',' or '}'" + hp.found());
  }
  ++hp.p;
  hp.skip_ws();
  if (hp.p != e) hp.bad("unexpected text after the closing '}'" + hp.found());
  if (!have_descr) hp.bad("missing key 'descr'");
  if (!have_order) hp.bad("missing key 'fortran_order'");
  if (!have_shape) hp.bad("missing key 'shape'");
  return h;
}

const char kMagic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

}  // namespace

Tensor parse_npy(const uint8_t* data, size_t size, const std::string& path) {
  if (size < 10 || std::memcmp(data, kMagic, 6) != 0)
    fail(path, ": not an .npy file (expected the magic \\x93NUMPY)");
  const int major = data[6], minor = data[7];
  size_t prefix;
  uint64_t hlen;
  if (major == 1) {
    uint16_t l;
    std::memcpy(&l, data + 8, 2);
    hlen = l;
    prefix = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) fail(path, ": .npy file truncated inside its preamble");
    uint32_t l;
    std::memcpy(&l, data + 8, 4);
    hlen = l;
    prefix = 12;
  } else {
    fail(path, ": unsupported .npy format version ", major, ".", minor, " (hwaga reads 1.0, 2.0, 3.0)");
  }
  if (minor != 0) fail(path, ": unsupported .npy format version ", major, ".", minor, " (hwaga reads 1.0, 2.0, 3.0)");
  if (hlen > size - prefix)
    fail(path, ": .npy header length ", hlen, " exceeds the file (", size - prefix, " bytes left); truncated file?");
  const char* hb = reinterpret_cast<const char*>(data + prefix);
  NpyHeader h = parse_header(hb, hb + hlen, path);

  DType dtype;
  size_t item;
  if (h.descr == "<i4") {
    dtype = DType::I32, item = 4;
  } else if (h.descr == "<i8") {
    dtype = DType::I64, item = 8;
  } else if (h.descr == "<f4") {
    dtype = DType::F32, item = 4;
  } else if (!h.descr.empty() && h.descr[0] == '>') {
    fail(path, ": big-endian dtype '", h.descr, "' is not supported; save with arr.astype('<", h.descr.substr(1), "')");
  } else if (h.descr.find('O') != std::string::npos) {
    fail(path, ": object dtype '", h.descr, "' is not supported; expected '<i4', '<i8' or '<f4'");
  } else {
    fail(path, ": unsupported dtype '", h.descr, "'; expected '<i4', '<i8' or '<f4'");
  }
  if (h.fortran_order)
    fail(path, ": fortran_order True is not supported; save a C-order array (np.ascontiguousarray)");

  Shape shape;
  uint64_t numel = 1;
  for (uint64_t d : h.shape) {
    if (d > uint64_t(std::numeric_limits<int64_t>::max()) || __builtin_mul_overflow(numel, d, &numel) ||
        numel > uint64_t(std::numeric_limits<int64_t>::max()) / 8)
      fail(path, ": .npy shape has too many elements (overflow)");
    shape.push_back(int64_t(d));
  }
  const uint64_t nbytes = numel * item;
  const uint64_t avail = size - prefix - hlen;
  if (avail < nbytes)
    fail(path, ": .npy data truncated: ", dtype_name(dtype), " ", shape_str(shape), " needs ", nbytes,
         " bytes, the file holds ", avail);
  if (avail > nbytes)
    fail(path, ": .npy file has ", avail - nbytes, " unexpected bytes after the ", shape_str(shape), " array");
  const uint8_t* src = data + prefix + hlen;

  if (dtype == DType::I64) {
    Tensor t = Tensor::empty(shape, DType::I32);
    int32_t* dst = t.ptr<int32_t>();
    for (uint64_t i = 0; i < numel; ++i) {
      int64_t v;
      std::memcpy(&v, src + i * 8, 8);
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
        fail(path, ": int64 element ", i, " = ", v, " does not fit int32");
      dst[i] = int32_t(v);
    }
    return t;
  }
  Tensor t = Tensor::empty(shape, dtype);
  if (nbytes) std::memcpy(t.data(), src, nbytes);
  return t;
}

Tensor read_npy(const std::string& path) {
  std::shared_ptr<MappedFile> m = MappedFile::open(path);
  return parse_npy(m->data(), m->size(), path);
}

std::string npy_preamble(const Tensor& t) {
  const char* descr;
  if (t.dtype() == DType::I32) descr = "<i4";
  else if (t.dtype() == DType::F32) descr = "<f4";
  else fail("write_npy: dtype ", dtype_name(t.dtype()), " is not supported (expected i32 or f32)");
  std::string dict = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < t.shape().size(); ++i) {
    if (i) dict += ", ";
    dict += std::to_string(t.shape()[i]);
  }
  if (t.shape().size() == 1) dict += ",";
  dict += "), }";
  // Like NumPy 1.24 (byte-identical files): spare spaces so the first dimension can grow in
  // place, then spaces and '\n' so that the data starts at a multiple of 64 bytes (NumPy pads
  // a full 64 when already aligned).
  if (!t.shape().empty()) dict.append(21 - std::min<size_t>(21, std::to_string(t.shape()[0]).size()), ' ');
  size_t prefix = 10;
  if (dict.size() + 1 + 64 + prefix > 65535) prefix = 12;  // version 2.0: u32 header length
  size_t total = prefix + dict.size() + 1;
  dict.append(64 - total % 64, ' ');
  dict.push_back('\n');
  std::string out(kMagic, 6);
  out.push_back(char(prefix == 10 ? 1 : 2));
  out.push_back(0);
  uint32_t hlen = uint32_t(dict.size());
  if (prefix == 10) {
    out.push_back(char(hlen & 0xff));
    out.push_back(char(hlen >> 8));
  } else {
    for (int i = 0; i < 4; ++i) out.push_back(char((hlen >> (8 * i)) & 0xff));
  }
  return out + dict;
}

void write_npy(const std::string& path, const Tensor& t) {
  if (!t.defined()) fail("cannot write ", path, ": the tensor is undefined");
  if (t.device() != Device::CPU) fail("cannot write ", path, ": the tensor is on ", device_name(t.device()));
  std::string pre;
  try {
    pre = npy_preamble(t);
  } catch (const Error& e) {
    fail("cannot write ", path, ": ", e.what());
  }
  AtomicFile f(path);
  f.write(pre);
  if (t.nbytes()) f.write(t.data(), t.nbytes());
  f.commit();
}

}  // namespace hwaga
