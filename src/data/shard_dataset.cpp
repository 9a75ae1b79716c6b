// Shard lists, the per-epoch sample stream (shard order, shuffle buffer), the augmentation and
// parallel decoding (see shard_dataset.h).
#include "data/shard_dataset.h"

#include <glob.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <thread>
#include <utility>

#include "core/error.h"
#include "core/threads.h"
#include "io/image.h"
#include "sample/rng.h"

namespace hwaga::data {

namespace fs = std::filesystem;

// ---- shard lists ----

namespace {

bool is_regular_file(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool all_digits(const std::string& s) {
  return !s.empty() && s.size() <= 18 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

void expand_into(const std::string& spec, const std::string& whole, std::vector<std::string>& out) {
  if (spec.empty()) fail("shard list \"", whole, "\": empty entry");
  const size_t comma = spec.find(',');
  if (comma != std::string::npos) {
    expand_into(spec.substr(0, comma), whole, out);
    expand_into(spec.substr(comma + 1), whole, out);
    return;
  }
  const size_t open = spec.find('{');
  if (open != std::string::npos) {
    const size_t close = spec.find('}', open);
    const std::string inner = close == std::string::npos ? "" : spec.substr(open + 1, close - open - 1);
    const size_t dots = inner.find("..");
    const std::string a = dots == std::string::npos ? "" : inner.substr(0, dots);
    const std::string b = dots == std::string::npos ? "" : inner.substr(dots + 2);
    if (!all_digits(a) || !all_digits(b))
      fail("shard list \"", whole, "\": expected a range {FIRST..LAST} of decimal numbers, found \"",
           spec.substr(open, close == std::string::npos ? std::string::npos : close - open + 1), "\"");
    const int64_t lo = std::stoll(a), hi = std::stoll(b);
    if (lo > hi || hi - lo >= 1000000)
      fail("shard list \"", whole, "\": range {", a, "..", b, "} must go up and hold at most 1000000 shards");
    const std::string head = spec.substr(0, open), tail = spec.substr(close + 1);
    for (int64_t v = lo; v <= hi; ++v) {
      std::string num = std::to_string(v);
      if (num.size() < a.size()) num.insert(0, a.size() - num.size(), '0');
      const std::string piece = head + num + tail;
      if (piece.find('{') != std::string::npos) {
        expand_into(piece, whole, out);
      } else {
        if (!is_regular_file(piece)) fail("shard list \"", whole, "\": shard ", piece, " does not exist");
        out.push_back(piece);
      }
    }
    return;
  }
  struct stat st;
  if (::stat(spec.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    std::vector<std::string> found;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(spec, ec)) {
      const std::string p = entry.path().string();
      if (entry.path().extension() == ".tar" && is_regular_file(p)) found.push_back(p);
    }
    if (ec) fail("shard list \"", whole, "\": cannot list folder ", spec, ": ", ec.message());
    if (found.empty()) fail("shard list \"", whole, "\": no .tar file in folder ", spec);
    std::sort(found.begin(), found.end());
    out.insert(out.end(), found.begin(), found.end());
    return;
  }
  if (spec.find_first_of("*?[") != std::string::npos) {
    glob_t g;
    std::memset(&g, 0, sizeof(g));
    const int rc = ::glob(spec.c_str(), 0, nullptr, &g);
    std::vector<std::string> found;
    if (rc == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i)
        if (is_regular_file(g.gl_pathv[i])) found.push_back(g.gl_pathv[i]);
    globfree(&g);
    if (found.empty()) fail("shard list \"", whole, "\": pattern ", spec, " matches no file");
    std::sort(found.begin(), found.end());
    out.insert(out.end(), found.begin(), found.end());
    return;
  }
  if (!is_regular_file(spec)) fail("shard list \"", whole, "\": shard ", spec, " does not exist or is not a file");
  out.push_back(spec);
}

// ---- random numbers ----

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Independent Philox keys for the three uses of the seed.
enum : uint64_t { kShardOrder = 1, kShuffleBuffer = 2, kAugment = 3 };
uint64_t derived_seed(uint64_t seed, uint64_t use) { return splitmix64(seed ^ splitmix64(use)); }

// Uniform integer in [0, n) (Lemire's multiply-shift; the bias is below 2^-40 for any n here).
uint64_t uniform(Rng& r, uint64_t n) { return uint64_t((unsigned __int128)r.next_u64() * n >> 64); }

std::string shard_names(const std::vector<std::string>& shards) {
  std::string s;
  for (size_t i = 0; i < shards.size() && i < 5; ++i) s += (i ? ", " : "") + shards[i];
  if (shards.size() > 5) s += ", ... (" + std::to_string(shards.size()) + " shards)";
  return s;
}

void emit(const WarnFn& warn, const std::string& line) {
  if (warn)
    warn(line);
  else
    std::fprintf(stderr, "%s\n", line.c_str());
}

void check_options(const ShardOptions& o) {
  if (o.shards.empty()) fail("shard data set: no shard given");
  if (o.image_size < 1 || o.image_size > kMaxImageSide)
    fail("shard data set: image size ", o.image_size, " must be in [1, ", kMaxImageSide, "]");
  if (o.shuffle_buffer < 0) fail("shard data set: shuffle buffer ", o.shuffle_buffer, " must be >= 0");
  if (o.threads < 0) fail("shard data set: threads ", o.threads, " must be >= 0");
}

// Decodes items [0, n) on up to `threads` threads: results[i] is the image or the error text.
struct Decoded {
  Tensor image;
  std::string error;
};
void decode_parallel(int threads, size_t n, const std::function<Tensor(size_t)>& make, std::vector<Decoded>& out) {
  out.assign(n, Decoded{});
  auto one = [&](size_t i) {
    try {
      out[i].image = make(i);
    } catch (const std::exception& e) {  // hwaga::Error, or std::bad_alloc on a huge image
      out[i].error = e.what();
    }
  };
  const size_t nt = std::min<size_t>(n, size_t(threads > 0 ? threads : num_threads()));
  if (nt <= 1) {
    for (size_t i = 0; i < n; ++i) one(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::vector<std::thread> pool;
  for (size_t t = 0; t < nt; ++t)
    pool.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < n;) one(i);
    });
  for (auto& th : pool) th.join();
}

}  // namespace

std::vector<std::string> expand_shards(const std::string& spec) {
  std::vector<std::string> out;
  expand_into(spec, spec, out);
  return out;
}

// ---- the augmentation ----

Tensor make_model_image(const RawSample& s, const ShardOptions& opt, int64_t epoch, int64_t index) {
  const int S = opt.image_size;
  // Words 0, 1, 2 of the sample's stream: x offset, y offset, flip (drawn whether used or not).
  Rng r(derived_seed(opt.seed, kAugment), (uint64_t(epoch) << 40) + uint64_t(index));
  const uint64_t wx = r.next_u64(), wy = r.next_u64(), wf = r.next_u64();
  CropChooser crop = [&](int rw, int rh) {
    if (!opt.random_crop) return std::pair<int, int>((rw - S) / 2, (rh - S) / 2);
    return std::pair<int, int>(int((unsigned __int128)wx * uint64_t(rw - S + 1) >> 64),
                               int((unsigned __int128)wy * uint64_t(rh - S + 1) >> 64));
  };
  const std::string name = s.shard + ":" + s.image_name;
  Tensor img = decode_image_for_model(reinterpret_cast<const uint8_t*>(s.image.data()), s.image.size(), S, name, crop);
  if (opt.flip && (wf >> 63)) {
    float* p = img.f32();  // [3,S,S]: reverse every row
    for (int64_t row = 0; row < 3 * int64_t(S); ++row) std::reverse(p + row * S, p + (row + 1) * S);
  }
  return img;
}

// ---- the dataset ----

struct ShardDataset::Epoch {
  int64_t epoch = 0;
  std::vector<size_t> order;  // shard indices in reading order
  size_t next_shard = 0;      // position in order of the next shard to open
  size_t cur_shard = 0;
  std::unique_ptr<TarSampleReader> reader;
  DataStats reader_stats;     // counts of the shard being read
  Rng rng{0, 0};              // shuffle-buffer draws
  std::vector<RawSample> buffer;
  bool input_done = false;
  int64_t emitted = 0;        // samples taken out of the buffer
};

ShardDataset::ShardDataset(ShardOptions opt) : opt_(std::move(opt)) {
  check_options(opt_);
  shard_seen_.assign(opt_.shards.size(), false);
  start_epoch(0);
}

ShardDataset::~ShardDataset() = default;

void ShardDataset::start_epoch(int64_t epoch) {
  auto e = std::make_unique<Epoch>();
  e->epoch = epoch;
  e->order.resize(opt_.shards.size());
  for (size_t i = 0; i < e->order.size(); ++i) e->order[i] = i;
  if (opt_.shuffle_shards) {
    Rng r(derived_seed(opt_.seed, kShardOrder), uint64_t(epoch));
    for (size_t i = e->order.size(); i > 1; --i) std::swap(e->order[i - 1], e->order[size_t(uniform(r, i))]);
  }
  e->rng = Rng(derived_seed(opt_.seed, kShuffleBuffer), uint64_t(epoch));
  ep_ = std::move(e);
}

DataStats ShardDataset::stats() const {
  DataStats s = stats_;
  if (ep_ && ep_->reader && !shard_seen_[ep_->cur_shard]) s.add(ep_->reader_stats);
  return s;
}

// The next sample of the epoch's read order (shards one after another); false at its end.
bool ShardDataset::pull_raw(RawSample& s) {
  Epoch& e = *ep_;
  for (;;) {
    if (e.reader && e.reader->next(s)) return true;
    if (e.reader) {
      e.reader.reset();
      if (!shard_seen_[e.cur_shard]) {
        shard_seen_[e.cur_shard] = true;
        stats_.add(e.reader_stats);
      }
    }
    if (e.next_shard >= e.order.size()) return false;
    e.cur_shard = e.order[e.next_shard++];
    e.reader_stats = DataStats{};
    e.reader = std::make_unique<TarSampleReader>(opt_.shards[e.cur_shard], &e.reader_stats, opt_.warn,
                                                 /*quiet=*/shard_seen_[e.cur_shard]);
  }
}

void ShardDataset::next_candidate(RawSample& s, int64_t& epoch, int64_t& index) {
  const size_t cap = size_t(std::max(1, opt_.shuffle_buffer));
  for (;;) {
    Epoch& e = *ep_;
    while (!e.input_done && e.buffer.size() < cap) {
      RawSample in;
      if (pull_raw(in))
        e.buffer.push_back(std::move(in));
      else
        e.input_done = true;
    }
    if (!e.buffer.empty()) {
      const size_t j = size_t(uniform(e.rng, e.buffer.size()));
      s = std::move(e.buffer[j]);
      if (j + 1 != e.buffer.size()) e.buffer[j] = std::move(e.buffer.back());
      e.buffer.pop_back();
      epoch = e.epoch;
      index = e.emitted++;
      return;
    }
    // End of the epoch.
    if (e.emitted == 0)
      fail("no usable sample in ", shard_names(opt_.shards), " (epoch ", e.epoch, "): ", stats_.summary());
    if (epoch_size_ < 0) epoch_size_ = e.emitted;  // restore() replays epochs from their start too
    start_epoch(e.epoch + 1);
  }
}

void ShardDataset::bad_image(const RawSample& s, const std::string& why) {
  ++bad_streak_;
  if (!bad_images_.insert(s.shard + "\n" + s.image_name).second) return;
  ++stats_.bad_images;
  if (bad_images_.size() <= 50)
    emit(opt_.warn, "hwaga: warning: " + why + "; sample skipped");
  else if (bad_images_.size() == 51)
    emit(opt_.warn, "hwaga: warning: more images do not decode; further warnings are not shown (they are counted)");
}

std::vector<Sample> ShardDataset::next_batch(int B) {
  if (B < 1) fail("shard data set: batch size ", B, " must be at least 1");
  std::vector<Sample> out;
  out.reserve(size_t(B));
  while (int(out.size()) < B) {
    const size_t need = size_t(B) - out.size();
    std::vector<RawSample> raw(need);
    std::vector<int64_t> epochs(need), indices(need);
    for (size_t i = 0; i < need; ++i) next_candidate(raw[i], epochs[i], indices[i]);
    std::vector<Decoded> dec;
    decode_parallel(opt_.threads, need, [&](size_t i) { return make_model_image(raw[i], opt_, epochs[i], indices[i]); },
                    dec);
    for (size_t i = 0; i < need; ++i) {
      if (!dec[i].error.empty()) {
        bad_image(raw[i], dec[i].error);
        continue;
      }
      bad_streak_ = 0;
      Sample s;
      s.key = std::move(raw[i].key);
      s.caption = std::move(raw[i].caption);
      s.json = std::move(raw[i].json);
      s.shard = std::move(raw[i].shard);
      s.image = std::move(dec[i].image);
      s.epoch = epochs[i];
      s.index = indices[i];
      out.push_back(std::move(s));
    }
    // Two whole epochs' worth of failures in a row: no image decodes (no endless loop).
    if (epoch_size_ > 0 && bad_streak_ >= 2 * epoch_size_)
      fail("no image decodes in ", shard_names(opt_.shards), ": ", stats_.summary());
  }
  return out;
}

DataState ShardDataset::state() const { return DataState{ep_->epoch, ep_->emitted}; }

void ShardDataset::restore(const DataState& st) {
  if (st.epoch < 0 || st.consumed < 0)
    fail("shard data set: cannot restore epoch ", st.epoch, ", consumed ", st.consumed, " (negative)");
  start_epoch(st.epoch);
  bad_streak_ = 0;
  RawSample s;
  int64_t epoch = 0, index = 0;
  for (int64_t i = 0; i < st.consumed; ++i) {
    next_candidate(s, epoch, index);
    if (epoch != st.epoch)
      fail("shard data set: cannot restore: epoch ", st.epoch, " of ", shard_names(opt_.shards), " holds ", i,
           " samples, the state says ", st.consumed, " were consumed (did the shards change?)");
  }
}

// ---- one ordered pass ----

DataStats for_each_sample(const ShardOptions& opt_in, const std::function<void(Sample&&)>& fn) {
  ShardOptions opt = opt_in;
  check_options(opt);
  opt.random_crop = false;
  opt.flip = false;
  DataStats total;
  const size_t chunk = size_t(std::max(8, 4 * (opt.threads > 0 ? opt.threads : num_threads())));
  int64_t index = 0, delivered = 0;
  std::vector<RawSample> raw;
  std::vector<Decoded> dec;
  auto flush = [&] {
    decode_parallel(opt.threads, raw.size(), [&](size_t i) { return make_model_image(raw[i], opt, 0, index + int64_t(i)); },
                    dec);
    for (size_t i = 0; i < raw.size(); ++i) {
      if (!dec[i].error.empty()) {
        ++total.bad_images;
        emit(opt.warn, "hwaga: warning: " + dec[i].error + "; sample skipped");
        continue;
      }
      Sample s;
      s.key = std::move(raw[i].key);
      s.caption = std::move(raw[i].caption);
      s.json = std::move(raw[i].json);
      s.shard = std::move(raw[i].shard);
      s.image = std::move(dec[i].image);
      s.index = index + int64_t(i);
      ++delivered;
      fn(std::move(s));
    }
    index += int64_t(raw.size());
    raw.clear();
  };
  for (const std::string& shard : opt.shards) {
    TarSampleReader r(shard, &total, opt.warn);
    RawSample s;
    while (r.next(s)) {
      raw.push_back(std::move(s));
      if (raw.size() >= chunk) flush();
    }
  }
  flush();
  if (delivered == 0) fail("no usable sample in ", shard_names(opt.shards), ": ", total.summary());
  return total;
}

}  // namespace hwaga::data
