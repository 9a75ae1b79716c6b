// The GPU sampler (see sampler.cuh for the contract; sample/sampler.cpp is the reference).
//
// One block of 1024 threads per sampled row; the row's working values x[0..K) live in dynamic
// shared memory (or in `work`, when K does not fit). Passes over the row, in order:
//   1. load (+ CFG mix), x = logit / T, NaN count, first NaN(minDALL-E)/+inf index, max  [greedy: argmax]
//   2. top-k: the k-th largest value by 8-bit MSB-first radix selection on order keys (4 passes)
//   3. cutoff (x < v_k -> -inf), NaN -> -inf, e = f32(exp(double(x - max))), double sum
//   4. p = e * f32(1 / sum)
//   5. top-p: radix descent over the f32 bits of p (4 passes) with per-digit counts and 2^-62
//      fixed-point masses: at each level the digit holding the last kept token (the last sorted
//      token whose mass before it, rounded to f32, is < top_p); then the tie group of that value
//      (tokens with the same p, sorted by index) is cut at the right count, by selecting the
//      index where it ends (up to 4 more passes, only when the cut splits a tie group)
//   6. p /= f32(kept mass) for kept tokens, 0 for the others
//   7. the draw: u from Philox, target = u * sum(p); each warp owns a contiguous segment of
//      tokens, scans it 32 at a time in double, and the first token with target < running sum
//      (lowest over the warps) is the code; none (rounding at the very end): the last token with
//      p > 0 — the host's rule.
// Every thread of a block walks its elements in the same i = tid + j*1024 order in passes 1-6,
// so those need no barrier between them beyond the ones the reductions contain.
#include "kernels/cuda/sampler.cuh"

#include <climits>

#include "backend/cuda/cuda_check.h"

namespace hwaga::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xFFFFFFFFu;

struct Smem {
  uint32_t count[256];
  unsigned long long mass[256];
  double red_d[kWarps];
  int red_i[kWarps];
  float red_f[kWarps];
  int seg_last[kWarps];
  int seg_hit[kWarps];
  // broadcast slots of the radix decisions
  uint32_t digit, remaining;
  unsigned long long base;
  int t_keep;
};

// ---- deterministic reductions (fixed butterfly and warp order; every thread gets the result) ----

template <class T, class Op>
__device__ __forceinline__ T warp_all(T v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

template <class T, class Op>
__device__ __forceinline__ T block_all(T v, Op op, T* scratch) {
  v = warp_all(v, op);
  __syncthreads();  // the previous use of `scratch` is over
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  return warp_all(scratch[threadIdx.x & 31], op);  // kWarps == 32: one value per lane
}

struct Add {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Min {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};
struct Max {
  __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};
struct FMax {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Inclusive scan over the lanes of a warp (lane order, fixed association).
template <class T>
__device__ __forceinline__ T warp_scan_incl(T v) {
  const int lane = threadIdx.x & 31;
  for (int o = 1; o < 32; o <<= 1) {
    T t = __shfl_up_sync(kFull, v, o);
    if (lane >= o) v = v + t;
  }
  return v;
}

// f32 probability <-> 2^-62 fixed point. Exact for p >= 2^-39; smaller p lose < 2^-62 each.
__device__ __forceinline__ unsigned long long to_fixed(float p) {
  return static_cast<unsigned long long>(double(p) * 0x1.0p62);
}
__device__ __forceinline__ float fixed_to_f32(unsigned long long q) {
  return __double2float_rn(__ull2double_rn(q) * 0x1.0p-62);
}

// The r-th largest (1-based) key among the elements i for which key_of(i, key) returns true, by
// 8-bit MSB-first radix selection (4 passes). r must not exceed their number. All threads call it
// and all get the key.
template <class KeyOf>
__device__ uint32_t select_desc(int K, uint32_t r, KeyOf key_of, Smem& sh) {
  uint32_t prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) sh.count[b] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < K; i += kThreads) {
      uint32_t key;
      if (key_of(i, key) && (key & mask) == prefix) atomicAdd(&sh.count[(key >> shift) & 0xFFu], 1u);
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // lane l owns digits 255-8l .. 248-8l, in descending order
      const int lane = threadIdx.x;
      uint32_t c[8], local = 0;
      for (int j = 0; j < 8; ++j) local += (c[j] = sh.count[255 - 8 * lane - j]);
      const uint32_t incl = warp_scan_incl(local), excl = incl - local;
      if (excl < r && r <= incl) {  // exactly one lane
        uint32_t acc = excl;
        for (int j = 0; j < 8; ++j) {
          if (r <= acc + c[j]) {
            sh.digit = uint32_t(255 - 8 * lane - j);
            sh.remaining = r - acc;
            break;
          }
          acc += c[j];
        }
      }
    }
    __syncthreads();
    prefix |= sh.digit << shift;
    mask |= 0xFFu << shift;
    r = sh.remaining;
  }
  return prefix;
}

__global__ void __launch_bounds__(kThreads) sample_rows_kernel(SampleRowsArgs a) {
  extern __shared__ float dyn[];
  __shared__ Smem sh;
  const int row = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int K = a.K;
  float* x = a.work ? a.work + size_t(row) * size_t(K) : dyn;
  const float* lc = a.logits + size_t(row) * size_t(K);
  const float* lu = a.cfg_scale != 0.0f ? a.logits + size_t(a.n + row) * size_t(K) : nullptr;
  int32_t* o = a.out + 4 * size_t(row);
  // guidance_mix: u + s*(c - u), which the host build contracts to fma(c - u, s, u)
  auto logit = [&](int i) {
    const float c = lc[i];
    if (!lu) return c;
    const float u = lu[i];
    return __fmaf_rn(__fsub_rn(c, u), a.cfg_scale, u);
  };

  // ---- greedy: argmax, lowest index on ties, NaN skipped (RQ) or an error (minDALL-E) ----
  if (a.greedy) {
    float bv = 0.0f;
    int bi = -1, first_nan = INT_MAX;
    for (int i = tid; i < K; i += kThreads) {
      const float v = logit(i);
      if (v != v) {
        if (first_nan == INT_MAX) first_nan = i;
      } else if (bi < 0 || v > bv) {
        bv = v;
        bi = i;
      }
    }
    auto better = [](float& bv, int& bi, float ov, int oi) {
      if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) {
        bv = ov;
        bi = oi;
      }
    };
    for (int off = 16; off > 0; off >>= 1) {
      const float ov = __shfl_xor_sync(kFull, bv, off);
      const int oi = __shfl_xor_sync(kFull, bi, off);
      better(bv, bi, ov, oi);
    }
    if (lane == 0) {
      sh.red_f[warp] = bv;
      sh.seg_last[warp] = bi;
    }
    first_nan = block_all(first_nan, Min{}, sh.red_i);  // its barriers also publish red_f/seg_last
    if (tid == 0) {
      float v = sh.red_f[0];
      int b = sh.seg_last[0];
      for (int w = 1; w < kWarps; ++w) better(v, b, sh.red_f[w], sh.seg_last[w]);
      int32_t code = b, status = kSampleOk, index = 0;
      if (!a.nan_to_neg_inf && first_nan < K) {
        code = -1;
        status = kSampleGreedyNan;
        index = first_nan;
      } else if (b < 0) {
        code = -1;
        status = kSampleGreedyAllNan;
      }
      o[0] = code;
      o[1] = status;
      o[2] = index;
      o[3] = 0;
    }
    return;
  }

  // ---- 1. temperature, checks, max ----
  int nan_count = 0, first_bad = INT_MAX;
  float mx = -INFINITY;
  for (int i = tid; i < K; i += kThreads) {
    const float v = __fdiv_rn(logit(i), a.temperature);
    x[i] = v;
    if (v != v) {
      ++nan_count;
      if (!a.nan_to_neg_inf && first_bad == INT_MAX) first_bad = i;
    } else {
      if (v == INFINITY && first_bad == INT_MAX) first_bad = i;
      mx = fmaxf(mx, v);
    }
  }
  nan_count = block_all(nan_count, Add{}, sh.red_i);
  first_bad = block_all(first_bad, Min{}, sh.red_i);
  mx = block_all(mx, FMax{}, sh.red_f);  // top-k keeps the max, so this is the softmax's max
  if (first_bad < K || mx == -INFINITY) {  // the host's softmax_row errors, in its order
    if (tid == 0) {
      const bool bad = first_bad < K;
      const float v = bad ? x[first_bad] : 0.0f;
      o[0] = -1;
      o[1] = bad ? (v != v ? kSampleNan : kSamplePosInf) : kSampleAllNegInf;
      o[2] = bad ? first_bad : 0;
      o[3] = nan_count;
    }
    return;
  }

  // ---- 2. top-k threshold (NaN ranks above every number, as in torch.topk) ----
  const bool cut_k = a.top_k > 0 && a.top_k < K;
  float vk = -INFINITY;
  if (cut_k) {
    const uint32_t key = select_desc(
        K, uint32_t(a.top_k),
        [&](int i, uint32_t& k) {
          k = float_order_key(x[i]);
          return true;
        },
        sh);
    vk = float_from_order_key(key);
  }

  // ---- 3-4. cutoff, NaN -> -inf, softmax ----
  double sum = 0.0;
  for (int i = tid; i < K; i += kThreads) {
    float v = x[i];
    if (cut_k && v < vk) v = -INFINITY;  // false for NaN v or NaN v_k: those survive, as on the host
    if (v != v) v = -INFINITY;           // only RQ rows get here with NaN
    const float e = __double2float_rn(exp(double(__fsub_rn(v, mx))));
    x[i] = e;
    sum += double(e);
  }
  sum = block_all(sum, Add{}, sh.red_d);
  const float scale = __double2float_rn(1.0 / sum);
  for (int i = tid; i < K; i += kThreads) x[i] = __fmul_rn(x[i], scale);

  // ---- 5-6. top-p ----
  if (a.top_p > 0.0f) {
    const float top_p = a.top_p;
    uint32_t prefix = 0, mask = 0;
    unsigned long long base = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = tid; b < 256; b += kThreads) {
        sh.count[b] = 0;
        sh.mass[b] = 0;
      }
      __syncthreads();
      for (int i = tid; i < K; i += kThreads) {
        const float p = x[i];
        const uint32_t key = float_bits(p);  // p >= 0: the bits increase with p
        if (p > 0.0f && (key & mask) == prefix) {
          const uint32_t d = (key >> shift) & 0xFFu;
          atomicAdd(&sh.count[d], 1u);
          atomicAdd(&sh.mass[d], to_fixed(p));
        }
      }
      __syncthreads();
      if (tid < 32) {  // lane l owns digits 255-8l .. 248-8l (descending = sorted order)
        uint32_t c[8];
        unsigned long long m[8], local = 0;
        for (int j = 0; j < 8; ++j) {
          c[j] = sh.count[255 - 8 * lane - j];
          local += (m[j] = sh.mass[255 - 8 * lane - j]);
        }
        const unsigned long long incl = warp_scan_incl(local);
        unsigned long long b = base + (incl - local), hit_base = 0;
        int hit = -1;
        uint32_t hit_count = 0;
        for (int j = 0; j < 8; ++j) {  // the last non-empty digit whose mass before it is < top_p
          if (c[j] > 0 && fixed_to_f32(b) < top_p) {
            hit = 255 - 8 * lane - j;
            hit_base = b;
            hit_count = c[j];
          }
          b += m[j];
        }
        const unsigned any = __ballot_sync(kFull, hit >= 0);
        if (any == 0) {
          if (lane == 0) sh.digit = 256;
        } else if (lane == 31 - __clz(any)) {
          sh.digit = uint32_t(hit);
          sh.base = hit_base;
          sh.remaining = hit_count;
        }
      }
      __syncthreads();
      if (sh.digit > 255) {  // cannot happen: the first non-empty digit always qualifies
        if (tid == 0) {
          o[0] = -1;
          o[1] = kSampleInternal;
          o[2] = 0;
          o[3] = nan_count;
        }
        return;
      }
      prefix |= sh.digit << shift;
      mask |= 0xFFu << shift;
      base = sh.base;
    }
    // The tie group: `group` tokens with p = p_L, sorted by index; token t of it has mass
    // base + t*q_L before it. Keep t <= t_keep, the last t with f32(base + t*q_L) < top_p.
    const uint32_t key_l = prefix, group = sh.remaining;
    const unsigned long long q_l = to_fixed(__uint_as_float(key_l));
    if (tid == 0) {
      uint32_t lo = 0, hi = group - 1;  // t = 0 qualifies (the descent chose this group for it)
      while (lo < hi) {
        const uint32_t mid = lo + (hi - lo + 1) / 2;
        if (fixed_to_f32(base + (unsigned long long)mid * q_l) < top_p) lo = mid;
        else hi = mid - 1;
      }
      sh.t_keep = int(lo);
    }
    __syncthreads();
    const uint32_t keep_in_group = uint32_t(sh.t_keep) + 1;
    int last_index = INT_MAX;  // tokens of the group with an index above this are dropped
    if (keep_in_group < group) {
      // the keep_in_group-th smallest index of the group = the keep_in_group-th largest ~index
      last_index = int(~select_desc(
          K, keep_in_group,
          [&](int i, uint32_t& k) {
            const float p = x[i];
            k = ~uint32_t(i);
            return p > 0.0f && float_bits(p) == key_l;
          },
          sh));
    }
    const float fsum = fixed_to_f32(base + (unsigned long long)keep_in_group * q_l);
    for (int i = tid; i < K; i += kThreads) {
      const float p = x[i];
      const uint32_t key = float_bits(p);
      const bool kept = p > 0.0f && (key > key_l || (key == key_l && i <= last_index));
      x[i] = kept ? __fdiv_rn(p, fsum) : 0.0f;
    }
  }

  // ---- 7. the draw ----
  __syncthreads();  // the segments below cross the threads' element sets
  uint64_t seed = a.seed, stream = a.stream0 + uint64_t(row), pos = a.pos0;
  if (a.step_dev) pos += uint64_t(*a.step_dev) * uint64_t(a.pos_per_step);
  if (a.philox_rows) {
    seed = a.philox_rows[3 * size_t(row)];
    stream = a.philox_rows[3 * size_t(row) + 1];
    pos = a.philox_rows[3 * size_t(row) + 2];
  }
  const int seg = ((K + kWarps - 1) / kWarps + 31) / 32 * 32;
  const int start = min(K, warp * seg), end = min(K, start + seg);
  double s = 0.0;
  int last = -1;
  for (int i = start + lane; i < end; i += 32) {
    const float p = x[i];
    s += double(p);
    if (p > 0.0f) last = i;
  }
  s = warp_all(s, Add{});
  last = warp_all(last, Max{});
  if (lane == 0) {
    sh.red_d[warp] = s;
    sh.seg_last[warp] = last;
  }
  __syncthreads();
  const double seg_incl = warp_scan_incl(sh.red_d[lane]);  // every warp: the same scan
  const double total = __shfl_sync(kFull, seg_incl, 31);
  const double before = __shfl_sync(kFull, seg_incl, warp > 0 ? warp - 1 : 0);
  double carry = warp > 0 ? before : 0.0;
  const double target = philox_uniform(seed, stream, pos) * total;
  int hit = INT_MAX;
  for (int i0 = start; i0 < end; i0 += 32) {
    const int i = i0 + lane;
    const float p = i < end ? x[i] : 0.0f;
    const double run = warp_scan_incl(double(p));
    const unsigned found = __ballot_sync(kFull, i < end && p > 0.0f && target < carry + run);
    if (found) {
      hit = i0 + __ffs(found) - 1;
      break;
    }
    carry += __shfl_sync(kFull, run, 31);
  }
  if (lane == 0) sh.seg_hit[warp] = hit;
  __syncthreads();
  if (tid == 0) {
    int code = INT_MAX, fallback = -1;
    for (int w = 0; w < kWarps; ++w) {
      code = min(code, sh.seg_hit[w]);
      fallback = max(fallback, sh.seg_last[w]);
    }
    if (code == INT_MAX) code = fallback;  // u * total rounded up to the full sum
    const bool ok = total > 0.0 && code >= 0;
    o[0] = ok ? code : -1;
    o[1] = ok ? kSampleOk : kSampleNoMass;
    o[2] = 0;
    o[3] = nan_count;
  }
}

// One thread per logit row m of a step: candidate m % n's draw goes into row_codes[m, d] and,
// for m < n, into out[m, *step, d]; a failed draw writes code 0 and the first failure is kept.
__global__ void sample_scatter_kernel(SampleScatterArgs a) {
  const int m = blockIdx.x * blockDim.x + threadIdx.x;
  if (m >= a.M) return;
  const int i = m % a.n;
  const int32_t* r = a.res + 4 * i;
  const bool ok = r[1] == kSampleOk && r[0] >= 0 && r[0] < a.K;
  const int32_t code = ok ? r[0] : 0;
  a.row_codes[int64_t(m) * a.D + a.d] = code;
  if (m >= a.n) return;
  int64_t step = *a.step_dev;
  step = step < 0 ? 0 : (step >= a.S ? a.S - 1 : step);
  a.out[(int64_t(i) * a.S + step) * a.D + a.d] = code;
  atomicAdd(&a.status[3], r[3]);
  if (!ok && atomicCAS(&a.status[0], 0, r[1] != kSampleOk ? r[1] : int32_t(kSampleInternal)) == 0) {
    a.status[1] = r[2];
    a.status[2] = a.K;
  }
}

int static_smem_bytes() {
  static int bytes = [] {
    cudaFuncAttributes attr{};
    CUDA_CHECK(cudaFuncGetAttributes(&attr, sample_rows_kernel));
    return int(attr.sharedSizeBytes);
  }();
  return bytes;
}

bool row_fits_shared(int K, size_t* dyn_bytes) {
  int dev = 0, optin = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  *dyn_bytes = size_t(K) * sizeof(float);
  return *dyn_bytes + size_t(static_smem_bytes()) <= size_t(optin);
}

}  // namespace

size_t sample_rows_work_bytes(int n, int K) {
  size_t dyn = 0;
  return row_fits_shared(K, &dyn) ? 0 : size_t(n) * size_t(K) * sizeof(float);
}

void sample_rows_f32(const SampleRowsArgs& a, cudaStream_t s) {
  HWAGA_CHECK(a.n >= 0 && a.K >= 1, "sample_rows_f32: ", a.n, " rows of ", a.K, " logits");
  if (a.n == 0) return;
  size_t dyn = 0;
  const bool fits = row_fits_shared(a.K, &dyn);
  HWAGA_CHECK(fits || a.work, "sample_rows_f32: rows of ", a.K,
              " logits do not fit in shared memory and no work buffer was given (sample_rows_work_bytes)");
  if (a.work) dyn = 0;
  if (dyn > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(sample_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(dyn)));
  sample_rows_kernel<<<unsigned(a.n), kThreads, dyn, s>>>(a);
  CUDA_CHECK_LAUNCH();
}

void sample_scatter(const SampleScatterArgs& a, cudaStream_t s) {
  if (a.M == 0) return;
  HWAGA_CHECK(a.n >= 1 && a.M % a.n == 0 && a.d >= 0 && a.d < a.D && a.S >= 1, "sample_scatter: ", a.M, " rows, ", a.n,
              " candidates, depth ", a.d, " of ", a.D, ", ", a.S, " steps");
  sample_scatter_kernel<<<unsigned((a.M + 127) / 128), 128, 0, s>>>(a);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hwaga::cuda
