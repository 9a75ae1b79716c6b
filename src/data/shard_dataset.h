// Training data from WebDataset-style tar shards (tar_samples.h): shard order permuted per
// epoch, a seeded shuffle buffer, images decoded on several threads and turned into model input
// with the released recipes, deterministic for a seed and resumable mid-epoch.
//
//   ShardOptions o;  o.shards = expand_shards("data/emoji-{00000..00009}.tar");
//   o.image_size = 256; o.random_crop = true; o.flip = true; o.seed = 1;
//   ShardDataset ds(o);
//   for (;;) { auto batch = ds.next_batch(B); ... save ds.state() with the checkpoint ... }
//   // a later run: ShardDataset ds(o); ds.restore(saved_state);  -> the same next batches
//
// The stream of one epoch e:
//   1. shard order: the shards permuted by Fisher-Yates on Philox(seed', stream e) (no
//      permutation when shuffle_shards is off);
//   2. samples read from each shard in turn (TarSampleReader; bad input counted and skipped);
//   3. a shuffle buffer of shuffle_buffer samples (raw bytes): filled up, then each output is a
//      uniformly drawn slot (Philox(seed'', stream e)), refilled from the input; at the end of the
//      input it drains in the same way. shuffle_buffer <= 1 keeps the read order;
//   4. the i-th sample out of the buffer ("index" i of epoch e) is decoded: alpha on white,
//      short side resized to S (io/image.h, the same resampling as load_image_for_model), then
//      an S x S crop, at a uniformly drawn offset (random_crop) or the centre; flipped left-right
//      with p = 0.5 (flip); pixels x/127.5 - 1, f32 [3,S,S]. The crop offsets and the flip are
//      words 0, 1, 2 of Philox(seed''', stream e * 2^40 + i): they depend on (seed, epoch, index)
//      only, never on threads, batch size or timing.
// Samples whose image does not decode are dropped at step 4 (counted, warned about once); the
// batch is filled with the next ones.
//
// DataState {epoch, consumed}: consumed counts samples taken out of the shuffle buffer in the
// epoch (those whose image failed to decode included). restore() replays the epoch's stream
// from its start (reading the shards again, decoding nothing) and drops `consumed` samples, so
// the shuffle buffer and every later draw are exactly those of an uninterrupted run. The cost is
// one read of the shards up to that point.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "data/tar_samples.h"

namespace hwaga::data {

// Shard lists, each form erroring with the spec (and the missing file) when nothing matches:
//   "dir/" or "dir"                 every *.tar in the folder (not recursive), sorted
//   "a.tar,b.tar"                   each piece expanded in turn (pieces may use the other forms)
//   "dir/emoji-{00000..00009}.tar"  a numeric range, zero-padded to the width of FIRST; every
//                                   file must exist
//   "dir/*.tar", "shard-??.tar"     a glob (glob(3)), sorted; regular files only
//   "one.tar"                       a file that must exist
std::vector<std::string> expand_shards(const std::string& spec);

struct Sample {
  std::string key, caption, json, shard;
  Tensor image;            // f32 [3,S,S] in [-1,1]
  int64_t epoch = 0;       // the epoch and index in it the augmentation draws came from
  int64_t index = 0;
};

struct ShardOptions {
  std::vector<std::string> shards;  // tar files (expand_shards)
  int image_size = 256;             // S
  bool random_crop = true;          // false: centre crop
  bool flip = false;                // horizontal flip, p = 0.5
  bool shuffle_shards = true;       // permute the shard order every epoch
  int shuffle_buffer = 1000;        // samples held for shuffling; <= 1 keeps the read order
  uint64_t seed = 0;
  int threads = 0;                  // decoding threads; 0 = hwaga's thread count (core/threads.h)
  WarnFn warn;                      // warning lines; empty: stderr
};

struct DataState {
  int64_t epoch = 0, consumed = 0;
  bool operator==(const DataState&) const = default;
};

class ShardDataset {
 public:
  // Checks the options (throws naming the bad one); reads nothing yet.
  explicit ShardDataset(ShardOptions opt);
  ~ShardDataset();
  ShardDataset(const ShardDataset&) = delete;
  ShardDataset& operator=(const ShardDataset&) = delete;

  // The next B samples, crossing epochs as needed (never fewer than B). Throws hwaga::Error
  // naming the shards if an epoch yields no sample at all, or if no image decodes.
  std::vector<Sample> next_batch(int B);
  // Where the next batch starts; restore() on a fresh dataset with the same options continues
  // from there. Throws if the shards hold fewer samples than state.consumed for that epoch.
  DataState state() const;
  void restore(const DataState& state);
  // Counts over the shards read so far, each shard counted once (its first reading in this
  // process, the one being read now included), plus the images that failed to decode (each once).
  DataStats stats() const;
  // Samples with an image and a caption in one epoch (images that later fail to decode
  // included: they are found only when decoded); known once a whole epoch has been read in
  // this process, -1 before.
  int64_t epoch_size() const { return epoch_size_; }

 private:
  struct Epoch;
  void start_epoch(int64_t epoch);
  bool pull_raw(RawSample& s);
  void next_candidate(RawSample& s, int64_t& epoch, int64_t& index);
  void bad_image(const RawSample& s, const std::string& why);

  ShardOptions opt_;
  std::unique_ptr<Epoch> ep_;
  DataStats stats_;
  std::vector<bool> shard_seen_;       // read to the end once: stats counted, warnings shown
  std::set<std::string> bad_images_;   // "shard\nmember" of images that failed (warned once)
  int64_t epoch_size_ = -1;
  int64_t bad_streak_ = 0;             // images in a row that failed to decode
};

// The image of a raw sample as the dataset makes it for (epoch, index): decode, crop, flip.
// Throws hwaga::Error naming the shard and member if the image does not decode.
Tensor make_model_image(const RawSample& s, const ShardOptions& opt, int64_t epoch, int64_t index);

// One ordered pass over opt.shards in the order given: no shuffling, centre crop, no flip (the
// crop/flip/shuffle options are ignored), images decoded on opt.threads threads; fn gets the
// samples in read order. Returns the counts; throws hwaga::Error naming the shards if no sample
// at all could be made.
DataStats for_each_sample(const ShardOptions& opt, const std::function<void(Sample&&)>& fn);

}  // namespace hwaga::data
