#!/usr/bin/python3
"""Stage-2 training throughput: `hwaga train` vs the same model and step in PyTorch (CPU).

  tools/bench_train_stage2.py [--hwaga build/hwaga] [--threads 2] [--steps 20] [--batch 8]
                              [--embed-dim 256] [--body 4] [--head 2] [--heads 4] [--context 16]
                              [--matmul f32|bf16] [--world W] [--device cpu|cuda]

Both sides train the text RQ-Transformer of the given shape (codes 8x8x4 over the tiny stage-1
model of tests/parity/torch_ref: K 64, E 32; text vocabulary 85) with the recipe of hwaga train:
loss 0.9 image CE + 0.1 text CE, backward, clip 1.0, AdamW, residual dropout 0 (the PyTorch
reference has no dropout modules). hwaga's figure is the tokens/s of its progress line at the last
step (the loop only: the code cache and the setup are not counted); PyTorch's is timed over the
same number of steps after one warm-up step. Tokens = targets per step = B*(H*W*D + L_c - 1).
--matmul bf16 runs hwaga with `--matmul bf16` and PyTorch's step under torch.autocast("cpu",
bfloat16) (its linear layers in bf16 through oneDNN), so both sides do mixed-precision math.
--world W runs both data-parallel: hwaga as W processes (`hwaga train --world W --rank R
--dist-addr 127.0.0.1:PORT`, threads/W each), PyTorch as W processes of DistributedDataParallel
over gloo (threads/W each), both on the global batch --batch (batch/W rows per rank).
--device cuda trains on the GPU on both sides (`hwaga train --device cuda`; PyTorch's model and
batch on "cuda", TF32 off for f32, torch.autocast("cuda", bfloat16) for --matmul bf16), one process.
Prints both and the ratio. Not a test: one run on a shared machine, so expect noise.
"""
import contextlib
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "parity", "torch_ref"))
import train_stage2_fixtures as fx  # noqa: E402
sys.path.insert(0, HERE)
import torch_blas  # noqa: E402


def torch_tokens_per_s(cfg, batch, steps, threads, matmul="f32", rank=0, world=1, device="cpu"):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import rq_transformer_ref
    torch.set_num_threads(threads)
    if device == "cpu":
        torch_blas.set_threads(threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = rq_transformer_ref.RQTransformerRef(cfg).train().to(device)
    if world > 1:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
        model = torch.nn.parallel.DistributedDataParallel(model)
        batch //= world
    K, E = cfg["vocab_size"], cfg["input_embed_dim"]
    H, W, D = cfg["block_size"]
    L = cfg["block_size_cond"]
    codebook = torch.randn(K + 1, E, device=device)
    codes = torch.randint(0, K, (batch, H, W, D), device=device)
    text = torch.randint(1, cfg["vocab_size_cond"], (batch, L), device=device)
    lin = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    opt = torch.optim.AdamW([{"params": [p for p in model.parameters() if id(p) in lin], "weight_decay": 1e-4},
                             {"params": [p for p in model.parameters() if id(p) not in lin], "weight_decay": 0.0}],
                            lr=5e-4, betas=(0.9, 0.95), eps=1e-8)

    def step():
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast(device, dtype=torch.bfloat16) if matmul == "bf16" else contextlib.nullcontext()
        with ctx:
            logits, cl = model(codes, text, codebook)
        logits, cl = logits.float(), cl.float()
        loss = 0.9 * F.cross_entropy(logits.reshape(-1, K), codes.reshape(-1)) + \
            0.1 * F.cross_entropy(cl.reshape(-1, cl.shape[-1]), text[:, 1:].reshape(-1), ignore_index=0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def sync():
        if world > 1:
            torch.distributed.barrier()
        if device != "cpu":
            torch.cuda.synchronize()

    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = time.perf_counter() - t0
    return batch * world * (H * W * D + L - 1) * steps / dt


def torch_ddp_worker(rank, world, port, cfg, batch, steps, threads, matmul, out):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    rate = torch_tokens_per_s(cfg, batch, steps, threads, matmul, rank, world)
    if rank == 0:
        out.put(rate)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hwaga", default=os.path.join(ROOT, "build", "hwaga"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--embed-dim", type=int, default=256)
    ap.add_argument("--body", type=int, default=4)
    ap.add_argument("--head", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--context", type=int, default=16)
    ap.add_argument("--matmul", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--world", type=int, default=1)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--allow-reference-blas", action="store_true",
                    help="compare even when PyTorch would use the Netlib reference BLAS (tools/torch_blas.py)")
    a = ap.parse_args()
    import torch  # noqa: F401  (maps libblas.so.3, so that the check below sees which one)
    if a.device == "cpu":
        torch_blas.check(a.threads, a.allow_reference_blas)
    if a.world < 1 or a.batch % a.world or a.threads % a.world:
        sys.exit("--world must divide --batch and --threads")
    if a.device == "cuda" and a.world != 1:
        sys.exit("--device cuda runs one process (--world 1)")
    per_rank = a.threads // a.world
    with tempfile.TemporaryDirectory(prefix="hwaga_bench_train_") as d:
        s1 = fx.make_stage1(os.path.join(d, "s1"))
        fx.make_shards(os.path.join(d, "shards"))
        vocab, merges = fx.write_vocab(os.path.join(d, "tok"))
        cfgp = fx.write_config(os.path.join(d, "cfg.json"), block_size_cond=a.context, embed_dim=a.embed_dim,
                               n_layer_body=a.body, n_layer_head=a.head, n_head=a.heads)
        import json
        cfg = json.load(open(cfgp))
        cmd = [a.hwaga, "train", "--tokenizer", s1, "--shards", os.path.join(d, "shards"), "--config", cfgp,
               "--text-tokenizer", "bpe16k:%s,%s" % (vocab, merges), "--work-dir", os.path.join(d, "w"),
               "--steps", str(a.steps + 1), "--batch", str(a.batch), "--dropout", "0",
               "--matmul", a.matmul, "--threads", str(per_rank), "--device", a.device]
        # the code cache first, so that no rank waits on it while the others time their steps
        subprocess.run(cmd[:cmd.index("--steps")] + ["--steps", "1", "--batch", str(a.batch),
                                                      "--threads", str(a.threads)], capture_output=True, check=True)
        os.remove(os.path.join(d, "w", "checkpoint.safetensors"))
        addr = "127.0.0.1:%d" % free_port()
        procs = [subprocess.Popen(cmd + (["--world", str(a.world), "--rank", str(r), "--dist-addr", addr]
                                         if a.world > 1 else []), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for r in range(a.world)]
        errs = [p.communicate()[1] for p in procs]
        if any(p.returncode != 0 for p in procs):
            sys.exit("hwaga train failed:\n" + "\n".join(errs))
        rates = re.findall(r"([0-9.]+) tok/s", errs[0])
        hw = float(rates[-1])
        if a.world == 1:
            pt = torch_tokens_per_s(cfg, a.batch, a.steps, a.threads, a.matmul, device=a.device)
        else:
            import torch.multiprocessing as mp
            out = mp.get_context("spawn").SimpleQueue()
            mp.spawn(torch_ddp_worker, args=(a.world, free_port(), cfg, a.batch, a.steps, per_rank, a.matmul, out),
                     nprocs=a.world)
            pt = out.get()
    print("model: C=%d, body %d + head %d layers, %d heads, codes 8x8x4, K 64, text %d x 85; batch %d; %d threads; "
          "matmul %s; %s; device %s" % (a.embed_dim, a.body, a.head, a.heads, a.context, a.batch, a.threads,
                                        a.matmul, "%d ranks x %d threads (hwaga TCP / PyTorch DDP gloo)" %
                                        (a.world, per_rank) if a.world > 1 else "one process", a.device))
    print("hwaga train:  %8.0f tokens/s" % hw)
    print("PyTorch %s: %8.0f tokens/s" % (__import__("torch").__version__, pt))
    print("ratio hwaga / PyTorch: %.2f" % (hw / pt))
    print("RESULT impl=train device=%s matmul=%s C=%d batch=%d hwaga_tok_s=%.0f torch_tok_s=%.0f ratio=%.3f" %
          (a.device, a.matmul, a.embed_dim, a.batch, hw, pt, hw / pt))
    print("load average: %s" % " ".join("%.2f" % x for x in os.getloadavg()))


if __name__ == "__main__":
    main()
