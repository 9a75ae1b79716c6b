// What `hwaga shards pack` reads: a list of (image file, caption, key, json) from
//
//   a folder   every .png/.jpg/.jpeg/.webp below it (recursively, sorted by path) with its
//              caption in the sidecar <name>.txt and optional metadata in <name>.json
//   a .tsv     lines "image<TAB>caption" (a first line "image<TAB>caption" is a header)
//   a .jsonl   lines {"image": path, "caption": str, "key": optional str, "json": optional object}
//
// Relative image paths in a list resolve against the list's folder. Keys are unique and usable
// as member names (tar_samples.h): explicit JSONL keys are kept (a bad or repeated one skips
// its line); others come from the image path (its folders kept, "." and ".." dropped, dots in
// the file name replaced by "_"), with "_2", "_3"... added to repeats. Entries that cannot be
// used are counted by reason and warned about; a missing or unreadable source is an error.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/tar_samples.h"

namespace hwaga::data {

struct PackItem {
  std::string image;    // path of the image file
  std::string caption;  // trimmed UTF-8, non-empty
  std::string key;
  std::string json;     // compact JSON object text, or ""
  std::string origin;   // "list.tsv line 12" or the image path, for messages
};

struct PackList {
  std::vector<PackItem> items;
  std::map<std::string, int64_t> skipped;  // reason -> count
};

PackList list_pack_sources(const std::string& src, const WarnFn& warn);

// Keys: the path without its extension, made usable (see above); never empty.
std::string key_from_path(const std::string& path);

}  // namespace hwaga::data
