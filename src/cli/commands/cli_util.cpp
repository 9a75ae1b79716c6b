#include "cli_util.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "core/error.h"
#include "data/shard_dataset.h"

namespace hwaga::cli {

namespace fs = std::filesystem;

std::string software_string() { return std::string("hwaga ") + kVersion; }

std::unique_ptr<Backend> select_backend(const CommonOptions& opt) {
  apply_common(opt);
  auto be = make_backend(opt.device);
  std::fprintf(stderr, "hwaga: using %s\n", be->name().c_str());
  return be;
}

// ---- output names ----

namespace {

// The one integer field of a pattern: [begin, end) of "%...d" and its flags, or npos when none.
struct Field {
  size_t begin = std::string::npos, end = std::string::npos;
  bool zero_pad = false;
  int width = 0;
};

Field find_field(const std::string& p) {
  Field f;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] != '%') continue;
    if (i + 1 < p.size() && p[i + 1] == '%') {  // literal %
      ++i;
      continue;
    }
    size_t j = i + 1;
    bool zero = false;
    if (j < p.size() && p[j] == '0') zero = true, ++j;
    int width = 0;
    while (j < p.size() && p[j] >= '0' && p[j] <= '9') {
      width = width * 10 + (p[j] - '0');
      if (width > 32) fail("output pattern '", p, "': field width too large (at most 32)");
      ++j;
    }
    if (j >= p.size() || p[j] != 'd')
      fail("output pattern '", p, "': expected an integer field like %d or %03d after '%' at offset ", i,
           " (write %% for a literal %)");
    if (f.begin != std::string::npos)
      fail("output pattern '", p, "': more than one %d field (expected at most one)");
    f.begin = i, f.end = j + 1, f.zero_pad = zero, f.width = width;
    i = j;
  }
  return f;
}

// Replaces "%%" by "%" in a piece of pattern text.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    out += s[i];
    if (s[i] == '%' && i + 1 < s.size() && s[i + 1] == '%') ++i;
  }
  return out;
}

}  // namespace

bool pattern_has_field(const std::string& pattern) { return find_field(pattern).begin != std::string::npos; }

std::string expand_pattern(const std::string& pattern, int64_t index) {
  Field f = find_field(pattern);
  if (f.begin == std::string::npos) return unescape(pattern);
  std::string num = std::to_string(index);
  if (int(num.size()) < f.width) num.insert(0, size_t(f.width) - num.size(), f.zero_pad ? '0' : ' ');
  return unescape(pattern.substr(0, f.begin)) + num + unescape(pattern.substr(f.end));
}

std::vector<std::string> expand_outputs(const std::string& pattern, int64_t n) {
  if (n > 1 && !pattern_has_field(pattern))
    fail("output pattern '", pattern, "' has no %d field, but there are ", n,
         " pictures to write (expected a pattern like out_%03d.png, or a single picture)");
  std::vector<std::string> names;
  for (int64_t i = 0; i < n; ++i) names.push_back(expand_pattern(pattern, i));
  return names;
}

void check_output_dir(const std::string& path, const std::string& what) {
  if (path.empty()) fail(what, ": empty output path");
  fs::path p(path);
  fs::path dir = p.parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    fail(what, " '", path, "': the folder '", dir.string(), "' does not exist");
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    fail(what, " '", path, "': the folder '", dir.string(), "' is not writable");
  if (fs::is_directory(p, ec)) fail(what, " '", path, "' is a folder (expected a file name)");
}

// ---- all-or-nothing outputs ----

OutputSet::OutputSet(std::vector<std::string> finals) : finals_(std::move(finals)) {
  for (size_t i = 0; i < finals_.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (finals_[i] == finals_[j]) fail("output names: '", finals_[i], "' would be written twice");
  std::error_code ec;
  for (auto& f : finals_)
    if (fs::is_directory(f, ec)) fail("output '", f, "' is an existing folder (expected a file name)");
  std::string tag = ".hwaga-partial-" + std::to_string(::getpid());
  for (auto& f : finals_) {
    // Keep the extension last so writers that look at it still see it.
    fs::path p(f);
    temps_.push_back((p.parent_path() / (p.stem().string() + tag + p.extension().string())).string());
  }
  done_.assign(finals_.size(), false);
}

OutputSet::~OutputSet() {
  if (committed_) return;
  std::error_code ec;
  for (size_t i = 0; i < temps_.size(); ++i) fs::remove(temps_[i], ec);  // ignore: may not exist
}

void OutputSet::commit() {
  for (size_t i = 0; i < finals_.size(); ++i)
    if (!done_[i]) fail("internal: output '", finals_[i], "' was never written");
  for (size_t i = 0; i < finals_.size(); ++i) {
    std::error_code ec;
    fs::rename(temps_[i], finals_[i], ec);
    if (ec) {
      // Undo the renames done so far, so the set stays all-or-nothing.
      for (size_t j = 0; j < i; ++j) fs::remove(finals_[j], ec);
      fail("cannot move '", temps_[i], "' to '", finals_[i], "': ", ec.message());
    }
  }
  committed_ = true;
}

// ---- formatting ----

std::string human_bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(n);
  int u = 0;
  while (v >= 1024.0 && u < 4) v /= 1024.0, ++u;
  char buf[64];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", (unsigned long long)n);
  else
    std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  return buf;
}

std::string human_count(int64_t n) {
  char buf[64];
  if (n >= 1000000000)
    std::snprintf(buf, sizeof buf, "%.2fB", double(n) / 1e9);
  else if (n >= 1000000)
    std::snprintf(buf, sizeof buf, "%.2fM", double(n) / 1e6);
  else if (n >= 1000)
    std::snprintf(buf, sizeof buf, "%.1fK", double(n) / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%lld", (long long)n);
  return buf;
}

std::vector<std::string> absolute_shards(const std::string& spec) {
  std::vector<std::string> v = data::expand_shards(spec);
  for (auto& s : v) s = fs::absolute(s).lexically_normal().string();
  return v;
}

nlohmann::json read_config_json(const std::string& path, const char* section) {
  std::ifstream f(path);
  if (!f) fail("--config: cannot read ", path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    fail(path, ": not valid JSON (", e.what(), ")");
  }
  if (j.is_object() && j.contains(section)) j = j[section];
  return j;
}

std::string base_name(const std::string& path) { return fs::path(path).filename().string(); }

uint64_t file_size_or_zero(const std::string& path) {
  std::error_code ec;
  auto n = fs::file_size(path, ec);
  return ec ? 0 : uint64_t(n);
}

std::string join_command_line(const std::vector<std::string>& args) {
  std::string out;
  for (auto& a : args) {
    if (!out.empty()) out += ' ';
    bool plain = !a.empty() && a.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                   "0123456789-_./=%:,+") == std::string::npos;
    if (plain) {
      out += a;
    } else {
      out += '\'';
      for (char c : a) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
      out += '\'';
    }
  }
  return out;
}

}  // namespace hwaga::cli
