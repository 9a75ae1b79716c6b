"""One `hwaga train-tokenizer` step of a VQGAN against PyTorch autograd
(tests/parity/torch_ref/train_vqgan_ref.py).

hwaga runs one step on tiny shards with the hidden --dump-step FILE, which holds the batch it
drew ("input"), every parameter before the step ("before.*"), the gradients ("grad.*"), the
codes, the losses, and every parameter after the step ("after.*": Adam applied, the codebook
included). PyTorch builds the same net from "before.*" and runs the step on "input"; compared:

  codes       identical (the smallest best/second-best distance gap is asserted to be > 1e-6 of
              the largest distance, >10x f32 rounding; it is ~1.5e-5 here; an argmin flip would
              change everything after it)
  losses      loss, recon (L1), commitment within 1e-5 relative
  gradients   every parameter, the codebook included: |g_hwaga - g_torch| <= 2e-4 max|g_torch|
              (that tensor) + 2e-4 |g_torch| + 1e-6 max|g| (all tensors)
  Adam        hwaga's "after" params = torch.optim.Adam(betas (0.5, 0.9), eps 1e-8) applied to
              "before" with hwaga's own gradients, within 1e-6 of the values' scale + 1e-3 lr;
              the codebook rows no vector chose keep their values (zero gradient)

Tolerances as in test_train_stage1.py (the RQ-VAE step), for the same reasons: f32 on both
sides with different summation orders (im2col+sgemm vs PyTorch's conv kernels, GroupNorm
statistics in double vs f32) gives ~1e-5 of a tensor's largest gradient after ~20 layers; the
L1 loss's gradient is sign(x_rec - x) / n on both sides and only a pixel within rounding of
its target could differ (none is, at these sizes). A wrong term or weight (beta on the other
term, a missing straight-through, a transposed weight) gives errors of the size of the gradient.
"""
import os
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.environ.get("HWAGA_SOURCE_DIR") or os.path.join(HERE, "..", ".."), "tests", "cli"))
import hwaga_testlib as T  # noqa: E402

sys.path.insert(0, T.TORCH_REF)
import torch  # noqa: E402
import train_stage1_fixtures as F  # noqa: E402
import train_vqgan_ref as R  # noqa: E402

LR = 1e-3
TINY_VQGAN = dict(F.TINY, type="vqgan", code_shape=[8, 8, 1])


def run_case(tmp, cfg, batch, seed):
    shards = os.path.join(tmp, "shards")
    F.make_shards(shards, 2, 4, cfg["resolution"], seed0=seed)
    conf = F.write_config(os.path.join(tmp, "cfg.json"), cfg)
    dump = os.path.join(tmp, "dump.safetensors")
    T.hwaga("train-tokenizer", "--shards", shards, "--config", conf, "--work-dir", os.path.join(tmp, "work"),
            "--steps", "1", "--batch", str(batch), "--lr", str(LR), "--seed", str(seed), "--dump-step", dump,
            "--threads", "2", check=True)
    t, _ = F.read_safetensors(dump)
    return t


class TrainVqganParity(unittest.TestCase):
    def check(self, cfg, batch, seed):
        torch.manual_seed(0)
        torch.set_num_threads(2)
        with tempfile.TemporaryDirectory(prefix="hwaga-vqtrain-") as tmp:
            t = run_case(tmp, cfg, batch, seed)
        K = cfg["n_embed"]
        model = R.build(cfg)
        R.load(model, t)
        x = torch.from_numpy(t["input"].copy())
        out = R.train_step(model, x)  # legacy beta 0.25, L1: hwaga's defaults
        print("  smallest argmin margin %.2e of the largest distance" % out["margin"])
        self.assertGreater(out["margin"], 1e-6, "an argmin too close to call in f32: choose another seed")

        np.testing.assert_array_equal(t["codes"], out["codes"].numpy().astype(np.int32), "codes differ")
        used = np.unique(t["codes"])
        self.assertGreater(len(used), 1, "one code only: the codebook gradient would be checked on one row")

        l = t["loss"].astype(np.float64)
        for i, key in enumerate(("loss", "recon", "commitment")):
            self.assertAlmostEqual(l[i] / out[key], 1.0, delta=1e-5, msg="%s: hwaga %r, torch %r" % (key, l[i], out[key]))

        grads = {n: p.grad.detach().numpy().astype(np.float64) for n, p in model.named_parameters() if p.grad is not None}
        self.assertIn("quantize.embedding.weight", grads)
        gall = max(np.abs(g).max() for g in grads.values())
        worst = 0.0
        for name, g in grads.items():
            h = t["grad.stage1." + name].astype(np.float64)
            self.assertEqual(h.shape, g.shape, name)
            gm = np.abs(g).max()
            err = np.abs(h - g)
            tol = 2e-4 * gm + 2e-4 * np.abs(g) + 1e-6 * gall
            bad = err > tol
            if bad.any():
                i = np.unravel_index(np.argmax(err - tol), g.shape)
                self.fail("grad %s: hwaga %r, torch %r at %s (max |g| %r)" % (name, h[i], g[i], i, gm))
            if gm > 1e-6 * gall:
                worst = max(worst, err.max() / gm)
        self.assertEqual(len(grads), len([k for k in t if k.startswith("grad.")]), "hwaga has gradients torch has not")
        print("  %d gradients, max |diff| / max|g| per tensor: %.2e" % (len(grads), worst))

        # Adam on hwaga's gradients, every param (the codebook is one of them)
        params, names = [], []
        for k in t:
            if k.startswith("grad."):
                name = k[len("grad."):]
                p = torch.nn.Parameter(torch.from_numpy(t["before." + name].copy()))
                p.grad = torch.from_numpy(t[k].copy())
                params.append(p)
                names.append(name)
        self.assertIn("stage1.quantize.embedding.weight", names)
        opt = torch.optim.Adam(params, lr=LR, betas=(0.5, 0.9), eps=1e-8, weight_decay=0)
        opt.step()
        for name, p in zip(names, params):
            ref = p.detach().numpy().astype(np.float64)
            got = t["after." + name].astype(np.float64)
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * max(1.0, np.abs(ref).max()) + 1e-3 * LR,
                                       err_msg="Adam update of " + name)
        cb0, cb1 = t["before.stage1.quantize.embedding.weight"], t["after.stage1.quantize.embedding.weight"]
        unused = np.setdiff1d(np.arange(K), used)
        np.testing.assert_array_equal(cb1[unused], cb0[unused], "an unused codebook row moved")
        self.assertFalse(np.array_equal(cb1[used], cb0[used]), "the chosen codebook rows did not move")

    def test_tiny_batch2(self):
        # N = 2 x 64 latent vectors, K 16, E 8
        self.check(TINY_VQGAN, batch=2, seed=3)

    def test_more_codes_than_vectors(self):
        # N = 64 < K = 100: most rows unused; E 16, 2 res blocks per level
        self.check(dict(TINY_VQGAN, n_embed=100, embed_dim=16, num_res_blocks=2), batch=1, seed=4)


if __name__ == "__main__":
    T.main()
