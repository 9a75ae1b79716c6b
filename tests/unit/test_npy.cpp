// .npy reader/writer: round trips, interop with real NumPy (/usr/bin/python3: np.save files read
// by hwaga, hwaga files read by np.load and compared byte for byte with np.save), and a
// handcrafted hostile file for every validation path.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/npy.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace hwaga;

namespace {

using test::write_bytes;

class NpyTest : public test::TempDirTest {
 protected:
  // Runs a Python snippet with numpy imported as np and D = this test's folder; returns its rc.
  int python(const std::string& code) const {
    write_bytes(p("snippet.py"), "import sys\nimport numpy as np\nD = sys.argv[1]\n" + code + "\n");
    return std::system(("/usr/bin/python3 " + p("snippet.py") + " " + dir).c_str());
  }
  // A v1.0 .npy from a raw header dict text (padded to 64 like NumPy) and raw data.
  static std::string npy_bytes(const std::string& dict, const std::string& data, int major = 1) {
    std::string h = dict;
    size_t prefix = major == 1 ? 10 : 12;
    while ((prefix + h.size() + 1) % 64) h.push_back(' ');
    h.push_back('\n');
    std::string out = std::string("\x93NUMPY", 6) + char(major) + '\0';
    uint32_t n = uint32_t(h.size());
    out.append(reinterpret_cast<const char*>(&n), major == 1 ? 2 : 4);
    return out + h + data;
  }
};

std::string error_of(const std::function<void()>& f) { return test::error_of(f, "<no hwaga::Error thrown>"); }

template <typename T>
std::string raw(std::initializer_list<T> v) {
  std::vector<T> x(v);
  return std::string(reinterpret_cast<const char*>(x.data()), x.size() * sizeof(T));
}

}  // namespace

TEST_F(NpyTest, RoundTrip) {
  Tensor a = Tensor::empty({2, 3, 4}, DType::I32);
  for (int i = 0; i < 24; ++i) a.ptr<int32_t>()[i] = i * 1000 - 7;
  Tensor b = Tensor::empty({5}, DType::F32);
  for (int i = 0; i < 5; ++i) b.f32()[i] = i * 0.25f - 1.0f;
  Tensor c = Tensor::empty({}, DType::F32);
  c.f32()[0] = 42.5f;
  Tensor d = Tensor::zeros({0, 3}, DType::I32);
  for (auto [name, t] : std::vector<std::pair<std::string, Tensor>>{{"a", a}, {"b", b}, {"c", c}, {"d", d}}) {
    SCOPED_TRACE(name);
    write_npy(p(name + ".npy"), t);
    Tensor r = read_npy(p(name + ".npy"));
    EXPECT_EQ(r.dtype(), t.dtype());
    EXPECT_EQ(r.shape(), t.shape());
    ASSERT_EQ(r.nbytes(), t.nbytes());
    if (t.nbytes()) EXPECT_EQ(std::memcmp(r.data(), t.data(), t.nbytes()), 0);
    EXPECT_EQ(fs::file_size(p(name + ".npy")) % 64, t.nbytes() % 64) << "data must start 64-byte aligned";
  }
  EXPECT_EQ(std::vector<std::string>(), [&] {
    std::vector<std::string> tmp;
    for (auto& e : fs::directory_iterator(dir))
      if (e.path().filename().string().find(".tmp-") != std::string::npos) tmp.push_back(e.path().string());
    return tmp;
  }()) << "temporary files left behind";
}

TEST_F(NpyTest, ReadsFilesWrittenByNumPy) {
  ASSERT_EQ(python(R"(
np.save(D + '/i32.npy', (np.arange(6, dtype=np.int32) - 3).reshape(2, 3))
np.save(D + '/i64.npy', np.array([-2**31, 2**31 - 1, 0, 7], dtype=np.int64))
np.save(D + '/f32_0d.npy', np.float32(3.5))
np.save(D + '/f32_4d.npy', (np.arange(120, dtype=np.float32) * 0.25).reshape(2, 3, 4, 5))
a = np.arange(12, dtype=np.int32).reshape(3, 4)
for v in [(2, 0), (3, 0)]:
    with open(D + '/v%d.npy' % v[0], 'wb') as f:
        np.lib.format.write_array(f, a, version=v)
)"),
            0);
  Tensor t = read_npy(p("i32.npy"));
  ASSERT_EQ(t.dtype(), DType::I32);
  ASSERT_EQ(t.shape(), (Shape{2, 3}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(t.ptr<int32_t>()[i], i - 3);

  t = read_npy(p("i64.npy"));
  ASSERT_EQ(t.dtype(), DType::I32) << "int64 is converted to int32";
  ASSERT_EQ(t.shape(), (Shape{4}));
  EXPECT_EQ(t.ptr<int32_t>()[0], std::numeric_limits<int32_t>::min());
  EXPECT_EQ(t.ptr<int32_t>()[1], std::numeric_limits<int32_t>::max());
  EXPECT_EQ(t.ptr<int32_t>()[3], 7);

  t = read_npy(p("f32_0d.npy"));
  ASSERT_EQ(t.shape(), Shape{});
  EXPECT_EQ(t.f32()[0], 3.5f);

  t = read_npy(p("f32_4d.npy"));
  ASSERT_EQ(t.shape(), (Shape{2, 3, 4, 5}));
  for (int i = 0; i < 120; ++i) ASSERT_EQ(t.f32()[i], i * 0.25f);

  for (const char* v : {"v2.npy", "v3.npy"}) {
    SCOPED_TRACE(v);
    t = read_npy(p(v));
    ASSERT_EQ(t.shape(), (Shape{3, 4}));
    EXPECT_EQ(t.ptr<int32_t>()[11], 11);
  }
}

TEST_F(NpyTest, NumPyReadsWhatHwagaWritesByteForByte) {
  Tensor a = Tensor::empty({2, 3, 4}, DType::I32);
  for (int i = 0; i < 24; ++i) a.ptr<int32_t>()[i] = (i - 12) * 100000;
  Tensor b = Tensor::empty({7}, DType::F32);
  for (int i = 0; i < 7; ++i) b.f32()[i] = i / 3.0f;
  Tensor c = Tensor::empty({}, DType::I32);
  c.ptr<int32_t>()[0] = -5;
  Tensor d = Tensor::empty({1, 1, 1, 16384}, DType::F32);
  for (int i = 0; i < 16384; ++i) d.f32()[i] = float(i);
  write_npy(p("a.npy"), a);
  write_npy(p("b.npy"), b);
  write_npy(p("c.npy"), c);
  write_npy(p("d.npy"), d);
  EXPECT_EQ(python(R"(
def same(name, ref):
    x = np.load(D + '/' + name + '.npy')
    assert x.dtype == ref.dtype and x.shape == ref.shape, (name, x.dtype, x.shape)
    assert (x == ref).all(), name
    np.save(D + '/ref_' + name + '.npy', ref)
    assert open(D + '/' + name + '.npy', 'rb').read() == open(D + '/ref_' + name + '.npy', 'rb').read(), name + ' differs from np.save'
same('a', ((np.arange(24, dtype=np.int32) - 12) * 100000).reshape(2, 3, 4))
same('b', np.arange(7, dtype=np.float32) / np.float32(3))
same('c', np.array(-5, dtype=np.int32))
same('d', np.arange(16384, dtype=np.float32).reshape(1, 1, 1, 16384))
)"),
            0);
}

TEST_F(NpyTest, RefusesWhatItCannotRepresent) {
  ASSERT_EQ(python(R"(
np.save(D + '/big.npy', np.array([1, 2**31], dtype=np.int64))
np.save(D + '/fortran.npy', np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)))
np.save(D + '/be.npy', np.arange(3, dtype='>i4'))
np.save(D + '/obj.npy', np.array([1, 'a'], dtype=object), allow_pickle=True)
np.save(D + '/f64.npy', np.arange(3, dtype=np.float64))
np.save(D + '/rec.npy', np.zeros(2, dtype=[('a', '<i4'), ('b', '<f4')]))
)"),
            0);
  const std::vector<std::pair<const char*, const char*>> cases = {
      {"big.npy", "element 1 = 2147483648 does not fit int32"},
      {"fortran.npy", "fortran_order True"},
      {"be.npy", "big-endian dtype '>i4'"},
      {"obj.npy", "object dtype"},
      {"f64.npy", "unsupported dtype '<f8'"},
      {"rec.npy", "structured"},
  };
  for (auto [name, expect] : cases) {
    SCOPED_TRACE(name);
    std::string msg = error_of([&] { read_npy(p(name)); });
    EXPECT_NE(msg.find(p(name)), std::string::npos) << msg;
    EXPECT_NE(msg.find(expect), std::string::npos) << msg;
  }
  EXPECT_THROW(write_npy(p("x.npy"), Tensor::zeros({2}, DType::I64)), Error);
  EXPECT_FALSE(fs::exists(p("x.npy")));
  std::string msg = error_of([&] { write_npy(p("nodir/x.npy"), Tensor::zeros({2}, DType::I32)); });
  EXPECT_NE(msg.find(p("nodir/x.npy")), std::string::npos) << msg;
}

TEST_F(NpyTest, HostileFilesAreRefused) {
  const std::string d2 = raw<int32_t>({1, 2});
  const std::string good = "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }";
  std::string bad_magic = npy_bytes(good, d2);
  bad_magic[1] = 'X';
  std::string long_header = npy_bytes(good, d2);
  long_header[8] = char(0xff);  // header length 0x..ff beyond the file
  long_header[9] = char(0xff);
  const std::vector<std::tuple<const char*, std::string, const char*>> cases = {
      {"empty", "", "not an .npy file"},
      {"magic", bad_magic, "not an .npy file"},
      {"preamble", std::string("\x93NUMPY\x01\x00\x10", 9), "not an .npy file"},
      {"v2_preamble", std::string("\x93NUMPY\x02\x00\x10\x00", 10), "truncated inside its preamble"},
      {"version", npy_bytes(good, d2, 4), "unsupported .npy format version 4.0"},
      {"header_len", long_header, "exceeds the file"},
      {"garbage", npy_bytes("hello", d2), "expected '{'"},
      {"unterminated", npy_bytes("{'descr': '<i4", d2), "unterminated string"},
      {"no_close", npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), ", d2), "expected a quoted string"},
      {"missing_shape", npy_bytes("{'descr': '<i4', 'fortran_order': False}", d2), "missing key 'shape'"},
      {"extra_key", npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), 'x': 1}", d2),
       "unexpected key 'x'"},
      {"dup_key", npy_bytes("{'descr': '<i4', 'descr': '<i4', 'fortran_order': False, 'shape': (2,)}", d2),
       "duplicate key 'descr'"},
      {"bad_bool", npy_bytes("{'descr': '<i4', 'fortran_order': 0, 'shape': (2,)}", d2), "expected True or False"},
      {"negative_dim", npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (-2,)}", d2),
       "non-negative integer"},
      {"not_tuple", npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (2)}", d2), "not a tuple"},
      {"shape_list", npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': [2]}", d2), "expected '('"},
      {"dim_overflow", npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (99999999999999999999,)}", d2),
       "overflows"},
      {"numel_overflow",
       npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}", d2), "overflow"},
      {"truncated", npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (3,)}", d2),
       "data truncated: i32 [3] needs 12 bytes, the file holds 8"},
      {"trailing", npy_bytes(good, d2 + "xx"), "2 unexpected bytes"},
      {"after_brace", npy_bytes(good + " x", d2), "after the closing '}'"},
      {"escape", npy_bytes("{'descr': '<i\\4', 'fortran_order': False, 'shape': (2,)}", d2), "escape"},
  };
  for (const auto& [name, bytes, expect] : cases) {
    SCOPED_TRACE(name);
    const std::string path = p(std::string(name) + ".npy");
    write_bytes(path, bytes);
    std::string msg = error_of([&] { read_npy(path); });
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(expect), std::string::npos) << "expected \"" << expect << "\" in: " << msg;
  }
  // The well-formed twin (also with double quotes and no trailing comma) reads fine.
  write_bytes(p("good.npy"), npy_bytes("{\"descr\": \"<i4\", \"fortran_order\": False, \"shape\": (2,)}", d2));
  Tensor t = read_npy(p("good.npy"));
  EXPECT_EQ(t.ptr<int32_t>()[1], 2);
  std::string msg = error_of([&] { read_npy(p("missing.npy")); });
  EXPECT_NE(msg.find(p("missing.npy")), std::string::npos) << msg;
}
