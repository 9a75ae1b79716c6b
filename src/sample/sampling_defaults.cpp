#include "sample/sampling_defaults.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace hwaga {
namespace {

using nlohmann::json;

double number_field(const json& v, const std::string& where, const char* field) {
  if (!v.is_number()) fail(where, ": field \"", field, "\" must be a number, found ", v.dump());
  const double x = v.get<double>();
  if (!std::isfinite(x)) fail(where, ": field \"", field, "\" must be finite, found ", v.dump());
  return x;
}

const json& list_field(const json& v, const std::string& where, const char* field) {
  if (!v.is_array()) fail(where, ": field \"", field, "\" must be a list ([] for none), found ", v.dump());
  if (v.size() > 64) fail(where, ": field \"", field, "\" has ", v.size(), " values; expected 1 or one per depth");
  return v;
}

template <typename T>
std::string list_text(const std::vector<T>& v) {
  if (v.empty()) return "none";
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + float_text(float(v[i]));
  return out;
}

}  // namespace

std::string float_text(float v) {
  char buf[32];
  for (int prec = 6; prec <= 9; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, double(v));
    if (std::strtof(buf, nullptr) == v) break;
  }
  return buf;
}

std::string values_text(const std::vector<int>& v) { return list_text(v); }
std::string values_text(const std::vector<float>& v) { return list_text(v); }

SamplingDefaults sampling_defaults_from_json_text(const std::string& text, const std::string& where) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(where, ": not valid JSON (", e.what(), ")");
  }
  if (!j.is_object()) fail(where, ": expected a JSON object, found ", j.dump());
  SamplingDefaults d;
  for (const auto& [key, v] : j.items()) {
    if (key == "top_k") {
      std::vector<int> ks;
      for (const json& x : list_field(v, where, "top_k")) {
        const double k = number_field(x, where, "top_k");
        if (k != std::floor(k) || k < 1 || k > double(1 << 30))
          fail(where, ": field \"top_k\" holds ", x.dump(), "; expected whole numbers in [1, 2^30]");
        ks.push_back(int(k));
      }
      d.top_k = ks;
    } else if (key == "top_p") {
      std::vector<float> ps;
      for (const json& x : list_field(v, where, "top_p")) {
        const double p = number_field(x, where, "top_p");
        if (!(p > 0.0 && p <= 1.0)) fail(where, ": field \"top_p\" holds ", x.dump(), "; expected numbers in (0, 1]");
        ps.push_back(float(p));
      }
      d.top_p = ps;
    } else if (key == "temperature") {
      const double t = number_field(v, where, "temperature");
      if (!(t > 0)) fail(where, ": field \"temperature\" is ", v.dump(), "; expected a number > 0");
      d.temperature = float(t);
    } else if (key == "cfg") {
      d.cfg = float(number_field(v, where, "cfg"));
    } else if (key == "rerank") {
      const double r = number_field(v, where, "rerank");
      if (r != std::floor(r) || r < 0 || r > 100000)
        fail(where, ": field \"rerank\" is ", v.dump(), "; expected a whole number in [0, 100000]");
      d.rerank = int(r);
    } else {
      fail(where, ": unknown field \"", key, "\" (known: top_k, top_p, temperature, cfg, rerank)");
    }
  }
  return d;
}

void validate_sampling_defaults(const SamplingDefaults& d, SamplerSemantics s, int depth, int vocab,
                                const std::string& where) {
  SamplerOptions check;
  if (d.top_k) check.top_k = *d.top_k;
  if (d.top_p) check.top_p = *d.top_p;
  if (d.temperature) check.temperature = *d.temperature;
  try {
    validate_sampler_options(check, s, depth, vocab);
  } catch (const Error& e) {
    fail(where, ": ", e.what());
  }
}

std::string sampling_defaults_to_json_text(const SamplingDefaults& d) {
  json j = json::object();  // nlohmann orders keys alphabetically: deterministic text
  if (d.top_k) j["top_k"] = *d.top_k;
  // floats as their shortest decimal (0.9, not 0.899999976158142); reading back gives the same f32
  auto num = [](float v) { return std::strtod(float_text(v).c_str(), nullptr); };
  if (d.top_p) {
    j["top_p"] = json::array();
    for (float p : *d.top_p) j["top_p"].push_back(num(p));
  }
  if (d.temperature) j["temperature"] = num(*d.temperature);
  if (d.cfg) j["cfg"] = num(*d.cfg);
  if (d.rerank) j["rerank"] = *d.rerank;
  return j.dump();
}

std::string describe_sampling_defaults(const SamplingDefaults& d) {
  std::string out;
  auto add = [&out](const std::string& s) { out += (out.empty() ? "" : ", ") + s; };
  if (d.top_k) add("top-k " + list_text(*d.top_k));
  if (d.top_p) add("top-p " + list_text(*d.top_p));
  if (d.temperature) add("temperature " + float_text(*d.temperature));
  if (d.cfg) add("cfg " + float_text(*d.cfg));
  if (d.rerank) add("rerank " + std::to_string(*d.rerank));
  return out;
}

}  // namespace hwaga
