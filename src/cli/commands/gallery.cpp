// hwaga gallery [-m MODEL] PROMPTS.txt -o DIR [-n N] [--seed S] [sampler options]
//
// Many prompts at once, into a folder that a browser can show:
//   DIR/gallery.json              the run's seed and settings (a rerun without --seed reuses it)
//   DIR/<index>-<slug>/NN.png     the N pictures of prompt <index> (1-based, 3 digits), with the
//                                 same PNG text chunks as `hwaga generate`
//   DIR/<index>-<slug>/contact.png  all N pictures in one grid
//   DIR/<index>-<slug>/done.json  the done-marker: prompt and settings, written last
//   DIR/index.html                every prompt with its pictures and settings (HTML-escaped)
//
// PROMPTS.txt: one prompt per line (UTF-8); blank lines and lines starting with '#' are skipped.
// Prompt i (0-based, counting prompts only) is drawn with seed derive_seed(S, i), so its
// pictures do not depend on which prompts ran before, on resuming, or on the batch size.
//
// Resumable: a prompt whose done-marker matches the current settings and whose pictures exist
// is skipped ("skipped, already done" on stderr), so a long run can be stopped with Ctrl-C and
// continued by running the same command again. A prompt's pictures are written all together
// (temporary names, then renamed) before its marker, so an interrupted prompt leaves nothing
// half-written and is simply drawn again. Exit codes as for generate; 128+signal on Ctrl-C.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "command.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "io/image.h"
#include "progress.h"
#include "sample/rng.h"
#include "t2i_options.h"

namespace hwaga::cli::gallery_cmd {  // a namespace per command (unity build)
namespace {

namespace fs = std::filesystem;
constexpr const char* kPrefix = "hwaga gallery: ";

struct GalleryOptions {
  CommonOptions common;
  std::string model;
  std::string prompts_file;
  std::string out_dir;
  int decode_batch = 4;
  SamplingArgs sampling;
};

struct PromptEntry {
  std::string text;
  int line = 0;       // 1-based line in the prompts file
  int index = 0;      // 0-based among prompts
  std::string dir;    // "<index+1 as %03d>-<slug>"
};

// ---- prompts file ----

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n\f\v";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// "A red apple, on a table!" -> "a-red-apple-on-a-table"; non-ASCII text -> "prompt".
std::string slug(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) && c < 128) {
      out += char(std::tolower(c));
    } else if (!out.empty() && out.back() != '-') {
      out += '-';
    }
    if (out.size() >= 40) break;
  }
  while (!out.empty() && out.back() == '-') out.pop_back();
  return out.empty() ? "prompt" : out;
}

std::vector<PromptEntry> read_prompts(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open the prompts file");
  std::vector<PromptEntry> out;
  std::string line;
  int line_no = 0;
  while (std::getline(f, line)) {
    ++line_no;
    if (line_no == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);  // UTF-8 BOM
    std::string t = trim(line);
    if (t.empty() || t[0] == '#') continue;
    PromptEntry e;
    e.text = t;
    e.line = line_no;
    e.index = int(out.size());
    char num[16];
    std::snprintf(num, sizeof num, "%03d", e.index + 1);
    e.dir = std::string(num) + "-" + slug(t);
    out.push_back(std::move(e));
  }
  if (f.bad()) fail(path, ": read error");
  if (out.empty()) usage_fail(path, ": no prompts (one per line; blank lines and # comments are skipped)");
  return out;
}

// The seed of prompt i: the first number of the Philox stream (seed, 2^63 + i), below 2^53.
uint64_t derive_seed(uint64_t seed, int index) {
  Rng r(seed, (uint64_t(1) << 63) + uint64_t(index));
  return r.next_u64() & ((uint64_t(1) << 53) - 1);
}

// ---- html ----

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string picture_name(int64_t i, int n) {
  const size_t width = std::max<size_t>(2, std::to_string(std::max(n - 1, 0)).size());
  std::string num = std::to_string(i);
  if (num.size() < width) num.insert(0, width - num.size(), '0');
  return num + ".png";
}

// The settings that decide a prompt's pictures; the done-marker holds exactly these.
nlohmann::json prompt_settings(const PromptEntry& p, const Sampling& s, uint64_t seed, const std::string& model_path) {
  nlohmann::json j = {{"prompt", p.text},       {"index", p.index},
                      {"seed", seed},           {"n", s.n},
                      {"top_k", s.top_k_text},  {"top_p", s.top_p_text},
                      {"temperature", s.temperature_text}, {"cfg", s.cfg_text},
                      {"greedy", s.greedy},     {"model", base_name(model_path)},
                      {"model_bytes", file_size_or_zero(model_path)}};
  if (s.rerank > 0) j["rerank"] = s.rerank;  // absent when off: older galleries stay done
  return j;
}

bool is_done(const fs::path& dir, const nlohmann::json& settings, int n) {
  std::ifstream f(dir / "done.json");
  if (!f) return false;
  nlohmann::json j;
  try {
    f >> j;
  } catch (const std::exception&) {
    return false;
  }
  if (j != settings) return false;
  std::error_code ec;
  for (int i = 0; i < n; ++i)
    if (!fs::is_regular_file(dir / picture_name(i, n), ec)) return false;
  return fs::is_regular_file(dir / "contact.png", ec);
}

void write_index(const fs::path& out_dir, const std::vector<PromptEntry>& prompts, const std::vector<bool>& done,
                 const Sampling& s, uint64_t seed, const std::string& model_path) {
  std::string h;
  h += "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>hwaga gallery</title>\n<style>\n"
       "body{font-family:sans-serif;margin:1.5em;background:#fafafa}\n"
       "section{margin-bottom:2em}h2{font-size:1.1em;margin:.2em 0}\n"
       ".settings{color:#666;font-size:.85em;margin:.2em 0 .6em}\n"
       "img{width:128px;height:128px;margin:2px;image-rendering:pixelated;border:1px solid #ddd}\n"
       ".pending{color:#a60}\n</style></head><body>\n";
  h += "<h1>hwaga gallery</h1>\n<p class=\"settings\">model " + html_escape(base_name(model_path)) + ", seed " +
       std::to_string(seed) + ", " + std::to_string(s.n) + " pictures per prompt, " +
       (s.greedy ? std::string("greedy")
                 : "top-k " + html_escape(s.top_k_text) + ", top-p " + html_escape(s.top_p_text) + ", temperature " +
                       html_escape(s.temperature_text)) +
       (s.cfg != 0.0f ? ", cfg " + html_escape(s.cfg_text) : "") + ", " + html_escape(software_string()) + "</p>\n";
  for (size_t k = 0; k < prompts.size(); ++k) {
    const PromptEntry& p = prompts[k];
    h += "<section id=\"p" + std::to_string(p.index + 1) + "\">\n<h2>" + std::to_string(p.index + 1) + ". " +
         html_escape(p.text) + "</h2>\n";
    h += "<div class=\"settings\">seed " + std::to_string(derive_seed(seed, p.index)) + " &middot; folder " +
         html_escape(p.dir);
    if (done[k]) h += " &middot; <a href=\"" + html_escape(p.dir) + "/contact.png\">contact sheet</a>";
    h += "</div>\n";
    if (!done[k]) {
      h += "<p class=\"pending\">not drawn yet</p>\n";
    } else {
      for (int i = 0; i < s.n; ++i) {
        std::string src = html_escape(p.dir + "/" + picture_name(i, s.n));
        h += "<a href=\"" + src + "\"><img src=\"" + src + "\" alt=\"" + html_escape(p.text) + " #" +
             std::to_string(i) + "\"></a>";
      }
      h += "\n";
    }
    h += "</section>\n";
  }
  h += "</body></html>\n";
  write_file_atomic((out_dir / "index.html").string(), h);
}

// A grid of the pictures (8-bit RGB, R x R each) with a 4-pixel white border.
std::vector<uint8_t> contact_sheet(const std::vector<std::vector<uint8_t>>& pics, int R, int* width, int* height) {
  const int n = int(pics.size());
  const int cols = int(std::ceil(std::sqrt(double(n))));
  const int rows = (n + cols - 1) / cols;
  constexpr int pad = 4;
  const int W = cols * (R + pad) + pad, H = rows * (R + pad) + pad;
  std::vector<uint8_t> img(size_t(W) * H * 3, 255);
  for (int k = 0; k < n; ++k) {
    const int x0 = pad + (k % cols) * (R + pad), y0 = pad + (k / cols) * (R + pad);
    for (int y = 0; y < R; ++y)
      std::copy(pics[size_t(k)].begin() + size_t(y) * R * 3, pics[size_t(k)].begin() + size_t(y + 1) * R * 3,
                img.begin() + (size_t(y0 + y) * W + x0) * 3);
  }
  *width = W, *height = H;
  return img;
}

// Removes what a killed run left in a prompt's folder (OutputSet / AtomicFile temporaries).
void remove_stale_temporaries(const fs::path& dir) {
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.find(".hwaga-partial-") != std::string::npos || name.find(".tmp-") != std::string::npos)
      fs::remove(it->path(), ec);
  }
}

int run_gallery(const GalleryOptions& opt) {
  check_sampling_args(opt.sampling);
  std::vector<PromptEntry> prompts = read_prompts(opt.prompts_file);
  const fs::path out_dir = opt.out_dir;
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (!fs::is_directory(out_dir, ec)) fail("-o '", opt.out_dir, "': cannot create the folder");
  check_output_dir((out_dir / "index.html").string(), "-o");

  const std::string model_path = resolve_model_path(opt.model);
  auto backend = select_backend(opt.common);
  LoadedModel lm = load_text_model(model_path, *backend);
  TextToImageModel& model = *lm.model;

  // The run's seed: --seed, else the one a previous run recorded, else a new random one.
  SamplingArgs args = opt.sampling;
  const fs::path state_path = out_dir / "gallery.json";
  if (!args.seed_given) {
    std::ifstream f(state_path);
    nlohmann::json st;
    if (f) {
      try {
        f >> st;
        if (st.contains("seed") && st["seed"].is_number_unsigned()) {
          args.seed = st["seed"].get<uint64_t>(), args.seed_given = true;
          std::fprintf(stderr, "%sresuming with seed %llu from %s\n", kPrefix, (unsigned long long)args.seed,
                       state_path.c_str());
        }
      } catch (const std::exception&) {
      }
    }
  }
  const Sampling s = resolve_sampling(args, model);
  std::fprintf(stderr, "%s%zu prompts, %d pictures each, seed %llu, %s\n", kPrefix, prompts.size(), s.n,
               (unsigned long long)s.seed,
               s.greedy ? "greedy"
                        : ("top-k " + s.top_k_text + ", top-p " + s.top_p_text + ", temperature " + s.temperature_text)
                              .c_str());

  // Every prompt is tokenized before any work, so a bad line fails at once.
  std::vector<std::vector<int32_t>> ids;
  for (const PromptEntry& p : prompts)
    ids.push_back(prompt_ids(model.tokenizer(), p.text,
                             opt.prompts_file + " line " + std::to_string(p.line) + " (prompt " +
                                 std::to_string(p.index + 1) + ")",
                             kPrefix));

  const std::string command_line = join_command_line(process_arguments());
  write_file_atomic(state_path.string(),
                    nlohmann::json({{"seed", s.seed},
                                    {"model", model_path},
                                    {"prompts", opt.prompts_file},
                                    {"n", s.n},
                                    {"top_k", s.top_k_text},
                                    {"top_p", s.top_p_text},
                                    {"temperature", s.temperature_text},
                                    {"cfg", s.cfg_text},
                                    {"greedy", s.greedy},
                                    {"command", command_line},
                                    {"software", software_string()}})
                            .dump(2) +
                        "\n");

  std::vector<bool> done(prompts.size(), false);
  std::vector<nlohmann::json> settings;
  for (size_t k = 0; k < prompts.size(); ++k) {
    const uint64_t seed_k = derive_seed(s.seed, prompts[k].index);
    settings.push_back(prompt_settings(prompts[k], s, seed_k, model_path));
    done[k] = is_done(out_dir / prompts[k].dir, settings[k], s.n);
  }
  write_index(out_dir, prompts, done, s, s.seed, model_path);

  InterruptGuard guard;
  int drawn = 0, skipped = 0;
  for (size_t k = 0; k < prompts.size(); ++k) {
    const PromptEntry& p = prompts[k];
    char tag[64];
    std::snprintf(tag, sizeof tag, "[%zu/%zu] ", k + 1, prompts.size());
    if (done[k]) {
      std::fprintf(stderr, "%s%s%s: skipped, already done\n", kPrefix, tag, p.dir.c_str());
      ++skipped;
      continue;
    }
    const fs::path dir = out_dir / p.dir;
    fs::create_directories(dir, ec);
    if (!fs::is_directory(dir, ec)) fail("cannot create the folder '", dir.string(), "'");
    remove_stale_temporaries(dir);
    fs::remove(dir / "done.json", ec);  // stale settings: the prompt is drawn again

    const uint64_t seed_k = derive_seed(s.seed, p.index);
    SampledCodes sc;
    {
      ProgressBar bar(kPrefix, std::string(tag) + p.dir, sampling_steps(model, s));
      sc = sample_codes(model, ids[k], s, seed_k, [&](int step, int) {
        bar.update(step);
        throw_if_interrupted();
      });
      bar.finish();
    }
    const Tensor& codes = sc.codes;
    std::vector<std::string> finals;
    for (int i = 0; i < s.n; ++i) finals.push_back((dir / picture_name(i, s.n)).string());
    finals.push_back((dir / "contact.png").string());
    OutputSet outs(finals);
    std::vector<std::vector<uint8_t>> rgb;
    int R = 0;
    for (int64_t b0 = 0; b0 < s.n; b0 += opt.decode_batch) {
      const int64_t b1 = std::min<int64_t>(s.n, b0 + opt.decode_batch);
      Tensor x = model.decode(codes.slice0(b0, b1));  // [b,3,R,R]
      R = int(x.dim(2));
      for (int64_t i = b0; i < b1; ++i) {
        const float* chw = x.f32() + (i - b0) * 3 * R * R;
        rgb.push_back(to_rgb8(chw, R, R));
        auto text = picture_text(Condition{p.text}, model_path, s, seed_k, sc.candidate[size_t(i)], command_line);
        if (!sc.score.empty()) text["hwaga.prompt_score"] = float_text(float(sc.score[size_t(i)]));
        write_png_rgb8(outs.temp_for(size_t(i)), rgb.back().data(), R, R, text);
        outs.written(size_t(i));
      }
      throw_if_interrupted();
    }
    int W = 0, H = 0;
    std::vector<uint8_t> sheet = contact_sheet(rgb, R, &W, &H);
    write_png_rgb8(outs.temp_for(size_t(s.n)), sheet.data(), W, H,
                   {{"Software", software_string()}, {"Description", p.text}, {"hwaga.prompt", p.text},
                    {"hwaga.seed", std::to_string(seed_k)}, {"hwaga.command", command_line}});
    outs.written(size_t(s.n));
    throw_if_interrupted();
    outs.commit();
    write_file_atomic((dir / "done.json").string(), settings[k].dump(2) + "\n");
    done[k] = true;
    ++drawn;
    write_index(out_dir, prompts, done, s, s.seed, model_path);
  }
  std::printf("%s: %d prompts drawn, %d skipped (already done), %zu in all\n",
              (out_dir / "index.html").c_str(), drawn, skipped, prompts.size());
  return 0;
}

Command reg("gallery", "Draw pictures for a file of prompts into a folder with an index.html (resumable)",
            [](CLI::App& sub) {
              auto opt = std::make_shared<GalleryOptions>();
              sub.add_option("-m,--model", opt->model,
                             "hwaga model file (default: samples/models/default.safetensors, or $HWAGA_MODEL)");
              sub.add_option("prompts", opt->prompts_file,
                             "text file, one prompt per line (blank lines and # comments skipped)")
                  ->required();
              sub.add_option("-o,--output", opt->out_dir, "output folder (created; a rerun continues it)")
                  ->required();
              sub.add_option("--decode-batch", opt->decode_batch, "pictures decoded together")
                  ->check(CLI::Range(1, 256))
                  ->capture_default_str();
              add_sampling_options(sub, opt->sampling, "pictures per prompt");
              add_common_options(sub, opt->common);
              return [opt] {
                return run_with_exit_codes(kPrefix, [&] { return run_gallery(*opt); },
                                           "; run the same command again to continue");
              };
            });

}  // namespace
}  // namespace hwaga::cli::gallery_cmd
