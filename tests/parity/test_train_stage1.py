"""One `hwaga train-tokenizer` step against PyTorch autograd (tests/parity/torch_ref/train_stage1_ref.py).

hwaga runs one step on tiny shards with the hidden --dump-step FILE, which holds the batch it
drew ("input"), every parameter and buffer before the step ("before.*"), the gradients
("grad.*"), the codes, the restart candidates it drew per depth ("restart.<d>"), the losses, and
every parameter and buffer after the step ("after.*": Adam applied, EMA codebook updated).
PyTorch builds the same net from "before.*" and runs the step on "input"; compared:

  codes          identical (an argmin flip would make everything after it differ; with these
                 sizes the best/second-best margins are far above f32 rounding)
  restart rows   each one is a residual vector of that depth (N >= K: exactly one of them, all
                 different; N < K: one of them plus noise in [0, 0.01/sqrt(E)) per value), which
                 is what a random permutation of the (tiled, noised) residuals gives; PyTorch
                 then uses hwaga's rows, since the two RNGs cannot agree
  losses         loss, recon, commitment within 1e-5 relative
  gradients      every parameter: |g_hwaga - g_torch| <= 2e-4 max|g_torch| (that tensor)
                 + 2e-4 |g_torch| + 1e-6 max|g| (all tensors)
  EMA buffers    cluster_size_ema, embed_ema and the codebook after the step: within 1e-5 of
                 their scale (sums of the same residuals in another order)
  Adam           hwaga's "after" params = torch.optim.Adam(betas (0.5, 0.9), eps 1e-8) applied
                 to "before" with hwaga's own gradients, within 1e-6 of the values' scale + 1e-3 lr

Why these tolerances: both run f32 with different summation orders (im2col+sgemm vs PyTorch's
conv kernels, GroupNorm statistics in double vs f32). Relative rounding per layer ~1e-6; the
backward through ~20 layers grows it to ~1e-5 of a tensor's largest gradient (measured: at most
7e-6 relative here, see the printed figures; 2e-4 leaves a 30x margin for other CPUs' kernels). Gradients whose exact value is 0 (the attention's
k bias, which softmax ignores; a bias feeding a GroupNorm of one-channel groups) are pure
rounding noise on both sides (~1e-10): the global 1e-6 term covers them. A real mistake (a
missing term, a wrong factor, a transposed weight) gives errors of the size of the gradient.
Adam's first step is lr * g / (|g| + eps) per value, so it is compared on the same gradients,
not on gradients that differ by rounding (where a ~0 gradient's sign is noise).
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
import train_stage1_ref as R  # noqa: E402

LR = 1e-3


def run_case(tmp, cfg, batch, seed):
    shards = os.path.join(tmp, "shards")
    F.make_shards(shards, 2, 4, cfg["resolution"], seed0=seed)
    conf = F.write_config(os.path.join(tmp, "cfg.json"), cfg)
    dump = os.path.join(tmp, "dump.safetensors")
    T.hwaga("train-tokenizer", "--shards", shards, "--config", conf, "--work-dir", os.path.join(tmp, "work"),
            "--steps", "1", "--batch", str(batch), "--lr", str(LR), "--seed", str(seed), "--dump-step", dump,
            "--threads", "2", check=True)
    t, meta = F.read_safetensors(dump)
    return t


class TrainStage1Parity(unittest.TestCase):
    def check(self, cfg, batch, seed):
        torch.manual_seed(0)
        torch.set_num_threads(2)
        with tempfile.TemporaryDirectory(prefix="hwaga-s1train-") as tmp:
            t = run_case(tmp, cfg, batch, seed)
        K, E, D = cfg["n_embed"], cfg["embed_dim"], cfg["code_shape"][2]
        model = R.build(cfg)
        R.load(model, t)
        x = torch.from_numpy(t["input"].copy())
        restart = [torch.from_numpy(t["restart.%d" % d].copy()) for d in range(D)]
        out = R.train_step(model, x, restart)

        # codes
        np.testing.assert_array_equal(t["codes"], out["codes"].numpy().astype(np.int32), "codes differ")

        # restart candidates: rows of that depth's residuals (tiled + noise when N < K)
        for d in range(D):
            res = out["residuals"][d].numpy().astype(np.float64)
            cand = t["restart.%d" % d].astype(np.float64)
            N = res.shape[0]
            noise = 0.01 / np.sqrt(E)
            diff = cand[:, None, :] - res[None, :, :]  # [K,N,E]
            scale = np.abs(res).max()
            if N >= K:
                dist = np.abs(diff).max(2)
                j = dist.argmin(1)
                self.assertLessEqual(dist[np.arange(K), j].max(), 1e-5 * scale, "depth %d: a restart row is no residual" % d)
                self.assertEqual(len(set(j.tolist())), K, "depth %d: a residual drawn twice" % d)
            else:
                ok = ((diff >= -1e-5 * scale) & (diff < noise + 1e-5 * scale)).all(2)  # [K,N]
                self.assertTrue(ok.any(1).all(), "depth %d: a restart row is no residual + [0, noise)" % d)
                counts = np.bincount(ok.argmax(1), minlength=N)
                self.assertLessEqual(counts.max(), (K + N - 1) // N, "depth %d: a residual drawn too often" % d)

        # losses
        l = t["loss"].astype(np.float64)
        for i, key in enumerate(("loss", "recon", "commitment")):
            self.assertAlmostEqual(l[i] / out[key], 1.0, delta=1e-5, msg="%s: hwaga %r, torch %r" % (key, l[i], out[key]))

        # gradients
        grads = {n: p.grad.detach().numpy() for n, p in model.named_parameters() if p.grad is not None}
        got = {k[len("grad.stage1."):]: v for k, v in t.items() if k.startswith("grad.")}
        worst = F.compare_grads(self, got, grads)
        print("  %d gradients, max |diff| / max|g| per tensor: %.2e" % (len(grads), worst))

        # EMA buffers and codebook after the step
        cb = model.quantizer.codebooks[0]
        for what in ("cluster_size_ema", "embed_ema", "weight"):
            ref = getattr(cb, what).detach().numpy().astype(np.float64)
            got = t["after.stage1.quantizer.codebooks.0." + what].astype(np.float64)
            scale = max(1.0, np.abs(ref).max())
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * scale, err_msg=what + " after the step")
        self.assertTrue((t["after.stage1.quantizer.codebooks.0.weight"][K] == 0).all(), "padding row changed")

        # Adam on hwaga's gradients
        for name, ref in F.adam_reference(t, "before.", "grad.", LR).items():
            np.testing.assert_allclose(t["after." + name].astype(np.float64), ref.astype(np.float64), rtol=0,
                                       atol=1e-6 * max(1.0, np.abs(ref).max()) + 1e-3 * LR,
                                       err_msg="Adam update of " + name)

    def test_depth2_more_vectors_than_codes(self):
        # N = 2 x 64 = 128 latent vectors >= K = 16: restarts draw residuals without noise
        self.check(F.TINY, batch=2, seed=3)

    def test_depth3_fewer_vectors_than_codes(self):
        # N = 64 < K = 100: the residuals are tiled with noise; E 16, 2 res blocks
        cfg = dict(F.TINY, n_embed=100, embed_dim=16, num_res_blocks=2, code_shape=[8, 8, 3])
        self.check(cfg, batch=1, seed=4)


if __name__ == "__main__":
    T.main()
