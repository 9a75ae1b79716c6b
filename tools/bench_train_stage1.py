#!/usr/bin/python3
"""Training throughput of the image tokenizer: hwaga train-tokenizer vs the PyTorch reference step
(tests/parity/torch_ref/train_stage1_ref.py + torch.optim.Adam), same RQ-VAE, same batch, same
thread count, in one run. Prints images/s of each and the ratio. Not a test.

  /usr/bin/python3 tools/bench_train_stage1.py [--hwaga build/hwaga] [--preset emoji64]
      [--batch 8] [--steps 6] [--threads 2] [--device cpu|cuda]

--device cuda trains on the GPU on both sides (hwaga train-tokenizer --device cuda: encoder and
decoder on the GPU, the quantizer on the host; PyTorch's model and batch on the GPU, f32 without
TF32), synchronising before each clock reading.

The first step of each side is a warm-up and not timed. hwaga's figure is its whole step as the
log reports it (data loading included: decode + crop of PNGs, a small share); PyTorch's is the
forward + backward + EMA update + Adam step on a fixed random batch (no data loading).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..")
sys.path.insert(0, os.path.join(SRC, "tests", "parity", "torch_ref"))
import train_stage1_fixtures as F  # noqa: E402
sys.path.insert(0, HERE)
import torch_blas  # noqa: E402

PRESETS = {
    # hwaga's emoji model (train_tokenizer.cpp --preset emoji64)
    "emoji64": {"type": "rq-vae", "ch": 64, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 1, "attn_resolutions": [8],
                "in_channels": 3, "out_ch": 3, "z_channels": 64, "resolution": 64, "embed_dim": 64, "n_embed": 512,
                "code_shape": [8, 8, 4], "shared_codebook": True},
    "tiny": F.TINY,
}


def bench_hwaga(hwaga, cfg, batch, steps, threads, tmp, device="cpu"):
    shards = os.path.join(tmp, "shards")
    F.make_shards(shards, 2, max(16, batch * 2), cfg["resolution"])
    conf = F.write_config(os.path.join(tmp, "cfg.json"), cfg)
    work = os.path.join(tmp, "work")
    subprocess.run([hwaga, "train-tokenizer", "--shards", shards, "--config", conf, "--work-dir", work,
                    "--steps", str(steps), "--batch", str(batch), "--lr", "1e-4", "--threads", str(threads),
                    "--device", device],
                   check=True, capture_output=True, text=True)
    with open(os.path.join(work, "train.jsonl")) as f:
        rows = [json.loads(l) for l in f if '"img_per_s"' in l]
    rates = [r["img_per_s"] for r in rows[1:]]  # the first step warms up
    return len(rates) / sum(1.0 / r for r in rates)  # images over total time


def bench_torch(cfg, batch, steps, threads, device="cpu"):
    import torch
    import train_stage1_ref as R
    torch.set_num_threads(threads)
    if device == "cpu":
        torch_blas.set_threads(threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = R.build(cfg).to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.5, 0.9))
    x = (torch.rand(batch, 3, cfg["resolution"], cfg["resolution"]) * 2 - 1).to(device)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    K, E, D = cfg["n_embed"], cfg["embed_dim"], cfg["code_shape"][2]
    N = batch * cfg["code_shape"][0] * cfg["code_shape"][1]

    def candidates():  # the reference's draw: a random permutation of (tiled, noised) residuals
        with torch.no_grad():
            r = model.encode_latent(x).reshape(-1, E)
        if N < K:
            r = r.repeat((K + N - 1) // N, 1)
            r = r + torch.rand_like(r) * (0.01 / E ** 0.5)
        return r[torch.randperm(r.shape[0])][:K]

    times = []
    for s in range(steps):
        t0 = time.perf_counter()
        restart = [candidates() for _ in range(D)]  # (costs an extra encoder forward; not timed below)
        sync()
        t1 = time.perf_counter()
        opt.zero_grad()
        R.train_step(model, x, restart)
        opt.step()
        sync()
        times.append(time.perf_counter() - t1)
    t = times[1:]
    return batch * len(t) / sum(t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hwaga", default=os.path.join(SRC, "build", "hwaga"))
    ap.add_argument("--preset", default="emoji64", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--allow-reference-blas", action="store_true",
                    help="compare even when PyTorch would use the Netlib reference BLAS (tools/torch_blas.py)")
    a = ap.parse_args()
    import torch  # noqa: F401  (maps libblas.so.3, so that the check below sees which one)
    if a.device == "cpu":
        torch_blas.check(a.threads, a.allow_reference_blas)
    cfg = PRESETS[a.preset]
    print("config %s, batch %d, %d steps (first not timed), %d threads, device %s; load average %.2f" %
          (a.preset, a.batch, a.steps, a.threads, a.device, os.getloadavg()[0]))
    with tempfile.TemporaryDirectory(prefix="hwaga-bench-s1-") as tmp:
        h = bench_hwaga(a.hwaga, cfg, a.batch, a.steps, a.threads, tmp, a.device)
    print("hwaga   %.2f img/s" % h)
    t = bench_torch(cfg, a.batch, a.steps, a.threads, a.device)
    print("PyTorch %.2f img/s" % t)
    print("ratio hwaga / PyTorch: %.2f" % (h / t))
    print("RESULT impl=train_stage1 device=%s preset=%s batch=%d hwaga_img_s=%.1f torch_img_s=%.1f ratio=%.3f" %
          (a.device, a.preset, a.batch, h, t, h / t))


if __name__ == "__main__":
    main()
