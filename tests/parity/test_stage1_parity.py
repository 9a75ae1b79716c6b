"""Stage-1 parity: hwaga's image tokenizers against the PyTorch reference, end to end.

For each case: tests/parity/torch_ref/make_checkpoint.py writes random weights in the released
layout -> `hwaga convert` -> `hwaga encode` / `hwaga decode` on the CLI, and
tests/parity/torch_ref/run_reference.py runs the same checkpoint in PyTorch (the taming/RQ module
tree, independent of hwaga). Compared:

  codes   identical (encode of the same pictures);
  decode  of the reference's codes (and of one random code stack covering the whole codebook):
          raw float output within ATOL*scale + RTOL*|ref|, scale = max(1, max|ref|), and 8-bit
          pixels within one level.

Why these tolerances. Both sides compute in float32 but sum in different orders (oneDNN/BLAS
blocking against hwaga's kernels, GroupNorm statistics, softmax), so each conv/GEMM output
carries a relative rounding error of about sqrt(fan_in) * 2^-24 ~ 1e-6 (fan_in <= 512*9). A
decoder is 20 (tiny) to 40 (full) such layers deep; errors add up along the residual stream and
GroupNorm rescales them with the activations, so they are relative to the activations' size,
which the output's range tracks (max|ref| ~2-3 with random weights): hence the `scale` factor.
Measured (2026-11, AMX oneDNN on one side, MKL-less PyTorch on the other): max |diff| ~1e-5 at
tiny size and ~6e-5 at full size against max|ref| ~3, i.e. 2e-5 x scale. ATOL = 1e-4 leaves a 5x
margin at full size for other CPUs' kernels, and still catches real mistakes (a wrong padding,
a missing bias or a swapped GroupNorm eps shows up at 1e-2 or more). One 8-bit level is
2/255 ~ 7.8e-3 in [-1,1] units; a 1e-4 difference can still move a value across a rounding
boundary, hence "within one level", never more.

Codes must match exactly. An argmin could flip on a near tie (distances equal to within float32
rounding of z_e, which differs between the engines by ~1e-5 relative); the test prints the smallest relative margin between the best and the
second-best code (computed here in float64 from the reference's z_e and the file's codebook), and
a mismatch is reported with its position and its margin.

bf16: see class BF16.

Time: the tiny models take seconds; the two full-size cases (one RQ-VAE, the VQGAN) run ~100M
parameter conv nets at 256x256 on one picture, about a minute each on 2 cores.
Set HWAGA_PARITY_FULL=0 to skip them locally.
"""
import json
import os
import shutil
import struct
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.join(os.environ.get("HWAGA_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..", ".."), "tests", "cli"))
import hwaga_testlib as T  # noqa: E402

ATOL = 1e-4
RTOL = 1e-4
THREADS = "2"
RUN_FULL = os.environ.get("HWAGA_PARITY_FULL", "1") != "0"


def read_model_tensor(path, name):
    """One tensor of a hwaga (safetensors) model file as float64 numpy, read here without hwaga."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        info = header[name]
        a, b = info["data_offsets"]
        f.seek(8 + n + a)
        dt = {"F32": np.float32, "F16": np.float16}[info["dtype"]]
        return np.frombuffer(f.read(b - a), dtype=dt).reshape(info["shape"]).astype(np.float64)


def code_margins(ze, codebook, K, codes):
    """For each position and depth: (second-best - best) squared distance, relative to
    ||r||^2 + ||e_best||^2 (the size of the terms whose float32 rounding could flip the argmin).
    ze [N,h,w,E] (the reference encoder's output), codes [N,h,w,D]. Returns [N,h,w,D]."""
    cb = codebook[:K]
    E = cb.shape[1]
    r = ze.reshape(-1, E).astype(np.float64)
    c = codes.reshape(r.shape[0], -1)
    out = np.zeros(c.shape)
    e2 = (cb ** 2).sum(1)
    for d in range(c.shape[1]):
        r2 = (r ** 2).sum(1, keepdims=True)
        dist = r2 + e2[None, :] - 2.0 * r @ cb.T
        two = np.partition(dist, 1, axis=1)[:, :2]
        out[:, d] = (two[:, 1] - two[:, 0]) / (r2[:, 0] + e2[c[:, d]])
        r = r - cb[c[:, d]]
    return out.reshape(codes.shape)


def model_config(path):
    """The "stage1" config of a hwaga model file, read straight from the safetensors header."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return json.loads(header["__metadata__"]["config"])["stage1"]


class Stage1Case:
    """One checkpoint: made, converted, and its reference outputs computed once."""

    def __init__(self, tmp, name, kind, size, variant="attn8", n_embed=None, n_pictures=3, seed=1):
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir)
        self.kind = kind
        self.ckpt = T.make_checkpoint(os.path.join(self.dir, "ckpt"), kind, size=size, variant=variant, n_embed=n_embed, seed=seed)
        self.model = os.path.join(self.dir, "tok.safetensors")
        T.hwaga("convert", kind, self.ckpt, "-o", self.model, "--threads", THREADS, check=True)
        cfg = model_config(self.model)
        self.R = int(cfg["resolution"])
        self.K = int(cfg["n_embed"])
        self.code_shape = tuple(int(v) for v in cfg["code_shape"])
        self.pictures = T.write_test_pictures(self.dir, n_pictures, size=self.R, seed0=100 * seed)

    def path(self, name):
        return os.path.join(self.dir, name)

    def ref_encode(self):
        """Reference codes [N,h,w,D] and the reference encoder output z_e [N,h,w,E]."""
        out, ze = self.path("ref_codes.npy"), self.path("ref_ze.npy")
        T.torch_ref("run_reference.py", "encode", "--ckpt", self.ckpt, "--kind", self.kind, "--images", *self.pictures,
                    "--out", out, "--dump-ze", ze, timeout=900)
        return np.load(out), np.load(ze)

    def codebook(self):
        name = "stage1.quantizer.codebooks.0.weight" if self.kind == "rq-vae" else "stage1.quantize.embedding.weight"
        return read_model_tensor(self.model, name)

    def ref_decode(self, codes_path):
        out = codes_path[:-4] + "_ref_pixels.npy"
        T.torch_ref("run_reference.py", "decode", "--ckpt", self.ckpt, "--kind", self.kind, "--codes", codes_path, "--out", out, timeout=900)
        return np.load(out)

    def hw_encode(self, model=None):
        out = self.path("hw_codes.npy")
        T.hwaga("encode", "-m", model or self.model, *self.pictures, "-o", out, "--threads", THREADS, "--device", "cpu", check=True, timeout=900)
        return np.load(out)

    def hw_decode(self, codes_path, model=None, tag="hw"):
        out = codes_path[:-4] + "_%s_pixels.npy" % tag
        T.hwaga("decode", "-m", model or self.model, codes_path, "-o", out, "--threads", THREADS, "--device", "cpu", check=True, timeout=900)
        return np.load(out)

    def random_codes(self, n=1, seed=7):
        """Code stacks drawn so that every depth sees small, large and edge indices (0 and K-1)."""
        rng = np.random.RandomState(seed)
        c = rng.randint(0, self.K, size=(n,) + self.code_shape).astype(np.int32)
        c.reshape(-1)[0] = 0
        c.reshape(-1)[-1] = self.K - 1
        path = self.path("random_codes.npy")
        np.save(path, c)
        return path


class ParityMixin:
    """Checks shared by every case; subclasses set `case` in setUpClass."""

    def check_encode(self):
        c = self.case
        ref, ze = c.ref_encode()
        hw = c.hw_encode()
        self.assertEqual(hw.dtype, np.int32)
        self.assertEqual(hw.shape, (len(c.pictures),) + c.code_shape)
        self.assertEqual(tuple(ref.shape), hw.shape, "reference codes have another shape")
        margins = code_margins(ze, c.codebook(), c.K, ref)
        print("  %s codes: smallest relative margin between best and second-best code %.3g" % (
            c.kind, margins.min()))
        diff = np.argwhere(ref.astype(np.int64) != hw.astype(np.int64))
        if len(diff):
            at = tuple(diff[0])
            self.fail("%d of %d codes differ; first at %s: ref %d hwaga %d, margin there %.3g%s" % (
                len(diff), hw.size, list(at), ref[at], hw[at], margins[at],
                " (a near tie: z_e differs between the two engines by ~1e-5 relative, which can flip it)" if margins[at] < 1e-4 else ""))
        return ref

    def compare_pixels(self, ref, hw, what):
        self.assertEqual(ref.shape, hw.shape, what)
        self.assertEqual(hw.dtype, np.float32, what)
        self.assertTrue(np.all(np.isfinite(hw)), what + ": non-finite output")
        err = np.abs(hw.astype(np.float64) - ref.astype(np.float64))
        scale = max(1.0, float(np.abs(ref).max()))
        bound = ATOL * scale + RTOL * np.abs(ref.astype(np.float64))
        worst = np.unravel_index(np.argmax(err - bound), err.shape)
        print("  %s: max |diff| %.3g (at %s, ref %.4g), mean %.3g, max |ref| %.3g" % (
            what, err.max(), list(worst), ref[worst], err.mean(), np.abs(ref).max()))
        self.assertTrue(np.all(err <= bound), "%s: float output differs by %.3g at %s (allowed %.3g)" % (
            what, err[worst], list(worst), bound[worst]))
        px = np.abs(T.to_pixels(hw) - T.to_pixels(ref))
        self.assertLessEqual(int(px.max()), 1, what + ": 8-bit pixels differ by more than one level")

    def check_decode(self, ref_codes):
        c = self.case
        codes_path = c.path("ref_codes_for_decode.npy")
        np.save(codes_path, ref_codes)
        self.compare_pixels(c.ref_decode(codes_path), c.hw_decode(codes_path), c.kind + " decode(reference codes)")
        rnd = c.random_codes()
        self.compare_pixels(c.ref_decode(rnd), c.hw_decode(rnd), c.kind + " decode(random codes)")

    def test_encode_decode(self):
        ref_codes = self.check_encode()
        self.check_decode(ref_codes)


def make_case_class(name, kind, size, variant="attn8", n_embed=None, n_pictures=3, seed=1, full=False):
    class Case(ParityMixin, unittest.TestCase):
        @classmethod
        def setUpClass(cls):
            if full and not RUN_FULL:
                raise unittest.SkipTest("HWAGA_PARITY_FULL=0")
            cls.tmp = tempfile.TemporaryDirectory(prefix="hwaga-parity-")
            cls.case = Stage1Case(cls.tmp.name, name, kind, size, variant, n_embed, n_pictures, seed)

        @classmethod
        def tearDownClass(cls):
            cls.tmp.cleanup()

    Case.__name__ = Case.__qualname__ = name
    return Case


TinyRQAttn8 = make_case_class("TinyRQAttn8", "rq-vae", "tiny", "attn8", 16384, seed=1)
TinyRQAttn16 = make_case_class("TinyRQAttn16", "rq-vae", "tiny", "attn16", 2048, seed=2)
TinyVQGAN = make_case_class("TinyVQGAN", "vqgan", "tiny", seed=3)
FullRQAttn8 = make_case_class("FullRQAttn8", "rq-vae", "full", "attn8", 16384, n_pictures=1, seed=4, full=True)
FullVQGAN = make_case_class("FullVQGAN", "vqgan", "full", n_pictures=1, seed=5, full=True)


def round_checkpoint_to_bf16(src_dir, dst_dir, kind):
    """A copy of the checkpoint whose float weights are rounded to bf16 (round to nearest even,
    as torch's .bfloat16() does) and stored back as float32: what hwaga's bf16 file must equal."""
    shutil.copytree(src_dir, dst_dir)
    f = T.checkpoint_file(dst_dir, kind)
    script = (
        "import sys, torch\n"
        "class LightningHyperParameters: pass\n"
        "ck = torch.load(sys.argv[1], map_location='cpu')\n"
        "sd = ck['state_dict']\n"
        "for k, v in sd.items():\n"
        "    if v.is_floating_point(): sd[k] = v.bfloat16().float()\n"
        "torch.save(ck, sys.argv[1])\n")
    T.run([T.PYTHON, "-c", script, f], check=True, timeout=300)
    return dst_dir


class BF16(unittest.TestCase):
    """convert --dtype bf16.

    1. hwaga on the bf16 file == PyTorch on the same checkpoint with every weight rounded to
       bf16 (computed in f32), within the f32 tolerances above: the conversion rounds exactly
       (nearest even) and the engine widens bf16 weights correctly.
    2. Against the f32 model the output moves by what 8-bit mantissas imply: each weight changes
       by up to 2^-9 relative (rms ~1.1e-3, random sign); ~20 layers compound that to a few 1e-3
       relative in the output (measured on this tiny RQ-VAE: mean |diff| ~2.5e-3 x scale, max
       ~2.5e-2 x scale). Bounds 4x above that (mean 1e-2, max 1e-1, x scale = max(1, max|f32|));
       a misread bf16 (wrong byte order, truncated to 7 bits of exponent, f16 taken for bf16)
       gives errors of order 1.
    """

    def test_bf16_decode(self):
        with tempfile.TemporaryDirectory(prefix="hwaga-parity-bf16-") as tmp:
            c = Stage1Case(tmp, "bf16", "rq-vae", "tiny", "attn8", 16384, n_pictures=1, seed=6)
            bf16 = c.path("tok_bf16.safetensors")
            p = T.hwaga("convert", "rq-vae", c.ckpt, "-o", bf16, "--dtype", "bf16", check=True)
            self.assertIn("bf16", p.stdout)
            # About half the bytes of the f32 file (same header, 2-byte weights).
            self.assertLess(os.path.getsize(bf16), 0.55 * os.path.getsize(c.model))
            codes = c.random_codes(n=2)
            f32 = c.hw_decode(codes, tag="f32").astype(np.float64)
            b16 = c.hw_decode(codes, model=bf16, tag="bf16")

            # 1. exact rounding: against PyTorch on bf16-rounded weights
            rounded = Stage1Case.__new__(Stage1Case)
            rounded.__dict__.update(c.__dict__)
            rounded.ckpt = round_checkpoint_to_bf16(c.ckpt, c.path("ckpt_bf16"), "rq-vae")
            ref = rounded.ref_decode(codes)
            ParityMixin.compare_pixels(self, ref, b16, "bf16 file vs torch(bf16-rounded weights)")

            # 2. distance from the f32 model
            scale = max(1.0, np.abs(f32).max())
            err = np.abs(b16.astype(np.float64) - f32)
            print("  bf16 vs f32 decode: max |diff| %.3g, mean %.3g, scale %.3g" % (err.max(), err.mean(), scale))
            self.assertLessEqual(err.max(), 1e-1 * scale)
            self.assertLessEqual(err.mean(), 1e-2 * scale)
            self.assertGreater(err.max(), 0.0, "bf16 weights gave bit-identical output: were they rounded at all?")


if __name__ == "__main__":
    T.main()
