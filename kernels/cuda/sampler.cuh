// The sampler of sample/sampler.h on the GPU: one block per candidate row turns that row's K
// logits into one code with the host sampler's exact rules (temperature, top-k with ties kept,
// NaN handling, softmax, top-p over the descending order with ties by token index, one draw from
// the candidate's Philox stream), so that only the codes cross to the host.
//
// Same code as the host for the same logits: the steps use the host's f32 operations (IEEE
// division by the temperature, f32 max, f32 x - m, f32 * scale, f32 / fsum, the CFG mix as one
// fma like the host build's contraction) and the same uniform (Philox4x64-10 below is the exact
// integer function of sample/rng.cpp). What cannot be bit-identical, and why the codes still
// agree except with a probability far below 1e-6 per draw:
//   * exp: the host calls glibc's expf, the GPU rounds a double exp to f32; they differ in the
//     last bit of ~0.06% of the probabilities (measured on 5e7 N(0,9) logits), which moves a
//     cumulative boundary by ~1e-8 of one token's mass;
//   * the sums that the host runs left to right in double (softmax sum, top-p prefixes, the draw's
//     running sum) run here as deterministic block reductions/scans in double (or exact 2^-62
//     fixed point for the top-p prefixes); they agree to ~1e-15, so the f32 rounding of a prefix
//     or the draw's comparison flips only when it lies within ~1e-15 of a boundary.
// Results are deterministic run to run (no floating-point atomics).
//
// Shape legend: n sampled rows (candidates), M logit rows (n, or 2n with classifier-free
// guidance), K codebook size.
#pragma once
#include <cstdint>
#include <cstring>
#include <cuda_runtime.h>

namespace hwaga::cuda {

#if defined(__CUDACC__)
#define HWAGA_HD __host__ __device__ __forceinline__
#else
#define HWAGA_HD inline
#endif

// ---- pieces shared by host and device (the host versions are unit-tested against sample/rng.h) ----

HWAGA_HD uint64_t philox_mulhi(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return uint64_t((unsigned __int128)a * b >> 64);
#endif
}

// Block `blk` (words 4*blk .. 4*blk+3) of the Philox4x64-10 stream key = {seed, stream}: counter
// {blk, 0, 0, 0}, the rounds of sample/rng.cpp.
HWAGA_HD void philox_block(uint64_t blk, uint64_t seed, uint64_t stream, uint64_t out[4]) {
  uint64_t c0 = blk, c1 = 0, c2 = 0, c3 = 0, k0 = seed, k1 = stream;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B97F4A7C15ull;
      k1 += 0xBB67AE8584CAA73Bull;
    }
    const uint64_t hi0 = philox_mulhi(0xD2E7470EE14C6C93ull, c0), lo0 = 0xD2E7470EE14C6C93ull * c0;
    const uint64_t hi1 = philox_mulhi(0xCA5A826395121157ull, c2), lo1 = 0xCA5A826395121157ull * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// Word `pos` of the stream: word pos % 4 of block pos / 4, exactly as Rng (sample/rng.h)
// produces it.
HWAGA_HD uint64_t philox_word(uint64_t seed, uint64_t stream, uint64_t pos) {
  uint64_t w[4];
  philox_block(pos >> 2, seed, stream, w);
  return w[pos & 3];
}

// Rng::next_double at word `pos`: (word >> 11) * 2^-53, in [0, 1).
HWAGA_HD double philox_uniform(uint64_t seed, uint64_t stream, uint64_t pos) {
  return double(philox_word(seed, stream, pos) >> 11) * 0x1.0p-53;
}

HWAGA_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

// Unsigned key in the order of torch.topk's ranking: increasing with the value, -0 just below +0,
// and every NaN equal to the largest key (torch ranks NaN above every number).
HWAGA_HD uint32_t float_order_key(float x) {
  if (x != x) return 0xFFFFFFFFu;
  const uint32_t u = float_bits(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The float of an order key (0xFFFFFFFF gives a NaN).
HWAGA_HD float float_from_order_key(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

// ---- the kernel ----

// Per sampled row, the kernel writes out[4*i .. 4*i+3] = {code, status, index, NaN count}.
// `index` is the offending logit for the statuses that name one; the NaN count is the number of
// NaN logits replaced by -inf (RQ semantics, not greedy), for the host's warning.
enum SampleStatus : int32_t {
  kSampleOk = 0,
  kSampleNan = 1,         // NaN logit, minDALL-E semantics (sampler: "... multinomial would fail")
  kSamplePosInf = 2,      // +inf logit after the temperature
  kSampleAllNegInf = 3,   // every logit -inf after top-k / NaN replacement
  kSampleGreedyNan = 4,   // greedy, minDALL-E semantics: NaN logit
  kSampleGreedyAllNan = 5,  // greedy: every logit NaN
  kSampleNoMass = 6,      // no token with probability > 0 before the draw (cannot happen)
  kSampleInternal = 7,    // the top-p descent found no bin (cannot happen)
};

struct SampleRowsArgs {
  const float* logits = nullptr;  // [M,K] f32, device
  int32_t* out = nullptr;         // [n,4] int32, device
  float* work = nullptr;          // [n,K] f32 device scratch, or null: rows live in shared memory
  int n = 0;                      // rows sampled
  int K = 0;                      // logits per row
  float temperature = 1.0f;       // finite, > 0
  int top_k = 0;                  // 0, or >= K: no cutoff
  float top_p = 0.0f;             // 0: no top-p step; else (0, 1]
  bool nan_to_neg_inf = true;     // RQ; false: NaN is an error (minDALL-E)
  bool greedy = false;            // argmax of the (mixed) logits, lowest index on ties, NaN skipped
  float cfg_scale = 0.0f;         // != 0: row i <- fma(s, row i - row n+i, row n+i) (M = 2n)
  // Philox position of each row's draw: row i draws word pos0 of stream (seed, stream0 + i), or,
  // when philox_rows (device [n,3] uint64: seed, stream, position) is set, the row's own triple.
  uint64_t seed = 0, stream0 = 0, pos0 = 0;
  const uint64_t* philox_rows = nullptr;
  // With step_dev (device int32) set, every row's word position is pos0 + *step_dev * pos_per_step
  // (read when the kernel runs: a recorded sampling step replays at the current step).
  const int32_t* step_dev = nullptr;
  int64_t pos_per_step = 0;
};

// The codes of one draw into a sampling loop's device state (Backend::SampleTarget): res [n,4]
// as sample_rows_f32 writes it; row m of the M = R*n logit rows gets candidate m % n's code in
// row_codes [M,D] column d, candidate i's code goes to out [n,S,D] at step *step_dev, depth d.
// A failed draw writes code 0; the first failure sets status[0..2] = {status, logit index, K},
// and status[3] accumulates the NaN counts.
struct SampleScatterArgs {
  const int32_t* res = nullptr;
  int32_t* row_codes = nullptr;
  int32_t* out = nullptr;
  int32_t* status = nullptr;
  const int32_t* step_dev = nullptr;
  int n = 0, M = 0, D = 0, d = 0, S = 0, K = 0;
};

// Bytes of device scratch `work` must point to for rows of K logits: 0 when one row fits in
// the current device's shared memory (K up to ~50k on A100/H100), else n*K*4.
size_t sample_rows_work_bytes(int n, int K);
// Launches one block per sampled row on `s`.
void sample_rows_f32(const SampleRowsArgs& a, cudaStream_t s);
void sample_scatter(const SampleScatterArgs& a, cudaStream_t s);

}  // namespace hwaga::cuda
