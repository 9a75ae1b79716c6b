#include "t2i_options.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "cli_util.h"
#include "progress.h"

namespace hwaga::cli {

namespace fs = std::filesystem;

// ---- options ----

void add_sampling_options(CLI::App& sub, SamplingArgs& a, const char* n_help) {
  sub.add_option("-n,--n", a.n, n_help)->capture_default_str();
  sub.add_option_function<uint64_t>(
      "--seed", [&a](const uint64_t& v) { a.seed = v, a.seed_given = true; },
      "random seed (default: a random one, printed); picture i uses the stream (seed, i)");
  sub.add_option("--top-k", a.top_k,
                 "keep the K most likely codes: K, or one K per depth K0,K1,K2,K3 (RQ), or none "
                 "(default: the model file's, else 1024 for RQ text models, 256 for minDALL-E)");
  sub.add_option("--top-p", a.top_p,
                 "nucleus sampling mass in (0,1]: P, P0,..,P3 (RQ), or none (default: the model file's, else 0.95 RQ, "
                 "none minDALL-E)");
  sub.add_option_function<double>(
      "--temperature", [&a](const double& v) { a.temperature = v, a.temperature_given = true; },
      "softmax temperature > 0 (default 1, or the model file's)");
  sub.add_option_function<double>(
      "--cfg", [&a](const double& v) { a.cfg = v, a.cfg_given = true; },
      "classifier-free guidance scale (0 = off, the default unless the model file recommends one; an extension, "
      "the released models had none)");
  sub.add_flag("--greedy", a.greedy, "always take the most likely code (ignores the sampling options)");
  sub.add_option("--batch", a.batch, "candidates sampled together (0 = all); the pictures do not depend on it");
  sub.add_option_function<int>(
      "--rerank", [&a](const int& v) { a.rerank = v, a.rerank_given = true; },
      "draw M candidates and keep the -n whose codes the prompt makes most likely relative to no prompt "
      "(text models; best with a model trained with --cfg-drop; 0 = off, the default unless the model file "
      "recommends one)");
}

namespace {

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ',') {
      out.push_back(cur);
      cur.clear();
    } else if (c != ' ') {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

bool is_none(const std::string& s) { return s == "none" || s == "None" || s == "off"; }

}  // namespace

std::vector<int> parse_top_k(const std::string& s, const char* option) {
  if (s.empty() || is_none(s)) return {};
  std::vector<int> out;
  for (const std::string& piece : split_commas(s)) {
    char* end = nullptr;
    errno = 0;
    long v = std::strtol(piece.c_str(), &end, 10);
    if (piece.empty() || *end != '\0' || errno)
      usage_fail(option, " '", s, "': expected an integer K >= 1, or K0,K1,... (one per depth), or none");
    if (v < 1) usage_fail(option, " ", v, ": must be at least 1 (use none for no top-k cutoff)");
    if (v > (1 << 30)) usage_fail(option, " ", v, ": too large");
    out.push_back(int(v));
  }
  return out;
}

std::vector<float> parse_top_p(const std::string& s, const char* option) {
  if (s.empty() || is_none(s)) return {};
  std::vector<float> out;
  for (const std::string& piece : split_commas(s)) {
    char* end = nullptr;
    double v = std::strtod(piece.c_str(), &end);
    if (piece.empty() || *end != '\0')
      usage_fail(option, " '", s, "': expected a number in (0, 1], or P0,P1,... (one per depth), or none");
    if (!(v > 0.0 && v <= 1.0)) usage_fail(option, " ", piece, ": must be in (0, 1]");
    out.push_back(float(v));
  }
  return out;
}

void check_sampling_args(const SamplingArgs& a) {
  parse_top_k(a.top_k);
  parse_top_p(a.top_p);
  if (!(std::isfinite(a.temperature) && a.temperature > 0))
    usage_fail("--temperature ", a.temperature, ": must be a finite number > 0");
  if (a.n < 1) usage_fail("-n ", a.n, ": must be at least 1 (pictures per prompt)");
  if (a.n > 100000) usage_fail("-n ", a.n, ": at most 100000 pictures per prompt");
  if (a.batch < 0) usage_fail("--batch ", a.batch, ": must be at least 1 (or 0 for all candidates at once)");
  if (!std::isfinite(a.cfg)) usage_fail("--cfg ", a.cfg, ": must be a finite number");
  if (a.rerank < 0 || a.rerank > 100000) usage_fail("--rerank ", a.rerank, ": must be in [0, 100000] (0 = off)");
}

SamplerSemantics semantics_of(const TextToImageModel& m) {
  return m.stage2_config().is_rq() ? SamplerSemantics::RqTransformer : SamplerSemantics::MinDalle;
}

uint64_t random_seed() {
  std::random_device rd;
  uint64_t v = (uint64_t(rd()) << 32) ^ uint64_t(rd());
  return v & ((uint64_t(1) << 53) - 1);
}

Sampling resolve_sampling(const SamplingArgs& a, const TextToImageModel& model) {
  check_sampling_args(a);
  Sampling s;
  const bool rq = model.stage2_config().is_rq();
  const int K = model.stage2_config().image_vocab_size();
  const SamplingDefaults& file = model.sampling_defaults();
  s.sampler.temperature = a.temperature_given ? float(a.temperature) : file.temperature.value_or(1.0f);
  if (!a.top_k.empty()) s.sampler.top_k = parse_top_k(a.top_k);
  else if (file.top_k) s.sampler.top_k = *file.top_k;
  else s.sampler.top_k = {rq ? 1024 : std::min(256, K)};
  if (!a.top_p.empty()) s.sampler.top_p = parse_top_p(a.top_p);
  else if (file.top_p) s.sampler.top_p = *file.top_p;
  else if (rq) s.sampler.top_p = {0.95f};
  s.greedy = a.greedy;
  s.cfg = a.cfg_given ? float(a.cfg) : file.cfg.value_or(0.0f);
  s.n = a.n;
  s.batch = a.batch;
  s.seed_random = !a.seed_given;
  s.seed = a.seed_given ? a.seed : random_seed();
  SamplerOptions check = s.sampler;
  check.greedy = s.greedy;
  const Shape cs = model.code_shape();
  try {
    validate_sampler_options(check, semantics_of(model), int(cs[2]), K);
  } catch (const UsageError&) {
    throw;
  } catch (const Error& e) {
    usage_fail(e.what());
  }
  if (s.cfg != 0.0f && model.stage2_config().text_length() == 0)
    usage_fail("--cfg needs a text model; this one takes no text");
  s.rerank = a.rerank_given ? a.rerank : file.rerank.value_or(0);
  if (s.rerank > 0 && model.stage2_config().text_length() == 0) {
    if (a.rerank_given) usage_fail("--rerank needs a text model; this one takes no text");
    s.rerank = 0;
  }
  if (s.rerank > 0 && s.rerank < s.n) {
    if (a.rerank_given)
      usage_fail("--rerank ", s.rerank, ": must be at least -n ", s.n, " (it draws M candidates and keeps the ", s.n,
                 " best)");
    s.rerank = s.n;  // the file's pool is smaller than the pictures asked for: keep them all
  }
  s.top_k_text = values_text(s.sampler.top_k);
  s.top_p_text = values_text(s.sampler.top_p);
  s.temperature_text = float_text(s.sampler.temperature);
  s.cfg_text = float_text(s.cfg);
  return s;
}

int sampling_steps(const TextToImageModel& model, const Sampling& s) {
  const Shape cs = model.code_shape();
  const int pool = std::max(s.n, s.rerank);
  const int64_t per = s.batch > 0 ? std::min(s.batch, pool) : pool;
  return int(cs[0] * cs[1] * cs[2] * ((pool + per - 1) / per));
}

GenerateOptions generate_options(const Sampling& s, uint64_t seed) {
  GenerateOptions g;
  g.n_candidates = std::max(s.n, s.rerank);
  g.seed = seed;
  g.sampler = s.sampler;
  g.sampler.greedy = s.greedy;
  g.greedy = s.greedy;
  g.cfg_scale = s.cfg;
  g.batch = s.batch;
  return g;
}

SampledCodes sample_codes(TextToImageModel& model, const std::vector<int32_t>& ids, const Sampling& s,
                          uint64_t seed, const std::function<void(int, int)>& progress) {
  GenerateOptions g = generate_options(s, seed);
  g.progress = progress;
  Tensor pool = model.generate_codes(ids, g);  // [max(n, rerank),h,w,D]
  SampledCodes out;
  if (s.rerank == 0) {
    out.codes = pool;
    for (int64_t i = 0; i < s.n; ++i) out.candidate.push_back(i);
    return out;
  }
  const std::vector<double> score = model.prompt_scores(ids, pool);
  std::vector<int64_t> order(score.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = int64_t(i);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return score[size_t(a)] > score[size_t(b)]; });
  const int64_t per_map = pool.numel() / pool.dim(0);
  Shape shape = pool.shape();
  shape[0] = s.n;
  out.codes = Tensor::empty(shape, DType::I32);
  for (int64_t i = 0; i < s.n; ++i) {
    const int64_t c = order[size_t(i)];
    std::copy(pool.ptr<int32_t>() + c * per_map, pool.ptr<int32_t>() + (c + 1) * per_map,
              out.codes.ptr<int32_t>() + i * per_map);
    out.candidate.push_back(c);
    out.score.push_back(score[size_t(c)]);
  }
  return out;
}

// ---- the model ----

namespace {

std::string executable_dir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  return exe.parent_path().string();
}

}  // namespace

std::string resolve_model_path(const std::string& given) {
  if (!given.empty()) return given;
  std::vector<std::string> tried;
  if (const char* env = std::getenv("HWAGA_MODEL"); env && *env) {
    if (fs::is_regular_file(env)) {
      std::fprintf(stderr, "hwaga: model %s ($HWAGA_MODEL)\n", env);
      return env;
    }
    tried.push_back(std::string(env) + " ($HWAGA_MODEL)");
  }
  const std::string dir = executable_dir();
  if (!dir.empty()) {
    for (const char* rel : {"../samples/models/default.safetensors", "../share/hwaga/models/default.safetensors",
                            "../../samples/models/default.safetensors"}) {
      fs::path p = fs::path(dir) / rel;
      std::error_code ec;
      if (fs::is_regular_file(p, ec)) {
        std::fprintf(stderr, "hwaga: model %s (the default model; -m MODEL picks another)\n",
                     p.lexically_normal().c_str());
        return p.lexically_normal().string();
      }
      tried.push_back(p.lexically_normal().string());
    }
  }
  std::string list;
  for (auto& t : tried) list += "\n  " + t;
  fail("no -m MODEL given and the default model (samples/models/default.safetensors) was not found; looked in:",
       list,
       "\npass a model file with -m MODEL.safetensors (make one from released checkpoints with "
       "`hwaga convert rq ...` or `hwaga convert mindalle ...`), or set HWAGA_MODEL");
}

LoadedModel load_stage2_model(const std::string& path, Backend& backend) {
  LoadedModel m;
  m.path = path;
  m.file = read_model_file(path);
  m.model = TextToImageModel::load(m.file, backend);
  if (m.model->stage2_config().text_length() > 0 && !m.model->has_tokenizer())
    fail(path, ": no text tokenizer in the metadata (\"tokenizer\"); convert the model again with its vocabulary");
  return m;
}

LoadedModel load_text_model(const std::string& path, Backend& backend) {
  LoadedModel m = load_stage2_model(path, backend);
  if (m.model->stage2_config().text_length() == 0)
    fail(path, ": this ", m.model->kind(), " model takes no text (",
         m.model->cond_vocab_size() > 1 ? "it is class-conditional" : "it is unconditional",
         "); gallery needs a text-to-image model (draw it with generate --class N, or without -p when "
         "unconditional)");
  return m;
}

// ---- prompts ----

std::vector<int32_t> prompt_ids(const TextTokenizer& tok, const std::string& prompt, const std::string& what,
                                const std::string& warn_prefix) {
  if (prompt.find_first_not_of(" \t\r\n\f\v") == std::string::npos)
    usage_fail(what, " is empty (expected some text to draw)");
  std::vector<int32_t> all;
  try {
    all = tok.encode_unpadded(prompt);
  } catch (const Error& e) {
    fail(what, ": ", e.what());
  }
  if (all.size() > size_t(tok.context_length))
    std::fprintf(stderr, "%swarning: %s has %zu tokens; only the first %d fit the model's context, the rest is cut off\n",
                 warn_prefix.c_str(), what.c_str(), all.size(), tok.context_length);
  return pad_and_truncate(std::move(all), tok.context_length, tok.pad_id);
}

// ---- provenance ----

std::vector<std::string> process_arguments() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::vector<std::string> out;
  if (!f) return out;
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::string cur;
  for (char c : all) {
    if (c == '\0') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

std::string Condition::description() const {
  if (class_id >= 0) return "class " + std::to_string(class_id);
  return prompt.empty() ? "unconditional" : prompt;
}

std::vector<std::string> Condition::args() const {
  if (class_id >= 0) return {"--class", std::to_string(class_id)};
  if (prompt.empty()) return {};
  return {"-p", prompt};
}

std::map<std::string, std::string> picture_text(const Condition& cond, const std::string& model_path,
                                                const Sampling& s, uint64_t seed, int64_t candidate,
                                                const std::string& command_line) {
  std::vector<std::string> again = {"hwaga", "generate", "-m", model_path};
  for (const std::string& a : cond.args()) again.push_back(a);
  again.insert(again.end(), {"--seed", std::to_string(seed), "-n", std::to_string(candidate + 1)});
  if (s.rerank > 0) again.insert(again.end(), {"--rerank", "0"});  // the candidate's own stream, no pool
  if (s.greedy) {
    again.push_back("--greedy");
  } else {
    again.insert(again.end(), {"--top-k", s.top_k_text, "--top-p", s.top_p_text, "--temperature", s.temperature_text});
  }
  if (s.cfg != 0.0f) again.insert(again.end(), {"--cfg", s.cfg_text});
  std::map<std::string, std::string> text = {
      {"Software", software_string()},
      {"Description", cond.description()},
      {"hwaga.model", model_path},
      {"hwaga.seed", std::to_string(seed)},
      {"hwaga.candidate", std::to_string(candidate)},
      {"hwaga.top_k", s.top_k_text},
      {"hwaga.top_p", s.top_p_text},
      {"hwaga.temperature", s.temperature_text},
      {"hwaga.cfg", s.cfg_text},
      {"hwaga.rerank", std::to_string(s.rerank)},
      {"hwaga.greedy", s.greedy ? "true" : "false"},
      {"hwaga.version", kVersion},
      {"hwaga.command", command_line},
      {"hwaga.reproduce", join_command_line(again) + "   (the last picture is this one)"},
  };
  if (cond.class_id >= 0) text["hwaga.class"] = std::to_string(cond.class_id);
  else if (!cond.prompt.empty()) text["hwaga.prompt"] = cond.prompt;
  return text;
}

// ---- pictures ----

std::vector<uint8_t> to_rgb8(const float* chw, int64_t H, int64_t W) {
  std::vector<uint8_t> out(size_t(H * W * 3));
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t i = 0; i < H * W; ++i) {
      float x = chw[c * H * W + i];
      if (std::isnan(x)) fail("picture has a NaN value (a broken model?)");
      float v = std::clamp(x * 0.5f + 0.5f, 0.0f, 1.0f) * 255.0f + 0.5f;
      out[size_t(i * 3 + c)] = uint8_t(std::min(255.0f, v));
    }
  return out;
}

int run_with_exit_codes(const std::string& prefix, const std::function<int()>& body,
                        const std::string& interrupted_hint) {
  try {
    return body();
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%serror: %s\n", prefix.c_str(), e.what());
    return 2;
  } catch (const Error& e) {
    if (!interrupted()) throw;
    std::fprintf(stderr, "%s%s%s\n", prefix.c_str(), e.what(), interrupted_hint.c_str());
    return 128 + interrupt_signal();
  }
}

}  // namespace hwaga::cli
