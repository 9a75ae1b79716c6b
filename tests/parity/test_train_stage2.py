"""One stage-2 training step of `hwaga train` against PyTorch autograd (torch 1.13).

Fixture (tests/parity/torch_ref/train_stage2_fixtures.py): a tiny random RQ-VAE model file,
two shards of 8 captioned 32x32 pictures, the tiny CharBPE vocabulary, and a tiny config (C 32,
2 body + 1 head layers, 2 heads, codes 8x8x4, K 64, text 85 x 8).

hwaga runs step 1 (checkpoint A), then resumes for step 2 with --dump-step (the batch, the
losses and every gradient before clipping) and writes checkpoint B. train_stage2_ref.py loads
A's weights into rq_transformer_ref.RQTransformerRef (written from architecture.md, not from
hwaga), recomputes the loss and its gradients on the same batch with autograd, then clips and
takes one torch.optim.AdamW step from A's moments, and reports the differences.

Dropout is 0 (the reference has no dropout masks to share). Weight decay is 0.5, far above the
recipe's 1e-4, so that decaying a parameter that should not be decayed (or the reverse) moves it
by lr*wd*|p| >= 1e-5, well above the tolerance; the clip (0.5) is below the gradient norm, so
clipping is exercised (checked from the log).

Tolerances (f32 on both sides, the same operations, different summation orders):
  losses:     |hwaga - torch| <= 2e-6 * |torch| (observed ~1e-7)
  gradients:  max |hwaga - torch| <= 1e-4 * max |torch| per tensor (observed <= 1e-6 relative:
              sums over B*T rows and K classes in another order)
  parameters after AdamW: max |hwaga - torch| <= 2e-6 per tensor (observed <= 2e-7: one or two
              f32 ulps of values up to ~1, plus the update's rounding)
  attn.key.bias: its gradient is exactly zero in exact arithmetic (a key bias adds the same
              score to every key of a query, which softmax ignores), so both sides only hold
              round-off; checked as |g| <= 1e-8 on both sides and a parameter change <= lr*1e-2
              (Adam's eps 1e-8 keeps the update of round-off gradients tiny).

TrainStage2ParityBf16 runs the same step with `--matmul bf16` (the linear layers' products on
bf16-rounded inputs with f32 accumulation, cpu::gemm_bf16) against the same f32 PyTorch step.
bf16 keeps 8 significant bits: each product is off by up to 2^-8 relative, and the errors of a
sum of many products partly cancel, so a layer's output is off by ~1e-3 of its size and the
gradients, through 3 blocks and the heads, by ~1e-2 of their largest value (observed: see the
printed figures). Tolerances: losses 1e-2 relative, gradients 5e-2 of each tensor's largest.
AdamW itself is checked by the f32 class; here Adam divides each gradient by its running size,
so for values whose gradient is near zero a bf16-sized error moves the update by a good part of
lr: the parameters only have to agree within 0.7 lr. The test also asserts the gradients are NOT
f32-exact, which shows the bf16 path really ran.
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
import train_stage2_fixtures as fx  # noqa: E402


class TrainStage2Parity(unittest.TestCase):
    FIRST = []   # extra options of the first run (recorded in the checkpoint, so the resumed step has them too)
    MATMUL = []  # extra options of the compared (second) step
    LOSS_TOL, GRAD_TOL, PARAM_TOL_LR, PARAM_TOL = 2e-6, 1e-4, 0.0, 2e-6

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="hwaga_train_parity_")
        d = cls.tmp
        cls.s1 = fx.make_stage1(os.path.join(d, "s1"))
        fx.make_shards(os.path.join(d, "shards"))
        cfg = fx.write_config(os.path.join(d, "cfg.json"))
        vocab, merges = fx.write_vocab(os.path.join(d, "tok"))
        w = os.path.join(d, "w")
        common = ["--threads", "2"]
        hwaga("train", "--tokenizer", cls.s1, "--shards", os.path.join(d, "shards"), "--config", cfg,
              "--text-tokenizer", "bpe16k:%s,%s" % (vocab, merges), "--work-dir", w, "--steps", "3",
              "--stop-after", "1", "--batch", "4", "--lr", "1e-2", "--dropout", "0", "--clip", "0.5",
              "--weight-decay", "0.5", *cls.FIRST, *common, check=True)
        cls.a = os.path.join(d, "a.safetensors")
        shutil.copy(os.path.join(w, "checkpoint.safetensors"), cls.a)
        cls.dump = os.path.join(d, "dump.safetensors")
        hwaga("train", "--work-dir", w, "--resume", "--stop-after", "1", "--dump-step", cls.dump, *cls.MATMUL, *common,
              check=True)
        cls.b = os.path.join(w, "checkpoint.safetensors")
        with open(os.path.join(w, "train.jsonl")) as f:
            cls.log = [json.loads(l) for l in f if l.strip()]
        cls.step2 = [r for r in cls.log if r.get("step") == 2 and "loss" in r][0]
        out = os.path.join(d, "report.json")
        run([PYTHON, os.path.join(TORCH_REF, "train_stage2_ref.py"), "--before", cls.a, "--dump", cls.dump,
             "--after", cls.b, "--stage1", cls.s1, "--lr", repr(cls.step2["lr"]), "--clip", "0.5",
             "--weight-decay", "0.5", "--out", out], check=True, timeout=300)
        with open(out) as f:
            cls.rep = json.load(f)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_losses(self):
        for k in ("loss", "image_loss", "text_loss"):
            h, t = self.rep[k]
            self.assertLessEqual(abs(h - t), self.LOSS_TOL * abs(t), k)
        self.assertAlmostEqual(self.step2["loss"], self.rep["loss"][1], delta=self.LOSS_TOL * abs(self.rep["loss"][1]))

    def test_gradients(self):
        self.assertEqual(len(self.rep["grad"]), 8 + 16 * 3 + 4 + 4)  # every parameter: embeddings+mlps, 3 blocks, 2 heads
        for name, (diff, ref) in self.rep["grad"].items():
            if name.endswith("attn.key.bias"):
                self.assertLessEqual(ref, 1e-8, name)
                self.assertLessEqual(diff, 2e-8, name)
                continue
            self.assertGreater(ref, 0.0, name)
            self.assertLessEqual(diff, self.GRAD_TOL * ref, "%s: max |diff| %g, max |grad| %g" % (name, diff, ref))
        worst = max(d / r for n, (d, r) in self.rep["grad"].items() if not n.endswith("attn.key.bias"))
        print("  %s: max |diff| / max |grad| over the tensors %.2e" % (type(self).__name__, worst))

    def test_clipping_was_active(self):
        self.assertGreater(self.step2["grad_norm"], 0.5)

    def test_parameters_after_adamw(self):
        lr = self.step2["lr"]
        for name, (diff, upd) in self.rep["param"].items():
            if name.endswith("attn.key.bias"):
                self.assertLessEqual(upd, lr * 1e-2, name)
                self.assertLessEqual(diff, lr * 1e-2, name)
                continue
            self.assertLessEqual(diff, self.PARAM_TOL + self.PARAM_TOL_LR * lr,
                                 "%s: max |diff| %g (update up to %g)" % (name, diff, upd))


class TrainStage2ParityBf16(TrainStage2Parity):
    MATMUL = ["--matmul", "bf16"]
    LOSS_TOL, GRAD_TOL, PARAM_TOL_LR, PARAM_TOL = 1e-2, 5e-2, 0.7, 2e-6

    def test_bf16_really_ran(self):
        worst = max(d / r for n, (d, r) in self.rep["grad"].items() if not n.endswith("attn.key.bias"))
        self.assertGreater(worst, 1e-4, "the gradients are f32-exact: --matmul bf16 changed nothing")


class TrainStage2ParityCodeNoise(TrainStage2Parity):
    """--code-noise: the reference embeds the dumped noisy input codes and predicts the true ones."""
    FIRST = ["--code-noise", "0.3"]

    def test_noise_really_ran(self):
        # 30% of the codes drawn anew, 1/64 of those land on the true code again: about 29.5%
        self.assertGreater(self.rep["noisy_inputs"], 0.2)
        self.assertLess(self.rep["noisy_inputs"], 0.4)


class TrainStage2ParitySelfFeed(TrainStage2Parity):
    """--self-feed: half the input codes are the model's own draws (from hwaga's teacher-forced
    logits of the batch); the reference embeds the dumped inputs and predicts the true codes."""
    FIRST = ["--self-feed", "0.5"]

    def test_noise_really_ran(self):
        # drawn from an untrained model's logits: most replaced codes differ from the true ones
        self.assertGreater(self.rep["noisy_inputs"], 0.15)
        self.assertLess(self.rep["noisy_inputs"], 0.55)  # 0.5 at most, up to the sampling noise


if __name__ == "__main__":
    main()
