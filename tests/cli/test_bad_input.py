"""Bad input to the stage-1 commands: every case must exit 1 (2 for bad options) with a message
"hwaga <cmd>: error: ..." that names the offending file, leave no output file behind, and never
crash (no signal, no abort). Run under the ASan/UBSan build too, where a crash would show.

Broken inputs are made here from the tiny random-weight checkpoints of
tests/parity/torch_ref/make_checkpoint.py: truncated and corrupted files, edited configs and
state_dicts re-saved with torch.save, a zip with a storage removed, a pickle that names a
callable (which, were it ever run, would create a marker file).
"""
import os
import shutil
import stat
import sys
import tempfile
import unittest
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hwaga_testlib as T  # noqa: E402

COMMON = ["--threads", "2", "--device", "cpu"]


def torch_edit(src, dst, code):
    """Loads the checkpoint `src` with torch, runs `code` on `ck` (the whole dict) and `sd`
    (ck['state_dict']), saves to `dst` with torch.save (the zip format the releases use)."""
    script = (
        "import os, sys, torch\n"
        "class LightningHyperParameters:  # make_checkpoint's stand-in for pickled OmegaConf objects\n"
        "    pass\n"
        "ck = torch.load(sys.argv[1], map_location='cpu')\n"
        "sd = ck['state_dict']\n"
        + code + "\n"
        "torch.save(ck, sys.argv[2])\n")
    T.run([T.PYTHON, "-c", script, src, dst], check=True, timeout=300)


class BadInput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="hwaga-bad-")
        t = cls.tmp.name
        cls.rq_ckpt = T.make_checkpoint(os.path.join(t, "rq"), "rq-vae", size="tiny", variant="attn8", n_embed=256, seed=21)
        cls.vq_ckpt = T.make_checkpoint(os.path.join(t, "vq"), "vqgan", size="tiny", n_embed=128, seed=22)
        cls.model = os.path.join(t, "rq.safetensors")
        T.hwaga("convert", "rq-vae", cls.rq_ckpt, "-o", cls.model, *COMMON, check=True)
        import json, struct
        with open(cls.model, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            cfg = json.loads(json.loads(f.read(n))["__metadata__"]["config"])["stage1"]
        cls.R, cls.K, cls.code_shape = int(cfg["resolution"]), int(cfg["n_embed"]), tuple(cfg["code_shape"])
        cls.picture = T.write_test_pictures(t, 1, size=cls.R, seed0=5)[0]

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def setUp(self):
        self.d = tempfile.mkdtemp(dir=self.tmp.name)

    # ------------------------------------------------------------ helpers

    def expect_error(self, cmd, args, names, out=None, rc=1, also=()):
        """Runs `hwaga cmd args`; checks the exit code, the message, and that `out` was not created."""
        p = T.hwaga(cmd, *args, *COMMON)
        msg = p.stdout + p.stderr
        self.assertEqual(p.returncode, rc, "expected exit %d from hwaga %s %s\n%s" % (rc, cmd, args, msg))
        if rc == 1:
            self.assertIn("hwaga %s: error:" % cmd, p.stderr)
            self.assertIn(names, p.stderr, "the message should name %s" % names)
            for a in also:
                self.assertIn(a, p.stderr)
        if out is not None:
            self.assertFalse(os.path.exists(out), "%s was left behind" % out)
        for leftover in os.listdir(os.path.dirname(out) if out else self.d):
            self.assertNotIn("partial", leftover)
            self.assertNotIn(".tmp", leftover)
        return p

    def copy_ckpt(self, src, kind):
        dst = os.path.join(self.d, "ckpt")
        shutil.copytree(src, dst)
        return dst, T.checkpoint_file(dst, kind)

    def convert_fails(self, ckpt_dir, kind, names, also=()):
        out = os.path.join(self.d, "out.safetensors")
        return self.expect_error("convert", [kind, ckpt_dir, "-o", out], names, out=out, also=also)

    # ------------------------------------------------------------ checkpoints

    def test_truncated_model_pt(self):
        for frac in (0.5, 0.99, 0.01):
            with self.subTest(frac=frac):
                self.setUp()
                d, f = self.copy_ckpt(self.rq_ckpt, "rq-vae")
                data = open(f, "rb").read()
                open(f, "wb").write(data[:int(len(data) * frac)])
                self.convert_fails(d, "rq-vae", f)

    def test_corrupt_model_pt(self):
        d, f = self.copy_ckpt(self.rq_ckpt, "rq-vae")
        data = bytearray(open(f, "rb").read())
        with zipfile.ZipFile(f) as z:
            info = [i for i in z.infolist() if i.filename.endswith("data.pkl")][0]
        # overwrite the middle of the pickle with garbage (the zip CRC no longer matches)
        start = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2
        data[start:start + 16] = b"\xff" * 16
        open(f, "wb").write(bytes(data))
        self.convert_fails(d, "rq-vae", f)

    def test_not_a_zip(self):
        d, f = self.copy_ckpt(self.vq_ckpt, "vqgan")
        open(f, "wb").write(b"this is not a checkpoint\n" * 100)
        self.convert_fails(d, "vqgan", f)

    def test_wrong_shape_in_state_dict(self):
        d, f = self.copy_ckpt(self.rq_ckpt, "rq-vae")
        torch_edit(f, f, "sd['decoder.conv_out.weight'] = sd['decoder.conv_out.weight'][:, :, :2, :].clone()")
        p = self.convert_fails(d, "rq-vae", f, also=("decoder.conv_out.weight",))
        self.assertRegex(p.stderr, r"\[3, \d+, 2, 3\]")  # found
        self.assertRegex(p.stderr, r"\[3, \d+, 3, 3\]")  # expected

    def test_missing_tensor(self):
        d, f = self.copy_ckpt(self.vq_ckpt, "vqgan")
        torch_edit(f, f, "del sd['quantize.embedding.weight']")
        self.convert_fails(d, "vqgan", f, also=("quantize.embedding.weight",))

    def test_unknown_callable_in_state_dict(self):
        marker = os.path.join(self.d, "EXECUTED")
        d, f = self.copy_ckpt(self.rq_ckpt, "rq-vae")
        torch_edit(f, f, (
            "class Evil:\n"
            "    def __reduce__(self):\n"
            "        return (os.system, ('touch %s',))\n"
            "sd['encoder.conv_in.bias'] = Evil()\n") % marker)
        self.convert_fails(d, "rq-vae", f)
        self.assertFalse(os.path.exists(marker), "the pickle's callable was executed")

    def test_unknown_callable_outside_state_dict_is_fine(self):
        # Lightning checkpoints carry other pickled objects next to the weights; they are skipped.
        d, f = self.copy_ckpt(self.vq_ckpt, "vqgan")
        torch_edit(f, f, "import collections, fractions\nck['hparams'] = fractions.Fraction(1, 3)\nck['counter'] = collections.Counter('abc')")
        out = os.path.join(self.d, "ok.safetensors")
        T.hwaga("convert", "vqgan", d, "-o", out, *COMMON, check=True)
        self.assertTrue(os.path.exists(out))

    def test_unexpected_tensor_warns(self):
        d, f = self.copy_ckpt(self.vq_ckpt, "vqgan")
        torch_edit(f, f, "sd['loss.discriminator.main.0.weight'] = torch.zeros(4, 3, 4, 4)")
        out = os.path.join(self.d, "ok.safetensors")
        p = T.hwaga("convert", "vqgan", d, "-o", out, *COMMON, check=True)
        self.assertIn("warning", p.stderr)
        self.assertIn("loss.discriminator.main.0.weight", p.stderr)

    def test_missing_storage_in_zip(self):
        d, f = self.copy_ckpt(self.rq_ckpt, "rq-vae")
        with zipfile.ZipFile(f) as z:
            items = [(i, z.read(i.filename)) for i in z.infolist()]
        # torch.save numbers storages in the order the pickle meets them; the state_dict comes
        # first, so storage 0 is the first weight (encoder.conv_in.weight), which convert needs.
        drop = [i.filename for i, _ in items if i.filename.endswith("/data/0")]
        self.assertEqual(len(drop), 1)
        drop = drop[0]
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            for i, data in items:
                if i.filename != drop:
                    z.writestr(i, data)
        self.convert_fails(d, "rq-vae", f)

    def test_config_unknown_value(self):
        import yaml
        edits = [
            ("rq-vae", self.rq_ckpt, lambda y: y["arch"]["hparams"].__setitem__("bottleneck_type", "sq")),
            ("rq-vae", self.rq_ckpt, lambda y: y["arch"].__setitem__("type", "rq-vae-2")),
            ("rq-vae", self.rq_ckpt, lambda y: y["arch"]["ddconfig"].__setitem__("attn_resolutions", [7])),
            ("vqgan", self.vq_ckpt, lambda y: y["stage1"].__setitem__("type", "vq-diffusion")),
            ("vqgan", self.vq_ckpt, lambda y: y["stage1"].__setitem__("n_embed", "many")),
        ]
        for i, (kind, src, edit) in enumerate(edits):
            with self.subTest(case=i, kind=kind):
                self.setUp()
                d, _ = self.copy_ckpt(src, kind)
                cfg = os.path.join(d, "config.yaml")
                y = yaml.safe_load(open(cfg))
                edit(y)
                yaml.safe_dump(y, open(cfg, "w"))
                self.convert_fails(d, kind, "config.yaml")

    def test_config_not_yaml_or_missing(self):
        d, _ = self.copy_ckpt(self.rq_ckpt, "rq-vae")
        open(os.path.join(d, "config.yaml"), "w").write("arch: [unclosed\n  : :\n")
        self.convert_fails(d, "rq-vae", "config.yaml")
        os.remove(os.path.join(d, "config.yaml"))
        self.convert_fails(d, "rq-vae", "config.yaml")
        self.convert_fails(os.path.join(self.d, "no-such-folder"), "rq-vae", "no-such-folder")

    # ------------------------------------------------------------ model files

    def broken_model(self, mutate):
        f = os.path.join(self.d, "broken.safetensors")
        data = bytearray(open(self.model, "rb").read())
        open(f, "wb").write(bytes(mutate(data)))
        return f

    def model_fails_everywhere(self, f):
        codes = os.path.join(self.d, "c.npy")
        np.save(codes, np.zeros((1,) + self.code_shape, np.int32))
        self.expect_error("info", ["-m", f], f)
        self.expect_error("encode", ["-m", f, self.picture, "-o", os.path.join(self.d, "o.npy")], f, out=os.path.join(self.d, "o.npy"))
        self.expect_error("decode", ["-m", f, codes, "-o", os.path.join(self.d, "o.png")], f, out=os.path.join(self.d, "o.png"))

    def test_truncated_safetensors(self):
        for cut in (4, 100, None):
            with self.subTest(cut=cut):
                self.model_fails_everywhere(self.broken_model(lambda b: b[:cut] if cut else b[:len(b) - 1000]))

    def test_corrupt_safetensors_header(self):
        def garble(b):
            b[20:60] = b"\xff" * 40
            return b
        self.model_fails_everywhere(self.broken_model(garble))

    def test_huge_header_length(self):
        def huge(b):
            b[0:8] = (1 << 62).to_bytes(8, "little")
            return b
        self.model_fails_everywhere(self.broken_model(huge))

    def test_not_a_hwaga_file(self):
        # a plain safetensors file without the hwaga metadata
        import json, struct
        f = os.path.join(self.d, "plain.safetensors")
        header = json.dumps({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
        open(f, "wb").write(struct.pack("<Q", len(header)) + header + b"\0" * 8)
        self.model_fails_everywhere(f)

    # ------------------------------------------------------------ pictures and codes

    def test_text_file_as_picture(self):
        bad = os.path.join(self.d, "notes.png")
        open(bad, "w").write("this is a text file, not a picture\n")
        out = os.path.join(self.d, "codes.npy")
        self.expect_error("encode", ["-m", self.model, self.picture, bad, "-o", out], bad, out=out)
        self.expect_error("encode", ["-m", self.model, os.path.join(self.d, "missing.png"), "-o", out], "missing.png", out=out)

    def test_truncated_png(self):
        bad = os.path.join(self.d, "cut.png")
        data = open(self.picture, "rb").read()
        open(bad, "wb").write(data[:len(data) // 3])
        out = os.path.join(self.d, "codes.npy")
        self.expect_error("encode", ["-m", self.model, bad, "-o", out], bad, out=out)

    def test_codes_out_of_range(self):
        for bad_value in (self.K, -1, 2**31 - 1):
            with self.subTest(value=bad_value):
                c = np.zeros((2,) + self.code_shape, np.int32)
                c[1, 0, 1, 0] = bad_value
                codes = os.path.join(self.d, "c.npy")
                np.save(codes, c)
                out = os.path.join(self.d, "o_%d.png")
                p = self.expect_error("decode", ["-m", self.model, codes, "-o", out], codes, also=("out of range", str(self.K)))
                self.assertEqual(sorted(os.listdir(self.d)), ["c.npy"])
        c64 = np.zeros((1,) + self.code_shape, np.int64)
        c64[0, 0, 0, 0] = 2**40
        np.save(os.path.join(self.d, "c64.npy"), c64)
        self.expect_error("decode", ["-m", self.model, os.path.join(self.d, "c64.npy"), "-o", os.path.join(self.d, "x.png")], "c64.npy",
                          out=os.path.join(self.d, "x.png"))

    def test_codes_wrong_shape_or_type(self):
        h, w, dd = self.code_shape
        for shape in ((1, h, w), (1, h + 1, w, dd), (1, h, w, dd + 1), (h, w, dd), (0, h, w, dd)):
            with self.subTest(shape=shape):
                codes = os.path.join(self.d, "c.npy")
                np.save(codes, np.zeros(shape, np.int32))
                p = self.expect_error("decode", ["-m", self.model, codes, "-o", os.path.join(self.d, "o.png")], codes,
                                      out=os.path.join(self.d, "o.png"))
                if len(shape) == 4 and shape[0] > 0:
                    self.assertIn("[N, %d, %d, %d]" % self.code_shape, p.stderr)  # says what was expected
        codes = os.path.join(self.d, "f.npy")
        np.save(codes, np.zeros((1,) + self.code_shape, np.float64))
        self.expect_error("decode", ["-m", self.model, codes, "-o", os.path.join(self.d, "o.png")], codes, out=os.path.join(self.d, "o.png"))
        open(codes, "w").write("not npy")
        self.expect_error("decode", ["-m", self.model, codes, "-o", os.path.join(self.d, "o.png")], codes, out=os.path.join(self.d, "o.png"))

    # ------------------------------------------------------------ outputs

    def test_unwritable_output(self):
        codes = os.path.join(self.d, "c.npy")
        np.save(codes, np.zeros((2,) + self.code_shape, np.int32))
        missing = os.path.join(self.d, "no", "such", "dir")
        self.expect_error("encode", ["-m", self.model, self.picture, "-o", os.path.join(missing, "c.npy")], missing)
        self.expect_error("decode", ["-m", self.model, codes, "-o", os.path.join(missing, "o_%d.png")], missing)
        self.expect_error("convert", ["rq-vae", self.rq_ckpt, "-o", os.path.join(missing, "m.safetensors")], missing)
        # a parent that is a regular file
        f = os.path.join(self.d, "afile")
        open(f, "w").write("x")
        self.expect_error("encode", ["-m", self.model, self.picture, "-o", os.path.join(f, "c.npy")], f)
        # -o naming an existing folder
        self.expect_error("encode", ["-m", self.model, self.picture, "-o", self.d], self.d)
        # a read-only folder (root ignores permissions, so only checked for other users)
        if os.geteuid() != 0:
            ro = os.path.join(self.d, "ro")
            os.mkdir(ro)
            os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR)
            try:
                self.expect_error("decode", ["-m", self.model, codes, "-o", os.path.join(ro, "o_%d.png")], ro)
                self.assertEqual(os.listdir(ro), [])
            finally:
                os.chmod(ro, stat.S_IRWXU)

    def test_no_partial_pngs_when_a_write_fails(self):
        codes = os.path.join(self.d, "c.npy")
        np.save(codes, np.zeros((3,) + self.code_shape, np.int32))
        # picture 1 goes into a folder that does not exist: picture 0 must not stay behind
        os.mkdir(os.path.join(self.d, "d0"))
        self.expect_error("decode", ["-m", self.model, codes, "-o", os.path.join(self.d, "d%d", "x.png")], "d1")
        self.assertEqual(os.listdir(os.path.join(self.d, "d0")), [])
        # picture 2's name is taken by a folder: pictures 0 and 1 must not stay behind, the folder is untouched
        out = os.path.join(self.d, "o")
        os.mkdir(out)
        os.mkdir(os.path.join(out, "p2.png"))
        open(os.path.join(out, "p0.png"), "w").write("old")
        self.expect_error("decode", ["-m", self.model, codes, "-o", os.path.join(out, "p%d.png")], "p2.png")
        self.assertEqual(sorted(os.listdir(out)), ["p0.png", "p2.png"])
        self.assertEqual(open(os.path.join(out, "p0.png")).read(), "old", "a file that was there before was changed")
        self.assertEqual(os.listdir(os.path.join(out, "p2.png")), [])

    def test_bad_options(self):
        out = os.path.join(self.d, "o.npy")
        self.expect_error("encode", ["-m", self.model, self.picture, "-o", out, "--batch", "-3"], "", out=out, rc=2)
        self.expect_error("convert", ["rq-vae", self.rq_ckpt, "-o", out, "--dtype", "int8"], "", out=out, rc=2)
        self.expect_error("decode", ["-m", self.model, "-o", out], "", out=out, rc=2)


if __name__ == "__main__":
    T.main()
