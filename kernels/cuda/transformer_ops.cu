// CUDA kernels of the transformer ops; see transformer_ops.cuh.
//
// Attention over the KV cache. A sampling step (T = 1) has few query rows (B x heads, e.g. 40
// for one RQ-3.9B candidate), so one block per (row, head) would leave most of an H100's 132 SMs
// idle; instead the keys of a row are cut into chunks (at least 64 keys, at most 1024) until there
// are about two blocks per SM, each chunk block writes its partial (max m, sum l, unnormalised
// weighted values o), and a merge kernel rescales the partials by exp(m_s - M) and divides by the
// total (the flash-decoding scheme). With one chunk the block writes the output directly.
// Prefill / teacher forcing (T > 1) runs the same kernel with one block row per query token
// (each token attends to its own causal prefix): simple and exact, not the fastest prefill.
//
// Inside a block (128 threads): q in shared memory; each warp takes keys in turn and reduces a
// q.k dot product over its lanes; the chunk's scores stay in shared memory (<= 4 KiB); the
// softmax uses block max/sum reductions with expf (full precision, no fast-math); the weighted
// value sum gives each thread one channel of one key group (128/hd groups), summed at the end.
#include "kernels/cuda/transformer_ops.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "backend/cuda/cuda_check.h"
#include "kernels/cuda/reduce.cuh"

namespace hwaga::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kAttnThreads = 128;  // also the largest head dim
constexpr int64_t kMaxChunk = 1024;
constexpr int64_t kMinChunk = 64;

inline unsigned blocks_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  return unsigned(b < 65536 * 16 ? (b > 0 ? b : 1) : 65536 * 16);  // grid-stride loops cover the rest
}

// ---- LayerNorm: one block per row ----
__global__ void layer_norm_kernel(const float* __restrict__ x, const float* __restrict__ gamma,
                                  const float* __restrict__ beta, float* __restrict__ y, int64_t C, float eps) {
  __shared__ float red[33];
  const float* xr = x + int64_t(blockIdx.x) * C;
  float* yr = y + int64_t(blockIdx.x) * C;
  float s = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += xr[c];
  const float mean = block_sum(s, red) / float(C);
  float q = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float d = xr[c] - mean;
    q += d * d;
  }
  const float var = block_sum(q, red) / float(C);
  const float rstd = 1.0f / sqrtf(var + eps);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) yr[c] = (xr[c] - mean) * rstd * gamma[c] + beta[c];
}

__global__ void gelu_kernel(const float* x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    y[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
  }
}

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }

template <typename T>
__global__ void gather_rows_kernel(const T* __restrict__ table, const int32_t* __restrict__ ids, float* __restrict__ out,
                                   int* bad, int64_t N, int64_t V, int64_t C) {
  const int64_t n_all = N * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_all; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / C, c = i % C;
    const int32_t id = ids[n];
    if (id < 0 || id >= V) {
      *bad = 1;
      out[i] = 0.0f;
    } else {
      out[i] = widen(table[int64_t(id) * C + c]);
    }
  }
}

__global__ void add_rows_kernel(const float* x, const float* rows, float* y, int64_t N, int64_t R, int64_t C) {
  const int64_t n_all = N * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_all; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = x[i] + rows[((i / C) % R) * C + i % C];
}

__global__ void add_row_at_kernel(const float* x, const float* table, const int32_t* counter, int32_t offset,
                                  float* y, int64_t N, int64_t R, int64_t C) {
  int64_t r = int64_t(*counter) + offset;
  r = r < 0 ? 0 : (r >= R ? R - 1 : r);
  const float* row = table + r * C;
  const int64_t n_all = N * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_all; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = x[i] + row[i % C];
}

template <typename T>
__global__ void gather_sum_kernel(const T* __restrict__ table, const int32_t* __restrict__ ids, float* __restrict__ out,
                                  int64_t N, int D, int d, int64_t V, int64_t C) {
  const int64_t n_all = N * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_all; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / C, c = i % C;
    float acc = 0.0f;
    for (int j = 0; j < d; ++j) {  // in column order, as the host's embed_sum
      int64_t id = ids[n * D + j];
      if (id < 0 || id >= V) id = 0;
      const float e = widen(table[id * C + c]);
      acc = j == 0 ? e : acc + e;
    }
    out[i] = acc;
  }
}

__global__ void counter_add_kernel(int32_t* c, int32_t delta) { *c += delta; }

__global__ void f32_to_f16_kernel(const float* x, __half* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __float2half_rn(x[i]);
}

__global__ void f16_to_f32_kernel(const __half* x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __half2float(x[i]);
}

__global__ void kv_append_kernel(const float* k, const float* v, float* kc, float* vc, int64_t B, int64_t T,
                                 int64_t H, int64_t hd, int64_t T_max, int64_t len, const int32_t* len_dev) {
  if (len_dev) len = *len_dev;
  const int64_t C = H * hd, n_all = B * T * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_all; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C, t = (i / C) % T, b = i / (C * T);
    const int64_t h = c / hd, d = c % hd;
    const int64_t dst = ((b * H + h) * T_max + len + t) * hd + d;
    kc[dst] = k[i];
    vc[dst] = v[i];
  }
}

// One block per (b*H + h, token i, key chunk). part: [B*H, T, nsplit, hd + 2] = (m, l, o[hd]).
__global__ void __launch_bounds__(kAttnThreads)
    attention_kernel(const float* __restrict__ q, const float* __restrict__ kc, const float* __restrict__ vc,
                     float* __restrict__ out, float* __restrict__ part, int H, int T, int hd, int64_t T_max,
                     int64_t len, const int32_t* len_dev, int chunk, int nsplit, float scale) {
  if (len_dev) len = *len_dev;
  extern __shared__ float sm[];
  float* qs = sm;           // [hd]
  float* p = qs + hd;       // [chunk] scores, then exp(score - m)
  float* red = p + chunk;   // [33]
  float* acc = red + 33;    // [kAttnThreads]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  const int64_t bh = blockIdx.x;
  const int i = blockIdx.y, split = blockIdx.z;
  const int64_t b = bh / H;
  const int h = int(bh % H);
  const int64_t C = int64_t(H) * hd;
  const int64_t n_keys = len + i + 1;  // causal: keys 0..len+i
  const int64_t s0 = int64_t(split) * chunk;
  const int64_t s1 = s0 + chunk < n_keys ? s0 + chunk : n_keys;
  float* po = nsplit > 1 ? part + ((bh * T + i) * nsplit + split) * (hd + 2) : nullptr;
  if (s0 >= n_keys) {  // the whole chunk is in this token's future (only with nsplit > 1)
    for (int c = tid; c < hd + 2; c += blockDim.x) po[c] = c == 0 ? -INFINITY : 0.0f;
    return;
  }
  const float* qr = q + (b * T + i) * C + int64_t(h) * hd;
  for (int c = tid; c < hd; c += blockDim.x) qs[c] = qr[c];
  __syncthreads();
  const float* kh = kc + bh * T_max * hd;
  const float* vh = vc + bh * T_max * hd;
  const int n = int(s1 - s0);
  for (int j = warp; j < n; j += nwarps) {
    const float* kr = kh + (s0 + j) * hd;
    float d = 0.0f;
    for (int c = lane; c < hd; c += 32) d += qs[c] * kr[c];
    d = warp_sum(d);
    if (lane == 0) p[j] = d * scale;
  }
  __syncthreads();
  float m = -INFINITY;
  for (int j = tid; j < n; j += blockDim.x) m = fmaxf(m, p[j]);
  m = block_max(m, red);
  float l = 0.0f;
  for (int j = tid; j < n; j += blockDim.x) {
    const float e = expf(p[j] - m);
    p[j] = e;
    l += e;
  }
  l = block_sum(l, red);  // its barriers also publish p
  const int groups = blockDim.x / hd;  // >= 1: hd <= kAttnThreads
  const int g = tid / hd, c = tid % hd;
  float a = 0.0f;
  if (g < groups)
    for (int j = g; j < n; j += groups) a += p[j] * vh[(s0 + j) * hd + c];
  acc[tid] = a;
  __syncthreads();
  if (tid < hd) {
    float o = 0.0f;
    for (int gg = 0; gg < groups; ++gg) o += acc[gg * hd + tid];
    if (nsplit == 1) {
      out[(b * T + i) * C + int64_t(h) * hd + tid] = o / l;
    } else {
      po[2 + tid] = o;
      if (tid == 0) {
        po[0] = m;
        po[1] = l;
      }
    }
  }
}

__global__ void attention_merge_kernel(const float* __restrict__ part, float* __restrict__ out, int H, int T, int hd,
                                       int nsplit) {
  const int c = threadIdx.x;
  if (c >= hd) return;
  const int64_t bh = blockIdx.x;
  const int i = blockIdx.y;
  const int64_t b = bh / H, h = bh % H, C = int64_t(H) * hd;
  const float* pr = part + (bh * T + i) * nsplit * (hd + 2);
  float M = -INFINITY;
  for (int s = 0; s < nsplit; ++s) M = fmaxf(M, pr[s * (hd + 2)]);
  float L = 0.0f, O = 0.0f;
  for (int s = 0; s < nsplit; ++s) {
    const float ms = pr[s * (hd + 2)];
    if (ms == -INFINITY) continue;  // an empty (future) chunk
    const float w = expf(ms - M);
    L += pr[s * (hd + 2) + 1] * w;
    O += pr[s * (hd + 2) + 2 + c] * w;
  }
  out[(b * T + i) * C + h * hd + c] = O / L;
}

// Key chunking for attention_cached_f32: {chunk, nsplit}.
void attention_split(int64_t B, int64_t T, int64_t H, int64_t len, int num_sms, int64_t* chunk, int64_t* nsplit) {
  const int64_t n_max = len + T;  // keys of the last new token
  const int64_t rows = B * H * T;
  const int64_t target = 2 * int64_t(num_sms > 0 ? num_sms : 1);
  int64_t ns = (n_max + kMaxChunk - 1) / kMaxChunk;
  const int64_t most = (n_max + kMinChunk - 1) / kMinChunk;
  const int64_t want = (target + rows - 1) / rows;
  if (want > ns) ns = want < most ? want : most;
  if (ns < 1) ns = 1;
  int64_t ch = (n_max + ns - 1) / ns;
  ch = (ch + 31) / 32 * 32;  // whole warps' worth of keys
  if (ch > kMaxChunk) ch = kMaxChunk;
  *chunk = ch;
  *nsplit = (n_max + ch - 1) / ch;
}

}  // namespace

void layer_norm_f32(const float* x, const float* gamma, const float* beta, float* y, int64_t N, int64_t C, float eps,
                    cudaStream_t s) {
  if (N == 0 || C == 0) return;
  HWAGA_CHECK(N < (int64_t(1) << 31), "layer_norm: ", N, " rows are too many for one launch");
  const int threads = C >= 1024 ? 256 : 128;
  layer_norm_kernel<<<unsigned(N), threads, 0, s>>>(x, gamma, beta, y, C, eps);
  CUDA_CHECK_LAUNCH();
}

void gelu_f32(const float* x, float* y, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  gelu_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}

void gather_rows_f32(const void* table, DType dtype, const int32_t* ids, float* out, int* bad, int64_t N, int64_t V,
                     int64_t C, cudaStream_t s) {
  if (N == 0 || C == 0) return;
  const unsigned g = blocks_for(N * C);
  switch (dtype) {
    case DType::F32:
      gather_rows_kernel<float><<<g, kThreads, 0, s>>>(static_cast<const float*>(table), ids, out, bad, N, V, C);
      break;
    case DType::BF16:
      gather_rows_kernel<__nv_bfloat16>
          <<<g, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(table), ids, out, bad, N, V, C);
      break;
    case DType::F16:
      gather_rows_kernel<__half><<<g, kThreads, 0, s>>>(static_cast<const __half*>(table), ids, out, bad, N, V, C);
      break;
    default: fail("embedding: table dtype ", dtype_name(dtype), " is not f32, bf16 or f16");
  }
  CUDA_CHECK_LAUNCH();
}

void add_rows_f32(const float* x, const float* rows, float* y, int64_t N, int64_t R, int64_t C, cudaStream_t s) {
  if (N == 0 || C == 0) return;
  add_rows_kernel<<<blocks_for(N * C), kThreads, 0, s>>>(x, rows, y, N, R, C);
  CUDA_CHECK_LAUNCH();
}

void f32_to_f16(const float* x, uint16_t* y, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  f32_to_f16_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, reinterpret_cast<__half*>(y), n);
  CUDA_CHECK_LAUNCH();
}

void f16_to_f32(const uint16_t* x, float* y, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  f16_to_f32_kernel<<<blocks_for(n), kThreads, 0, s>>>(reinterpret_cast<const __half*>(x), y, n);
  CUDA_CHECK_LAUNCH();
}

void add_row_at_f32(const float* x, const float* table, const int32_t* counter, int32_t offset, float* y, int64_t N,
                    int64_t R, int64_t C, cudaStream_t s) {
  if (N == 0 || C == 0) return;
  HWAGA_CHECK(R >= 1, "add_row_at: the table has no rows");
  add_row_at_kernel<<<blocks_for(N * C), kThreads, 0, s>>>(x, table, counter, offset, y, N, R, C);
  CUDA_CHECK_LAUNCH();
}

void gather_sum_f32(const void* table, DType dtype, const int32_t* ids, float* out, int64_t N, int D, int d, int64_t V,
                    int64_t C, cudaStream_t s) {
  if (N == 0 || C == 0) return;
  HWAGA_CHECK(d >= 1 && d <= D && V >= 1, "gather_sum: ", d, " of ", D, " columns, ", V, " table rows");
  const unsigned g = blocks_for(N * C);
  switch (dtype) {
    case DType::F32:
      gather_sum_kernel<float><<<g, kThreads, 0, s>>>(static_cast<const float*>(table), ids, out, N, D, d, V, C);
      break;
    case DType::BF16:
      gather_sum_kernel<__nv_bfloat16>
          <<<g, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(table), ids, out, N, D, d, V, C);
      break;
    case DType::F16:
      gather_sum_kernel<__half><<<g, kThreads, 0, s>>>(static_cast<const __half*>(table), ids, out, N, D, d, V, C);
      break;
    default: fail("gather_sum: table dtype ", dtype_name(dtype), " is not f32, bf16 or f16");
  }
  CUDA_CHECK_LAUNCH();
}

void counter_add_i32(int32_t* counter, int32_t delta, cudaStream_t s) {
  counter_add_kernel<<<1, 1, 0, s>>>(counter, delta);
  CUDA_CHECK_LAUNCH();
}

void kv_append_f32(const float* k, const float* v, float* kc, float* vc, int64_t B, int64_t T, int64_t H, int64_t hd,
                   int64_t T_max, int64_t len, cudaStream_t s, const int32_t* len_dev) {
  const int64_t n = B * T * H * hd;
  if (n == 0) return;
  kv_append_kernel<<<blocks_for(n), kThreads, 0, s>>>(k, v, kc, vc, B, T, H, hd, T_max, len, len_dev);
  CUDA_CHECK_LAUNCH();
}

int64_t attention_scratch_floats(int64_t B, int64_t T, int64_t H, int64_t hd, int64_t len, int num_sms) {
  if (B * T * H == 0) return 0;
  int64_t chunk = 0, nsplit = 0;
  attention_split(B, T, H, len, num_sms, &chunk, &nsplit);
  return nsplit > 1 ? B * H * T * nsplit * (hd + 2) : 0;
}

void attention_cached_f32(const float* q, const float* kc, const float* vc, float* out, float* scratch, int64_t B,
                          int64_t T, int64_t H, int64_t hd, int64_t T_max, int64_t len, int num_sms, cudaStream_t s,
                          const int32_t* len_dev) {
  if (B * T * H == 0) return;
  HWAGA_CHECK(hd >= 1 && hd <= kAttnThreads, "attention_step: head dim ", hd, " is not supported by the CUDA kernel (1..",
              kAttnThreads, ")");
  HWAGA_CHECK(B * H < (int64_t(1) << 31) && T <= 65535 && H < (int64_t(1) << 31),
              "attention_step: B*heads ", B * H, " or T ", T, " too large for one launch");
  HWAGA_CHECK(len >= 0 && len + T <= T_max, "attention_step: ", T, " tokens after ", len, " overflow ", T_max);
  int64_t chunk = 0, nsplit = 0;
  attention_split(B, T, H, len, num_sms, &chunk, &nsplit);
  HWAGA_CHECK(nsplit <= 65535, "attention_step: ", len + T, " keys are too many for one launch");
  HWAGA_CHECK(nsplit == 1 || scratch, "attention_step: the split-key kernel needs scratch memory");
  const float scale = 1.0f / sqrtf(float(hd));
  const size_t smem = size_t(hd + chunk + 33 + kAttnThreads) * sizeof(float);
  dim3 grid(unsigned(B * H), unsigned(T), unsigned(nsplit));
  attention_kernel<<<grid, kAttnThreads, smem, s>>>(q, kc, vc, out, scratch, int(H), int(T), int(hd), T_max, len,
                                                    len_dev, int(chunk), int(nsplit), scale);
  CUDA_CHECK_LAUNCH();
  if (nsplit > 1) {
    const int threads = int((hd + 31) / 32 * 32);
    attention_merge_kernel<<<dim3(unsigned(B * H), unsigned(T)), threads, 0, s>>>(scratch, out, int(H), int(T),
                                                                                  int(hd), int(nsplit));
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace hwaga::cuda
