// Logits -> code: the reference samplers as pure functions on one f32 row of K logits
// (architecture.md §3.2, §4.4, §8.10). Backend-independent: a GPU path copies the (B, K) logits
// of a step to the host, or reimplements these with the same rules and checks against them.
//
// Per step, for each candidate row (both models):
//   1. x = logits / temperature                  (f32 division, one temperature for all depths)
//   2. top-k: v_k = k-th largest value; x[i] < v_k -> -inf  (ties with v_k survive)
//   3. RQ only: NaN -> -inf (the batch helper prints one warning); minDALL-E: NaN is an error
//   4. p = softmax(x)
//   5. top-p: sort p descending; c_j = sum of the first j+1 sorted values; sorted token j >= 1 is
//      removed when c_{j-1} >= top_p (the first token and the token that crosses top_p stay);
//      removed tokens -> 0; p /= sum(p)
//   6. one multinomial draw from p with the candidate's own random stream (sample/rng.h)
//
// Where the two references differ (SamplerSemantics):
//                       RQ-Transformer                      minDALL-E
//   top_k unset         k = K (no-op)                       no cutoff
//   top_k > K           capped at K                         error (torch.topk raises)
//   top_p unset         runs with p = 1.0 (drops a tail)    skipped
//   NaN logits          -> -inf, with a warning             error (multinomial raises)
//   per-depth lists     1 value or D values                 1 value (D = 1)
// Options hwaga rejects for both: temperature <= 0 or not finite, top_k < 1, top_p outside
// (0, 1], list lengths other than 1 or D. (The RQ reference silently caps top_p at 1.0; hwaga
// refuses instead of clamping.)
//
// Cumulative sum of step 5: PyTorch's CPU cumsum of an f32 tensor accumulates in double and
// rounds each prefix to f32; hwaga does exactly that, over the same descending order (ties in
// probability ordered by token index), so the top_p = 1.0 tail drop is reproduced bit for bit
// given the same probabilities: a sorted token is dropped once the f32-rounded prefix before it
// reaches 1.0f, i.e. when the mass left after it is below about 3e-8. (On CUDA the reference
// scanned in f32 in a different order and its cut can fall a few tokens earlier or later; those
// tokens have a total probability around 1e-7.) Comparisons with top_p use f32(top_p), as
// PyTorch compares an f32 tensor with a Python float.
//
// Greedy (for parity tests): argmax of the logits, lowest index on ties; NaN is skipped (RQ) or
// an error (minDALL-E). Temperature, top-k and top-p never change the argmax, so greedy is the
// limit of the sampler, not a different model.
//
// Legend: K vocabulary (row length), D code depth, B candidates.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sample/rng.h"

namespace hwaga {

enum class SamplerSemantics { RqTransformer, MinDalle };
const char* sampler_semantics_name(SamplerSemantics s);  // "rq-transformer" / "mindalle"

// Per-call sampling options (CLI: --temperature, --top-k, --top-p, --greedy).
struct SamplerOptions {
  float temperature = 1.0f;
  std::vector<int> top_k;     // {} unset; {k} for every depth; {k_0, ..., k_{D-1}} (RQ only)
  std::vector<float> top_p;   // {} unset; {p}; {p_0, ..., p_{D-1}} (RQ only)
  bool greedy = false;
};

// Throws hwaga::Error naming the option and the bad value. `depth` = D (1 for minDALL-E),
// `vocab` = K.
void validate_sampler_options(const SamplerOptions& o, SamplerSemantics s, int depth, int vocab);

// The filters for one row at depth d, with the semantics' rules applied (see the table above).
struct RowFilter {
  float temperature = 1.0f;
  int top_k = 0;             // 0 = no cutoff; otherwise 1..K
  float top_p = 0.0f;        // 0 = no top-p step; otherwise (0, 1]
  bool nan_to_neg_inf = true;  // RQ; false = NaN is an error (minDALL-E)
  bool greedy = false;
};
// Validates `o` and resolves it for depth `d` in [0, depth).
RowFilter resolve_row_filter(const SamplerOptions& o, SamplerSemantics s, int depth, int d, int vocab);

// Reusable buffers for one thread (no allocation per row after the first).
struct SamplerScratch {
  std::vector<float> x;          // working copy of the logits
  std::vector<float> values;     // top-k selection
  std::vector<int32_t> order;    // top-p sort
  std::vector<float> probs;      // filtered probabilities (sample_row)
};

// ---- the steps, each on one row of n values, in place ----
// 1. x[i] = x[i] / t (t > 0, finite).
void divide_by_temperature(float* x, int64_t n, float t);
// 2. The k-th largest value in PyTorch's topk order (NaN counts as larger than every number),
//    found with nth_element (no full sort). 1 <= k <= n.
float top_k_threshold(const float* x, int64_t n, int k, std::vector<float>& scratch);
//    Sets x[i] < v_k to -inf; returns how many values survive (NaN survives, as in the reference).
int64_t apply_top_k(float* x, int64_t n, int k, std::vector<float>& scratch);
// 3. NaN -> -inf; returns how many were replaced.
int64_t replace_nan_with_neg_inf(float* x, int64_t n);
// 4. p = softmax(x). Throws hwaga::Error (naming `what`) when the row has a NaN or +inf, or no
//    finite value (every logit -inf).
void softmax_row(const float* x, float* p, int64_t n, const std::string& what);
// 5. Top-p with the shift-by-one rule, then renormalise. p must be a softmax output (>= 0).
//    Returns how many tokens have p > 0 afterwards.
int64_t apply_top_p(float* p, int64_t n, float top_p, std::vector<int32_t>& order);
// 6. The token i with cumsum(p)[i-1] <= u * sum(p) < cumsum(p)[i] (double sums), skipping
//    p[i] = 0, for u in [0, 1). Never returns a token with p = 0.
int64_t draw_from_probs(const float* p, int64_t n, double u);

// Argmax, lowest index on ties, NaN skipped; -1 when every value is NaN.
int64_t argmax_row(const float* x, int64_t n);

// Steps 1-5: logits [n] -> the probabilities the reference hands to torch.multinomial.
// Returns the number of NaN logits replaced (RQ). Throws on NaN (minDALL-E) or an empty row.
int64_t filter_logits(const float* logits, int64_t n, const RowFilter& f, float* probs,
                      SamplerScratch& s);

// One code for one candidate: greedy -> argmax; otherwise steps 1-6 with one draw
// (rng.next_double()) from the candidate's stream. `nan_replaced` (optional) is incremented.
int64_t sample_row(const float* logits, int64_t n, const RowFilter& f, Rng& rng, SamplerScratch& s,
                   int64_t* nan_replaced = nullptr);

// A batch step: logits [B, n] row-major, rngs[b] is candidate b's stream, codes[b] receives the
// code. Prints one warning to stderr when NaN logits were replaced (RQ, like the reference).
void sample_rows(const float* logits, int64_t B, int64_t n, const RowFilter& f, Rng* rngs,
                 int32_t* codes, SamplerScratch& s);

// Classifier-free guidance (an extension; neither reference has it, architecture.md §3.3):
// out[i] = uncond[i] + scale * (cond[i] - uncond[i]). out may alias cond or uncond.
void guidance_mix(const float* cond, const float* uncond, float scale, float* out, int64_t n);

}  // namespace hwaga
