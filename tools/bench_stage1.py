#!/usr/bin/python3
"""Stage-1 speed: hwaga encode/decode against the PyTorch reference on the same weights.

Makes a full-size random-weight RQ-VAE (attn8, K 16384; tests/parity/torch_ref/make_checkpoint.py),
converts it, then times encode and decode of one 256x256 picture and of a batch of 4, on the CPU
with the same thread count on both sides (hwaga --threads N; torch.set_num_threads(N)).

Timed: the compute only, best of --repeats runs. For hwaga that is the "s/picture" the command
prints (reading the pictures, a few ms, to the last code out; model loading excluded); for PyTorch the
module call under torch.no_grad() in one process after a warm-up call. The wall time of each
whole hwaga command (start-up, mapping the model file, the PNG/npy I/O) is shown too.

  /usr/bin/python3 tools/bench_stage1.py [--hwaga build/hwaga] [--threads 2] [--repeats 3] [--workdir DIR]

Not a test: it asserts nothing about speed. Prints the machine (lscpu), the commit and the sgemm
kernel hwaga reports, so numbers from different runs can be told apart.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

SOURCE_DIR = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "cli"))
import hwaga_testlib as T  # noqa: E402

TORCH_TIMER = r"""
import json, os, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[7])
import run_reference
import torch_blas
ckpt, threads, repeats, pics, codes = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
torch.set_num_threads(threads)
torch_blas.set_threads(threads)
model = run_reference.load_model(ckpt, "rq-vae")
x_all = torch.from_numpy(np.load(pics))            # [4,3,256,256] in [-1,1]
c_all = torch.from_numpy(np.load(codes).astype(np.int64))  # [4,8,8,4]
out = {}
with torch.no_grad():
    for batch in (1, 4):
        for op, fn, arg in (("encode", model.encode, x_all[:batch]), ("decode", model.decode, c_all[:batch])):
            fn(arg)  # warm-up
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn(arg)
                best = min(best, time.perf_counter() - t0)
            out["%s/%d" % (op, batch)] = best / batch
print(json.dumps({"times": out, "torch": torch.__version__, "threads": torch.get_num_threads(), "blas": torch_blas.describe(),
                  "config": torch.__config__.parallel_info().splitlines()[:3]}))
"""


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, shell=True, cwd=SOURCE_DIR).stdout.strip()
    except OSError:
        return ""


def machine():
    for line in sh("lscpu").splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def commit():
    c = sh("git rev-parse --short=12 HEAD") or "unknown"
    return c + ("-dirty" if sh("git status --porcelain --untracked-files=no") else "")


def time_hwaga(args, repeats, npics):
    """Best compute s/picture over `repeats` runs of `hwaga args`, the best wall time, the backend line."""
    best, wall, backend = float("inf"), float("inf"), ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        p = T.hwaga(*args, check=True, timeout=1800)
        wall = min(wall, time.perf_counter() - t0)
        m = re.findall(r"(\d+)/(\d+) pictures, ([0-9.]+) s/picture", p.stderr)
        if not m or int(m[-1][0]) != npics:
            raise SystemExit("could not read the timing from hwaga's output:\n" + p.stderr)
        best = min(best, float(m[-1][2]))
        b = re.search(r"hwaga: using (.*)", p.stderr)
        backend = b.group(1) if b else backend
    return best, wall / npics, backend


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hwaga", default=os.environ.get("HWAGA_BIN") or os.path.join(SOURCE_DIR, "build", "hwaga"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", help="keep the checkpoint and model here (default: a temporary folder)")
    a = ap.parse_args()
    T.HWAGA_BIN = os.path.abspath(a.hwaga)
    if not os.path.exists(T.HWAGA_BIN):
        raise SystemExit("hwaga not found at %s (build it, or pass --hwaga)" % T.HWAGA_BIN)

    tmp = None
    if a.workdir:
        os.makedirs(a.workdir, exist_ok=True)
        work = a.workdir
    else:
        tmp = tempfile.TemporaryDirectory(prefix="hwaga-bench-")
        work = tmp.name
    import numpy as np

    ckpt = os.path.join(work, "rqvae-full")
    model = os.path.join(work, "rqvae-full.safetensors")
    if not os.path.exists(os.path.join(ckpt, "model.pt")):
        print("making the full-size RQ-VAE checkpoint (random weights) ...", file=sys.stderr)
        T.make_checkpoint(ckpt, "rq-vae", size="full", variant="attn8", n_embed=16384, seed=0)
    if not os.path.exists(model):
        T.hwaga("convert", "rq-vae", ckpt, "-o", model, check=True, timeout=1800)

    pics = T.write_test_pictures(work, 4, size=256, seed0=1000)
    x = np.stack([T.test_picture(1000 + i, 256) for i in range(4)]).astype(np.float32) / 127.5 - 1.0
    np.save(os.path.join(work, "pics.npy"), np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    common = ["--threads", str(a.threads), "--device", "cpu"]

    rows, backend = {}, ""
    codes4 = os.path.join(work, "codes4.npy")
    for batch in (1, 4):
        codes = os.path.join(work, "codes%d.npy" % batch)
        t, w, backend = time_hwaga(["encode", "-m", model, *pics[:batch], "-o", codes, "--batch", str(batch), *common],
                                   a.repeats, batch)
        rows["encode/%d" % batch] = [t, w]
    for batch in (1, 4):
        codes = os.path.join(work, "codes%d.npy" % batch)
        out = os.path.join(work, "out%d_%%d.png" % batch)
        t, w, _ = time_hwaga(["decode", "-m", model, codes, "-o", out, "--batch", str(batch), *common], a.repeats, batch)
        rows["decode/%d" % batch] = [t, w]

    print("timing PyTorch ...", file=sys.stderr)
    p = T.run([T.PYTHON, "-c", TORCH_TIMER, T.TORCH_REF, ckpt, str(a.threads), str(a.repeats),
               os.path.join(work, "pics.npy"), codes4, os.path.join(SOURCE_DIR, "tools")], check=True, timeout=3600)
    ref = json.loads(p.stdout.strip().splitlines()[-1])

    print()
    print("stage-1 benchmark: full-size RQ-VAE (attn8, K 16384, 100M+4M parameters), 256x256 pictures")
    print("machine:  %s (%d cores online)" % (machine(), os.cpu_count() or 0))
    print("commit:   %s" % commit())
    print("hwaga:    %s" % backend)
    print("pytorch:  %s, %d threads; %s" % (ref["torch"], ref["threads"], ref["blas"]))
    print("timings:  compute only, best of %d, seconds per picture" % a.repeats)
    print()
    print("%-8s %5s  %12s  %12s  %12s  %14s" % ("op", "batch", "hwaga s/pic", "torch s/pic", "hwaga/torch", "hwaga wall/pic"))
    for key in ("encode/1", "encode/4", "decode/1", "decode/4"):
        op, batch = key.split("/")
        h, w = rows[key]
        t = ref["times"][key]
        print("%-8s %5s  %12.3f  %12.3f  %12.2f  %14.3f" % (op, batch, h, t, h / t, w))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
