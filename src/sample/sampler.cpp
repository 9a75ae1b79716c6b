// The reference samplers on f32 rows (see sampler.h for the rules and where RQ and minDALL-E differ).
#include "sample/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "core/error.h"

namespace hwaga {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
}

const char* sampler_semantics_name(SamplerSemantics s) {
  return s == SamplerSemantics::RqTransformer ? "rq-transformer" : "mindalle";
}

// ---------------------------------------------------------------------------------------------
// options

void validate_sampler_options(const SamplerOptions& o, SamplerSemantics s, int depth, int vocab) {
  const char* sem = sampler_semantics_name(s);
  if (depth < 1) fail("sampler: code depth must be >= 1, found ", depth);
  if (vocab < 1) fail("sampler: vocabulary size must be >= 1, found ", vocab);
  if (!std::isfinite(o.temperature) || o.temperature <= 0.0f)
    fail("sampler option --temperature must be a finite number > 0, found ", o.temperature);
  auto check_len = [&](size_t len, const char* name) {
    if (len != 0 && len != 1 && len != size_t(depth))
      fail("sampler option ", name, " takes 1 value or one per depth (", depth, " for ", sem,
           "), found ", len, " values");
  };
  check_len(o.top_k.size(), "--top-k");
  check_len(o.top_p.size(), "--top-p");
  for (int k : o.top_k) {
    if (k < 1) fail("sampler option --top-k must be >= 1, found ", k);
    if (s == SamplerSemantics::MinDalle && k > vocab)
      fail("sampler option --top-k ", k, " exceeds the codebook size ", vocab,
           " (minDALL-E does not cap it: its torch.topk would fail)");
  }
  for (float p : o.top_p)
    if (!(p > 0.0f && p <= 1.0f)) fail("sampler option --top-p must be in (0, 1], found ", p);
}

RowFilter resolve_row_filter(const SamplerOptions& o, SamplerSemantics s, int depth, int d, int vocab) {
  validate_sampler_options(o, s, depth, vocab);
  if (d < 0 || d >= depth) fail("sampler: depth index ", d, " outside [0, ", depth, ")");
  const bool rq = s == SamplerSemantics::RqTransformer;
  RowFilter f;
  f.temperature = o.temperature;
  f.greedy = o.greedy;
  f.nan_to_neg_inf = rq;
  if (o.top_k.empty()) f.top_k = rq ? vocab : 0;  // RQ: None means k = K
  else f.top_k = o.top_k.size() == 1 ? o.top_k[0] : o.top_k[size_t(d)];
  if (rq) f.top_k = std::min(f.top_k, vocab);     // RQ caps k at K
  if (o.top_p.empty()) f.top_p = rq ? 1.0f : 0.0f;  // RQ: None means p = 1.0, still applied
  else f.top_p = o.top_p.size() == 1 ? o.top_p[0] : o.top_p[size_t(d)];
  return f;
}

// ---------------------------------------------------------------------------------------------
// the steps

void divide_by_temperature(float* x, int64_t n, float t) {
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] / t;
}

float top_k_threshold(const float* x, int64_t n, int k, std::vector<float>& scratch) {
  if (k < 1 || k > n) fail("top_k_threshold: k = ", k, " outside [1, ", n, "]");
  scratch.assign(x, x + n);
  // Descending order with NaN first, as torch.topk ranks NaN above every number.
  auto before = [](float a, float b) {
    const bool na = std::isnan(a), nb = std::isnan(b);
    if (na || nb) return na && !nb;
    return a > b;
  };
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(), before);
  return scratch[size_t(k - 1)];
}

int64_t apply_top_k(float* x, int64_t n, int k, std::vector<float>& scratch) {
  if (k >= n) return n;  // v_k is the minimum: nothing lies below it
  const float v = top_k_threshold(x, n, k, scratch);
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (x[i] < v) x[i] = kNegInf;  // false for NaN x or NaN v: those survive, as in the reference
    else ++kept;
  }
  return kept;
}

int64_t replace_nan_with_neg_inf(float* x, int64_t n) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i)
    if (std::isnan(x[i])) {
      x[i] = kNegInf;
      ++c;
    }
  return c;
}

void softmax_row(const float* x, float* p, int64_t n, const std::string& what) {
  float m = kNegInf;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(x[i])) fail(what, ": NaN logit at index ", i, " (the reference's multinomial would fail)");
    if (x[i] == std::numeric_limits<float>::infinity())
      fail(what, ": +inf logit at index ", i, " (temperature too small, or a diverged model)");
    m = std::max(m, x[i]);
  }
  if (m == kNegInf) fail(what, ": every one of the ", n, " logits is -inf (nothing to sample)");
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    p[i] = std::exp(x[i] - m);  // exp(-inf) = 0
    sum += p[i];
  }
  const float scale = float(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) p[i] *= scale;
}

int64_t apply_top_p(float* p, int64_t n, float top_p, std::vector<int32_t>& order) {
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("apply_top_p: top_p must be in (0, 1], found ", top_p);
  order.clear();
  for (int64_t i = 0; i < n; ++i)
    if (p[i] > 0.0f) order.push_back(int32_t(i));  // zeros cannot change any prefix sum
  const size_t m = order.size();
  if (m == 0) return 0;
  auto before = [p](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); };
  // Sort only as far as needed: the cut usually falls early (small top_p or after top-k), so sort
  // a prefix and grow it until the cut is inside it. Positions >= cut are removed.
  size_t sorted = std::min<size_t>(m, 256), cut = m;
  for (;;) {
    std::partial_sort(order.begin(), order.begin() + sorted, order.end(), before);
    double acc = 0.0;  // PyTorch CPU cumsum: double accumulator, each prefix rounded to f32
    bool found = false;
    for (size_t j = 0; j < sorted; ++j) {
      if (j >= 1 && float(acc) >= top_p) {
        cut = j;
        found = true;
        break;
      }
      acc += double(p[order[j]]);
    }
    if (found || sorted == m) break;
    sorted = std::min(m, sorted * 4);
  }
  for (size_t j = cut; j < m; ++j) p[order[j]] = 0.0f;
  double sum = 0.0;
  for (size_t j = 0; j < cut; ++j) sum += double(p[order[j]]);
  const float fsum = float(sum);
  for (size_t j = 0; j < cut; ++j) p[order[j]] = p[order[j]] / fsum;
  return int64_t(cut);
}

int64_t draw_from_probs(const float* p, int64_t n, double u) {
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += double(p[i]);
  if (!(total > 0.0)) fail("draw_from_probs: no token has a probability > 0");
  const double target = u * total;
  double acc = 0.0;
  int64_t last = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (!(p[i] > 0.0f)) continue;
    acc += double(p[i]);
    last = i;
    if (target < acc) return i;
  }
  return last;  // u * total rounded up to the full sum: the last token with p > 0
}

int64_t argmax_row(const float* x, int64_t n) {
  int64_t best = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(x[i])) continue;
    if (best < 0 || x[i] > x[best]) best = i;
  }
  return best;
}

// ---------------------------------------------------------------------------------------------
// rows

int64_t filter_logits(const float* logits, int64_t n, const RowFilter& f, float* probs,
                      SamplerScratch& s) {
  if (n < 1) fail("sampler: empty logits row");
  if (f.top_k < 0 || f.top_k > n)
    fail("sampler: top_k ", f.top_k, " outside [1, ", n, "] for a row of ", n, " logits");
  s.x.assign(logits, logits + n);
  float* x = s.x.data();
  divide_by_temperature(x, n, f.temperature);
  if (f.top_k > 0) apply_top_k(x, n, f.top_k, s.values);
  int64_t replaced = 0;
  if (f.nan_to_neg_inf) replaced = replace_nan_with_neg_inf(x, n);
  softmax_row(x, probs, n, "sampler");
  if (f.top_p > 0.0f) apply_top_p(probs, n, f.top_p, s.order);
  return replaced;
}

int64_t sample_row(const float* logits, int64_t n, const RowFilter& f, Rng& rng, SamplerScratch& s,
                   int64_t* nan_replaced) {
  if (f.greedy) {
    if (!f.nan_to_neg_inf)
      for (int64_t i = 0; i < n; ++i)
        if (std::isnan(logits[i])) fail("sampler: NaN logit at index ", i);
    const int64_t i = argmax_row(logits, n);
    if (i < 0) fail("sampler: every one of the ", n, " logits is NaN");
    return i;
  }
  s.probs.resize(size_t(n));
  const int64_t r = filter_logits(logits, n, f, s.probs.data(), s);
  if (nan_replaced) *nan_replaced += r;
  return draw_from_probs(s.probs.data(), n, rng.next_double());
}

void sample_rows(const float* logits, int64_t B, int64_t n, const RowFilter& f, Rng* rngs,
                 int32_t* codes, SamplerScratch& s) {
  int64_t nan_replaced = 0;
  for (int64_t b = 0; b < B; ++b)
    codes[b] = int32_t(sample_row(logits + b * n, n, f, rngs[b], s, &nan_replaced));
  if (nan_replaced > 0)
    std::fprintf(stderr, "warning: %lld NaN logits replaced by -inf before sampling\n",
                 (long long)nan_replaced);
}

void guidance_mix(const float* cond, const float* uncond, float scale, float* out, int64_t n) {
  if (!std::isfinite(scale)) fail("guidance scale must be finite, found ", scale);
  for (int64_t i = 0; i < n; ++i) out[i] = uncond[i] + scale * (cond[i] - uncond[i]);
}

}  // namespace hwaga
