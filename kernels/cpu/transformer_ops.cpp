// CPU kernels of the transformer ops; see transformer_ops.h.
//
// The GEMV path: a sampling step multiplies 1..16 activation rows by every weight matrix of the
// model once, so it is bound by how fast the weights stream from memory (~1.3 GB of bf16 per
// spatial step of the 654M RQ-Transformer). Weights are read once, converted to f32 in registers
// (bf16: zero-extend and shift left 16; f16: vcvtph2ps) and multiplied against activation rows
// kept in L1, with a tile of 4 weight rows x up to 4 activation rows of accumulators. The
// library is compiled for x86-64-v3 (AVX2/FMA/F16C); the AVX-512 variant sits in functions with
// a target attribute and is chosen at run time with __builtin_cpu_supports.
#include "kernels/cpu/transformer_ops.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/vec_math.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define HWAGA_TOPS_X86 1
#endif

namespace hwaga::cpu {

// ---------------------------------------------------------------------------------------------
// elementwise

void gelu_forward(const float* x, float* y, int64_t n) {
  parallel_for(n, 4096, [&](int64_t i0, int64_t i1) { gelu_values(x + i0, y + i0, i1 - i0); });
}

void gather_rows_forward(const void* table, DType dtype, const int32_t* ids, float* out, int64_t N, int64_t C) {
  const size_t es = dtype_size(dtype);
  parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      convert_to_f32(static_cast<const char*>(table) + size_t(ids[n]) * size_t(C) * es, dtype, out + n * C,
                     size_t(C));
  });
}

void add_rows_forward(const float* x, const float* rows, float* y, int64_t N, int64_t R, int64_t C) {
  parallel_for(N, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* r = rows + (n % R) * C;
      const float* xr = x + n * C;
      float* yr = y + n * C;
      for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] + r[c];
    }
  });
}

// ---------------------------------------------------------------------------------------------
// attention over a KV cache

void attention_cached_forward(const float* q, const float* k, const float* v, float* kc, float* vc, float* out,
                              int64_t B, int64_t T, int64_t H, int64_t hd, int64_t T_max, int64_t len) {
  const int64_t C = H * hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  parallel_for(B * H, 1, [&](int64_t j0, int64_t j1) {
    std::vector<float> att(size_t(len + T));
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t b = j / H, h = j % H;
      float* kh = kc + (b * H + h) * T_max * hd;  // [T_max,hd]
      float* vh = vc + (b * H + h) * T_max * hd;
      for (int64_t t = 0; t < T; ++t) {
        std::memcpy(kh + (len + t) * hd, k + (b * T + t) * C + h * hd, size_t(hd) * 4);
        std::memcpy(vh + (len + t) * hd, v + (b * T + t) * C + h * hd, size_t(hd) * 4);
      }
      for (int64_t t = 0; t < T; ++t) {
        const float* qr = q + (b * T + t) * C + h * hd;
        const int64_t n_keys = len + t + 1;  // causal: keys 0..len+t
        float mx = -INFINITY;
        for (int64_t s = 0; s < n_keys; ++s) {
          const float* kr = kh + s * hd;
          float dot = 0.0f;
          for (int64_t c = 0; c < hd; ++c) dot += qr[c] * kr[c];
          att[size_t(s)] = dot * scale;
          mx = std::max(mx, att[size_t(s)]);
        }
        float sum = 0.0f;
        for (int64_t s = 0; s < n_keys; ++s) {
          att[size_t(s)] = std::exp(att[size_t(s)] - mx);
          sum += att[size_t(s)];
        }
        const float inv = 1.0f / sum;
        float* o = out + (b * T + t) * C + h * hd;
        for (int64_t c = 0; c < hd; ++c) o[c] = 0.0f;
        for (int64_t s = 0; s < n_keys; ++s) {
          const float p = att[size_t(s)] * inv;
          const float* vr = vh + s * hd;
          for (int64_t c = 0; c < hd; ++c) o[c] += p * vr[c];
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// linear: GEMV path

namespace {

// Scalar reference tile (no SIMD build): one output, one row.
template <DType T>
float load_scalar(const void* w, int64_t i) {
  if constexpr (T == DType::F32) return static_cast<const float*>(w)[i];
  else if constexpr (T == DType::BF16) return bf16_to_f32(static_cast<const uint16_t*>(w)[i]);
  else return f16_to_f32(static_cast<const uint16_t*>(w)[i]);
}

template <DType T>
void gemv_range_scalar(const float* x, const void* w, const float* b, float* y, int64_t N, int64_t in, int64_t out,
                       int64_t o0, int64_t o1) {
  const size_t row_bytes = size_t(in) * dtype_size(T);
  for (int64_t o = o0; o < o1; ++o) {
    const void* wr = static_cast<const char*>(w) + size_t(o) * row_bytes;
    for (int64_t n = 0; n < N; ++n) {
      float acc = 0.0f;
      for (int64_t i = 0; i < in; ++i) acc += load_scalar<T>(wr, i) * x[n * in + i];
      y[n * out + o] = acc + (b ? b[o] : 0.0f);
    }
  }
}

#ifdef HWAGA_TOPS_X86

// The tiles' loops over weight rows (r) and activation rows (n) have compile-time trip counts;
// they must be unrolled so that acc[][] lives in registers. GCC 12 at -O2 does not unroll them
// by itself and keeps acc on the stack (a load+store per FMA): the kernel was then bound by
// L1 traffic at ~4 GB/s of bf16 per core, and its time grew linearly with the row count.
#define HWAGA_UNROLL _Pragma("GCC unroll 16")

// ---- AVX2 (the library's baseline ISA) ----
template <DType T>
inline __m256 load8(const void* w, int64_t i) {
  if constexpr (T == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(w) + i);
  } else {
    const __m128i r = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
    if constexpr (T == DType::BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(r), 16));
    else return _mm256_cvtph_ps(r);
  }
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// y[n, o0+r] for r < RO, n < RN: weight rows w + r*row_bytes, activation rows x + n*in.
template <DType T, int RO, int RN>
void tile_avx2(const float* x, const char* w, size_t row_bytes, const float* b, float* y, int64_t in, int64_t ldy) {
  __m256 acc[RO][RN];
  HWAGA_UNROLL
  for (int r = 0; r < RO; ++r)
    HWAGA_UNROLL
    for (int n = 0; n < RN; ++n) acc[r][n] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= in; i += 8) {
    __m256 xv[RN];
    HWAGA_UNROLL
    for (int n = 0; n < RN; ++n) xv[n] = _mm256_loadu_ps(x + n * in + i);
    HWAGA_UNROLL
    for (int r = 0; r < RO; ++r) {
      _mm_prefetch(w + (RO + r) * row_bytes + size_t(i) * dtype_size(T), _MM_HINT_T1);  // as tile_avx512
      const __m256 wv = load8<T>(w + r * row_bytes, i);
      HWAGA_UNROLL
      for (int n = 0; n < RN; ++n) acc[r][n] = _mm256_fmadd_ps(wv, xv[n], acc[r][n]);
    }
  }
  HWAGA_UNROLL
  for (int r = 0; r < RO; ++r)
    HWAGA_UNROLL
    for (int n = 0; n < RN; ++n) {
      float s = hsum8(acc[r][n]);
      for (int64_t t = i; t < in; ++t) s += load_scalar<T>(w + r * row_bytes, t) * x[n * in + t];
      y[n * ldy + r] = s + (b ? b[r] : 0.0f);
    }
}

// bf16 weights, 16 per load: _mm256_unpacklo/hi_epi16(0, w) widen them to two f32 vectors with
// one instruction each (against a widening load plus a shift per 8 in tile_avx2), but within
// 128-bit lanes: lo holds elements 0-3 and 8-11, hi 4-7 and 12-15. A dot product does not mind
// the order as long as x follows it: xp is x with each block of 16 in that order
// (permute_x16), made once per call. The last in % 16 columns take tile_avx2's path on x.
inline void permute_x16(const float* x, float* xp, int64_t in) {
  for (int64_t i = 0; i + 16 <= in; i += 16) {
    const __m128 a = _mm_loadu_ps(x + i), b = _mm_loadu_ps(x + i + 4), c = _mm_loadu_ps(x + i + 8),
                 d = _mm_loadu_ps(x + i + 12);
    _mm_storeu_ps(xp + i, a);
    _mm_storeu_ps(xp + i + 4, c);
    _mm_storeu_ps(xp + i + 8, b);
    _mm_storeu_ps(xp + i + 12, d);
  }
}

template <int RO, int RN>
void tile_avx2_bf16(const float* x, const float* xp, const char* w, size_t row_bytes, const float* b, float* y,
                    int64_t in, int64_t ldy) {
  __m256 acc[RO][RN];
  HWAGA_UNROLL
  for (int r = 0; r < RO; ++r)
    HWAGA_UNROLL
    for (int n = 0; n < RN; ++n) acc[r][n] = _mm256_setzero_ps();
  const __m256i zero = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 16 <= in; i += 16) {
    __m256 xl[RN], xh[RN];
    HWAGA_UNROLL
    for (int n = 0; n < RN; ++n) {
      xl[n] = _mm256_loadu_ps(xp + n * in + i);
      xh[n] = _mm256_loadu_ps(xp + n * in + i + 8);
    }
    HWAGA_UNROLL
    for (int r = 0; r < RO; ++r) {
      _mm_prefetch(w + (RO + r) * row_bytes + size_t(i) * 2, _MM_HINT_T1);
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * row_bytes + size_t(i) * 2));
      const __m256 lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v));
      const __m256 hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v));
      HWAGA_UNROLL
      for (int n = 0; n < RN; ++n) acc[r][n] = _mm256_fmadd_ps(hi, xh[n], _mm256_fmadd_ps(lo, xl[n], acc[r][n]));
    }
  }
  for (; i + 8 <= in; i += 8) {
    HWAGA_UNROLL
    for (int r = 0; r < RO; ++r) {
      const __m256 wv = load8<DType::BF16>(w + r * row_bytes, i);
      HWAGA_UNROLL
      for (int n = 0; n < RN; ++n) acc[r][n] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + n * in + i), acc[r][n]);
    }
  }
  HWAGA_UNROLL
  for (int r = 0; r < RO; ++r)
    HWAGA_UNROLL
    for (int n = 0; n < RN; ++n) {
      float s = hsum8(acc[r][n]);
      for (int64_t t = i; t < in; ++t) s += load_scalar<DType::BF16>(w + r * row_bytes, t) * x[n * in + t];
      y[n * ldy + r] = s + (b ? b[r] : 0.0f);
    }
}

// 5-16 activation rows: the tiles above would convert (and fetch from L2) each weight row once
// per pair of activation rows. Here 4 weight rows are converted to f32 once per chunk of KC
// columns into an L1 buffer, then multiplied against pairs of activation rows (4x2
// accumulators); the partial sums of all pairs stay in `part` across the chunks (as
// tile8_many_avx512 does with 8x2).
template <DType T>
void tile4_many_avx2(const float* x, const char* w, size_t row_bytes, const float* b, float* y, int64_t N,
                     int64_t in, int64_t ldy) {
  constexpr int RO = 4, RN = 2;
  constexpr int64_t KC = 512;
  alignas(32) float wf[RO][KC];
  alignas(32) __m256 part[kLinearGemvMaxRows / RN][RO][RN];
  const int64_t NG = (N + RN - 1) / RN;
  const int64_t in8 = in / 8 * 8;
  for (int64_t k0 = 0; k0 < in8; k0 += KC) {
    const int64_t kn = std::min(KC, in8 - k0);
    HWAGA_UNROLL
    for (int r = 0; r < RO; ++r)
      for (int64_t v = 0; v < kn; v += 8) _mm256_store_ps(wf[r] + v, load8<T>(w + r * row_bytes, k0 + v));
    for (int64_t g = 0; g < NG; ++g) {
      const float* x0 = x + (g * RN) * in + k0;
      const float* x1 = g * RN + 1 < N ? x0 + in : x0;  // odd N: the last pair repeats its row
      __m256 acc[RO][RN];
      HWAGA_UNROLL
      for (int r = 0; r < RO; ++r)
        HWAGA_UNROLL
        for (int n = 0; n < RN; ++n) acc[r][n] = k0 == 0 ? _mm256_setzero_ps() : part[g][r][n];
      for (int64_t v = 0; v < kn; v += 8) {
        const __m256 xa = _mm256_loadu_ps(x0 + v), xb = _mm256_loadu_ps(x1 + v);
        HWAGA_UNROLL
        for (int r = 0; r < RO; ++r) {
          const __m256 wv = _mm256_load_ps(wf[r] + v);
          acc[r][0] = _mm256_fmadd_ps(wv, xa, acc[r][0]);
          acc[r][1] = _mm256_fmadd_ps(wv, xb, acc[r][1]);
        }
      }
      HWAGA_UNROLL
      for (int r = 0; r < RO; ++r)
        HWAGA_UNROLL
        for (int n = 0; n < RN; ++n) part[g][r][n] = acc[r][n];
    }
  }
  for (int64_t g = 0; g < NG; ++g)
    for (int n = 0; n < RN && g * RN + n < N; ++n)
      for (int r = 0; r < RO; ++r) {
        const int64_t row = g * RN + n;
        float s = in8 > 0 ? hsum8(part[g][r][n]) : 0.0f;
        for (int64_t t = in8; t < in; ++t) s += load_scalar<T>(w + r * row_bytes, t) * x[row * in + t];
        y[row * ldy + r] = s + (b ? b[r] : 0.0f);
      }
}

template <DType T>
void gemv_range_avx2(const float* x, const void* w, const float* b, float* y, int64_t N, int64_t in, int64_t out,
                     int64_t o0, int64_t o1) {
  const size_t rb = size_t(in) * dtype_size(T);
  const char* wb = static_cast<const char*>(w);
  int64_t o = o0;
  if (N > 4) {  // blocks of up to kLinearGemvMaxRows rows (linear_gemv itself takes any N)
    for (; o + 4 <= o1; o += 4)
      for (int64_t n = 0; n < N; n += kLinearGemvMaxRows)
        tile4_many_avx2<T>(x + n * in, wb + o * rb, rb, b ? b + o : nullptr, y + n * out + o,
                           std::min(kLinearGemvMaxRows, N - n), in, out);
  } else if constexpr (T == DType::BF16) {
    thread_local std::vector<float> xp;
    xp.resize(size_t(N * in));
    for (int64_t n = 0; n < N; ++n) permute_x16(x + n * in, xp.data() + n * in, in);
    for (; o + 4 <= o1; o += 4) {
      int64_t n = 0;
      for (; n + 2 <= N; n += 2)
        tile_avx2_bf16<4, 2>(x + n * in, xp.data() + n * in, wb + o * rb, rb, b ? b + o : nullptr,
                             y + n * out + o, in, out);
      if (n < N)
        tile_avx2_bf16<4, 1>(x + n * in, xp.data() + n * in, wb + o * rb, rb, b ? b + o : nullptr,
                             y + n * out + o, in, out);
    }
  }
  for (; o + 4 <= o1; o += 4) {
    int64_t n = 0;
    for (; n + 2 <= N; n += 2)
      tile_avx2<T, 4, 2>(x + n * in, wb + o * rb, rb, b ? b + o : nullptr, y + n * out + o, in, out);
    if (n < N) tile_avx2<T, 4, 1>(x + n * in, wb + o * rb, rb, b ? b + o : nullptr, y + n * out + o, in, out);
  }
  for (; o < o1; ++o) {
    int64_t n = 0;
    for (; n + 2 <= N; n += 2)
      tile_avx2<T, 1, 2>(x + n * in, wb + o * rb, rb, b ? b + o : nullptr, y + n * out + o, in, out);
    if (n < N) tile_avx2<T, 1, 1>(x + n * in, wb + o * rb, rb, b ? b + o : nullptr, y + n * out + o, in, out);
  }
}

// ---- AVX-512 (run-time dispatched) ----
// GCC 12's AVX-512 intrinsics build "undefined" vectors with a self-initialisation idiom that
// its own -Wuninitialized then flags once inlined here; the warnings are about the headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define HWAGA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

template <DType T>
HWAGA_AVX512 inline __m512 load16(const void* w, int64_t i) {
  if constexpr (T == DType::F32) {
    return _mm512_loadu_ps(static_cast<const float*>(w) + i);
  } else {
    const __m256i r = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w) + i));
    if constexpr (T == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(r), 16));
    else return _mm512_cvtph_ps(r);
  }
}

template <DType T>
HWAGA_AVX512 inline __m512 load16_masked(const void* w, int64_t i, __mmask16 m) {
  if constexpr (T == DType::F32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(w) + i);
  } else {
    const __m256i r = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(w) + i);
    if constexpr (T == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(r), 16));
    else return _mm512_cvtph_ps(r);
  }
}

// (GCC 12's _mm512_reduce_add_ps trips -Wuninitialized inside its own header.)
HWAGA_AVX512 inline float hsum16(__m512 v) {
  const __m256 s = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  t = _mm_add_ps(t, _mm_movehl_ps(t, t));
  t = _mm_add_ss(t, _mm_movehdup_ps(t));
  return _mm_cvtss_f32(t);
}

template <DType T, int RO, int RN>
HWAGA_AVX512 void tile_avx512(const float* x, const char* w, size_t row_bytes, const float* b, float* y, int64_t in,
                              int64_t ldy) {
  __m512 acc[RO][RN];
  HWAGA_UNROLL
  for (int r = 0; r < RO; ++r)
    HWAGA_UNROLL
    for (int n = 0; n < RN; ++n) acc[r][n] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= in; i += 16) {
    __m512 xv[RN];
    HWAGA_UNROLL
    for (int n = 0; n < RN; ++n) xv[n] = _mm512_loadu_ps(x + n * in + i);
    HWAGA_UNROLL
    for (int r = 0; r < RO; ++r) {
      // the same columns of the next tile's rows (the next RO weight rows, read next): the
      // hardware prefetcher only ramps up on each short row stream after its first lines
      _mm_prefetch(w + (RO + r) * row_bytes + size_t(i) * dtype_size(T), _MM_HINT_T1);
      const __m512 wv = load16<T>(w + r * row_bytes, i);
      HWAGA_UNROLL
      for (int n = 0; n < RN; ++n) acc[r][n] = _mm512_fmadd_ps(wv, xv[n], acc[r][n]);
    }
  }
  if (i < in) {
    const __mmask16 m = __mmask16((1u << (in - i)) - 1u);
    __m512 xv[RN];
    HWAGA_UNROLL
    for (int n = 0; n < RN; ++n) xv[n] = _mm512_maskz_loadu_ps(m, x + n * in + i);
    HWAGA_UNROLL
    for (int r = 0; r < RO; ++r) {
      const __m512 wv = load16_masked<T>(w + r * row_bytes, i, m);
      HWAGA_UNROLL
      for (int n = 0; n < RN; ++n) acc[r][n] = _mm512_fmadd_ps(wv, xv[n], acc[r][n]);
    }
  }
  HWAGA_UNROLL
  for (int r = 0; r < RO; ++r)
    HWAGA_UNROLL
    for (int n = 0; n < RN; ++n) y[n * ldy + r] = hsum16(acc[r][n]) + (b ? b[r] : 0.0f);
}

// Many rows (4 < N <= kLinearGemvMaxRows, the candidates of one prompt): the 4x4 tiles above
// would convert every weight vector once per group of 4 rows and stream the activations from
// L2 per 4 weight rows, which makes them compute-bound (~2.5-5 GB/s per core at 16 rows).
// Here a tile of 8 weight rows is converted to f32 once per chunk of KC columns into an L1
// buffer, then multiplied against pairs of activation rows (8x2 accumulators); the partial
// sums of all row pairs stay in `part` (L1) across the column chunks.
template <DType T>
HWAGA_AVX512 void tile8_many_avx512(const float* x, const char* w, size_t row_bytes, const float* b, float* y,
                                    int64_t N, int64_t in, int64_t ldy) {
  constexpr int RO = 8, RN = 2;
  constexpr int64_t KC = 256;
  alignas(64) float wf[RO][KC];
  alignas(64) __m512 part[kLinearGemvMaxRows / RN][RO][RN];
  const int64_t NG = (N + RN - 1) / RN;
  for (int64_t k0 = 0; k0 < in; k0 += KC) {
    const int64_t kn = std::min(KC, in - k0), nv = (kn + 15) / 16;
    HWAGA_UNROLL
    for (int r = 0; r < RO; ++r)
      for (int64_t v = 0; v < nv; ++v) {
        const int64_t left = kn - v * 16;
        const __mmask16 m = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
        _mm512_store_ps(wf[r] + v * 16, load16_masked<T>(w + r * row_bytes, k0 + v * 16, m));
      }
    for (int64_t g = 0; g < NG; ++g) {
      const float* x0 = x + (g * RN) * in + k0;
      const float* x1 = g * RN + 1 < N ? x0 + in : x0;  // odd N: the last pair repeats its row
      __m512 acc[RO][RN];
      HWAGA_UNROLL
      for (int r = 0; r < RO; ++r)
        HWAGA_UNROLL
        for (int n = 0; n < RN; ++n) acc[r][n] = k0 == 0 ? _mm512_setzero_ps() : part[g][r][n];
      for (int64_t v = 0; v < nv; ++v) {
        const int64_t left = kn - v * 16;
        const __mmask16 m = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
        const __m512 xa = _mm512_maskz_loadu_ps(m, x0 + v * 16), xb = _mm512_maskz_loadu_ps(m, x1 + v * 16);
        HWAGA_UNROLL
        for (int r = 0; r < RO; ++r) {
          const __m512 wv = _mm512_load_ps(wf[r] + v * 16);
          acc[r][0] = _mm512_fmadd_ps(wv, xa, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(wv, xb, acc[r][1]);
        }
      }
      HWAGA_UNROLL
      for (int r = 0; r < RO; ++r)
        HWAGA_UNROLL
        for (int n = 0; n < RN; ++n) part[g][r][n] = acc[r][n];
    }
  }
  for (int64_t g = 0; g < NG; ++g)
    for (int n = 0; n < RN && g * RN + n < N; ++n)
      for (int r = 0; r < RO; ++r) y[(g * RN + n) * ldy + r] = hsum16(part[g][r][n]) + (b ? b[r] : 0.0f);
}

template <DType T>
HWAGA_AVX512 void gemv_range_avx512(const float* x, const void* w, const float* b, float* y, int64_t N, int64_t in,
                                    int64_t out, int64_t o0, int64_t o1) {
  const size_t rb = size_t(in) * dtype_size(T);
  const char* wb = static_cast<const char*>(w);
  int64_t o = o0;
  if (N > 4) {  // blocks of up to kLinearGemvMaxRows rows (linear_gemv itself takes any N)
    for (; o + 8 <= o1; o += 8)
      for (int64_t n = 0; n < N; n += kLinearGemvMaxRows)
        tile8_many_avx512<T>(x + n * in, wb + o * rb, rb, b ? b + o : nullptr, y + n * out + o,
                             std::min(kLinearGemvMaxRows, N - n), in, out);
  }
  for (; o + 4 <= o1; o += 4) {
    const float* bo = b ? b + o : nullptr;
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) tile_avx512<T, 4, 4>(x + n * in, wb + o * rb, rb, bo, y + n * out + o, in, out);
    for (; n + 2 <= N; n += 2) tile_avx512<T, 4, 2>(x + n * in, wb + o * rb, rb, bo, y + n * out + o, in, out);
    if (n < N) tile_avx512<T, 4, 1>(x + n * in, wb + o * rb, rb, bo, y + n * out + o, in, out);
  }
  for (; o < o1; ++o) {
    const float* bo = b ? b + o : nullptr;
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) tile_avx512<T, 1, 4>(x + n * in, wb + o * rb, rb, bo, y + n * out + o, in, out);
    for (; n < N; ++n) tile_avx512<T, 1, 1>(x + n * in, wb + o * rb, rb, bo, y + n * out + o, in, out);
  }
}

#pragma GCC diagnostic pop

#endif  // HWAGA_TOPS_X86

enum class Isa { scalar, avx2, avx512 };

Isa detect_isa() {
#ifdef HWAGA_TOPS_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return Isa::avx512;
  return Isa::avx2;
#else
  return Isa::scalar;
#endif
}

std::atomic<int> g_forced{-1};  // -1: automatic

Isa current_isa() {
  static const Isa detected = detect_isa();
  const int f = g_forced.load(std::memory_order_relaxed);
  return f < 0 ? detected : std::min(Isa(f), detected);
}

template <DType T>
void gemv_range(Isa isa, const float* x, const void* w, const float* b, float* y, int64_t N, int64_t in, int64_t out,
                int64_t o0, int64_t o1) {
#ifdef HWAGA_TOPS_X86
  if (isa == Isa::avx512) return gemv_range_avx512<T>(x, w, b, y, N, in, out, o0, o1);
  if (isa == Isa::avx2) return gemv_range_avx2<T>(x, w, b, y, N, in, out, o0, o1);
#endif
  (void)isa;
  gemv_range_scalar<T>(x, w, b, y, N, in, out, o0, o1);
}

void check_wtype(DType t) {
  HWAGA_CHECK(t == DType::F32 || t == DType::BF16 || t == DType::F16, "linear: weights must be f32, bf16 or f16, found ",
              dtype_name(t));
}

}  // namespace

const char* linear_gemv_isa() {
  switch (current_isa()) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

void linear_gemv_force_isa(const char* force) {
  const std::string f = force ? force : "";
  if (f.empty()) g_forced = -1;
  else if (f == "avx2") g_forced = int(Isa::avx2);
  else if (f == "scalar") g_forced = int(Isa::scalar);
  else if (f == "avx512") g_forced = int(Isa::avx512);
  else fail("linear_gemv_force_isa: unknown ISA '", f, "' (expected avx512, avx2, scalar or empty)");
}

void linear_gemv(const float* x, const void* w, DType wtype, const float* b, float* y, int64_t N, int64_t in,
                 int64_t out) {
  check_wtype(wtype);
  if (N <= 0 || out <= 0) return;
  const Isa isa = current_isa();
  // ~64 KiB of weights per chunk at least; chunks are whole 4-row tiles.
  const int64_t grain = std::max<int64_t>(4, (int64_t(65536) / std::max<int64_t>(1, in * int64_t(dtype_size(wtype)))) & ~int64_t(3));
  parallel_for((out + 3) / 4, std::max<int64_t>(1, grain / 4), [&](int64_t t0, int64_t t1) {
    const int64_t o0 = t0 * 4, o1 = std::min(out, t1 * 4);
    switch (wtype) {
      case DType::F32: gemv_range<DType::F32>(isa, x, w, b, y, N, in, out, o0, o1); break;
      case DType::BF16: gemv_range<DType::BF16>(isa, x, w, b, y, N, in, out, o0, o1); break;
      default: gemv_range<DType::F16>(isa, x, w, b, y, N, in, out, o0, o1); break;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// linear: GEMM path

void linear_gemm(const float* x, const void* w, DType wtype, const float* b, float* y, int64_t N, int64_t in,
                 int64_t out) {
  check_wtype(wtype);
  if (N <= 0 || out <= 0) return;
  if (b) {
    for (int64_t n = 0; n < N; ++n) std::memcpy(y + n * out, b, size_t(out) * 4);
  }
  if (wtype == DType::F32) {
    sgemm(false, true, N, out, in, 1.0f, x, in, static_cast<const float*>(w), in, b ? 1.0f : 0.0f, y, out);
    return;
  }
  // Blocks of weight rows converted to f32 (at most ~1 MiB each), one sgemm per block; the
  // blocks are spread over the pool, so each sgemm runs single-threaded inside it.
  const int64_t rows = std::clamp<int64_t>((int64_t(1) << 18) / std::max<int64_t>(in, 1) / 16 * 16, 16, 1024);
  const int64_t n_blocks = (out + rows - 1) / rows;
  const size_t es = dtype_size(wtype);
  parallel_for(n_blocks, 1, [&](int64_t j0, int64_t j1) {
    std::vector<float> wf(size_t(rows * in));
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t r0 = j * rows, nr = std::min(rows, out - r0);
      convert_to_f32(static_cast<const char*>(w) + size_t(r0) * size_t(in) * es, wtype, wf.data(), size_t(nr * in));
      sgemm(false, true, N, nr, in, 1.0f, x, in, wf.data(), in, b ? 1.0f : 0.0f, y + r0, out);
    }
  });
}

void linear_forward(const float* x, const void* w, DType wtype, const float* b, float* y, int64_t N, int64_t in,
                    int64_t out) {
  if (N <= kLinearGemvMaxRows) linear_gemv(x, w, wtype, b, y, N, in, out);
  else linear_gemm(x, w, wtype, b, y, N, in, out);
}

}  // namespace hwaga::cpu
