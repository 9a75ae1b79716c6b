#include "train/code_cache.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/error.h"
#include "data/shard_dataset.h"
#include "io/safetensors.h"
#include "sample/rng.h"

namespace hwaga::train {

namespace {

// Stream offsets that keep the permutation and caption draws apart from each other and from
// the dropout streams (which use the training seed with (step << 16) | site).
constexpr uint64_t kPermSeedMix = 0x7065726d75746531ull;     // "permute1"
constexpr uint64_t kCaptionSeedMix = 0x6361707469306e31ull;  // "capti0n1"
constexpr uint64_t kBalanceSeedMix = 0x62616c616e636531ull;  // "balance1"
constexpr uint64_t kUncondSeedMix = 0x756e636f6e643031ull;   // "uncond01"
constexpr uint64_t kNoiseSeedMix = 0x636f64656e6f6931ull;    // "codenoi1"

uint64_t mix64(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::string hex64(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", (unsigned long long)v);
  return b;
}

nlohmann::json shard_list_json(const std::vector<std::string>& shards) {
  nlohmann::json a = nlohmann::json::array();
  for (const std::string& s : shards) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(s, ec);
    a.push_back({{"path", std::filesystem::absolute(s).lexically_normal().string()}, {"size", ec ? 0 : uint64_t(size)}});
  }
  return a;
}

}  // namespace

int64_t CodeCache::num_captions() const {
  int64_t n = 0;
  for (auto& c : captions) n += int64_t(c.size());
  return n;
}

FileFingerprint fingerprint_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot read ", path, " (to fingerprint it)");
  FileFingerprint fp;
  fp.path = std::filesystem::absolute(path).lexically_normal().string();
  // 64-bit hash over 8-byte words: h = mix(h ^ word) per word, the tail zero-padded, the length
  // folded in at the end. Not cryptographic: it tells a changed file from the recorded one.
  uint64_t h = 0x6877616761ull, n = 0;
  std::vector<char> buf(size_t(1) << 20);
  while (f) {
    f.read(buf.data(), std::streamsize(buf.size()));
    const size_t got = size_t(f.gcount());
    size_t i = 0;
    for (; i + 8 <= got; i += 8) {
      uint64_t w;
      std::memcpy(&w, buf.data() + i, 8);
      h = mix64(h ^ w) + 0x9e3779b97f4a7c15ull;
    }
    if (i < got) {
      uint64_t w = 0;
      std::memcpy(&w, buf.data() + i, got - i);
      h = mix64(h ^ w) + 0x9e3779b97f4a7c15ull;
    }
    n += got;
  }
  fp.size = n;
  fp.hash = hex64(mix64(h ^ n));
  return fp;
}

FileFingerprint fingerprint_from_json(const nlohmann::json& j, const std::string& what) {
  try {
    FileFingerprint fp;
    fp.path = j.at("path").get<std::string>();
    fp.size = j.at("size").get<uint64_t>();
    fp.hash = j.at("hash").get<std::string>();
    return fp;
  } catch (const nlohmann::json::exception& e) {
    fail(what, ": expected {\"path\", \"size\", \"hash\"}, found ", j.dump(), " (", e.what(), ")");
  }
}

std::vector<std::string> caption_variants(const std::string& caption, const std::string& json) {
  std::vector<std::string> out{caption};
  if (json.empty()) return out;
  nlohmann::json j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("captions") || !j["captions"].is_array()) return out;
  for (const auto& c : j["captions"]) {
    if (!c.is_string()) continue;
    std::string s = c.get<std::string>();
    const size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
    if (b == std::string::npos) continue;
    s = s.substr(b, e - b + 1);
    if (std::find(out.begin(), out.end(), s) == out.end()) out.push_back(s);
  }
  return out;
}

std::string sample_group(const std::string& json) {
  if (json.empty()) return {};
  nlohmann::json j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("group")) return {};
  const nlohmann::json& g = j["group"];
  if (g.is_string()) return g.get<std::string>();
  if (g.is_number()) return g.dump();
  return {};
}

// ---------------------------------------------------------------- file

void write_code_cache(const std::string& path, const CodeCache& c, const nlohmann::json& source) {
  const int64_t N = c.size(), M = c.num_captions();
  int64_t bytes = 0;
  for (auto& v : c.captions)
    for (auto& s : v) bytes += int64_t(s.size());
  Tensor cb = Tensor::empty({bytes}, DType::U8), off = Tensor::empty({M + 1}, DType::I64),
         first = Tensor::empty({N + 1}, DType::I64);
  int64_t m = 0, o = 0;
  for (int64_t n = 0; n < N; ++n) {
    first.ptr<int64_t>()[n] = m;
    for (auto& s : c.captions[size_t(n)]) {
      off.ptr<int64_t>()[m++] = o;
      std::memcpy(cb.ptr<uint8_t>() + o, s.data(), s.size());
      o += int64_t(s.size());
    }
  }
  first.ptr<int64_t>()[N] = m;
  off.ptr<int64_t>()[M] = o;
  HWAGA_CHECK(c.groups.empty() || int64_t(c.groups.size()) == N, "code cache: ", c.groups.size(), " groups for ", N,
              " samples");
  Tensor groups = Tensor::empty({N}, DType::I32);
  for (int64_t n = 0; n < N; ++n) groups.ptr<int32_t>()[n] = c.groups.empty() ? int32_t(n) : c.groups[size_t(n)];
  write_safetensors(path,
                    {{"codes", c.codes},
                     {"captions.bytes", cb},
                     {"captions.offsets", off},
                     {"captions.first", first},
                     {"groups", groups}},
                    {{"format", kCodeCacheFormat}, {"version", "2"}, {"source", source.dump()}});
}

CodeCache read_code_cache(const std::string& path, nlohmann::json* source) {
  SafetensorsFile f = read_safetensors(path);
  auto fmt = f.metadata.find("format");
  if (fmt == f.metadata.end() || fmt->second != kCodeCacheFormat)
    fail(path, " is not a hwaga code cache (metadata format ",
         fmt == f.metadata.end() ? std::string("missing") : "\"" + fmt->second + "\"", ", expected \"",
         kCodeCacheFormat, "\")");
  auto ver = f.metadata.find("version");
  if (ver == f.metadata.end() || ver->second != "2")
    fail(path, ": code cache version ", ver == f.metadata.end() ? std::string("missing") : "\"" + ver->second + "\"",
         ", this hwaga reads version 2 (hwaga train rebuilds it)");
  if (source) {
    auto s = f.metadata.find("source");
    *source = s == f.metadata.end() ? nlohmann::json() : nlohmann::json::parse(s->second, nullptr, false);
  }
  CodeCache c;
  const Tensor& codes = get_tensor(f.tensors, "codes", path);
  HWAGA_CHECK(codes.dtype() == DType::I32 && codes.ndim() == 4, path, ": codes must be int32 [N,h,w,D], found ",
              dtype_name(codes.dtype()), " ", shape_str(codes.shape()));
  c.codes = codes.clone();
  const Tensor& bytes = get_tensor(f.tensors, "captions.bytes", path);
  const Tensor& off = get_tensor(f.tensors, "captions.offsets", path);
  const Tensor& first = get_tensor(f.tensors, "captions.first", path);
  const int64_t N = c.size();
  HWAGA_CHECK(bytes.dtype() == DType::U8 && off.dtype() == DType::I64 && first.dtype() == DType::I64 &&
                  first.ndim() == 1 && first.dim(0) == N + 1 && off.ndim() == 1 && off.dim(0) >= 1,
              path, ": caption tensors do not match ", N, " samples");
  const int64_t M = off.dim(0) - 1;
  const int64_t* o = off.ptr<int64_t>();
  const int64_t* fi = first.ptr<int64_t>();
  for (int64_t m = 0; m < M; ++m)
    HWAGA_CHECK(o[m] >= 0 && o[m] <= o[m + 1] && o[m + 1] <= bytes.numel(), path, ": caption offset ", m, " is out of range");
  c.captions.resize(size_t(N));
  for (int64_t n = 0; n < N; ++n) {
    HWAGA_CHECK(fi[n] >= 0 && fi[n] < fi[n + 1] && fi[n + 1] <= M, path, ": sample ", n, " has no caption range");
    for (int64_t m = fi[n]; m < fi[n + 1]; ++m)
      c.captions[size_t(n)].emplace_back(reinterpret_cast<const char*>(bytes.ptr<uint8_t>()) + o[m], size_t(o[m + 1] - o[m]));
  }
  const Tensor& groups = get_tensor(f.tensors, "groups", path);
  HWAGA_CHECK(groups.dtype() == DType::I32 && groups.ndim() == 1 && groups.dim(0) == N, path,
              ": groups must be int32 [", N, "], found ", dtype_name(groups.dtype()), " ", shape_str(groups.shape()));
  c.groups.assign(groups.ptr<int32_t>(), groups.ptr<int32_t>() + N);
  for (int64_t n = 0; n < N; ++n)
    HWAGA_CHECK(c.groups[size_t(n)] >= 0 && c.groups[size_t(n)] < N, path, ": sample ", n, " has group ",
                c.groups[size_t(n)], ", expected [0, ", N, ")");
  return c;
}

CodeCache load_or_build_code_cache(const std::string& path, const CodeCacheOptions& opt,
                                   const FileFingerprint& stage1_file, ImageTokenizer& stage1, bool* rebuilt) {
  if (opt.shards.empty()) fail("no shards to encode");
  nlohmann::json source = {{"shards", shard_list_json(opt.shards)}, {"stage1", stage1_file.to_json()}};
  if (opt.canonical_flat) source["canonical_flat"] = true;
  auto log = [&](const std::string& s) {
    if (opt.log) opt.log(s);
  };
  if (std::filesystem::exists(path)) {
    nlohmann::json old;
    try {
      CodeCache c = read_code_cache(path, &old);
      const Shape cs = stage1.code_shape();
      if (old == source && Shape{c.codes.dim(1), c.codes.dim(2), c.codes.dim(3)} == cs) {
        if (rebuilt) *rebuilt = false;
        log("reusing " + path + " (" + std::to_string(c.size()) + " samples, " + std::to_string(c.num_captions()) +
            " captions)");
        return c;
      }
      log(path + " was made from other shards or another stage-1 model: encoding again");
    } catch (const Error& e) {
      log(std::string("cannot reuse ") + path + " (" + e.what() + "): encoding again");
    }
  }
  if (rebuilt) *rebuilt = true;
  data::ShardOptions so;
  so.shards = opt.shards;
  so.image_size = stage1.resolution();
  so.random_crop = false;
  so.flip = false;
  so.shuffle_shards = false;
  so.shuffle_buffer = 0;
  const Shape cs = stage1.code_shape();
  const int64_t per = cs[0] * cs[1] * cs[2];
  const int64_t S = stage1.resolution();
  std::vector<int32_t> codes;
  CodeCache c;
  std::vector<Tensor> pending;
  std::map<std::string, int32_t> group_ids;  // named groups; unnamed samples get fresh ids
  // --canonical-flat: the codes of a picture filled with one colour, per 8-bit colour
  std::map<uint32_t, Tensor> flat_codes;
  int64_t flat_positions = 0;
  const int64_t ph = S / cs[0], pw = S / cs[1];
  auto canonicalize = [&](const Tensor& x, Tensor& k) {  // x [b,3,S,S] in [-1,1], k [b,h,w,D]
    constexpr float kTol = 2.0f / 127.5f;               // 2 of 255 levels
    for (int64_t i = 0; i < x.dim(0); ++i)
      for (int64_t y = 0; y < cs[0]; ++y)
        for (int64_t xx = 0; xx < cs[1]; ++xx) {
          uint32_t key = 0;
          bool flat = true;
          for (int64_t ch = 0; ch < 3 && flat; ++ch) {
            const float* plane = x.f32() + (i * 3 + ch) * S * S;
            float lo = plane[y * ph * S + xx * pw], hi = lo;
            for (int64_t r = y * ph; r < (y + 1) * ph; ++r)
              for (int64_t q = xx * pw; q < (xx + 1) * pw; ++q) {
                lo = std::min(lo, plane[r * S + q]);
                hi = std::max(hi, plane[r * S + q]);
              }
            flat = hi - lo <= kTol;
            const float first = plane[y * ph * S + xx * pw];
            key = key << 8 | uint32_t(std::clamp(std::lround((first + 1.0f) * 127.5f), 0L, 255L));
          }
          if (!flat) continue;
          auto it = flat_codes.find(key);
          if (it == flat_codes.end()) {
            Tensor fill = Tensor::empty({1, 3, S, S});
            for (int64_t ch = 0; ch < 3; ++ch)
              std::fill(fill.f32() + ch * S * S, fill.f32() + (ch + 1) * S * S,
                        float((key >> (8 * (2 - ch))) & 0xff) / 127.5f - 1.0f);
            it = flat_codes.emplace(key, stage1.encode(fill)).first;
          }
          std::memcpy(k.ptr<int32_t>() + ((i * cs[0] + y) * cs[1] + xx) * cs[2],
                      it->second.ptr<int32_t>() + (y * cs[1] + xx) * cs[2], size_t(cs[2]) * sizeof(int32_t));
          ++flat_positions;
        }
  };
  auto flush = [&] {
    if (pending.empty()) return;
    Tensor x = Tensor::empty({int64_t(pending.size()), 3, S, S});
    for (size_t i = 0; i < pending.size(); ++i)
      std::memcpy(x.f32() + int64_t(i) * 3 * S * S, pending[i].f32(), size_t(3 * S * S) * sizeof(float));
    Tensor k = stage1.encode(x);  // [b,h,w,D]
    if (opt.canonical_flat) canonicalize(x, k);
    codes.insert(codes.end(), k.ptr<int32_t>(), k.ptr<int32_t>() + k.numel());
    pending.clear();
    if (c.captions.size() % 256 < size_t(opt.encode_batch))
      log("encoded " + std::to_string(c.captions.size()) + " samples");
    if (opt.check_interrupt) opt.check_interrupt();
  };
  data::DataStats st = data::for_each_sample(so, [&](data::Sample&& s) {
    HWAGA_CHECK(s.image.numel() == 3 * S * S, "code cache: sample ", s.key, " of ", s.shard, " has image ",
                shape_str(s.image.shape()), ", expected [3,", S, ",", S, "]");
    c.captions.push_back(caption_variants(s.caption, s.json));
    const std::string g = sample_group(s.json);
    if (g.empty()) {
      c.groups.push_back(-1);  // numbered below
    } else {
      auto it = group_ids.emplace(g, int32_t(group_ids.size())).first;
      c.groups.push_back(it->second);
    }
    pending.push_back(std::move(s.image));
    if (int(pending.size()) >= opt.encode_batch) flush();
  });
  flush();
  const int64_t N = int64_t(c.captions.size());
  if (N == 0) fail("no usable sample in the shards (", st.summary(), ")");
  int32_t next_group = int32_t(group_ids.size());
  for (int32_t& g : c.groups)
    if (g < 0) g = next_group++;
  c.codes = Tensor::empty({N, cs[0], cs[1], cs[2]}, DType::I32);
  std::memcpy(c.codes.data(), codes.data(), size_t(N * per) * sizeof(int32_t));
  log("encoded " + std::to_string(N) + " samples (" + st.summary() + ")");
  if (opt.canonical_flat)
    log("canonical codes for " + std::to_string(flat_positions) + " flat patches of " +
        std::to_string(N * cs[0] * cs[1]) + " (" + std::to_string(flat_codes.size()) + " colours)");
  write_code_cache(path, c, source);
  return c;
}

// ---------------------------------------------------------------- batches

CodeBatcher::CodeBatcher(const CodeCache& cache, const TextTokenizer& tok, uint64_t seed, bool balance)
    : cache_(cache), tok_(tok), seed_(seed), balance_(balance) {
  HWAGA_CHECK(cache.size() > 0, "CodeBatcher: the code cache is empty");
  if (!balance) return;
  const int64_t N = cache.size();
  HWAGA_CHECK(cache.groups.empty() || int64_t(cache.groups.size()) == N, "CodeBatcher: ", cache.groups.size(),
              " groups for ", N, " samples");
  for (int64_t n = 0; n < N; ++n) {
    const int32_t g = cache.groups.empty() ? int32_t(n) : cache.groups[size_t(n)];
    HWAGA_CHECK(g >= 0 && g < N, "CodeBatcher: sample ", n, " has group ", g, ", expected [0, ", N, ")");
    if (size_t(g) >= members_.size()) members_.resize(size_t(g) + 1);
    members_[size_t(g)].push_back(n);
  }
  members_.erase(std::remove_if(members_.begin(), members_.end(), [](auto& m) { return m.empty(); }), members_.end());
}

const std::vector<int64_t>& CodeBatcher::permutation(int64_t epoch) {
  if (epoch == perm_epoch_) return perm_;
  const int64_t N = cache_.size();
  // uniform in [0, n) from one 64-bit word (128-bit multiply, no modulo bias)
  auto below = [](Rng& rng, uint64_t n) { return int64_t((unsigned __int128)rng.next_u64() * n >> 64); };
  if (balance_) {
    perm_.clear();
    perm_.reserve(size_t(N));
    const int64_t G = int64_t(members_.size());
    std::vector<int64_t> order(static_cast<size_t>(G));
    for (uint64_t round = 0; int64_t(perm_.size()) < N; ++round) {
      Rng rng(seed_ ^ kBalanceSeedMix, (uint64_t(epoch) << 24) | round);
      for (int64_t i = 0; i < G; ++i) order[size_t(i)] = i;
      for (int64_t i = G - 1; i > 0; --i) std::swap(order[size_t(i)], order[size_t(below(rng, uint64_t(i + 1)))]);
      for (int64_t i = 0; i < G && int64_t(perm_.size()) < N; ++i) {
        const std::vector<int64_t>& m = members_[size_t(order[size_t(i)])];
        perm_.push_back(m.size() == 1 ? m[0] : m[size_t(below(rng, m.size()))]);
      }
    }
    perm_epoch_ = epoch;
    return perm_;
  }
  perm_.resize(size_t(N));
  for (int64_t i = 0; i < N; ++i) perm_[size_t(i)] = i;
  Rng rng(seed_ ^ kPermSeedMix, uint64_t(epoch));
  for (int64_t i = N - 1; i > 0; --i) std::swap(perm_[size_t(i)], perm_[size_t(below(rng, uint64_t(i + 1)))]);
  perm_epoch_ = epoch;
  return perm_;
}

int64_t CodeBatcher::sample_at(int64_t g) { return permutation(epoch_of(g))[size_t(position_of(g))]; }

void CodeBatcher::set_uncond_prob(double p) {
  HWAGA_CHECK(p >= 0 && p < 1, "CodeBatcher: the unconditional share must be in [0, 1), got ", p);
  uncond_prob_ = p;
}

void CodeBatcher::set_code_noise(double p, int64_t K) {
  HWAGA_CHECK(p >= 0 && p < 1, "CodeBatcher: the code noise must be in [0, 1), got ", p);
  HWAGA_CHECK(p == 0 || (K >= 1 && K <= (int64_t(1) << 31)), "CodeBatcher: code noise needs a vocabulary size, got ", K);
  code_noise_ = p;
  noise_vocab_ = K;
}

bool CodeBatcher::unconditional(int64_t g) const {
  if (uncond_prob_ <= 0) return false;
  Rng rng(seed_ ^ kUncondSeedMix, uint64_t(g));
  return double(rng.next_u64() >> 11) * 0x1.0p-53 < uncond_prob_;  // uniform in [0, 1), 53 bits
}

int CodeBatcher::caption_variant(int64_t epoch, int64_t sample) const {
  const size_t n = cache_.captions[size_t(sample)].size();
  if (n <= 1) return 0;
  Rng rng(seed_ ^ kCaptionSeedMix, (uint64_t(epoch) << 32) | uint64_t(sample));
  return int((unsigned __int128)rng.next_u64() * n >> 64);
}

RqBatch fixed_batch(const CodeCache& cache, const TextTokenizer& tok, int64_t first, int64_t count) {
  HWAGA_CHECK(first >= 0 && count >= 1 && first + count <= cache.size(), "fixed_batch: samples [", first, ", ",
              first + count, ") outside the cache's ", cache.size());
  const int64_t L = tok.context_length;
  RqBatch b;
  b.codes = cache.codes.slice0(first, first + count).clone();
  b.text = Tensor::empty({count, L}, DType::I32);
  for (int64_t i = 0; i < count; ++i) {
    const std::vector<int32_t> ids = tok.encode(cache.captions[size_t(first + i)][0]);
    std::memcpy(b.text.ptr<int32_t>() + i * L, ids.data(), size_t(L) * sizeof(int32_t));
  }
  return b;
}

RqBatch CodeBatcher::batch(int64_t step, int B) {
  const Tensor& codes = cache_.codes;
  const int64_t per = codes.dim(1) * codes.dim(2) * codes.dim(3), L = tok_.context_length;
  RqBatch b;
  b.codes = Tensor::empty({B, codes.dim(1), codes.dim(2), codes.dim(3)}, DType::I32);
  b.text = Tensor::empty({B, L}, DType::I32);
  for (int i = 0; i < B; ++i) {
    const int64_t g = step * B + i, n = sample_at(g);
    std::memcpy(b.codes.ptr<int32_t>() + i * per, codes.ptr<int32_t>() + n * per, size_t(per) * sizeof(int32_t));
    if (code_noise_ > 0) {
      if (!b.input_codes.defined()) b.input_codes = Tensor::empty(b.codes.shape(), DType::I32);
      const int32_t* src = b.codes.ptr<int32_t>() + i * per;
      int32_t* dst = b.input_codes.ptr<int32_t>() + i * per;
      Rng rng(seed_ ^ kNoiseSeedMix, uint64_t(g));
      const uint32_t threshold = uint32_t(std::min(code_noise_ * 0x1.0p32, 0x1.0p32 - 1));
      for (int64_t j = 0; j < per; ++j) {
        const uint64_t w = rng.next_u64();  // low word: the draw, high word: the replacement
        dst[j] = uint32_t(w) < threshold ? int32_t((uint64_t(w >> 32) * uint64_t(noise_vocab_)) >> 32) : src[j];
      }
    }
    int32_t* row = b.text.ptr<int32_t>() + i * L;
    if (unconditional(g)) {
      std::fill(row, row + L, tok_.pad_id);
      continue;
    }
    const std::string& cap = cache_.captions[size_t(n)][size_t(caption_variant(epoch_of(g), n))];
    std::vector<int32_t> ids = tok_.encode(cap);
    std::memcpy(row, ids.data(), size_t(L) * sizeof(int32_t));
  }
  return b;
}

}  // namespace hwaga::train
