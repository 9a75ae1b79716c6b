// Source lists for `hwaga shards pack` (see pack_sources.h).
#include "data/pack_sources.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"

namespace hwaga::data {

namespace fs = std::filesystem;

namespace {

bool is_regular_file(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  return s;
}

std::string trim(const std::string& s) {
  auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
  size_t b = 0, e = s.size();
  while (b < e && ws(s[b])) ++b;
  while (e > b && ws(s[e - 1])) --e;
  return s.substr(b, e - b);
}

bool read_text(const std::string& path, std::string& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream os;
  os << f.rdbuf();
  out = os.str();
  return bool(f) || f.eof();
}

bool is_image_ext(const std::string& ext) { return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".webp"; }

// Collects items and counts skips, warning once per skipped entry.
struct Lister {
  const WarnFn& warn;
  PackList list;
  std::set<std::string> explicit_keys;  // JSONL keys, reserved before derived keys are made
  std::set<std::string> used;

  void skip(const std::string& reason, const std::string& where, const std::string& detail) {
    ++list.skipped[reason];
    const std::string line = "hwaga shards pack: warning: " + where + ": " + detail + "; skipped";
    if (warn)
      warn(line);
    else
      std::fprintf(stderr, "%s\n", line.c_str());
  }

  std::string unique_key(const std::string& base) {
    std::string k = base;
    for (int n = 2; used.count(k) || explicit_keys.count(k); ++n) k = base + "_" + std::to_string(n);
    used.insert(k);
    return k;
  }

  // Caption checks shared by every source; false (after counting) if the entry is skipped.
  bool caption_ok(std::string& caption, const std::string& where) {
    if (!is_utf8(caption)) {
      skip("caption not UTF-8", where, "caption is not UTF-8");
      return false;
    }
    caption = trim(caption);
    if (caption.empty()) {
      skip("no caption", where, "empty caption");
      return false;
    }
    return true;
  }

  void from_folder(const std::string& root) {
    std::vector<std::string> rel;
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      if (!it->is_regular_file(ec)) continue;
      if (is_image_ext(lower(it->path().extension().string())))
        rel.push_back(fs::relative(it->path(), root, ec).generic_string());
    }
    if (ec) fail("hwaga shards pack: cannot list folder ", root, ": ", ec.message());
    std::sort(rel.begin(), rel.end());
    for (const std::string& r : rel) {
      const fs::path img = fs::path(root) / r;
      fs::path stem = img;
      stem.replace_extension();
      PackItem it;
      it.image = img.string();
      it.origin = it.image;
      const std::string txt = stem.string() + ".txt";
      if (!is_regular_file(txt) || !read_text(txt, it.caption)) {
        skip("no caption", it.image, "no caption file " + txt);
        continue;
      }
      if (!caption_ok(it.caption, txt)) continue;
      const std::string js = stem.string() + ".json";
      if (is_regular_file(js)) {
        std::string text;
        nlohmann::json j;
        try {
          if (!read_text(js, text)) throw std::runtime_error("cannot read");
          j = nlohmann::json::parse(text);
        } catch (const std::exception& e) {
          skip("bad json", js, std::string("not valid JSON (") + e.what() + ")");
          continue;
        }
        if (!j.is_object()) {
          skip("bad json", js, "expected a JSON object");
          continue;
        }
        it.json = j.dump();
      }
      it.key = unique_key(key_from_path(r));
      list.items.push_back(std::move(it));
    }
  }

  // One TSV or JSONL line (already split); `where` is "FILE line N".
  void add_entry(const std::string& folder, std::string image, std::string caption, const std::string& key,
                 const std::string& json, const std::string& where) {
    if (image.empty()) {
      skip("bad line", where, "empty image path");
      return;
    }
    const std::string path = fs::path(image).is_absolute() ? image : (fs::path(folder) / image).string();
    if (!is_regular_file(path)) {
      skip("image missing", where, "image " + path + " does not exist");
      return;
    }
    if (!caption_ok(caption, where)) return;
    PackItem it;
    it.image = path;
    it.caption = std::move(caption);
    it.json = json;
    it.origin = where;
    it.key = key.empty() ? unique_key(key_from_path(image)) : key;
    list.items.push_back(std::move(it));
  }

  void from_tsv(const std::string& file, const std::string& folder) {
    std::ifstream f(file, std::ios::binary);
    std::string line;
    for (int64_t n = 1; std::getline(f, line); ++n) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (trim(line).empty()) continue;
      const std::string where = file + " line " + std::to_string(n);
      const size_t tab = line.find('\t');
      if (tab == std::string::npos) {
        skip("bad line", where, "expected \"image<TAB>caption\"");
        continue;
      }
      std::string image = trim(line.substr(0, tab)), caption = line.substr(tab + 1);
      if (n == 1 && lower(image) == "image" && lower(trim(caption)) == "caption") continue;  // header
      add_entry(folder, image, caption, "", "", where);
    }
  }

  void from_jsonl(const std::string& file, const std::string& folder) {
    std::ifstream f(file, std::ios::binary);
    std::vector<std::pair<int64_t, nlohmann::json>> rows;
    std::string line;
    for (int64_t n = 1; std::getline(f, line); ++n) {
      if (trim(line).empty()) continue;
      const std::string where = file + " line " + std::to_string(n);
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const std::exception& e) {
        skip("bad line", where, std::string("not valid JSON (") + e.what() + ")");
        continue;
      }
      if (!j.is_object() || !j.contains("image") || !j["image"].is_string() || !j.contains("caption") ||
          !j["caption"].is_string()) {
        skip("bad line", where, "expected {\"image\": path, \"caption\": text, ...}");
        continue;
      }
      if (j.contains("key") && !j["key"].is_string()) {
        skip("bad key", where, "\"key\" must be a string");
        continue;
      }
      if (j.contains("json") && !j["json"].is_object()) {
        skip("bad json", where, "\"json\" must be an object");
        continue;
      }
      if (j.contains("key")) {
        const std::string k = j["key"].get<std::string>();
        if (!is_safe_member_name(k) || split_member_name(k).first != k) {
          skip("bad key", where, "key \"" + k + "\" is not usable (empty, absolute, \"..\", control characters or a dot in its last part)");
          continue;
        }
        if (!explicit_keys.insert(k).second) {
          skip("duplicate key", where, "key \"" + k + "\" was used before");
          continue;
        }
      }
      rows.emplace_back(n, std::move(j));
    }
    for (auto& [n, j] : rows) {
      const std::string key = j.contains("key") ? j["key"].get<std::string>() : "";
      const std::string json = j.contains("json") ? j["json"].dump() : "";
      add_entry(folder, j["image"].get<std::string>(), j["caption"].get<std::string>(), key, json,
                file + " line " + std::to_string(n));
    }
  }
};

}  // namespace

std::string key_from_path(const std::string& path) {
  fs::path p(path);
  p.replace_extension();
  std::vector<std::string> parts;
  for (const fs::path& c : p.relative_path()) {
    std::string s = c.string();
    if (s.empty() || s == "." || s == "..") continue;
    for (char& ch : s)
      if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) ch = '_';
    parts.push_back(s);
  }
  if (parts.empty()) parts.push_back("sample");
  std::replace(parts.back().begin(), parts.back().end(), '.', '_');
  std::string key;
  for (size_t i = 0; i < parts.size(); ++i) key += (i ? "/" : "") + parts[i];
  return key;
}

PackList list_pack_sources(const std::string& src, const WarnFn& warn) {
  struct stat st;
  if (src.empty() || ::stat(src.c_str(), &st) != 0)
    fail("hwaga shards pack: source ", src, " does not exist (expected a folder, a .tsv or a .jsonl file)");
  Lister l{warn, {}, {}, {}};
  if (S_ISDIR(st.st_mode)) {
    l.from_folder(src);
  } else {
    const std::string ext = lower(fs::path(src).extension().string());
    const std::string folder = fs::path(src).parent_path().string();
    std::ifstream probe(src, std::ios::binary);
    if (!probe) fail("hwaga shards pack: cannot read source ", src);
    if (ext == ".tsv")
      l.from_tsv(src, folder.empty() ? "." : folder);
    else if (ext == ".jsonl")
      l.from_jsonl(src, folder.empty() ? "." : folder);
    else
      fail("hwaga shards pack: source ", src, " is neither a folder, a .tsv nor a .jsonl file");
  }
  return std::move(l.list);
}

}  // namespace hwaga::data
