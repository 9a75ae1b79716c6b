"""Shared helpers for the Python end-to-end tests (tests/cli, tests/parity) and tools/bench_stage1.py.

Not a test itself (ctest runs only test_*.py). Needs numpy only; PyTorch is used through the
reference scripts in tests/parity/torch_ref, run as separate processes with /usr/bin/python3.

  HWAGA_BIN         the hwaga executable (ctest sets it)
  HWAGA_SOURCE_DIR  the source tree (ctest sets it; defaults to this file's ../..)
"""
import os
import subprocess
import sys
import time
import unittest

import numpy as np

SOURCE_DIR = os.environ.get("HWAGA_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HWAGA_BIN = os.environ.get("HWAGA_BIN") or os.path.join(SOURCE_DIR, "build", "hwaga")
TORCH_REF = os.path.join(SOURCE_DIR, "tests", "parity", "torch_ref")
PYTHON = "/usr/bin/python3"  # the interpreter with torch (not a pyenv one on PATH)

sys.path.insert(0, TORCH_REF)
import pngio  # noqa: E402  (PNG reader/writer shared with run_reference.py)
from pngio import write_png  # noqa: E402,F401  (uint8 [H,W,3] + tEXt; used by the tests)


# ---------------------------------------------------------------- running things

def run(args, timeout=900, env=None, check=False):
    """Runs a command, returns CompletedProcess (text). Raises AssertionError on a crash (signal)."""
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.run([str(a) for a in args], capture_output=True, encoding="utf-8", errors="backslashreplace", timeout=timeout, env=e)
    sanitizer = any(s in p.stderr for s in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"))
    # 86: the exit code tools/test.sh gives sanitizer reports; 134/136/139: abort, FPE, segfault
    if p.returncode < 0 or p.returncode in (86, 134, 136, 139) or sanitizer:
        raise AssertionError("crashed (rc %d): %s\nstdout:\n%s\nstderr:\n%s" % (p.returncode, " ".join(map(str, args)), p.stdout, p.stderr))
    if check and p.returncode != 0:
        raise AssertionError("failed (rc %d): %s\nstdout:\n%s\nstderr:\n%s" % (p.returncode, " ".join(map(str, args)), p.stdout, p.stderr))
    return p


def hwaga(*args, **kw):
    return run([HWAGA_BIN] + list(args), **kw)


def torch_ref(script, *args, **kw):
    kw.setdefault("check", True)
    return run([PYTHON, os.path.join(TORCH_REF, script)] + list(args), **kw)


def make_checkpoint(out_dir, kind, size="tiny", variant="attn8", n_embed=None, seed=0):
    """tests/parity/torch_ref/make_checkpoint.py: random weights in the released layout.
    rq-vae: out_dir/model.pt + config.yaml; vqgan: out_dir/stage1_last.ckpt + config.yaml."""
    args = ["--kind", kind, "--size", size, "--seed", str(seed), "--out", out_dir]
    if kind == "rq-vae":
        args += ["--variant", variant]
    if n_embed is not None:
        args += ["--n-embed", str(n_embed)]
    torch_ref("make_checkpoint.py", *args, timeout=600)
    return out_dir


def checkpoint_file(ckpt_dir, kind):
    return os.path.join(ckpt_dir, "model.pt" if kind == "rq-vae" else "stage1_last.ckpt")


# ---------------------------------------------------------------- PNG (no PIL needed)

def read_png(path):
    """Returns (uint8 [H,W,C], {tEXt key: value}); an unreadable PNG fails the test (AssertionError)."""
    try:
        return pngio.read_png(path)
    except pngio.PngError as e:
        raise AssertionError(str(e)) from None


def test_picture(seed, size=256):
    """A deterministic picture with smooth gradients, hard edges and a little noise: uint8 [S,S,3]."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    f = rng.uniform(1, 4, size=3)
    ph = rng.uniform(0, 2 * np.pi, size=3)
    img = np.stack([0.5 + 0.5 * np.sin(2 * np.pi * f[c] * (x * np.cos(ph[c]) + y * np.sin(ph[c])) + ph[c]) for c in range(3)], -1)
    for _ in range(3):  # a few flat rectangles
        x0, y0 = rng.randint(0, size // 2, size=2)
        w0, h0 = rng.randint(size // 8, size // 2, size=2)
        img[y0:y0 + h0, x0:x0 + w0] = rng.uniform(0, 1, size=3)
    img += rng.normal(0, 0.03, size=img.shape)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def write_test_pictures(folder, n, size=256, seed0=0):
    paths = []
    for i in range(n):
        p = os.path.join(folder, "pic%d.png" % i)
        write_png(p, test_picture(seed0 + i, size))
        paths.append(p)
    return paths


def to_pixels(x):
    """Decoder output in [-1,1] -> 8-bit, as hwaga's PNG writer and the pipelines do."""
    return np.round(np.clip(x * 0.5 + 0.5, 0.0, 1.0) * 255.0).astype(np.int32)


# ---------------------------------------------------------------- unittest driver

def main():
    """unittest.main with a closing "N passed, M failed" line and a real exit status."""
    loader = unittest.TestLoader()
    module = sys.modules["__main__"]
    names = [a for a in sys.argv[1:] if not a.startswith("-")]  # optional: Class or Class.test_x
    suite = loader.loadTestsFromNames(names, module) if names else loader.loadTestsFromModule(module)
    t0 = time.time()
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    # a skipped setUpClass is listed in result.skipped but was never counted in testsRun
    passed = result.testsRun - failed - sum(1 for t, _ in result.skipped if isinstance(t, unittest.TestCase))
    print("%d passed, %d failed, %d skipped (%.1f s)" % (passed, failed, skipped, time.time() - t0))
    sys.exit(0 if failed == 0 and result.testsRun > 0 else 1)
