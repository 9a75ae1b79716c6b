"""PyTorch baseline for tools/bench_gpu_t2i: the released text-to-image sampling loops on the same
shapes (rq-3.9b: RQ-Transformer C 2560, 42 body + 6 head layers, 40 heads, codes 8x8x4, K 16384,
text 32 ids; mindalle-1.3b: GPT C 1536, 42 layers, 24 heads, 64 text + 256 image tokens,
K 16384), with random weights: the modules of tests/parity/torch_ref (rq_transformer_ref.py,
mindalle_ref.py: the released module tree) built on the GPU, f32 master weights under bf16
autocast (the released samplers ran under fp16 autocast; autocast caches the 16-bit weight copies
for the whole loop), KV caches grown with torch.cat as in the released code, the presets'
filters (RQ: top-k 1024, top-p 0.95; minDALL-E: top-k 256) and torch.multinomial.

Each (model, batch) runs the loop until it ends or its share of the time budget is spent; a cut
run is extrapolated linearly from the steps done to all steps (attention grows with the prefix,
so a cut run slightly underestimates) and says so (steps=done/total).

Prints "RESULT impl=torch what=generate model=... dtype=bf16 batch=... wall_s=... s_per_pic=...
pics_per_s=... steps=D/T extrapolated=0|1 peak_mib=...", flushed at once.

usage: python3 tests/gpu/torch_t2i_bench.py [--models rq-3.9b,mindalle-1.3b] [--batches 1,64]
                                           [--budget SECONDS] (default 100, the whole run)
"""
import argparse
import os
import sys
import time

import torch

try:
    import numpy  # noqa: F401  (the references import it for their file I/O only)
except ImportError:  # the modules and filters used here do not need it: a stub is enough
    import types
    sys.modules["numpy"] = types.ModuleType("numpy")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parity", "torch_ref"))
import mindalle_ref  # noqa: E402
import rq_transformer_ref  # noqa: E402
import sample_ref  # noqa: E402

PRESETS = {
    "rq-3.9b": dict(kind="rq", cfg=dict(embed_dim=2560, n_layer_body=42, n_layer_head=6, n_head=40,
                                        block_size=[8, 8, 4], vocab_size=16384, vocab_size_cond=16384,
                                        block_size_cond=32, input_embed_dim=256),
                    top_k=1024, top_p=0.95),
    "mindalle-1.3b": dict(kind="gpt", cfg=dict(vocab_size_txt=16384, vocab_size_img=16384, embed_dim=1536,
                                               n_layers=42, n_heads=24, ctx_len_txt=64, ctx_len_img=256),
                          top_k=256, top_p=None),
}


def result(**kv):
    print("RESULT " + " ".join(f"{k}={v}" for k, v in kv.items()), flush=True)


def rq_loop(model, cond, codebook, pick, deadline):
    """rq_transformer_ref.RQTransformerRef.sample (the released cached loop, §3.1) with a deadline.
    Returns the number of finished (position, depth) steps."""
    B = cond.shape[0]
    codes = torch.zeros(B, model.H, model.W, model.D, dtype=torch.long)
    body_cache = [None] * len(model.body_transformer.blocks)
    steps = 0
    for p in range(model.H * model.W):
        h_, w_ = divmod(p, model.W)
        if p == 0:
            h = model.body_transformer(model.cond_tokens(cond), body_cache)[:, -1]
        else:
            hp, wp = divmod(p - 1, model.W)
            e_prev = codebook[codes[:, hp, wp]].unsqueeze(1)
            h = model.body_transformer(model.spatial_input(e_prev, p - 1), body_cache)[:, -1]
        head_cache = [None] * len(model.head_transformer.blocks)
        for d in range(model.D):
            if d == 0:
                v = h + model.pos_emb_d[:, 0]
            else:
                cum = codebook[codes[:, h_, w_, :d]].sum(dim=1)
                v = model.head_mlp(cum) + model.pos_emb_d[:, d]
            o = model.head_transformer(v.unsqueeze(1), head_cache)[:, -1]
            codes[:, h_, w_, d] = pick(model.classifier(o), d)
            steps += 1
        if time.perf_counter() > deadline:
            break
    return steps


def gpt_loop(model, texts, pick, deadline):
    """mindalle_ref.Transformer1dRef.sample (§4.4) with a deadline; returns finished steps."""
    B = texts.shape[0]
    cache = [None] * len(model.blocks)
    x = model.tok_emb_txt(texts) + model.pos_emb_txt(torch.arange(model.N))
    codes = torch.zeros(B, model.T, dtype=torch.long)
    steps = 0
    for j in range(model.T):
        if j > 0:
            x = (model.tok_emb_img(codes[:, j - 1]) + model.pos_emb_img.weight[j - 1]).unsqueeze(1)
        h = model.run_blocks(x, cache)
        codes[:, j] = pick(model.head_img(model.ln_f(h[:, -1])), 0)
        steps += 1
        if time.perf_counter() > deadline:
            break
    return steps


def make_pick(kind, top_k, top_p, gen):
    def pick(logits, d):
        if kind == "rq":
            probs = sample_ref.rq_probs(logits.float(), 1.0, top_k, top_p)
        else:
            probs = sample_ref.mindalle_probs(logits.float(), 1.0, top_k, top_p)
        return torch.multinomial(probs, 1, generator=gen).view(-1)
    return pick


def bench(name, batches, t_end):
    p = PRESETS[name]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    if p["kind"] == "rq":
        model = rq_transformer_ref.RQTransformerRef(p["cfg"]).eval()
        codebook = torch.randn(p["cfg"]["vocab_size"] + 1, p["cfg"]["input_embed_dim"])
        total = 8 * 8 * 4
    else:
        model = mindalle_ref.Transformer1dRef(p["cfg"]).eval()
        total = p["cfg"]["ctx_len_img"]
    torch.cuda.synchronize()
    n_params = sum(x.numel() for x in model.parameters())
    result(impl="torch", what="build", model=name, seconds=f"{time.perf_counter() - t0:.1f}",
           params_m=f"{n_params / 1e6:.1f}")
    gen = torch.Generator(device="cuda").manual_seed(1)
    pick = make_pick(p["kind"], p["top_k"], p["top_p"], gen)
    for i, B in enumerate(batches):
        left = t_end - time.perf_counter()
        if left < 5:
            print(f"# {name} batch {B}: skipped, the time budget is spent", flush=True)
            continue
        share = left / (len(batches) - i)  # this run's share of what is left
        L = p["cfg"]["block_size_cond"] if p["kind"] == "rq" else p["cfg"]["ctx_len_txt"]
        V = p["cfg"]["vocab_size_cond"] if p["kind"] == "rq" else p["cfg"]["vocab_size_txt"]
        cond = torch.randint(1, V, (B, L))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        ts = time.perf_counter()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            if p["kind"] == "rq":
                done = rq_loop(model, cond, codebook, pick, ts + share)
            else:
                done = gpt_loop(model, cond, pick, ts + share)
        torch.cuda.synchronize()
        wall = time.perf_counter() - ts
        full = wall * total / max(done, 1)
        result(impl="torch", what="generate", model=name, dtype="bf16", batch=B, wall_s=f"{wall:.3f}",
               s_per_pic=f"{full / B:.4f}", pics_per_s=f"{B / full:.2f}", steps=f"{done}/{total}",
               extrapolated=int(done < total), peak_mib=f"{torch.cuda.max_memory_allocated() / 2**20:.0f}")
    del model
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="rq-3.9b,mindalle-1.3b")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--budget", type=float, default=100.0)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("# no CUDA device for PyTorch", flush=True)
        return 3
    # The references build index tensors with torch.arange / torch.zeros and no device: make the
    # GPU the default so that they (and the modules' parameters) live there.
    torch.set_default_device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"# torch {torch.__version__}, {torch.cuda.get_device_name(0)}", flush=True)
    t_start = time.perf_counter()
    models = [m for m in a.models.split(",") if m]
    batches = [int(b) for b in a.batches.split(",") if b]
    for i, m in enumerate(models):
        left = a.budget - (time.perf_counter() - t_start)
        if left < 10:
            print(f"# {m}: skipped, the time budget is spent", flush=True)
            continue
        try:
            bench(m, batches, time.perf_counter() + left / (len(models) - i))
        except Exception as e:  # report and go on with the next model
            print(f"# FAILED {m}: {type(e).__name__}: {e}", flush=True)
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
