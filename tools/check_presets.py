#!/usr/bin/python3
"""End-to-end check of the released text-to-image configurations at full size (issue 3): for each
preset, random weights in the released on-disk layout (tests/parity/torch_ref: stage 1
model.pt/stage1_last.ckpt, stage 2 model.pt/stage2_last.ckpt with config.yaml), `hwaga convert`,
then `hwaga generate` (one 256x256 picture) and `hwaga gallery` (two prompts) on the converted
file, with wall time and peak memory (resident set, from /usr/bin/time) of every hwaga command.

  tools/check_presets.py [--presets rq-cc3m-654m,mindalle-1.3b,rq-3.9b] [--dtype bf16]
                         [--work DIR] [--hwaga BIN] [--threads N] [--out report.json]

Not a test (minutes and gigabytes per preset; the 3.9B model needs ~8 GB of disk for its bf16
checkpoint and 8 GB for the converted file); the figures go into docs/PERFORMANCE.md. The shapes
come from `hwaga info --preset NAME` (its "stage-2 config" block), so every preset hwaga knows is
checked with the shape hwaga would load. Each preset's files are deleted after its check.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_REF = os.path.join(ROOT, "tests", "parity", "torch_ref")
BPE = os.path.join(os.path.dirname(ROOT), "shared", "data", "bpe16k")
PROMPTS = ["a painting of a lighthouse on a rocky coast at sunset", "a photograph of a red bicycle"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def timed(cmd, env=None):
    """Runs cmd under /usr/bin/time; returns (seconds, peak RSS in MiB, stdout, stderr)."""
    t0 = time.time()
    p = subprocess.run(["/usr/bin/time", "-f", "@@maxrss %M"] + cmd, capture_output=True, text=True, env=env)
    dt = time.time() - t0
    m = re.search(r"@@maxrss (\d+)", p.stderr)
    if p.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s" % (" ".join(cmd), p.returncode, p.stderr[-3000:]))
    return dt, (int(m.group(1)) / 1024.0 if m else None), p.stdout, p.stderr


def preset_stage2(hwaga, name):
    out = subprocess.run([hwaga, "info", "--preset", name], capture_output=True, text=True, check=True).stdout
    block = out.split("stage-2 config:", 1)[1]
    return json.loads(block[:block.rindex("}") + 1])


def torch_ref(script, *args):
    return timed(["/usr/bin/python3", os.path.join(TORCH_REF, script)] + [str(a) for a in args])


def check(a, name, work):
    s2 = preset_stage2(a.hwaga, name)
    rec = {"preset": name, "type": s2["type"], "steps": {}}
    model = os.path.join(work, name + ".safetensors")
    if s2["type"] == "rq-transformer":
        s1, st2 = os.path.join(work, "stage1"), os.path.join(work, "stage2")
        arch = {k: s2[k] for k in ("embed_dim", "n_layer_body", "n_layer_head", "n_head") if k in s2}
        arch["vocab_size_cond"], arch["block_size_cond"] = s2["vocab_size_cond"], s2["block_size_cond"]
        rec["steps"]["make stage 1"] = torch_ref("make_checkpoint.py", "--kind", "rq-vae", "--size", "full",
                                                 "--out", s1)[:2]
        rec["steps"]["make stage 2"] = torch_ref("make_stage2_checkpoint.py", "--kind", "rq", "--size", "real",
                                                 "--arch", json.dumps(arch), "--dtype", a.src_dtype,
                                                 "--codebook-from", s1, "--out", st2)[:2]
        conv = [a.hwaga, "convert", "rq", "--stage1", s1, "--stage2", st2, "--vocab",
                os.path.join(BPE, "bpe-16k-vocab.json"), "--merges", os.path.join(BPE, "bpe-16k-merges.txt")]
    else:
        d = os.path.join(work, "md")
        arch = {k: s2[k] for k in ("embed_dim", "n_layers", "n_heads") if k in s2}
        rec["steps"]["make stage 1"] = torch_ref("make_checkpoint.py", "--kind", "vqgan", "--size", "full",
                                                 "--out", d)[:2]
        rec["steps"]["make stage 2"] = torch_ref("make_stage2_checkpoint.py", "--kind", "mindalle", "--size",
                                                 "real", "--arch", json.dumps(arch), "--dtype", a.src_dtype,
                                                 "--out", d)[:2]
        tok = os.path.join(d, "tokenizer")
        os.makedirs(tok, exist_ok=True)
        for f in ("bpe-16k-vocab.json", "bpe-16k-merges.txt"):
            shutil.copy(os.path.join(BPE, f), tok)
        conv = [a.hwaga, "convert", "mindalle", d]
    threads = ["--threads", str(a.threads)]
    rec["steps"]["convert"] = timed(conv + ["--dtype", a.dtype, "-o", model] + threads)[:2]
    for folder in (os.path.join(work, "stage1"), os.path.join(work, "stage2"), os.path.join(work, "md")):
        shutil.rmtree(folder, ignore_errors=True)  # the released-layout files are no longer needed
    rec["model_bytes"] = os.path.getsize(model)
    info = subprocess.run([a.hwaga, "info", "-m", model], capture_output=True, text=True, check=True).stdout
    rec["info"] = [l for l in info.splitlines() if l.startswith(("stage 2", "parameters", "weights"))]
    png = os.path.join(work, name + ".png")
    dt, rss, _, err = timed([a.hwaga, "generate", "-m", model, "-p", PROMPTS[0], "--seed", "1", "-o", png] + threads)
    rec["steps"]["generate"] = (dt, rss)
    rec["generate_stderr"] = [l for l in err.splitlines() if "steps in" in l or "pictures in" in l]
    with open(png, "rb") as f:
        head = f.read(24)
    w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:8] != b"\x89PNG\r\n\x1a\n" or (w, h) != (256, 256):
        raise RuntimeError("%s: not a 256x256 PNG (%dx%d)" % (png, w, h))
    prompts = os.path.join(work, "prompts.txt")
    with open(prompts, "w") as f:
        f.write("\n".join(PROMPTS) + "\n")
    gal = os.path.join(work, "gallery-" + name)
    rec["steps"]["gallery"] = timed([a.hwaga, "gallery", "-m", model, prompts, "-o", gal, "-n", "1", "--seed", "2"]
                                    + threads)[:2]
    if not os.path.isfile(os.path.join(gal, "index.html")):
        raise RuntimeError("%s: no index.html" % gal)
    os.remove(model)
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="rq-cc3m-654m,mindalle-1.3b,rq-3.9b")
    ap.add_argument("--dtype", default="bf16", choices=["f32", "bf16", "f16"], help="the converted file's dtype")
    ap.add_argument("--src-dtype", default="bf16", choices=["f32", "bf16"],
                    help="dtype of the random released-layout checkpoint (bf16 halves its size)")
    ap.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--hwaga", default=os.path.join(ROOT, "build", "hwaga"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", help="JSON report")
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="hwaga-presets-")
    os.makedirs(work, exist_ok=True)
    report = {"commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip(), "dtype": a.dtype, "presets": []}
    ok = True
    for name in a.presets.split(","):
        log("== %s" % name)
        try:
            rec = check(a, name, work)
        except Exception as e:  # noqa: BLE001  (reported per preset, the run goes on)
            rec, ok = {"preset": name, "error": str(e)}, False
        report["presets"].append(rec)
        log(json.dumps(rec, indent=1))
        if a.out:
            with open(a.out, "w") as f:
                json.dump(report, f, indent=1)
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    print("| preset | model file | convert s | generate s (peak RSS) | gallery s (2 prompts) |")
    print("|---|---|---|---|---|")
    for r in report["presets"]:
        if "error" in r:
            print("| %s | failed: %s | | | |" % (r["preset"], r["error"].splitlines()[0]))
            continue
        st = r["steps"]
        print("| %s | %.2f GB | %.0f | %.1f (%.1f GiB) | %.1f |" % (
            r["preset"], r["model_bytes"] / 1e9, st["convert"][0], st["generate"][0], st["generate"][1] / 1024,
            st["gallery"][0]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
