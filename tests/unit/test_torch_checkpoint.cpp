// Reads checkpoints that Debian's PyTorch writes (tests/unit/torch_fixtures.py) and compares every
// tensor bit-exactly with the bytes torch itself reports; checks that hostile and broken files
// give hwaga::Error naming the file and the problem, never a crash, and that nothing is executed.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/pickle.h"
#include "io/torch_checkpoint.h"
#include "io/zip_reader.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace hwaga;

namespace {

using test::read_bytes;  // "" if the file cannot be read

// The fixtures are generated once per script version into the system temp folder and shared by
// the test processes (ctest runs each case on its own): written to a private folder, then renamed
// into place, so concurrent runs never see a half-written set.
const fs::path& fixtures() {
  static const fs::path dir = [] {
    const fs::path script = fs::path(HWAGA_SOURCE_DIR) / "tests/unit/torch_fixtures.py";
    const std::string text = read_bytes(script);
    if (text.empty()) throw std::runtime_error("cannot read " + script.string());
    const fs::path final_dir = fs::temp_directory_path() /
        ("hwaga-torch-fixtures-" + std::to_string(getuid()) + "-" + std::to_string(std::hash<std::string>{}(text)));
    if (fs::exists(final_dir / "expected.json")) return final_dir;
    std::string tmpl = (fs::temp_directory_path() / "hwaga-torch-fixtures-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    const std::string cmd = "/usr/bin/python3 '" + script.string() + "' '" + tmpl + "' --marker '" +
                            (final_dir / "executed.marker").string() + "'";
    if (std::system(cmd.c_str()) != 0) throw std::runtime_error("fixture script failed: " + cmd);
    std::error_code ec;
    fs::rename(tmpl, final_dir, ec);
    if (ec) fs::remove_all(tmpl);  // another process got there first
    if (!fs::exists(final_dir / "expected.json")) throw std::runtime_error("no fixtures in " + final_dir.string());
    return final_dir;
  }();
  return dir;
}

std::string fx(const std::string& name) { return (fixtures() / name).string(); }

const nlohmann::json& expected() {
  static const nlohmann::json j = nlohmann::json::parse(read_bytes(fixtures() / "expected.json"));
  return j;
}

std::string hex(const void* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    uint8_t b = static_cast<const uint8_t*>(p)[i];
    s += digits[b >> 4];
    s += digits[b & 15];
  }
  return s;
}

void expect_tensors(const TensorMap& got, const nlohmann::json& want, const std::string& file) {
  EXPECT_EQ(got.size(), want.size()) << file;
  for (auto& [name, w] : want.items()) {
    SCOPED_TRACE(file + ": " + name);
    auto it = got.find(name);
    ASSERT_NE(it, got.end()) << "missing tensor";
    const Tensor& t = it->second;
    EXPECT_EQ(dtype_name(t.dtype()), w["dtype"].get<std::string>());
    EXPECT_EQ(t.shape(), w["shape"].get<Shape>());
    // Bit-exact: the same bytes torch's contiguous() holds.
    EXPECT_EQ(hex(t.data(), t.nbytes()), w["hex"].get<std::string>());
  }
}

// Runs f, which must throw hwaga::Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << parts.front() << "'";
  } catch (const Error& e) {
    for (const std::string& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

// A string literal with its embedded NULs.
template <size_t N>
std::string S(const char (&s)[N]) {
  return std::string(s, N - 1);
}

}  // namespace

TEST(TorchCheckpoint, PlainStateDictMatchesTorch) {
  const nlohmann::json& want = expected()["plain.pt"];
  TensorMap m = load_torch_state_dict(fx("plain.pt"));
  expect_tensors(m, want["tensors"], "plain.pt");
  // The four codebook keys alias one storage: all are returned, as views of the same bytes.
  const void* p0 = m.at("quantizer.codebooks.0.weight").data();
  for (const auto& k : want["aliases"]) EXPECT_EQ(m.at(k.get<std::string>()).data(), p0) << k;
  EXPECT_EQ(m.at("scalar").shape(), Shape{});
  EXPECT_EQ(m.at("num_batches_tracked").dtype(), DType::I64);
  // The transposed view shares `f32`'s storage but is a contiguous copy.
  EXPECT_NE(m.at("transposed").data(), m.at("f32").data());
  // Nested dicts are flattened with '.'.
  TorchCheckpoint ck = TorchCheckpoint::open(fx("plain.pt"));
  expect_tensors(ck.tensors("nested"), want["nested"], "plain.pt nested");
  EXPECT_EQ(ck.keys(), (std::vector<std::string>{"state_dict", "epoch", "nested"}));
}

TEST(TorchCheckpoint, VariantsMatchTorch) {
  // Other protocols, other zip layouts (zip64, unaligned data read by copies), Lightning-style
  // files with optimizer state and unknown classes, newer PyTorch tensor forms, overlapping views.
  for (const char* f : {"bare.pt", "proto1.pt", "proto4.pt", "proto5.pt", "lightning.ckpt", "evil_top.pt",
                        "zip64.pt", "unaligned.pt", "overlap.pt", "newer_forms.pt"}) {
    SCOPED_TRACE(f);
    const nlohmann::json& want = expected()[f];
    ASSERT_TRUE(want.is_object());
    TensorMap m;
    ASSERT_NO_THROW(m = TorchCheckpoint::open(fx(f)).tensors(want["key"].get<std::string>()));
    expect_tensors(m, want["tensors"], f);
  }
  // CRC checking of storages passes on a good file.
  TorchCheckpointOptions verify;
  verify.verify_crc = true;
  EXPECT_NO_THROW(TorchCheckpoint::open(fx("zip64.pt"), verify).tensors("state_dict"));
}

TEST(TorchCheckpoint, LightningSummaryAndKeyFallback) {
  TorchCheckpoint ck = TorchCheckpoint::open(fx("lightning.ckpt"));
  std::map<std::string, std::string> s;
  for (auto& [k, d] : ck.summary()) s[k] = d;
  EXPECT_EQ(s["epoch"], "int 5");
  EXPECT_EQ(s["pytorch-lightning_version"], "str '1.4.2'");
  EXPECT_EQ(s["optimizer_states"], "list of 1 items");
  EXPECT_EQ(s["state_dict"], "dict of 4 entries (4 tensors)");
  EXPECT_EQ(s["hyper_parameters"], "dict of 8 entries");
  EXPECT_EQ(ck.keys().front(), "epoch");

  // The first key present wins; "" is the top level itself.
  EXPECT_EQ(ck.tensors_first_of({"state_dict_ema", "state_dict"}).size(), 4u);
  expect_tensors(load_torch_state_dict_first_of(fx("bare.pt"), {"state_dict", ""}), expected()["bare.pt"]["tensors"],
                 "bare.pt");
  expect_error([&] { ck.tensors_first_of({"model", "ema"}); }, {"lightning.ckpt", "'model'", "'ema'", "state_dict"});
  expect_error([&] { ck.tensors("model"); }, {"lightning.ckpt", "no 'model' entry", "optimizer_states"});
  expect_error([&] { ck.tensors("hyper_parameters"); }, {"hyper_parameters", "'config'", "__main__.UnknownConfig"});
  expect_error([&] { ck.tensors("epoch"); }, {"'epoch' is not a dict of tensors but int 5"});
}

TEST(TorchCheckpoint, ForeignObjectsAreNeverExecuted) {
  const fs::path marker = fixtures() / "executed.marker";
  expect_error([&] { load_torch_state_dict(fx("unknown_in_state_dict.pt")); },
               {"unknown_in_state_dict.pt: state_dict entry 'bad' is built by '__main__.UnknownConfig', "
                "which hwaga does not execute"});
  expect_error([&] { load_torch_state_dict(fx("evil_in_state_dict.pt")); },
               {"evil_in_state_dict.pt: state_dict entry 'evil' is built by 'posix.system'"});
  // Outside the state_dict the payloads are harmless placeholders.
  TorchCheckpoint ck = TorchCheckpoint::open(fx("evil_top.pt"));
  EXPECT_EQ(ck.tensors("state_dict").size(), 1u);
  EXPECT_EQ(ck.summary().at(1).second, "list of 2 items");
  expect_error([&] { ck.tensors("more"); }, {"'x' is built by 'posix.system'"});
  EXPECT_FALSE(fs::exists(marker)) << "a pickled call was executed";
}

TEST(TorchCheckpoint, BrokenFilesGiveClearErrors) {
  struct Case {
    const char* file;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"not_a_zip.pt", {"not_a_zip.pt: not a zip archive"}},
      {"empty.pt", {"empty.pt: not a zip archive"}},
      {"legacy.pt", {"legacy.pt: legacy (PyTorch < 1.6)"}},
      {"deflated.pt", {"deflated.pt: entry 'plain/data/", "is compressed"}},
      {"missing_storage.pt", {"missing_storage.pt: state_dict entry", "storage '0', which is missing from the archive"}},
      {"short_storage.pt", {"short_storage.pt: state_dict entry", "which holds only 4 bytes"}},
      {"flipped_crc.pt", {"flipped_crc.pt: entry 'plain/data.pkl' is corrupt"}},
      {"whole_model.pt", {"whole_model.pt: the top level is an object built by 'torch.nn.modules.linear.Linear'"}},
      {"string_in_state_dict.pt", {"state_dict entry 'note' is not a tensor but str 'text'"}},
      {"double_in_state_dict.pt", {"state_dict entry 'w' has dtype Double"}},
      {"cyclic.pt", {"cyclic.pt: state_dict entry 'self.self", "nested more than 16"}},
      {"no_such_file.pt", {"no_such_file.pt: cannot open"}},
      {"", {"not a regular file"}},  // the fixture folder itself
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.file);
    expect_error([&] { load_torch_state_dict(fx(c.file)); }, c.parts);
  }
  // Views outside their storage, negative or overflowing sizes and strides, a negative offset.
  for (int i = 0; i < 9; ++i) {
    std::string f = "badview" + std::to_string(i) + ".pt";
    SCOPED_TRACE(f);
    expect_error([&] { load_torch_state_dict(fx(f)); }, {f + ": state_dict entry 'v' "});
  }
}

TEST(TorchCheckpoint, TruncatedFilesNeverCrash) {
  const std::string bytes = read_bytes(fx("plain.pt"));
  ASSERT_GT(bytes.size(), 1000u);
  // Every strict prefix loses the end-of-central-directory record.
  for (size_t cut = 0; cut < bytes.size(); ++cut)
    EXPECT_THROW(TorchCheckpoint::from_memory(bytes.data(), cut, "cut.pt").tensors("state_dict"), Error) << cut;
  // Through the file mapping too, at a few cut points.
  const fs::path tmp = fixtures() / ("cut-" + std::to_string(getpid()) + ".pt");
  for (size_t cut : {size_t(1), size_t(100), bytes.size() / 2, bytes.size() - 22, bytes.size() - 1}) {
    std::ofstream(tmp, std::ios::binary).write(bytes.data(), std::streamsize(cut));
    expect_error([&] { load_torch_state_dict(tmp.string()); }, {tmp.string() + ": "});
  }
  fs::remove(tmp);
  // A file cut inside its central directory names the truncation.
  expect_error([&] { TorchCheckpoint::from_memory(bytes.data(), bytes.size() - 30, "cut.pt"); },
               {"cut.pt: zip archive is truncated"});
}

TEST(TorchCheckpoint, FlippedBytesNeverCrash) {
  // Fixture files with flipped data.pkl bytes and a matching CRC: an error or a load, no crash.
  for (int i = 0; i < 12; ++i) {
    std::string f = fx("flipped" + std::to_string(i) + ".pt");
    try {
      TorchCheckpoint ck = TorchCheckpoint::open(f);
      ck.summary();
      ck.tensors("state_dict");
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
    }
  }
  // Every byte of data.pkl flipped in turn (by 0x01 or 0xff), with the archive's CRC zeroed (which
  // skips the check).
  std::string bytes = read_bytes(fx("plain.pt"));
  auto fb = FileBytes::copy(bytes.data(), bytes.size());
  ZipReader zip(fb, "plain.pt");
  const ZipEntry* e = zip.find("plain/data.pkl");
  ASSERT_NE(e, nullptr);
  const size_t pkl_at = size_t(zip.data(*e).data() - fb->data()), pkl_size = zip.data(*e).size();
  size_t central = bytes.find(std::string("PK\x01\x02", 4));
  ASSERT_NE(central, std::string::npos);
  ASSERT_EQ(bytes.compare(central + 46, 14, "plain/data.pkl"), 0);
  std::memset(&bytes[central + 16], 0, 4);
  size_t loaded = 0;
  for (size_t i = 0; i < pkl_size; ++i) {
    std::string b = bytes;
    b[pkl_at + i] = char(b[pkl_at + i] ^ (i % 2 ? 0xff : 0x01));
    try {
      TorchCheckpoint ck = TorchCheckpoint::from_memory(b.data(), b.size(), "flip.pt");
      ck.summary();
      ck.tensors("state_dict");
      ++loaded;
    } catch (const Error&) {
    }
  }
  EXPECT_LT(loaded, pkl_size);  // most flips must be caught
  // Every prefix of data.pkl is refused by the unpickler.
  for (size_t n = 0; n < pkl_size; ++n)
    EXPECT_THROW(pickle::parse(fb->data() + pkl_at, n, "prefix"), Error) << n;
}

TEST(Pickle, PlainDataInEveryProtocol) {
  using pickle::Kind;
  for (int proto = 0; proto <= 5; ++proto) {
    SCOPED_TRACE("protocol " + std::to_string(proto));
    std::string b = read_bytes(fixtures() / ("data_p" + std::to_string(proto) + ".pkl"));
    pickle::Pickle p = pickle::parse(reinterpret_cast<const uint8_t*>(b.data()), b.size(), "data.pkl");
    const pickle::Value* r = p.root();
    ASSERT_EQ(r->kind, Kind::Dict);
    const pickle::Value* ints = pickle::dict_get(r, "ints");
    ASSERT_TRUE(ints && ints->kind == Kind::List);
    const std::vector<int64_t> want = {0, 1, -1, 255, 256, 65535, 65536, INT32_MIN, int64_t(1) << 31, INT64_MAX, INT64_MIN};
    ASSERT_EQ(ints->items.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(ints->items[i]->kind, Kind::Int) << i;
      EXPECT_EQ(ints->items[i]->integer, want[i]) << i;
    }
    EXPECT_EQ(pickle::dict_get(r, "big")->kind, Kind::BigInt);
    EXPECT_EQ(pickle::dict_get(r, "float")->real, -1.5);
    EXPECT_EQ(pickle::dict_get(r, "text")->text, "abc");
    EXPECT_EQ(pickle::dict_get(r, "none")->kind, Kind::None);
    EXPECT_TRUE(pickle::dict_get(r, "t")->boolean);
    EXPECT_EQ(pickle::dict_get(r, "f")->kind, Kind::Bool);
    EXPECT_FALSE(pickle::dict_get(r, "f")->boolean);
    const pickle::Value* t = pickle::dict_get(r, "tuple");
    ASSERT_EQ(t->kind, Kind::Tuple);
    ASSERT_EQ(t->items.size(), 3u);
    EXPECT_EQ(t->items[1]->items[1]->integer, 3);
    EXPECT_EQ(t->items[2]->kind, Kind::Tuple);
    EXPECT_EQ(pickle::dict_get(r, "empty")->kind, Kind::Dict);
    EXPECT_EQ(pickle::dict_get(pickle::dict_get(r, "od"), "x")->integer, 1);
  }
}

TEST(Pickle, HostileInputsAreBounded) {
  auto parse = [](const std::string& s, const pickle::Limits& lim = {}) {
    return pickle::parse(reinterpret_cast<const uint8_t*>(s.data()), s.size(), "evil.pkl", lim);
  };
  expect_error([&] { parse(""); }, {"evil.pkl: data ended without a STOP opcode"});
  expect_error([&] { parse("\x80\x02\xff."); }, {"unknown opcode (opcode 0xff at offset 2)"});
  expect_error([&] { parse("\x80\x09N."); }, {"unsupported pickle protocol 9"});
  expect_error([&] { parse(S("X\xff\xff\xff\xff") + "abc."); }, {"truncated"});
  expect_error([&] { parse(S("\x8d\xff\xff\xff\xff\xff\xff\xff\xff") + "."); }, {"truncated"});
  expect_error([&] { parse(S("\x8b\xff\xff\xff\x7f") + "."); }, {"truncated"});
  expect_error([&] { parse(S("j\x10\x00\x00\x00.")); }, {"memo entry 16 was never stored"});
  expect_error([&] { parse("."); }, {"stack underflow"});
  expect_error([&] { parse("(."); }, {"stack underflow"});
  expect_error([&] { parse("Na."); }, {"stack underflow"});
  expect_error([&] { parse("NNa."); }, {"adding items to a None"});
  expect_error([&] { parse("N(Nu."); }, {"odd number"});
  EXPECT_NO_THROW(parse(S("cos\nsystem\nN\x85R)R.")));  // calling a placeholder is fine
  // Limits on the stack and the object count.
  pickle::Limits small;
  small.max_stack = 100;
  small.max_values = 1000;
  expect_error([&] { parse(std::string(200, '('), small); }, {"stack deeper than 100"});
  expect_error([&] { parse(std::string(2000, ']'), small); }, {"stack deeper than 100"});
  std::string many = "]";
  for (int i = 0; i < 2000; ++i) many += "Na";
  expect_error([&] { parse(many + ".", small); }, {"more than 1000 objects"});
  expect_error([&] { parse(std::string("I") + std::string(70000, '1') + "\n."); }, {"without a newline"});
  // A list containing itself describes without looping; os.system stays a placeholder.
  pickle::Pickle p = parse(S("]q\x00h\x00" "a."));
  EXPECT_EQ(pickle::describe(p.root()), "list of 1 items");
  pickle::Pickle q = parse(S("cposix\nsystem\nX\x05\x00\x00\x00touch\x85R."));
  EXPECT_EQ(pickle::describe(q.root()), "object built by 'posix.system' (not executed)");
}
