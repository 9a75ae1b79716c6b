// gemm_bf16 (see gemm.h): inputs rounded to bf16, f32 accumulation.
//
// Path with bf16 hardware: op(A) and op(B) are converted to bf16 in their stored layout (no
// transpose; oneDNN reads them through strides), then C is split over hwaga's pool like sgemm
// and each slab runs a single-threaded oneDNN matmul (bf16 x bf16 -> f32, beta by a sum post-op,
// alpha by an output scale). Primitives are cached per thread and shape: a training run uses a
// handful of shapes, so each is planned (JIT) once.
// Fallback: the inputs rounded to bf16 and widened back to f32, then sgemm: the same products,
// accumulated in f32 by another kernel.
#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemm_dnnl.h"

namespace hwaga::cpu {

namespace {

uint16_t to_bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
// 16 floats per instruction (vcvtneps2bf16: round to nearest even, NaN kept); only called where
// native() holds, i.e. the CPU has AVX512-BF16 (every AMX CPU has it).
__attribute__((target("avx512f,avx512bf16,avx512vl"))) void to_bf16_row_avx512(const float* s, uint16_t* d,
                                                                                 int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(s + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), reinterpret_cast<const __m256i&>(v));
  }
  for (; i < n; ++i) d[i] = to_bf16_bits(s[i]);
}
#define HWAGA_BF16_ROW_AVX512 1
#endif

// rows x cols of a row-major matrix with leading dimension ld -> contiguous, converted by `f`.
template <class T, class F>
void convert(const float* src, int64_t rows, int64_t cols, int64_t ld, std::vector<T>& dst, F f) {
  dst.resize(size_t(rows * cols));
  parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, cols)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* s = src + r * ld;
      T* d = dst.data() + r * cols;
      for (int64_t c = 0; c < cols; ++c) d[c] = f(s[c]);
    }
  });
}

#ifdef HWAGA_HAVE_DNNL
bool native() {
  static const bool ok = [] {
    const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    return isa == dnnl_cpu_isa_avx512_core_bf16 || isa == dnnl_cpu_isa_avx512_core_amx;
  }();
  return ok;
}

// One slab C[m,n] = alpha op(A)[m,K] op(B)[K,n] + beta C on this thread. a, b: bf16 in their
// stored layouts, with the (row, col) strides of op(A) and op(B).
void matmul_slab(int64_t m, int64_t n, int64_t K, float alpha, const uint16_t* a, int64_t as0, int64_t as1,
                 const uint16_t* b, int64_t bs0, int64_t bs1, float beta, float* c, int64_t ldc) {
  using dnnl::memory;
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, float>;
  struct Planned {
    dnnl::matmul prim;
    memory::desc ad, bd, cd;
  };
  thread_local std::map<Key, Planned> cache;
  const bool sum = beta != 0.0f;
  const Key key{m, n, K, as0, as1, bs0, bs1, ldc, sum, alpha};
  auto it = cache.find(key);
  if (it == cache.end()) {
    memory::desc ad({m, K}, memory::data_type::bf16, memory::dims{as0, as1});
    memory::desc bd({K, n}, memory::data_type::bf16, memory::dims{bs0, bs1});
    memory::desc cd({m, n}, memory::data_type::f32, memory::dims{ldc, 1});
    dnnl::primitive_attr attr;
    if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
    if (sum) {
      dnnl::post_ops po;
      po.append_sum(1.0f);
      attr.set_post_ops(po);
    }
    const auto pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(ad, bd, cd), attr, dnnl_rt::engine());
    it = cache.emplace(key, Planned{dnnl::matmul(pd), ad, bd, cd}).first;
  }
  if (sum && beta != 1.0f)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] *= beta;
  dnnl::memory am(it->second.ad, dnnl_rt::engine(), const_cast<uint16_t*>(a));
  dnnl::memory bm(it->second.bd, dnnl_rt::engine(), const_cast<uint16_t*>(b));
  dnnl::memory cm(it->second.cd, dnnl_rt::engine(), c);
  dnnl_rt::single_thread_here();
  it->second.prim.execute(dnnl_rt::stream(), {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
  dnnl_rt::stream().wait();
}
#else
bool native() { return false; }
#endif

}  // namespace

float round_to_bf16(float x) {
  const uint32_t u = uint32_t(to_bf16_bits(x)) << 16;
  float y;
  std::memcpy(&y, &u, 4);
  return y;
}

bool gemm_bf16_native() { return native(); }

const char* gemm_bf16_kernel_name() {
#ifdef HWAGA_HAVE_DNNL
  static const std::string name = native() ? std::string("oneDNN bf16 matmul (") + dnnl_rt::isa_name() + ")"
                                           : std::string("sgemm on bf16-rounded inputs (no bf16 hardware: ") +
                                                 dnnl_rt::isa_name() +
                                                 "; slower than f32 here, it only reproduces bf16 rounding)";
  return name.c_str();
#else
  return "sgemm on bf16-rounded inputs (built without oneDNN)";
#endif
}

void gemm_bf16_fallback(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                        const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const int64_t a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
  std::vector<float> ar, br;
  convert(A, K > 0 ? a_rows : 0, a_cols, lda, ar, round_to_bf16);
  convert(B, K > 0 ? b_rows : 0, b_cols, ldb, br, round_to_bf16);
  sgemm(ta, tb, M, N, K, alpha, ar.data(), std::max<int64_t>(1, a_cols), br.data(), std::max<int64_t>(1, b_cols), beta,
        C, ldc);
}

void gemm_bf16(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M < 0 || N < 0 || K < 0) fail("gemm_bf16: expected M, N, K >= 0, found M=", M, " N=", N, " K=", K);
  if (M == 0 || N == 0) return;
  const int64_t a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
  if (lda < std::max<int64_t>(1, a_cols)) fail("gemm_bf16: lda must be >= ", a_cols, ", found ", lda);
  if (ldb < std::max<int64_t>(1, b_cols)) fail("gemm_bf16: ldb must be >= ", b_cols, ", found ", ldb);
  if (ldc < N) fail("gemm_bf16: ldc must be >= N = ", N, ", found ", ldc);
  if (!C || (K > 0 && (!A || !B))) fail("gemm_bf16: null matrix pointer");
  if (K == 0 || alpha == 0.0f || !native()) {  // the fallback (and the degenerate cases)
    gemm_bf16_fallback(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#ifdef HWAGA_HAVE_DNNL
  thread_local std::vector<uint16_t> a16, b16;
  auto to_bf16 = [](const float* src, int64_t rows, int64_t cols, int64_t ld, std::vector<uint16_t>& dst) {
#ifdef HWAGA_BF16_ROW_AVX512
    dst.resize(size_t(rows * cols));
    parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, cols)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) to_bf16_row_avx512(src + r * ld, dst.data() + r * cols, cols);
    });
#else
    convert(src, rows, cols, ld, dst, to_bf16_bits);
#endif
  };
  to_bf16(A, a_rows, a_cols, lda, a16);
  to_bf16(B, b_rows, b_cols, ldb, b16);
  // (thread_local names are per thread: the pool's threads must get the caller's buffers)
  const uint16_t* const ap = a16.data();
  const uint16_t* const bp = b16.data();
  // (row, col) strides of op(A) [M,K] and op(B) [K,N] over the contiguous copies
  const int64_t as0 = ta ? 1 : a_cols, as1 = ta ? a_cols : 1;
  const int64_t bs0 = tb ? 1 : b_cols, bs1 = tb ? b_cols : 1;
  const int nt = num_threads();
  if (nt <= 1 || double(M) * N * K < 262144.0) {
    matmul_slab(M, N, K, alpha, ap, as0, as1, bp, bs0, bs1, beta, C, ldc);
  } else if (M >= N) {
    const int64_t rows = (M + nt - 1) / nt;
    parallel_for(nt, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t m0 = t * rows, m1 = std::min(M, m0 + rows);
        if (m1 > m0)
          matmul_slab(m1 - m0, N, K, alpha, ap + m0 * as0, as0, as1, bp, bs0, bs1, beta,
                      C + m0 * ldc, ldc);
      }
    });
  } else {
    const int64_t cols = ((N + nt - 1) / nt + 15) / 16 * 16;
    parallel_for(nt, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n0 = t * cols, n1 = std::min(N, n0 + cols);
        if (n1 > n0)
          matmul_slab(M, n1 - n0, K, alpha, ap, as0, as1, bp + n0 * bs1, bs0, bs1, beta, C + n0,
                      ldc);
      }
    });
  }
#endif
}

}  // namespace hwaga::cpu
