"""One minDALL-E GPT training step of `hwaga train` against PyTorch autograd (torch 1.13).

Fixture (tests/parity/torch_ref/train_gpt_ref.py, train_stage2_fixtures.py): a tiny random VQGAN
model file (32x32 -> 16x16x1 codes, K 64), two shards of 8 captioned 32x32 pictures, the tiny
CharBPE vocabulary (85 ids), and a tiny mindalle-gpt config (C 32, 2 layers, 2 heads, text 8,
image 256).

hwaga runs step 1 (checkpoint A), then resumes for step 2 with --dump-step (the batch, the
losses and every gradient before clipping) and writes checkpoint B. train_gpt_ref.py loads A's
weights into mindalle_ref.Transformer1dRef (written from architecture.md §4.2, not from hwaga),
recomputes the loss and its gradients on the same batch with autograd, then clips and takes one
torch.optim.AdamW step (betas 0.9/0.99, minDALL-E's OptConfig) from A's moments, and reports the
differences.

Dropout is 0 (the released pdrop, and the reference has no masks to share). Weight decay is 0.5,
far above the recipe's 1e-4, so that decaying a parameter that should not be decayed (or the
reverse) moves it by lr*wd*|p| >= 1e-5, well above the tolerance; the clip (0.5) is below the
gradient norm, so clipping is exercised (checked from the log). lr 1e-2 makes every update
visible next to the tolerance.

Tolerances (f32 on both sides, the same operations, different summation orders):
  losses:     |hwaga - torch| <= 2e-6 * |torch|
  gradients:  max |hwaga - torch| <= 1e-4 * max |torch| per tensor (sums over B*S rows and K or
              V classes in another order; observed <= 5e-7 relative)
  parameters after AdamW: max |hwaga - torch| <= 2e-6 per tensor (one or two f32 ulps of values
              up to ~1, plus the update's rounding; observed <= 1.2e-7, while betas 0.9/0.95
              instead of 0.9/0.99 would be off by ~7e-3)
  attn.key.bias: its gradient is exactly zero in exact arithmetic (a key bias adds the same
              score to every key of a query, which softmax ignores), so both sides hold only
              round-off: |g| <= 1e-8 on both sides and a parameter change <= lr*1e-2.
  pos_emb_img's last row: the last code is a target only, so its gradient is exactly 0 on both
              sides (hwaga never feeds it; the reference feeds it to a dropped output).
"""
import json
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cli"))
from hwaga_testlib import PYTHON, TORCH_REF, hwaga, main, run  # noqa: E402

sys.path.insert(0, TORCH_REF)
import train_gpt_ref as gx  # noqa: E402
import train_stage2_fixtures as fx  # noqa: E402


class TrainGptParity(unittest.TestCase):
    FIRST = []  # extra options of the first run (recorded in the checkpoint, so the resumed step has them too)

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="hwaga_train_gpt_parity_")
        d = cls.tmp
        cls.s1 = gx.make_vqgan_stage1(os.path.join(d, "s1"))
        fx.make_shards(os.path.join(d, "shards"))
        cfg = gx.write_gpt_config(os.path.join(d, "cfg.json"))
        vocab, merges = fx.write_vocab(os.path.join(d, "tok"))
        w = os.path.join(d, "w")
        common = ["--threads", "2"]
        hwaga("train", "--tokenizer", cls.s1, "--shards", os.path.join(d, "shards"), "--config", cfg,
              "--text-tokenizer", "bpe16k:%s,%s" % (vocab, merges), "--work-dir", w, "--steps", "3",
              "--stop-after", "1", "--batch", "4", "--lr", "1e-2", "--clip", "0.5", "--weight-decay", "0.5",
              *cls.FIRST, *common, check=True)
        cls.a = os.path.join(d, "a.safetensors")
        shutil.copy(os.path.join(w, "checkpoint.safetensors"), cls.a)
        cls.dump = os.path.join(d, "dump.safetensors")
        hwaga("train", "--work-dir", w, "--resume", "--stop-after", "1", "--dump-step", cls.dump, *common, check=True)
        cls.b = os.path.join(w, "checkpoint.safetensors")
        with open(os.path.join(w, "train.jsonl")) as f:
            cls.log = [json.loads(l) for l in f if l.strip()]
        cls.step2 = [r for r in cls.log if r.get("step") == 2 and "loss" in r][0]
        out = os.path.join(d, "report.json")
        run([PYTHON, os.path.join(TORCH_REF, "train_gpt_ref.py"), "--before", cls.a, "--dump", cls.dump,
             "--after", cls.b, "--lr", repr(cls.step2["lr"]), "--clip", "0.5", "--weight-decay", "0.5", "--out", out],
            check=True, timeout=300)
        with open(out) as f:
            cls.rep = json.load(f)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_recipe_recorded(self):
        _, meta = fx.read_safetensors(self.b)
        t = json.loads(meta["train"])
        self.assertEqual(t["stage"], "mindalle-gpt")
        self.assertEqual(t["options"]["betas"], [0.9, 0.99])
        self.assertEqual(t["options"]["dropout"], 0.0)  # the released pdrop (no --dropout given)

    def test_losses(self):
        for k in ("loss", "image_loss", "text_loss"):
            h, t = self.rep[k]
            self.assertLessEqual(abs(h - t), 2e-6 * abs(t), k)
        self.assertAlmostEqual(self.step2["loss"], self.rep["loss"][1], delta=2e-6 * abs(self.rep["loss"][1]))

    def test_gradients(self):
        self.assertEqual(len(self.rep["grad"]), 4 + 16 * 2 + 2 + 2)  # 4 tables, 2 blocks, ln_f, 2 heads
        for name, (diff, ref) in self.rep["grad"].items():
            if name.endswith("attn.key.bias"):
                self.assertLessEqual(ref, 1e-8, name)
                self.assertLessEqual(diff, 2e-8, name)
                continue
            self.assertGreater(ref, 0.0, name)
            self.assertLessEqual(diff, 1e-4 * ref, "%s: max |diff| %g, max |grad| %g" % (name, diff, ref))
        self.assertEqual(self.rep["pos_img_last"], [0.0, 0.0])

    def test_clipping_was_active(self):
        self.assertGreater(self.step2["grad_norm"], 0.5)

    def test_parameters_after_adamw(self):
        lr = self.step2["lr"]
        for name, (diff, upd) in self.rep["param"].items():
            if name.endswith("attn.key.bias"):
                self.assertLessEqual(upd, lr * 1e-2, name)
                self.assertLessEqual(diff, lr * 1e-2, name)
                continue
            self.assertLessEqual(diff, 2e-6, "%s: max |diff| %g (update up to %g)" % (name, diff, upd))


class TrainGptParityCodeNoise(TrainGptParity):
    """--code-noise: the reference embeds the dumped noisy input codes and predicts the true ones."""
    FIRST = ["--code-noise", "0.3"]

    def test_noise_really_ran(self):
        self.assertGreater(self.rep["noisy_inputs"], 0.2)  # about 0.3 * (1 - 1/64)
        self.assertLess(self.rep["noisy_inputs"], 0.4)


if __name__ == "__main__":
    main()
