"""The stage-1 commands end to end: convert, info, encode, decode.

Uses the tiny random-weight checkpoints of tests/parity/torch_ref/make_checkpoint.py (seconds to
run). What the numbers are checked against: the safetensors header read here in Python (tensor
count, parameter count, config), numpy's own reading of the .npy files, and a PNG reader written
here (pixels, tEXt chunks). Numerical agreement with PyTorch is tests/parity's job.
"""
import json
import os
import struct
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hwaga_testlib as T  # noqa: E402

COMMON = ["--threads", "2", "--device", "cpu"]


def safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


class Stage1CLI(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="hwaga-cli-")
        t = cls.tmp.name
        cls.models = {}
        for kind, variant, k in (("rq-vae", "attn8", 512), ("vqgan", None, 256)):
            ck = T.make_checkpoint(os.path.join(t, kind + "-ckpt"), kind, size="tiny", variant=variant or "attn8", n_embed=k, seed=11)
            m = os.path.join(t, kind + ".safetensors")
            p = T.hwaga("convert", kind, ck, "-o", m, *COMMON, check=True)
            cls.models[kind] = (ck, m, p)
        cfg = json.loads(safetensors_header(cls.models["rq-vae"][1])["__metadata__"]["config"])["stage1"]
        cls.R = int(cfg["resolution"])
        cls.pictures = T.write_test_pictures(t, 3, size=cls.R, seed0=40)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def work(self):
        d = tempfile.mkdtemp(dir=self.tmp.name)
        return d

    # ---------------------------------------------------------------- convert / info

    def test_convert_file_layout(self):
        for kind, (ck, m, p) in self.models.items():
            with self.subTest(kind=kind):
                h = safetensors_header(m)
                meta = h.pop("__metadata__")
                self.assertEqual(meta["format"], "hwaga")
                self.assertEqual(meta["version"], "1")
                cfg = json.loads(meta["config"])
                self.assertEqual(set(cfg), {"stage1"})
                self.assertEqual(cfg["stage1"]["type"], kind)
                self.assertTrue(all(k.startswith("stage1.") for k in h), "every tensor is stage1.*")
                self.assertTrue(all(v["dtype"] == "F32" for v in h.values()))
                if kind == "rq-vae":
                    K = cfg["stage1"]["n_embed"]
                    self.assertEqual(h["stage1.quantizer.codebooks.0.weight"]["shape"], [K + 1, cfg["stage1"]["embed_dim"]])
                    # aliases and EMA buffers are dropped
                    self.assertFalse(any("codebooks.1" in k or "_ema" in k for k in h))
                else:
                    self.assertIn("stage1.quantize.embedding.weight", h)
                # the summary names tensors, parameters and the dtype
                n_params = sum(int(np.prod(v["shape"])) for v in h.values())
                self.assertIn("%d tensors" % len(h), p.stdout)
                self.assertIn("(%d)" % n_params, p.stdout)
                self.assertIn("f32", p.stdout)

    def test_info(self):
        for kind, (ck, m, _) in self.models.items():
            with self.subTest(kind=kind):
                p = T.hwaga("info", "-m", m, *COMMON, check=True)
                h = safetensors_header(m)
                meta = h.pop("__metadata__")
                n_params = sum(int(np.prod(v["shape"])) for v in h.values())
                self.assertIn("hwaga, version 1", p.stdout)
                self.assertIn("(%d)" % n_params, p.stdout)          # parameter count
                self.assertIn("f32", p.stdout)                       # dtype
                self.assertIn("stage2:   none", p.stdout)            # no stage 2 needed
                self.assertIn(kind, p.stdout)                        # architecture summary
                self.assertIn('"n_embed"', p.stdout)                 # the config
                self.assertIn("hwaga: using cpu", p.stderr)

    def test_backend_message(self):
        p = T.hwaga("info", "-m", self.models["vqgan"][1], "--threads", "2", "--device", "cpu", check=True)
        self.assertIn("hwaga: using cpu (2 threads", p.stderr)

    def test_convert_bf16(self):
        ck = self.models["rq-vae"][0]
        out = os.path.join(self.work(), "tok16.safetensors")
        p = T.hwaga("convert", "rq-vae", ck, "-o", out, "--dtype", "bf16", *COMMON, check=True)
        h = safetensors_header(out)
        h.pop("__metadata__")
        self.assertTrue(all(v["dtype"] == "BF16" for v in h.values()))
        self.assertIn("bf16", T.hwaga("info", "-m", out, *COMMON, check=True).stdout)
        # convert also accepts the checkpoint file itself
        out2 = os.path.join(self.work(), "tok.safetensors")
        T.hwaga("convert", "rq-vae", T.checkpoint_file(ck, "rq-vae"), "-o", out2, *COMMON, check=True)
        self.assertEqual(open(out2, "rb").read(), open(self.models["rq-vae"][1], "rb").read(),
                         "converting the folder and the file gives the same bytes")

    # ---------------------------------------------------------------- encode / decode

    def test_round_trip_shapes_and_png_text(self):
        for kind, (ck, m, _) in self.models.items():
            with self.subTest(kind=kind):
                d = self.work()
                cfg = json.loads(safetensors_header(m)["__metadata__"]["config"])["stage1"]
                codes = os.path.join(d, "codes.npy")
                T.hwaga("encode", "-m", m, *self.pictures, "-o", codes, "--batch", "2", *COMMON, check=True)
                c = np.load(codes)
                self.assertEqual(c.dtype, np.int32)
                self.assertEqual(c.shape, (3,) + tuple(cfg["code_shape"]))
                self.assertTrue(c.min() >= 0 and c.max() < cfg["n_embed"])
                p = T.hwaga("decode", "-m", m, codes, "-o", os.path.join(d, "out_%03d.png"), *COMMON, check=True)
                names = sorted(os.listdir(d))
                self.assertEqual(names, ["codes.npy", "out_000.png", "out_001.png", "out_002.png"], p.stdout)
                for i in range(3):
                    img, text = T.read_png(os.path.join(d, "out_%03d.png" % i))
                    self.assertEqual(img.shape, (self.R, self.R, 3))
                    self.assertTrue(text.get("Software", "").startswith("hwaga "), text)
                    self.assertEqual(text.get("hwaga.model"), os.path.basename(m))
                    self.assertEqual(text.get("hwaga.codes"), "codes.npy")
                    self.assertEqual(text.get("hwaga.index"), str(i))
                    self.assertIn("decode", text.get("hwaga.settings", ""))
                # PNG pixels are the raw decoder output quantised as documented
                raw = os.path.join(d, "raw.npy")
                T.hwaga("decode", "-m", m, codes, "-o", raw, *COMMON, check=True)
                x = np.load(raw)
                self.assertEqual(x.shape, (3, 3, self.R, self.R))
                self.assertEqual(x.dtype, np.float32)
                img, _ = T.read_png(os.path.join(d, "out_001.png"))
                want = T.to_pixels(x[1]).transpose(1, 2, 0)
                diff = np.abs(img.astype(np.int32) - want)
                self.assertLessEqual(int(diff.max()), 1)            # float32 vs float64 rounding at .5
                self.assertGreater(np.mean(diff == 0), 0.999)

    def test_batch_size_does_not_change_results(self):
        m = self.models["rq-vae"][1]
        d = self.work()
        a, b = os.path.join(d, "a.npy"), os.path.join(d, "b.npy")
        T.hwaga("encode", "-m", m, *self.pictures, "-o", a, "--batch", "1", *COMMON, check=True)
        T.hwaga("encode", "-m", m, *self.pictures, "-o", b, "--batch", "3", *COMMON, check=True)
        np.testing.assert_array_equal(np.load(a), np.load(b))
        ra, rb = os.path.join(d, "ra.npy"), os.path.join(d, "rb.npy")
        T.hwaga("decode", "-m", m, a, "-o", ra, "--batch", "1", *COMMON, check=True)
        T.hwaga("decode", "-m", m, a, "-o", rb, "--batch", "2", *COMMON, check=True)
        # Same maths per picture; allow float reassociation if a kernel blocks over the batch.
        np.testing.assert_allclose(np.load(ra), np.load(rb), rtol=0, atol=1e-5)

    def test_int64_codes_accepted(self):
        m = self.models["vqgan"][1]
        cfg = json.loads(safetensors_header(m)["__metadata__"]["config"])["stage1"]
        d = self.work()
        c = np.random.RandomState(0).randint(0, cfg["n_embed"], size=(1,) + tuple(cfg["code_shape"])).astype(np.int64)
        np.save(os.path.join(d, "c64.npy"), c)
        T.hwaga("decode", "-m", m, os.path.join(d, "c64.npy"), "-o", os.path.join(d, "one.png"), *COMMON, check=True)
        img, text = T.read_png(os.path.join(d, "one.png"))
        self.assertEqual(img.shape, (self.R, self.R, 3))
        self.assertEqual(text["hwaga.index"], "0")

    def test_pattern_expansion(self):
        m = self.models["rq-vae"][1]
        cfg = json.loads(safetensors_header(m)["__metadata__"]["config"])["stage1"]
        d = self.work()
        codes = os.path.join(d, "c.npy")
        np.save(codes, np.random.RandomState(1).randint(0, cfg["n_embed"], size=(2,) + tuple(cfg["code_shape"])).astype(np.int32))
        cases = [
            ("img-%d.png", ["img-0.png", "img-1.png"]),
            ("p_%05d.png", ["p_00000.png", "p_00001.png"]),
            ("pct%%_%d.png", ["pct%_0.png", "pct%_1.png"]),
            ("w%3d.png", ["w  0.png", "w  1.png"]),
        ]
        for pattern, want in cases:
            with self.subTest(pattern=pattern):
                sub = tempfile.mkdtemp(dir=d)
                T.hwaga("decode", "-m", m, codes, "-o", os.path.join(sub, pattern), *COMMON, check=True)
                self.assertEqual(sorted(os.listdir(sub)), want)
        # no field with two pictures, a bad field, two fields: exit 1, nothing written
        for pattern in ("plain.png", "bad_%s.png", "two_%d_%d.png", "trail%"):
            with self.subTest(pattern=pattern):
                sub = tempfile.mkdtemp(dir=d)
                p = T.hwaga("decode", "-m", m, codes, "-o", os.path.join(sub, pattern), *COMMON)
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertIn("hwaga decode: error:", p.stderr)
                self.assertIn(pattern, p.stderr)
                self.assertEqual(os.listdir(sub), [])

    def test_bad_options_exit_2(self):
        m = self.models["rq-vae"][1]
        for args in (["encode", "-m", m, "-o", "x.npy"],                 # no images
                     ["encode", self.pictures[0], "-o", "x.npy"],         # no -m
                     ["decode", "-m", m, "c.npy", "-o", "x.png", "--batch", "0"],
                     ["info", "-m", m, "--device", "tpu"],
                     ["info", "-m", m, "--threads", "-1"],
                     ["convert", "rq-vae", "dir", "-o", "x", "--dtype", "f64"],
                     ["convert", "resnet", "dir", "-o", "x"],
                     ["convert"],
                     ["frobnicate"],
                     []):
            with self.subTest(args=args):
                p = T.hwaga(*args)
                self.assertEqual(p.returncode, 2, p.stdout + p.stderr)

    def test_help_exit_0(self):
        for args in (["--help"], ["encode", "--help"], ["convert", "rq-vae", "--help"]):
            with self.subTest(args=args):
                p = T.hwaga(*args)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertIn("Usage", p.stdout)


if __name__ == "__main__":
    T.main()
