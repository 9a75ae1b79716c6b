"""PyTorch baseline for tools/bench_gpu_stage1: the same RQ-VAE / VQGAN conv nets
(tests/parity/torch_ref/taming_ref.py, random weights) on the GPU, decode (post_quant_conv +
decoder) and encode (encoder + quant_conv) at batch 1 and 64, in f32 (TF32 off, like hwaga's
f32 path) and under bf16 autocast, timed with torch.cuda.synchronize.

Prints one line per measurement, "RESULT impl=torch model=... op=... dtype=... batch=... ms=...
ms_per_pic=... pics_per_s=... peak_mib=...", flushed at once (device_check.sh makes the table).

usage: python3 tests/gpu/torch_stage1_bench.py [--models rqvae,vqgan] [--batches 1,64] [--iters 3]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parity", "torch_ref"))
import taming_ref  # noqa: E402

CONFIGS = {
    # architecture.md §1.1 (ImageNet RQ-VAE) and §4.1 (minDALL-E VQGAN)
    "rqvae": dict(ch=128, ch_mult=[1, 1, 2, 2, 4, 4], num_res_blocks=2, attn_resolutions=[8], z=256, embed=256,
                  res=256),
    "vqgan": dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], z=256, embed=256,
                  res=256),
}


def result(**kv):
    print("RESULT " + " ".join(f"{k}={v}" for k, v in kv.items()), flush=True)


def timed(fn, iters):
    fn()  # warm-up (cudnn.benchmark picks the algorithms here)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1000.0 / iters, torch.cuda.max_memory_allocated() / 2**20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="rqvae,vqgan")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("# no CUDA device for PyTorch", flush=True)
        return 3
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False  # f32 means f32, as in hwaga's FMA convolutions
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    print(f"# torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name(0)}",
          flush=True)
    for model in a.models.split(","):
        c = CONFIGS[model]
        torch.manual_seed(0)
        enc = taming_ref.Encoder(c["ch"], c["ch_mult"], c["num_res_blocks"], c["attn_resolutions"], 3, c["z"],
                                 c["res"])
        dec = taming_ref.Decoder(c["ch"], c["ch_mult"], c["num_res_blocks"], c["attn_resolutions"], 3, c["z"],
                                 c["res"])
        quant_conv = torch.nn.Conv2d(c["z"], c["embed"], 1)
        post_quant_conv = torch.nn.Conv2d(c["embed"], c["z"], 1)
        for m in (enc, dec, quant_conv, post_quant_conv):
            m.to(dev).eval()
        lat = c["res"] // 2 ** (len(c["ch_mult"]) - 1)
        for dt in a.dtypes.split(","):
            for B in [int(b) for b in a.batches.split(",")]:
                for op in ("decode", "encode"):
                    try:
                        if op == "decode":
                            x = torch.randn(B, c["embed"], lat, lat, device=dev)
                            fn_core = lambda: dec(post_quant_conv(x))  # noqa: E731
                        else:
                            x = torch.rand(B, 3, c["res"], c["res"], device=dev) * 2 - 1
                            fn_core = lambda: quant_conv(enc(x))  # noqa: E731

                        def fn():
                            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dt == "bf16"):
                                return fn_core()

                        ms, peak = timed(fn, a.iters)
                        result(impl="torch", model=model, op=op, dtype=dt, batch=B, ms=f"{ms:.3f}",
                               ms_per_pic=f"{ms / B:.4f}", pics_per_s=f"{1000.0 * B / ms:.1f}", peak_mib=f"{peak:.0f}")
                    except Exception as e:  # keep going: one failure must not lose the other rows
                        print(f"# FAILED torch {model} {op} {dt} batch {B}: {e}", flush=True)
                    torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
