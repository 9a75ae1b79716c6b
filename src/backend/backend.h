// The backend seam. Models call these operators; the CPU backend (src/backend/cpu) is the
// readable reference and the CUDA backend (src/backend/cuda) mirrors it op for op.
//
// Conventions (shape legend: B batch, C channels, H/W height/width, N rows, K codebook size,
// E code vector dim, D code depth):
//   * Activations are f32, contiguous, NCHW for the conv nets.
//   * Weights are tensors already on the backend's device (see upload()); the CPU backend
//     takes f32 weights, except linear()/embedding(), which also read the bf16/f16 matrices
//     upload_weight() keeps; the CUDA backend may hold bf16/f16 weights and accumulates in f32.
//   * Every op returns a new tensor on the backend's device; inputs are never modified.
//   * Backward passes (training) will be added as separate methods next to their forward.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace hwaga {

struct RowFilter;  // sample/sampler.h
class Rng;         // sample/rng.h

struct Conv2dParams {
  int stride = 1;
  // Zero padding per side. The taming Downsample uses {top 0, left 0, bottom 1, right 1}.
  int pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  // The layer tolerates a fast algorithm with a few times the f32 rounding error of a direct
  // sum (Winograd): set on decoder convs, never on encoder ones, whose output feeds an argmin.
  bool allow_winograd = false;
  static Conv2dParams same(int pad) { return {1, pad, pad, pad, pad}; }
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;  // e.g. "cpu (2 threads, oneDNN)" or "cuda (H100)"

  // Moves a host tensor to this backend's memory as `dtype` (float types convert).
  virtual Tensor upload(const Tensor& host, DType dtype) = 0;
  // Copies a tensor of this backend back to host memory (same dtype).
  virtual Tensor download(const Tensor& t) = 0;
  // Waits until the work queued so far has run (for timing; the CPU runs ops as they are called).
  virtual void synchronize() {}

  // ---- conv nets (RQ-VAE, VQGAN) ----
  // x [B,Cin,H,W], w [Cout,Cin,kh,kw], b [Cout] or undefined -> [B,Cout,Ho,Wo]
  virtual Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p) = 0;
  // GroupNorm over [B,C,H,W] with `groups` groups (C % groups == 0), affine gamma/beta [C];
  // when silu is true, y = silu(norm(x)) in one pass.
  virtual Tensor group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups,
                            float eps, bool silu) = 0;
  // Nearest-neighbour x2: [B,C,H,W] -> [B,C,2H,2W]
  virtual Tensor upsample_nearest2x(const Tensor& x) = 0;
  // a + b, same shape
  virtual Tensor add(const Tensor& a, const Tensor& b) = 0;
  // Single-head attention over the H*W positions of q,k,v [B,C,H,W]:
  // out[b,:,i] = sum_j softmax_j(q[b,:,i].k[b,:,j] / sqrt(C)) v[b,:,j]  -> [B,C,H,W]
  virtual Tensor attention_hw(const Tensor& q, const Tensor& k, const Tensor& v) = 0;
  // [B,C,H,W] <-> [B,H,W,C]
  virtual Tensor nchw_to_nhwc(const Tensor& x) = 0;
  virtual Tensor nhwc_to_nchw(const Tensor& x) = 0;

  // ---- quantizers ----
  // Residual quantization of z [N,E] against codebook [K,E] (rows [0,K) are candidates), depth D:
  // r_0 = z; c_d = argmin_k ||r_d - e_k||^2 (ties -> lowest k); r_{d+1} = r_d - e_{c_d}.
  // Distances are computed as ||r||^2 + ||e||^2 - 2 r.e in f32, as the reference does.
  // Returns int32 codes [N,D]. D = 1 is plain VQ.
  virtual Tensor residual_quantize(const Tensor& z, const Tensor& codebook, int depth) = 0;
  // codes int32 [N,D] (values in [0,K)), codebook [K,E] -> [N,E] = sum_d codebook[codes[:,d]]
  virtual Tensor embed_sum(const Tensor& codes, const Tensor& codebook) = 0;

  // ---- dense layers (transformers; more ops arrive with them) ----
  // x [N,in] (any leading dims flattened), w [out,in], b [out] or undefined -> [N,out].
  // w may be bf16/f16 when it came from upload_weight() (products and sums stay f32).
  virtual Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) = 0;

  // ---- transformers (RQ-Transformer, minDALL-E GPT; kernels/cpu/transformer_ops.h) ----
  // Backends that do not implement an op yet inherit a default that throws
  // hwaga::Error("<op> is not implemented on <name()>") (src/backend/backend.cpp).
  //
  // Moves a weight matrix / embedding table to this backend, keeping a float dtype its linear()
  // and embedding() read directly: the CPU keeps f32/bf16/f16 as they are (an aligned view into
  // the mapped model file stays a view, so a 3.9B bf16 model needs ~7.8 GB, not 15.6 GB).
  // Default: upload(host, host.dtype()).
  virtual Tensor upload_weight(const Tensor& host);
  // LayerNorm over the last dim: x [N,C] (any leading dims), gamma/beta [C] f32 -> same shape.
  virtual Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps);
  // Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), elementwise.
  virtual Tensor gelu(const Tensor& x);
  // Rows of a table: table [V,C] (f32/bf16/f16, e.g. an embedding or any f32 activation viewed
  // as rows), ids int32 [N] (host or device; each in [0,V), checked) -> f32 [N,C].
  virtual Tensor embedding(const Tensor& table, const Tensor& ids);
  // x [N,C] (any leading dims, flattened to rows) + rows [R,C] broadcast: out[n] = x[n] + rows[n % R]
  // (N % R == 0). R = 1 adds a bias row; R = T adds positions to [B,T,C].
  virtual Tensor add_rows(const Tensor& x, const Tensor& rows);
  // Concatenation along dimension 0 of tensors with equal trailing dims -> f32.
  virtual Tensor concat(const std::vector<Tensor>& parts);

  // Key/value cache of one attention layer: k, v f32 [B, n_head, T_max, hd] on this backend;
  // positions [0, len) hold the keys/values of the tokens seen so far.
  struct KvCache {
    Tensor k, v;
    int64_t len = 0;
    // Optional counter (counter_new) that mirrors `len` on the backend. When it is defined,
    // attention_step takes the cache length from it and advances it by T on the backend, so that
    // a captured step (capture_begin) replays at the right position; `len` still advances on the
    // host outside replays and bounds the checks.
    Tensor len_counter;
    int64_t capacity() const { return k.defined() ? k.dim(2) : 0; }
  };
  virtual KvCache kv_cache_new(int64_t B, int64_t n_head, int64_t T_max, int64_t head_dim);
  // dst.k[b] = src.k[rows[b]] (and v) for the first src.len positions; dst.len = src.len.
  // rows int32 (host), one per dst row. Replicates a prompt's prefix for N candidates
  // (rows = {0,...,0}) or for conditional + unconditional rows (CFG).
  virtual void kv_cache_gather(KvCache& dst, const KvCache& src, const std::vector<int32_t>& rows);
  // Causal multi-head self-attention over the cache. q, k, v [B,T,C] (C = n_head * hd, heads
  // are contiguous channel slices) are the new tokens; their k/v are appended at positions
  // [len, len+T) (this op writes into the cache: the one exception to "inputs are never
  // modified"), then for new token i (absolute position len+i):
  //   out[b,i,h] = sum_{j <= len+i} softmax_j(q[b,i,h] . k_cache[b,h,j] / sqrt(hd)) v_cache[b,h,j]
  // -> [B,T,C]; cache.len += T. T = the whole sequence with an empty cache is plain causal
  // attention (teacher forcing); T = 1 is one sampling step.
  virtual Tensor attention_step(const Tensor& q, const Tensor& k, const Tensor& v, KvCache& cache, int n_head);

  // ---- sampling (sample/sampler.h) ----
  // One sampling step on this backend, so that only the codes cross to the host. logits [M,K] f32
  // on this backend; cfg_scale == 0: M = n; else M = 2n and row i is first mixed with its
  // unconditional row n+i as guidance_mix does. codes[i] (i < n) gets the code sample_row(row i,
  // f, rngs[i]) would pick on the host; rngs[i] advances by the one word that draw takes (not
  // when f.greedy); the NaN logits replaced by -inf (RQ semantics) are added to *nan_replaced.
  // A bad row throws the host sampler's hwaga::Error. Returns false, touching nothing, when the
  // backend has no sampler of its own (the default; the CPU backend): the caller downloads the
  // logits and samples on the host.
  virtual bool sample_rows(const Tensor& /*logits*/, int64_t /*n*/, float /*cfg_scale*/, const RowFilter& /*f*/,
                           Rng* /*rngs*/, int32_t* /*codes*/, int64_t* /*nan_replaced*/) {
    return false;
  }

  // ---- the sampling loop on the backend (transformer/stage2_model.h StepSampler) ----
  // The step loops of rq_transformer.cpp and mindalle_gpt.cpp keep the sampled codes, the
  // position and the sampler's state on the backend, so that a step needs no host round trip
  // and, on the GPU, can be captured once as a CUDA graph and replayed. The defaults below work
  // on host tensors (the CPU backend); the CUDA backend overrides each one.
  //
  // A counter is an int32 [1] tensor on this backend.
  virtual Tensor counter_new(int32_t value);
  virtual void counter_add(Tensor& counter, int32_t delta);
  // y[n,:] = x[n,:] + table[*counter + offset, :] for every row n of x [N,C]; table f32 [R,C].
  // The row must be in [0,R) (the host checks it where it can read the counter; the GPU
  // clamps).
  virtual Tensor add_row_at(const Tensor& x, const Tensor& table, const Tensor& counter, int32_t offset);
  // out[n,:] = sum over j < d of table[ids[n,j], :] -> f32 [N,C]; ids int32 [N,D] on this backend
  // as sample_into writes them (0 < d <= D), table [V,C] f32/bf16/f16. The host checks every id;
  // the GPU does not (the sampler only writes ids in [0,K)) and reads an id outside as 0.
  virtual Tensor gather_sum(const Tensor& table, const Tensor& ids, int d);

  // Where sample_into puts each draw, and the state the loop carries between draws.
  struct SampleTarget {
    Tensor row_codes;  // int32 [M,D]: column d of row m <- the code of candidate m % n
    Tensor out;        // int32 [n,S,D]: [i, *step, d] <- the code of candidate i (S steps)
    Tensor status;     // int32 [4]: first failed draw {status, logit index, row, 0}; [3] NaN count
    Tensor step;       // counter: the loop's step
    // Candidate i draws word pos0 + *step * pos_per_step + pos_add of Philox stream
    // (seed, stream0 + i) (greedy filters draw nothing).
    uint64_t seed = 0, stream0 = 0, pos0 = 0;
    int64_t pos_per_step = 0, pos_add = 0;
  };
  // One draw per candidate at depth d, as sample_rows picks it, into `t` (no host round trip on
  // the GPU). A failed draw (NaN, +inf, nothing to draw) throws at once on the host; the GPU
  // records the first failure in t.status, writes code 0 and carries on; sample_status reports it.
  virtual void sample_into(const Tensor& logits, int64_t n, float cfg_scale, const RowFilter& f, int d,
                           SampleTarget& t);
  // Throws the sampler's error for the first failed draw recorded in `status` (on the GPU: the
  // loop's one synchronisation); returns the number of NaN logits replaced by -inf.
  virtual int64_t sample_status(const Tensor& status);

  // ---- graphs of a sampling step (CUDA graphs; other backends run op by op) ----
  // capture_begin() starts recording this backend's ops instead of running them; returns false
  // (and records nothing) where the backend cannot. capture_end() returns the recorded step, to
  // launch() once per step; it throws (having stopped recording) when an op could not be
  // recorded, and then nothing of the recorded ops has run. Tensors allocated while recording
  // are the graph's scratch: the step's inputs and outputs must be allocated before.
  class StepGraph {
   public:
    virtual ~StepGraph() = default;
    virtual void launch() = 0;
  };
  virtual bool capture_begin() { return false; }
  virtual std::unique_ptr<StepGraph> capture_end();
};

// The CPU backend (always available).
std::unique_ptr<Backend> make_cpu_backend();
// The CUDA backend, or nullptr (with `why` set) when hwaga was built without CUDA or no GPU is found.
std::unique_ptr<Backend> make_cuda_backend(std::string* why);
// "cpu", "cuda" or "auto" (CUDA when available, else CPU). Prints nothing; the CLI says which.
std::unique_ptr<Backend> make_backend(const std::string& which);

}  // namespace hwaga
