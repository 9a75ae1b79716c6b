// hwaga shards pack SRC -o PATTERN [--max-count N] [--max-size MB] [--shuffle-seed S] [--threads N]
// hwaga shards ls SHARD... [--keys]
//
// pack: text-image pairs (a folder with sidecar captions, a .tsv or a .jsonl; see
// data/pack_sources.h) -> WebDataset-style tar shards for training (data/shard_writer.h). Image
// bytes are copied as they are, after checking that hwaga decodes them; entries that cannot be
// used are counted by reason, warned about and skipped. Each shard is written atomically; if the
// run fails, the shards it wrote are removed again, so no partial set is left.
// ls: samples and bytes per shard (--keys: every key and caption), and any problem found.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cli_util.h"
#include "command.h"
#include "core/error.h"
#include "core/threads.h"
#include "data/pack_sources.h"
#include "data/shard_dataset.h"
#include "data/shard_writer.h"
#include "io/image.h"
#include "sample/rng.h"

namespace hwaga::cli::shards_cmd {  // a namespace per command (unity build)
namespace {

namespace fs = std::filesystem;

struct ShardsOptions {
  // pack
  std::string source, output;
  int64_t max_count = 10000;
  double max_size_mb = 1024;
  std::optional<uint64_t> shuffle_seed;
  int threads = 0;
  // ls
  std::vector<std::string> shards;
  bool keys = false;
};

// The image member's field from the bytes ("" if hwaga's shards cannot hold them).
std::string image_field(const std::string& b) {
  if (b.size() >= 8 && std::memcmp(b.data(), "\x89PNG\r\n\x1a\n", 8) == 0) return "png";
  if (b.size() >= 3 && std::memcmp(b.data(), "\xFF\xD8\xFF", 3) == 0) return "jpg";
  if (b.size() >= 12 && std::memcmp(b.data(), "RIFF", 4) == 0 && std::memcmp(b.data() + 8, "WEBP", 4) == 0)
    return "webp";
  return "";
}

// One item's image, read and checked (on a worker thread).
struct Checked {
  std::string bytes, field;
  std::string reason, detail;  // set when the item is skipped
};

Checked check_item(const data::PackItem& it) {
  Checked c;
  std::ifstream f(it.image, std::ios::binary);
  std::ostringstream os;
  if (f) os << f.rdbuf();
  if (!f) {
    c.reason = "image unreadable";
    c.detail = "cannot read image " + it.image;
    return c;
  }
  c.bytes = os.str();
  if (int64_t(c.bytes.size()) > data::kMaxMemberBytes) {
    c.reason = "image too large";
    c.detail = "image " + it.image + " holds " + std::to_string(c.bytes.size()) + " bytes; shard members are at most " +
               std::to_string(data::kMaxMemberBytes >> 20) + " MiB";
    return c;
  }
  try {
    (void)decode_image_for_model(reinterpret_cast<const uint8_t*>(c.bytes.data()), c.bytes.size(), 8, it.image);
  } catch (const std::exception& e) {
    c.reason = "image does not decode";
    c.detail = e.what();
    return c;
  }
  c.field = image_field(c.bytes);
  if (c.field.empty()) {
    c.reason = "not PNG or JPEG";
    c.detail = "image " + it.image + " is neither PNG nor JPEG (shards hold .png/.jpg images)";
  }
  return c;
}

int run_pack(const ShardsOptions& opt) {
  set_num_threads(opt.threads);
  if (opt.max_size_mb <= 0) fail("--max-size ", opt.max_size_mb, " must be positive");
  const uint64_t max_bytes = uint64_t(opt.max_size_mb * 1024 * 1024);
  (void)expand_pattern(opt.output, 0);  // checks the pattern
  check_output_dir(expand_pattern(opt.output, 0), "-o");

  data::PackList list = data::list_pack_sources(opt.source, {});
  std::map<std::string, int64_t> skipped = list.skipped;
  std::vector<data::PackItem>& items = list.items;
  if (opt.shuffle_seed) {
    Rng r(*opt.shuffle_seed, 0);
    for (size_t i = items.size(); i > 1; --i)
      std::swap(items[i - 1], items[size_t((unsigned __int128)r.next_u64() * i >> 64)]);
  }
  if (!pattern_has_field(opt.output)) {
    uint64_t total = 1024;
    for (const auto& it : items) total += file_size_or_zero(it.image) + it.caption.size() + it.json.size() + 2048;
    if (int64_t(items.size()) > opt.max_count || total > max_bytes)
      fail("-o ", opt.output, ": ", items.size(), " samples may need more than one shard (--max-count ", opt.max_count,
           ", --max-size ", opt.max_size_mb, " MB); put a number field in the name, e.g. out/shard-%05d.tar");
  }

  data::ShardWriter writer([&](int64_t i) { return expand_pattern(opt.output, i); }, opt.max_count, max_bytes);
  int64_t packed = 0;
  try {
    const size_t chunk = size_t(std::max(16, 4 * num_threads()));
    for (size_t b0 = 0; b0 < items.size(); b0 += chunk) {
      const size_t n = std::min(chunk, items.size() - b0);
      std::vector<Checked> checked(n);
      parallel_for(int64_t(n), 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) checked[size_t(i)] = check_item(items[b0 + size_t(i)]);
      });
      for (size_t i = 0; i < n; ++i) {
        const data::PackItem& it = items[b0 + i];
        Checked& c = checked[i];
        if (!c.reason.empty()) {
          ++skipped[c.reason];
          std::fprintf(stderr, "hwaga shards pack: warning: %s: %s; skipped\n", it.origin.c_str(), c.detail.c_str());
          continue;
        }
        std::vector<std::pair<std::string, std::string_view>> fields = {{c.field, c.bytes}, {"txt", it.caption}};
        if (!it.json.empty()) fields.emplace_back("json", it.json);
        writer.add(it.key, fields);
        ++packed;
        c.bytes.clear();
      }
    }
    if (packed == 0) {
      std::string why;
      for (const auto& [reason, count] : skipped) why += (why.empty() ? "" : ", ") + reason + ": " + std::to_string(count);
      fail("nothing to pack from ", opt.source, why.empty() ? ": no image found" : ": every entry was skipped (" + why + ")");
    }
    const std::vector<std::string> shards = writer.finish();
    uint64_t bytes = 0;
    for (const auto& s : shards) bytes += file_size_or_zero(s);
    std::printf("packed %lld sample%s into %zu shard%s (%s): %s%s%s\n", (long long)packed, packed == 1 ? "" : "s",
                shards.size(), shards.size() == 1 ? "" : "s", human_bytes(bytes).c_str(), shards.front().c_str(),
                shards.size() > 1 ? " .. " : "", shards.size() > 1 ? shards.back().c_str() : "");
  } catch (...) {
    // No partial set: the shards this run completed go too (the one in progress is removed by
    // its AtomicFile).
    std::error_code ec;
    for (const auto& s : writer.written()) fs::remove(s, ec);
    throw;
  }
  int64_t total_skipped = 0;
  std::string why;
  for (const auto& [reason, count] : skipped) {
    total_skipped += count;
    why += (why.empty() ? "" : ", ") + reason + ": " + std::to_string(count);
  }
  std::printf("skipped %lld%s%s\n", (long long)total_skipped, why.empty() ? "" : ": ", why.c_str());
  return 0;
}

std::string escape_caption(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (c == '\\') out += "\\\\";
    else out.push_back(c);
  }
  return out;
}

int run_ls(const ShardsOptions& opt) {
  std::vector<std::string> paths;
  for (const auto& spec : opt.shards) {
    auto p = data::expand_shards(spec);
    paths.insert(paths.end(), p.begin(), p.end());
  }
  data::DataStats total;
  bool unreadable = false;
  for (const auto& path : paths) {
    data::DataStats st;
    data::TarSampleReader r(path, &st, {});
    r.set_skip_images(true);
    data::RawSample s;
    std::vector<std::string> lines;
    while (r.next(s))
      if (opt.keys) lines.push_back("  " + s.key + "\t" + escape_caption(s.caption));
    std::printf("%s: %lld sample%s, %llu bytes\n", path.c_str(), (long long)st.samples, st.samples == 1 ? "" : "s",
                (unsigned long long)file_size_or_zero(path));
    if (st.problems() > 0) std::printf("  problems: %s\n", st.summary().c_str());
    for (const auto& l : lines) std::printf("%s\n", l.c_str());
    unreadable = unreadable || st.bad_shards > 0 || st.empty_shards > 0;
    total.add(st);
  }
  if (paths.size() > 1) std::printf("total: %s\n", total.summary().c_str());
  return unreadable ? 1 : 0;
}

Command reg("shards", "Pack text-image pairs into tar shards for training, or list shards", [](CLI::App& sub) {
  auto opt = std::make_shared<ShardsOptions>();
  sub.require_subcommand(1);
  CLI::App* pack = sub.add_subcommand("pack", "Pack a folder (images + .txt captions), a .tsv or a .jsonl into tar shards");
  pack->add_option("source", opt->source, "folder, .tsv (image<TAB>caption) or .jsonl ({\"image\", \"caption\", \"key\", \"json\"})")
      ->required();
  pack->add_option("-o,--output", opt->output, "shard names with a number field, e.g. out/emoji-%05d.tar")->required();
  pack->add_option("--max-count", opt->max_count, "samples per shard at most")->check(CLI::Range(int64_t(1), int64_t(1) << 40))
      ->capture_default_str();
  pack->add_option("--max-size", opt->max_size_mb, "MB (MiB) per shard at most")->check(CLI::PositiveNumber)->capture_default_str();
  pack->add_option("--shuffle-seed", opt->shuffle_seed, "shuffle the samples with this seed before packing (default: source order)");
  pack->add_option("--threads", opt->threads, "threads that read and check images (0 = all cores)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  CLI::App* ls = sub.add_subcommand("ls", "Samples and bytes per shard (exit 1 if a shard is empty or unreadable)");
  ls->add_option("shards", opt->shards, "shards: files, folders, a,b lists, {00000..00009} ranges or globs")->required();
  ls->add_flag("--keys", opt->keys, "also list every key and caption");
  return [opt, pack, ls]() -> int {
    if (pack->parsed()) return run_pack(*opt);
    if (ls->parsed()) return run_ls(*opt);
    fail("shards: expected a subcommand (pack or ls)");
  };
});

}  // namespace
}  // namespace hwaga::cli::shards_cmd
