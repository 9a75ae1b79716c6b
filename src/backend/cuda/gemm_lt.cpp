// Dense matrix products on cuBLASLt (Backend::linear and the matrix-rate measurement).
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "backend/cuda/cuda_context.h"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/transformer_ops.cuh"

namespace hwaga::cuda {
namespace {

constexpr size_t kLtWorkspace = size_t(32) << 20;

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    default: fail("cuBLASLt: unsupported dtype ", dtype_name(t));
  }
}

// RAII holders for the cuBLASLt descriptors of one call.
struct LtCall {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtCall() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// One product's shape and types, with the device and handle its algorithm was picked for.
struct AlgoKey {
  int device;
  cublasLtHandle_t lt;
  bool transa;
  int64_t m, n, k;
  int at, bt, dt;
  int64_t lda, ldb, ldd;
  bool operator<(const AlgoKey& o) const {
    return std::tie(device, lt, transa, m, n, k, at, bt, dt, lda, ldb, ldd) <
           std::tie(o.device, o.lt, o.transa, o.m, o.n, o.k, o.at, o.bt, o.dt, o.lda, o.ldb, o.ldd);
  }
};
std::mutex g_algo_mu;
std::map<AlgoKey, cublasLtMatmulAlgo_t> g_algos;

// Column-major D[m,n] = op(A)[m,k] . B[k,n]; A stored k x m (lda) when transa, else m x k.
void lt_matmul(Context& ctx, bool transa, int64_t m, int64_t n, int64_t k, const void* A, cudaDataType_t at,
               int64_t lda, const void* B, cudaDataType_t bt, int64_t ldb, void* D, cudaDataType_t dt,
               int64_t ldd) {
  LtCall call;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&call.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t ta = transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&call.a, at, uint64_t(transa ? k : m), uint64_t(transa ? m : k), lda));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&call.b, bt, uint64_t(k), uint64_t(n), ldb));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&call.c, dt, uint64_t(m), uint64_t(n), ldd));
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&call.pref));
  size_t ws = kLtWorkspace;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                    sizeof ws));
  // The heuristic's pick depends only on the problem (not on the data), and querying it costs
  // tens of microseconds of CPU per call: a sampling step of a 42-layer model makes hundreds of
  // identical products, so the pick is remembered per (handle, problem).
  const AlgoKey key{ctx.device, ctx.lt, transa, m, n, k, int(at), int(bt), int(dt), lda, ldb, ldd};
  cublasLtMatmulAlgo_t algo{};
  bool cached = false;
  {
    std::lock_guard<std::mutex> lock(g_algo_mu);
    auto it = g_algos.find(key);
    if (it != g_algos.end()) {
      algo = it->second;
      cached = true;
    }
  }
  if (!cached) {
    cublasLtMatmulHeuristicResult_t heur[4] = {};
    int found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx.lt, call.op, call.a, call.b, call.c, call.c, call.pref, 4,
                                                heur, &found));
    if (found == 0)
      fail("cuBLASLt: no algorithm for a ", m, "x", n, "x", k, " product (types ", int(at), "/", int(bt), "/",
           int(dt), ") [", __FILE__, ":", __LINE__, "]");
    algo = heur[0].algo;
    std::lock_guard<std::mutex> lock(g_algo_mu);
    g_algos[key] = algo;
  }
  std::shared_ptr<void> workspace = ctx.scratch(ws);
  float alpha = 1.0f, beta = 0.0f;
  CUBLAS_CHECK(cublasLtMatmul(ctx.lt, call.op, &alpha, A, call.a, B, call.b, &beta, D, call.c, D, call.c, &algo,
                              workspace.get(), ws, ctx.stream));
}

}  // namespace

void linear_lt(Context& ctx, const float* x, const void* w, DType wtype, float* y, int64_t M, int64_t N,
               int64_t K) {
  if (M == 0 || N == 0) return;
  // Row-major y[M,N] = x[M,K] w^T is column-major y^T[N,M] = (w stored K x N)^T . (x stored K x M).
  if (wtype == DType::F32) {
    lt_matmul(ctx, true, N, M, K, w, CUDA_R_32F, K, x, CUDA_R_32F, K, y, CUDA_R_32F, N);
    return;
  }
  if (wtype != DType::BF16 && wtype != DType::F16)
    fail("linear: weight dtype ", dtype_name(wtype), " not supported (f32, bf16 or f16)");
  // 16-bit weights: the activations are rounded to the weights' type (as PyTorch autocast does)
  // and the tensor cores multiply 16 x 16 bits with f32 accumulation and f32 output.
  std::shared_ptr<void> xb = ctx.scratch(size_t(M * K) * 2);
  if (wtype == DType::BF16) f32_to_bf16(x, static_cast<uint16_t*>(xb.get()), M * K, ctx.stream);
  else f32_to_f16(x, static_cast<uint16_t*>(xb.get()), M * K, ctx.stream);
  const cudaDataType_t t = cuda_type(wtype);
  lt_matmul(ctx, true, N, M, K, w, t, K, xb.get(), t, K, y, CUDA_R_32F, N);
}

void square_matmul_lt(Context& ctx, const void* a, const void* b, void* d, DType dtype, int n) {
  cudaDataType_t t = cuda_type(dtype);
  lt_matmul(ctx, false, n, n, n, a, t, n, b, t, n, d, t, n);
}

}  // namespace hwaga::cuda
