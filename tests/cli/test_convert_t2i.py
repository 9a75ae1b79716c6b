"""hwaga convert rq / convert mindalle (whole text-to-image model files) and hwaga info --preset.

Tiny random checkpoints in the released layouts (make_checkpoint.py + make_stage2_checkpoint.py
--size tiny) are converted in f32 and bf16; every tensor of the file is compared with the
checkpoint read by PyTorch (exact for f32; bf16 = torch's round-to-nearest-even of the f32
value, compared bit for bit), the metadata (config stage1/stage2/text, tokenizer) is checked,
and broken inputs (a tensor of the wrong shape, stage 1 and stage 2 that do not pair, missing
tokenizer files) must fail with a message naming the problem and leave no output file.
"""
import json
import os
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import t2i_testlib as t2i  # noqa: E402
from hwaga_testlib import PYTHON, hwaga, main, run  # noqa: E402

DT = {"F32": np.float32, "BF16": np.uint16, "F16": np.float16}


def file_tensors(path):
    meta, header, base = t2i.read_safetensors_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for k, v in header.items():
        a, b = v["data_offsets"]
        out[k] = (v["dtype"], np.frombuffer(data[base + a:base + b].tobytes(), dtype=DT[v["dtype"]]).reshape(v["shape"]))
    return meta, out


def torch_state_dicts(paths, out_npz):
    """Each checkpoint's state_dict as f32 and as bf16 bits, via PyTorch in a subprocess."""
    code = r"""
import sys, numpy as np, pickle, torch
sys.path.insert(0, sys.argv[1])
import mindalle_ref
out = {}
for i, p in enumerate(sys.argv[3:]):
    sd = mindalle_ref.load_lightning_ckpt(p)["state_dict"]
    for k, t in sd.items():
        if t.is_floating_point():
            out["%d/%s" % (i, k)] = t.float().numpy()
            out["%d/%s#bf16" % (i, k)] = t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
np.savez(sys.argv[2], **out)
"""
    from hwaga_testlib import TORCH_REF
    run([PYTHON, "-c", code, TORCH_REF, out_npz] + list(paths), check=True, timeout=300)
    return np.load(out_npz)


class ConvertT2ITest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="hwaga_conv_")
        cls.root = cls.tmp.name
        cls.s1, cls.s2 = t2i.make_rq_dirs(cls.root)
        cls.md = t2i.make_mindalle_dir(cls.root)
        cls.vocab, cls.merges = t2i.write_tiny_vocab(os.path.join(cls.root, "tok"))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def check_tensors(self, model, ckpts, dtype, n_stage1_dropped):
        meta, tensors = file_tensors(model)
        ref = torch_state_dicts(ckpts, os.path.join(self.root, "ref_%s.npz" % os.path.basename(model)))
        ref_keys = {k for k in ref.files if not k.endswith("#bf16")}
        names = set()
        for name, (dt, arr) in tensors.items():
            stage, key = name.split(".", 1)
            self.assertIn(stage, ("stage1", "stage2"))
            r = "%d/%s" % (0 if stage == "stage1" else 1, key)
            self.assertIn(r, ref_keys, name)
            names.add(r)
            if dtype == "f32":
                self.assertEqual(dt, "F32", name)
                np.testing.assert_array_equal(arr, ref[r], err_msg=name)
            else:
                self.assertEqual(dt, "BF16", name)
                np.testing.assert_array_equal(arr, ref[r + "#bf16"], err_msg=name)
        # every stage-2 tensor is kept; stage 1 loses only the aliased codebooks / EMA buffers
        self.assertEqual({k for k in ref_keys if k.startswith("1/")}, {k for k in names if k.startswith("1/")})
        self.assertEqual(len({k for k in ref_keys if k.startswith("0/")} - names), n_stage1_dropped)
        return meta

    def check_meta(self, meta, stage1_type, stage2_type, ctx):
        self.assertEqual(meta["format"], "hwaga")
        cfg = json.loads(meta["config"])
        self.assertEqual(cfg["stage1"]["type"], stage1_type)
        self.assertEqual(cfg["stage2"]["type"], stage2_type)
        self.assertEqual(cfg["text"], {"tokenizer": "bpe16k", "context_length": ctx})
        tok = json.loads(meta["tokenizer"])
        self.assertEqual(tok["type"], "charbpe")
        self.assertEqual(tok["context_length"], ctx)
        self.assertEqual(len(tok["vocab"]), 85)

    def test_convert_rq_f32_and_bf16(self):
        for dtype in ("f32", "bf16"):
            out = os.path.join(self.root, "rq_%s.safetensors" % dtype)
            p = hwaga("convert", "rq", "--stage1", self.s1, "--stage2", self.s2, "--vocab", self.vocab, "--merges",
                      self.merges, "-o", out, "--dtype", dtype, check=True)
            self.assertIn("rq-vae + rq-transformer", p.stdout)
            # codebooks.1-3 (aliases) and 4 x (cluster_size_ema, embed_ema) are dropped
            meta = self.check_tensors(out, [os.path.join(self.s1, "model.pt"), os.path.join(self.s2, "model.pt")],
                                      dtype, 11)
            self.check_meta(meta, "rq-vae", "rq-transformer", 8)
            info = hwaga("info", "-m", out, check=True).stdout
            self.assertIn("text tokenizer: charbpe, 85 tokens, pads to 8 ids", info)
            self.assertIn("rq-transformer C=64", info)

    def test_convert_mindalle_f32_and_bf16(self):
        for dtype in ("f32", "bf16"):
            out = os.path.join(self.root, "md_%s.safetensors" % dtype)
            hwaga("convert", "mindalle", self.md, "-o", out, "--dtype", dtype, check=True)
            meta = self.check_tensors(out, [os.path.join(self.md, "stage1_last.ckpt"),
                                            os.path.join(self.md, "stage2_last.ckpt")], dtype, 0)
            self.check_meta(meta, "vqgan", "mindalle-gpt", 8)
            info = hwaga("info", "-m", out, check=True).stdout
            self.assertIn("mindalle-gpt C=64", info)
            self.assertIn("text settings: tokenizer bpe16k, context length 8", info)
        # the converted file generates (the bf16 one too)
        d = os.path.join(self.root, "gen")
        os.makedirs(d, exist_ok=True)
        hwaga("generate", "-m", os.path.join(self.root, "md_bf16.safetensors"), "-p", "a cat", "--seed", "1", "-o",
              os.path.join(d, "x.png"), check=True)

    def expect_failure(self, args, rc, *needles):
        out = os.path.join(self.root, "bad.safetensors")
        p = hwaga("convert", *args, "-o", out)
        self.assertEqual(p.returncode, rc, p.stderr)
        for n in needles:
            self.assertIn(n, p.stderr)
        self.assertFalse(os.path.exists(out))
        self.assertEqual([f for f in os.listdir(self.root) if f.startswith("bad.safetensors")], [])

    def test_rq_needs_tokenizer_files(self):
        self.expect_failure(["rq", "--stage1", self.s1, "--stage2", self.s2], 2, "--vocab", "--merges")

    def test_wrong_tensor_shape_is_named(self):
        bad = os.path.join(self.root, "bad_s2")
        os.makedirs(bad, exist_ok=True)
        code = ("import sys, torch; ck = torch.load(sys.argv[1]); sd = ck['state_dict'];"
                "sd['head_mlp.weight'] = torch.zeros(64, 16); torch.save(ck, sys.argv[2])")
        run([PYTHON, "-c", code, os.path.join(self.s2, "model.pt"), os.path.join(bad, "model.pt")], check=True)
        with open(os.path.join(self.s2, "config.yaml")) as f, open(os.path.join(bad, "config.yaml"), "w") as g:
            g.write(f.read())
        self.expect_failure(["rq", "--stage1", self.s1, "--stage2", bad, "--vocab", self.vocab, "--merges",
                             self.merges], 1, "head_mlp.weight", "[64, 16]", "[64, 32]")

    def test_stages_must_pair(self):
        other = os.path.join(self.root, "s1_k32")
        from hwaga_testlib import torch_ref
        torch_ref("make_checkpoint.py", "--kind", "rq-vae", "--size", "tiny", "--n-embed", "32", "--out", other)
        self.expect_failure(["rq", "--stage1", other, "--stage2", self.s2, "--vocab", self.vocab, "--merges",
                             self.merges], 1, "vocab_size 64", "codebook size 32")

    def test_mindalle_missing_tokenizer(self):
        d = os.path.join(self.root, "md_notok")
        os.makedirs(d, exist_ok=True)
        for f in ("config.yaml", "stage1_last.ckpt", "stage2_last.ckpt"):
            dst = os.path.join(d, f)
            if not os.path.exists(dst):
                os.symlink(os.path.join(self.md, f), dst)
        self.expect_failure(["mindalle", d], 1, "bpe-16k-vocab.json", "not found")

    def test_tokenizer_larger_than_text_vocabulary(self):
        big = os.path.join(self.root, "bigtok")
        os.makedirs(big, exist_ok=True)
        with open(self.vocab) as f:
            v = json.load(f)
        for i in range(30):
            v["x%d" % i] = len(v)
        with open(os.path.join(big, "vocab.json"), "w") as f:
            json.dump(v, f)
        self.expect_failure(["rq", "--stage1", self.s1, "--stage2", self.s2, "--vocab", os.path.join(big, "vocab.json"),
                             "--merges", self.merges], 1, "115 tokens", "100")


class InfoPresetTest(unittest.TestCase):
    def test_preset_parameter_counts(self):
        for name, stage2 in (("rq-3.9b", "3903.9M"), ("mindalle-1.3b", "1291.1M"), ("rq-cc3m-654m", "654.1M")):
            p = hwaga("info", "--preset", name, check=True)
            line = [l for l in p.stdout.splitlines() if l.startswith("parameters:")][0]
            self.assertIn("stage 2 %s" % stage2, line, name)
            # total = stage 1 + stage 2, as printed in full
            nums = [int(x.strip("(),")) for x in line.split() if x.startswith("(")]
            self.assertEqual(nums[0] + nums[1], nums[2], line)

    def test_list_presets(self):
        p = hwaga("info", "--list-presets", check=True)
        for name in ("ffhq", "imagenet-1.4b", "rq-cc3m-654m", "rq-3.9b", "mindalle-1.3b"):
            self.assertIn(name, p.stdout)
        self.assertIn("3903.9M", p.stdout)

    def test_unknown_preset_and_no_arguments(self):
        p = hwaga("info", "--preset", "nope")
        self.assertEqual(p.returncode, 1)
        self.assertIn("rq-3.9b", p.stderr)  # lists the known names
        self.assertEqual(hwaga("info").returncode, 2)


if __name__ == "__main__":
    main()
