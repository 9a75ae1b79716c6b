// safetensors reader/writer, hwaga model-file checks, and the mmap / atomic-write helpers.
// Independent references: a Python reader/writer of the format written with struct + json +
// numpy (/usr/bin/python3), and handcrafted hostile files for every validation path.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace hwaga;

namespace {

using test::read_bytes;
using test::write_bytes;

class SafetensorsTest : public test::TempDirTest {
 protected:
  // A safetensors file from a raw header text and `data_size` zero bytes of data; `n_override`
  // replaces the header length field.
  std::string st_bytes(const std::string& header, size_t data_size, int64_t n_override = -1) const {
    uint64_t n = n_override >= 0 ? uint64_t(n_override) : header.size();
    std::string out(8, '\0');
    std::memcpy(out.data(), &n, 8);
    return out + header + std::string(data_size, '\0');
  }
  std::vector<std::string> files_in_dir() const {
    std::vector<std::string> v;
    for (auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
    return v;
  }
};

Tensor iota_f32(Shape s) {
  Tensor t = Tensor::empty(s, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = float(i) * 0.5f - 3.0f;
  return t;
}
template <typename T>
Tensor iota_typed(Shape s, DType d, int64_t start) {
  Tensor t = Tensor::empty(s, d);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<T>()[i] = T(start + i);
  return t;
}

std::string error_of(const std::function<void()>& f) { return test::error_of(f, "<no hwaga::Error thrown>"); }

TensorMap sample_tensors() {
  TensorMap m;
  m["b.f32"] = iota_f32({2, 3});
  m["a.bf16"] = iota_typed<uint16_t>({5}, DType::BF16, 0x3f80);  // odd byte count: 10 bytes
  m["c.f16"] = iota_typed<uint16_t>({3, 1}, DType::F16, 0x3c00);
  m["d.i32"] = iota_typed<int32_t>({4}, DType::I32, -2);
  m["e.i64"] = iota_typed<int64_t>({2, 2}, DType::I64, int64_t(1) << 40);
  m["f.u8"] = iota_typed<uint8_t>({7}, DType::U8, 250 - 7);
  m["g.empty"] = Tensor::zeros({0, 4}, DType::F32);
  m["h.scalar"] = iota_f32({});
  return m;
}

}  // namespace

TEST_F(SafetensorsTest, RoundTripEveryDtypeAlignedAndDeterministic) {
  TensorMap m = sample_tensors();
  std::map<std::string, std::string> md = {{"format", "hwaga"}, {"note", "héllo \"quoted\"\n"}};
  write_safetensors(p("a.safetensors"), m, md);
  write_safetensors(p("b.safetensors"), m, md);
  const std::string bytes = read_bytes(p("a.safetensors"));
  EXPECT_EQ(bytes, read_bytes(p("b.safetensors"))) << "writer is not deterministic";
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u) << "data section must start 8-byte aligned";

  SafetensorsFile f = read_safetensors(p("a.safetensors"));
  EXPECT_EQ(f.path, p("a.safetensors"));
  EXPECT_EQ(f.metadata, md);
  ASSERT_EQ(f.tensors.size(), m.size());
  for (const auto& [name, t] : m) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(f.tensors.count(name));
    const Tensor& r = f.tensors.at(name);
    EXPECT_EQ(r.dtype(), t.dtype());
    EXPECT_EQ(r.shape(), t.shape());
    ASSERT_EQ(r.nbytes(), t.nbytes());
    if (t.nbytes()) EXPECT_EQ(std::memcmp(r.data(), t.data(), t.nbytes()), 0);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(r.data()) % dtype_size(r.dtype()), 0u) << "element-misaligned view";
  }
  // The mapping must outlive the file object and even the directory entry.
  Tensor keep = f.tensors.at("b.f32");
  f = SafetensorsFile{};
  fs::remove(p("a.safetensors"));
  EXPECT_EQ(keep.f32()[5], 5 * 0.5f - 3.0f);
}

TEST_F(SafetensorsTest, PythonReadsWhatHwagaWrites) {
  write_safetensors(p("h.safetensors"), sample_tensors(), {{"k", "v"}});
  // An independent reader (struct + json + numpy): checks layout rules and values.
  const std::string script = R"PY(
import json, struct, sys
import numpy as np
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
assert (8 + n) % 8 == 0, 'unaligned data start'
h = json.loads(b[8:8 + n])
assert h.pop('__metadata__') == {'k': 'v'}
data = b[8 + n:]
spans = sorted(tuple(e['data_offsets']) for e in h.values())
pos = 0
for s, e in spans:
    assert s == pos, ('hole or overlap', s, pos)
    pos = e
assert pos == len(data), 'trailing bytes'
def arr(name, dt):
    e = h[name]; s, t = e['data_offsets']
    return np.frombuffer(data[s:t], dtype=dt).reshape(e['shape'])
assert h['b.f32']['dtype'] == 'F32'
assert (arr('b.f32', '<f4') == np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5 - 3).all()
assert (arr('e.i64', '<i8') == (1 << 40) + np.arange(4).reshape(2, 2)).all()
assert (arr('d.i32', '<i4') == np.arange(4) - 2).all()
assert (arr('a.bf16', '<u2') == 0x3f80 + np.arange(5)).all() and h['a.bf16']['dtype'] == 'BF16'
assert h['g.empty']['shape'] == [0, 4] and h['h.scalar']['shape'] == []
assert arr('h.scalar', '<f4') == -3.0
)PY";
  write_bytes(p("check.py"), script);
  int rc = std::system(("/usr/bin/python3 " + p("check.py") + " " + p("h.safetensors")).c_str());
  EXPECT_EQ(rc, 0) << "the Python reference reader rejected hwaga's file";
}

TEST_F(SafetensorsTest, ReadsPythonWrittenFileWithMisalignedTensor) {
  // Written by an independent Python writer: a U8 tensor first puts the F32 tensor at offset 3.
  const std::string script = R"PY(
import json, struct, sys
import numpy as np
u8 = np.array([1, 2, 3], dtype=np.uint8).tobytes()
f32 = np.array([[1.5, -2.25]], dtype='<f4').tobytes()
h = {'__metadata__': {'x': 'y'},
     'u': {'dtype': 'U8', 'shape': [3], 'data_offsets': [0, 3]},
     'f': {'dtype': 'F32', 'shape': [1, 2], 'data_offsets': [3, 11]}}
hb = json.dumps(h).encode()
open(sys.argv[1], 'wb').write(struct.pack('<Q', len(hb)) + hb + u8 + f32)
)PY";
  write_bytes(p("w.py"), script);
  ASSERT_EQ(std::system(("/usr/bin/python3 " + p("w.py") + " " + p("py.safetensors")).c_str()), 0);
  SafetensorsFile f = read_safetensors(p("py.safetensors"));
  EXPECT_EQ(f.metadata.at("x"), "y");
  const Tensor& t = f.tensors.at("f");
  ASSERT_EQ(t.shape(), (Shape{1, 2}));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 4, 0u);
  EXPECT_EQ(t.f32()[0], 1.5f);
  EXPECT_EQ(t.f32()[1], -2.25f);
  EXPECT_EQ(f.tensors.at("u").ptr<uint8_t>()[2], 3);
}

TEST_F(SafetensorsTest, HostileFilesAreRefusedWithPathAndField) {
  const std::string ok_entry = R"("t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})";
  struct Case {
    const char* name;
    std::string bytes;
    const char* expect;  // substring of the message
  };
  const std::vector<Case> cases = {
      {"empty", "", "shorter than the 8-byte"},
      {"short", "abc", "shorter than the 8-byte"},
      {"n_beyond_file", st_bytes("{}", 0, 1000), "exceeds the file"},
      {"n_absurd", st_bytes("{}", 0, int64_t(200) << 20), "limit"},
      {"n_huge", st_bytes("{}", 0, INT64_MAX), "limit"},
      {"not_json", st_bytes("{not json", 0), "not valid JSON"},
      {"truncated_json", st_bytes("{\"t\": {\"dtype\"", 0), "not valid JSON"},
      {"not_object", st_bytes("[1, 2]", 0), "expected a JSON object"},
      {"entry_not_object", st_bytes(R"({"t": 3})", 0), "tensor \"t\": expected an object"},
      {"missing_field", st_bytes(R"({"t": {"dtype": "F32", "shape": [2]}})", 8), "missing field \"data_offsets\""},
      {"unknown_dtype", st_bytes(R"({"t": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", 8),
       "unsupported dtype \"F64\""},
      {"lowercase_dtype", st_bytes(R"({"t": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]}})", 8),
       "unsupported dtype"},
      {"dtype_not_string", st_bytes(R"({"t": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}})", 8),
       "unsupported dtype 4"},
      {"shape_not_array", st_bytes(R"({"t": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})", 8),
       "shape: expected an array"},
      {"shape_negative", st_bytes(R"({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8),
       "shape[0]: expected a non-negative integer, found -2"},
      {"shape_float", st_bytes(R"({"t": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}})", 8),
       "shape[0]: expected a non-negative integer"},
      {"shape_string", st_bytes(R"({"t": {"dtype": "F32", "shape": [1, "2"], "data_offsets": [0, 8]}})", 8),
       "shape[1]"},
      {"shape_overflow",
       st_bytes(R"({"t": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 8]}})", 8),
       "overflow"},
      {"shape_bytes_overflow",
       st_bytes(R"({"t": {"dtype": "I64", "shape": [4611686018427387904], "data_offsets": [0, 8]}})", 8),
       "overflow"},
      {"shape_dim_too_big", st_bytes(R"({"t": {"dtype": "U8", "shape": [18446744073709551615], "data_offsets": [0, 8]}})", 8),
       "overflow"},
      {"offsets_reversed", st_bytes(R"({"t": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}})", 8),
       "begin > end"},
      {"offsets_three", st_bytes(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}})", 8),
       "expected [begin, end]"},
      {"offsets_negative", st_bytes(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})", 8),
       "data_offsets[0]"},
      {"offsets_beyond_data", st_bytes(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 8),
       "exceed the data section of 8 bytes"},
      {"size_mismatch", st_bytes(R"({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 16),
       "needs 12"},
      {"overlap",
       st_bytes(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                12),
       "overlap"},
      {"metadata_not_string", st_bytes(R"({"__metadata__": {"a": 1}, )" + ok_entry + "}", 8),
       "__metadata__ \"a\": expected a string value"},
      {"metadata_not_object", st_bytes(R"({"__metadata__": ["a"]})", 0), "__metadata__: expected an object"},
      {"duplicate_tensor", st_bytes("{" + ok_entry + ", " + ok_entry + "}", 8), "duplicate key \"t\""},
      {"duplicate_field",
       st_bytes(R"({"t": {"dtype": "F32", "dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 8),
       "duplicate key \"dtype\""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = p(std::string(c.name) + ".safetensors");
    write_bytes(path, c.bytes);
    std::string msg = error_of([&] { read_safetensors(path); });
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << "expected \"" << c.expect << "\" in: " << msg;
  }
  // The good twin of these files is accepted, so the cases above fail for the stated reason.
  write_bytes(p("good.safetensors"), st_bytes("{" + ok_entry + "}", 8));
  EXPECT_EQ(read_safetensors(p("good.safetensors")).tensors.at("t").shape(), (Shape{2}));
  // Zero-size tensors at one offset do not overlap; gaps are tolerated.
  write_bytes(p("zeros.safetensors"),
              st_bytes(R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},
                          "b": {"dtype": "I32", "shape": [0, 3], "data_offsets": [4, 4]},
                          "c": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                       8));
  EXPECT_EQ(read_safetensors(p("zeros.safetensors")).tensors.size(), 3u);
}

TEST_F(SafetensorsTest, UnreadablePaths) {
  std::string msg = error_of([&] { read_safetensors(p("missing.safetensors")); });
  EXPECT_NE(msg.find(p("missing.safetensors")), std::string::npos) << msg;
  EXPECT_NE(msg.find("No such file"), std::string::npos) << msg;
  msg = error_of([&] { read_safetensors(dir); });
  EXPECT_NE(msg.find("directory"), std::string::npos) << msg;
}

TEST_F(SafetensorsTest, ModelFileChecks) {
  TensorMap m;
  m["stage1.x"] = iota_f32({2});
  auto with = [&](std::map<std::string, std::string> md) {
    write_safetensors(p("m.safetensors"), m, md);
    return p("m.safetensors");
  };
  const std::string cfg = R"({"stage1": {"type": "vqgan"}})";
  SafetensorsFile f = read_model_file(with({{"format", "hwaga"}, {"version", "1"}, {"config", cfg}}));
  EXPECT_EQ(model_config(f)["stage1"]["type"], "vqgan");
  EXPECT_EQ(f.tensors.at("stage1.x").f32()[1], -2.5f);

  struct Case {
    std::map<std::string, std::string> md;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {{{"version", "1"}, {"config", cfg}}, "no \"format\""},
      {{{"format", "gguf"}, {"version", "1"}, {"config", cfg}}, "\"format\" is \"gguf\", expected \"hwaga\""},
      {{{"format", "hwaga"}, {"config", cfg}}, "no metadata \"version\""},
      {{{"format", "hwaga"}, {"version", "2"}, {"config", cfg}}, "unknown version 2 (this hwaga reads version 1)"},
      {{{"format", "hwaga"}, {"version", "1"}}, "no metadata \"config\""},
      {{{"format", "hwaga"}, {"version", "1"}, {"config", "{oops"}}, "\"config\" is not valid JSON"},
      {{{"format", "hwaga"}, {"version", "1"}, {"config", "[1]"}}, "expected a JSON object, found array"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.expect);
    std::string path = with(c.md);
    std::string msg = error_of([&] { read_model_file(path); });
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << msg;
  }
}

TEST_F(SafetensorsTest, WriterFailuresLeaveNothingBehind) {
  TensorMap m;
  m["x"] = iota_f32({3});
  // Missing folder: the error names the path.
  const std::string bad = p("no/such/dir/out.safetensors");
  std::string msg = error_of([&] { write_safetensors(bad, m, {}); });
  EXPECT_NE(msg.find(bad), std::string::npos) << msg;
  // Invalid inputs are refused before anything is written; an existing file stays intact.
  write_safetensors(p("keep.safetensors"), m, {{"v", "old"}});
  const std::string before = read_bytes(p("keep.safetensors"));
  TensorMap reserved = m;
  reserved["__metadata__"] = iota_f32({1});
  EXPECT_THROW(write_safetensors(p("keep.safetensors"), reserved, {}), Error);
  TensorMap undefined = m;
  undefined["u"] = Tensor();
  EXPECT_THROW(write_safetensors(p("keep.safetensors"), undefined, {}), Error);
  EXPECT_THROW(write_safetensors(p("keep.safetensors"), m, {{"bad", std::string("\xff\xfe")}}), Error);
  EXPECT_EQ(read_bytes(p("keep.safetensors")), before);
  EXPECT_EQ(files_in_dir(), std::vector<std::string>{"keep.safetensors"}) << "a temporary file was left behind";
  // Overwriting works and is complete.
  write_safetensors(p("keep.safetensors"), m, {{"v", "new"}});
  EXPECT_EQ(read_safetensors(p("keep.safetensors")).metadata.at("v"), "new");
  EXPECT_EQ(files_in_dir().size(), 1u);
}

TEST_F(SafetensorsTest, AtomicFileAndMappedFile) {
  {
    AtomicFile f(p("t.bin"));
    f.write("abc");
    EXPECT_TRUE(fs::exists(f.temp_path()));
    EXPECT_EQ(f.temp_path().rfind(p("t.bin") + ".tmp-", 0), 0u) << f.temp_path();
    EXPECT_FALSE(fs::exists(p("t.bin"))) << "visible before commit";
  }  // destroyed without commit
  EXPECT_TRUE(files_in_dir().empty()) << "temporary file not removed";

  mode_t old = umask(022);
  write_file_atomic(p("t.bin"), std::string("hello"));
  umask(old);
  struct stat st;
  ASSERT_EQ(stat(p("t.bin").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u) << "mode should follow the umask like an ordinary file";
  auto m = MappedFile::open(p("t.bin"));
  ASSERT_EQ(m->size(), 5u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(m->data()), 5), "hello");

  write_file_atomic(p("empty.bin"), std::string());
  auto e = MappedFile::open(p("empty.bin"));
  EXPECT_EQ(e->size(), 0u);
  EXPECT_NE(e->data(), nullptr);
  EXPECT_THROW(MappedFile::open(dir), Error);
  EXPECT_THROW(AtomicFile(p("missing/x")), Error);
  EXPECT_THROW(AtomicFile(dir + "/"), Error);
}
