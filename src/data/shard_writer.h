// Writes WebDataset-style tar shards (libarchive, pax format: plain ustar headers unless a name
// is long or not ASCII). Each shard is written atomically (io/atomic_file.h): a temporary file
// next to it, renamed when the shard is complete. Member metadata is fixed (mode 0644, mtime 0,
// no owner), so the same samples always give the same bytes.
//
//   ShardWriter w([](int64_t i) { return "out/emoji-" + std::to_string(i) + ".tar"; }, 10000, 1 << 30);
//   w.add("emoji/0001", {{"png", png_bytes}, {"txt", caption}});
//   std::vector<std::string> shards = w.finish();
//
// A new shard starts when the current one holds max_count samples, or when the next sample
// would take it past max_bytes (a sample is never split; a sample larger than max_bytes gets a
// shard of its own). If the writer is destroyed before finish() (an error on the way), the
// shard in progress is removed and the shards it already completed are kept.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hwaga::data {

class ShardWriter {
 public:
  // name_for(i): the path of shard i (0, 1, ...).
  ShardWriter(std::function<std::string(int64_t)> name_for, int64_t max_count, uint64_t max_bytes);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Adds one sample: members "<key>.<field>" in the order given. The key must be safe
  // (is_safe_member_name) with no dot in its basename; fields are non-empty. Throws
  // hwaga::Error naming the shard on a write failure.
  void add(const std::string& key, const std::vector<std::pair<std::string, std::string_view>>& fields);
  // Closes the last shard; returns every shard written, in order.
  std::vector<std::string> finish();
  // The shards completed so far (renamed into place).
  const std::vector<std::string>& written() const { return written_; }

  // Bytes one sample takes in a tar (headers + data padded to 512-byte blocks), as counted
  // against max_bytes.
  static uint64_t sample_bytes(const std::string& key,
                               const std::vector<std::pair<std::string, std::string_view>>& fields);

 private:
  struct Open;
  void start_shard();
  void close_shard();

  std::function<std::string(int64_t)> name_for_;
  int64_t max_count_;
  uint64_t max_bytes_;
  std::unique_ptr<Open> cur_;
  int64_t cur_count_ = 0;
  uint64_t cur_bytes_ = 0;
  std::vector<std::string> written_;
};

}  // namespace hwaga::data
