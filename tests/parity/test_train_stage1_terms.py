"""One `hwaga train-tokenizer --gan` / `--lpips` step against PyTorch autograd
(torch_ref/patch_gan_ref.py, torch_ref/lpips_ref.py with train_stage1_ref.py): the patch-GAN
discriminator, the hinge loss, the generator term and VQGAN's adaptive weight, and LPIPS on
random VGG16 weights written in torchvision's and taming's file layouts (architecture.md §6.1).

hwaga's --dump-step file holds, besides what test_train_stage1.py reads, the discriminator before
its step ("disc.before.*"), its gradients ("disc.grad.*"), after its Adam step and three forward
passes ("disc.after.*", running statistics included) and the step's figures ("gan": loss_gen,
g_weight, loss_disc, mean logit of the real and of the fake pictures). PyTorch builds both nets
from the "before" tensors and runs the generator step (with the GAN term) and the
discriminator step (D(fake) then D(real), on the reconstruction from before the generator's
update); compared:

  figures        lpips, loss_gen, g_weight, loss_disc, the mean logits: within 1e-4 relative + 1e-6
                 (g_weight is a ratio of two gradient norms, each ~1e-5 off, see below)
  gradients      of the generator (which now include g_weight·disc_weight·dloss_gen) and of the
                 discriminator: test_train_stage1.py's rule, F.compare_grads
  running stats  of the BatchNorms after the three forward passes: within 1e-5 of their scale
  Adam           the discriminator's "after" params = torch.optim.Adam(betas 0.5/0.9) applied
                 to "before" with hwaga's own gradients

The tolerances are test_train_stage1.py's (f32 with different summation orders; the
discriminator adds four layers to the backward path of the generator's gradients). A missing
term (the adaptive weight, the 0.5 of the hinge, BatchNorm's mean terms) is far outside them.
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
import lpips_ref as P  # noqa: E402
import patch_gan_ref as G  # noqa: E402
import train_stage1_fixtures as F  # noqa: E402
import train_stage1_ref as R  # noqa: E402

LR = 1e-3


class TrainStage1TermsParity(unittest.TestCase):
    def check(self, cfg, batch, seed, ndf=None, layers=2, disc_weight=0.75, lpips_weight=None):
        torch.manual_seed(0)
        torch.set_num_threads(2)
        lp = P.random_lpips(seed) if lpips_weight is not None else None
        with tempfile.TemporaryDirectory(prefix="hwaga-s1terms-") as tmp:
            shards = os.path.join(tmp, "shards")
            F.make_shards(shards, 2, 4, cfg["resolution"], seed0=seed)
            conf = F.write_config(os.path.join(tmp, "cfg.json"), cfg)
            dump = os.path.join(tmp, "dump.safetensors")
            extra = []
            if ndf is not None:
                extra += ["--gan", "--disc-ndf", str(ndf), "--disc-layers", str(layers), "--disc-weight", str(disc_weight)]
            if lp is not None:
                vgg, heads = os.path.join(tmp, "vgg16.pth"), os.path.join(tmp, "vgg.pth")
                P.save(lp, vgg, heads)
                extra += ["--lpips", vgg + "," + heads, "--lpips-weight", str(lpips_weight)]
            T.hwaga("train-tokenizer", "--shards", shards, "--config", conf, "--work-dir", os.path.join(tmp, "work"),
                    "--steps", "1", "--batch", str(batch), "--lr", str(LR), "--seed", str(seed), *extra,
                    "--dump-step", dump, "--threads", "2", check=True)
            t, _ = F.read_safetensors(dump)
        D = cfg["code_shape"][2]
        model = R.build(cfg)
        R.load(model, t)
        disc = None
        if ndf is not None:
            disc = G.PatchDiscriminator(cfg["out_ch"], ndf, layers)
            G.load(disc, t)
        x = torch.from_numpy(t["input"].copy())
        restart = [torch.from_numpy(t["restart.%d" % d].copy()) for d in range(D)]
        out = R.train_step(model, x, restart, gan=G.generator_term(disc, disc_weight) if disc else None,
                           lpips=lp, lpips_weight=lpips_weight or 1.0)
        np.testing.assert_array_equal(t["codes"], out["codes"].numpy().astype(np.int32), "codes differ")
        gen_grads = {n: p.grad.detach().numpy() for n, p in model.named_parameters() if p.grad is not None}

        # the step's figures
        figures = {}
        if lp is not None:
            figures["lpips"] = float(t["lpips"][0])
            self.assertGreater(out["lpips"], 1e-4)  # the term is there to be compared
        if disc is not None:
            out.update(G.discriminator_step(disc, x, out["xr"], disc_weight))
            figures.update(zip(("loss_gen", "g_weight", "loss_disc", "logits_real", "logits_fake"),
                               t["gan"].astype(np.float64)))
            self.assertGreater(out["g_weight"], 0.0)
        else:
            self.assertFalse([k for k in t if k.startswith("disc.")])
        for k, v in figures.items():
            self.assertLessEqual(abs(v - out[k]), 1e-4 * abs(out[k]) + 1e-6, "%s: hwaga %r, torch %r" % (k, v, out[k]))

        # gradients: the generator's (with the terms) and the discriminator's
        got = {k[len("grad.stage1."):]: v for k, v in t.items() if k.startswith("grad.")}
        wg = F.compare_grads(self, got, gen_grads, "generator grad")
        if disc is None:
            print("  max |diff| / max|g| per tensor: generator %.2e; lpips %.4g" % (wg, out["lpips"]))
            return
        got = {k[len("disc.grad.discriminator."):]: v for k, v in t.items() if k.startswith("disc.grad.")}
        dgrads = {n: p.grad.detach().numpy() for n, p in disc.named_parameters()}
        wd = F.compare_grads(self, got, dgrads, "discriminator grad")
        print("  max |diff| / max|g| per tensor: generator %.2e, discriminator %.2e; g_weight %.4g" %
              (wg, wd, out["g_weight"]))

        # BatchNorm running statistics after D(fake), D(fake), D(real)
        for n, b in disc.named_buffers():
            if n.endswith("num_batches_tracked"):
                continue
            ref = b.numpy().astype(np.float64)
            got = t["disc.after.discriminator." + n].astype(np.float64)
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * max(1.0, np.abs(ref).max()), err_msg=n)

        # the discriminator's Adam step on hwaga's gradients
        for name, ref in F.adam_reference(t, "disc.before.", "disc.grad.", LR).items():
            np.testing.assert_allclose(t["disc.after." + name].astype(np.float64), ref.astype(np.float64), rtol=0,
                                       atol=1e-6 * max(1.0, np.abs(ref).max()) + 1e-3 * LR,
                                       err_msg="Adam update of " + name)

    def test_two_layers(self):
        # 16x16 pictures: logits 2x2; the released depth (2) with 8 filters
        self.check(F.TINY, batch=2, seed=3, ndf=8, layers=2, disc_weight=0.75)

    def test_one_layer_other_weight(self):
        # one stride-2 conv (16 -> 8 -> logits 6x6), batch 3, another weight
        self.check(F.TINY, batch=3, seed=5, ndf=4, layers=1, disc_weight=0.3)

    def test_lpips(self):
        # VGG16 at 16x16 (relu5_3 at 1x1), weight 0.7
        self.check(F.TINY, batch=2, seed=6, lpips_weight=0.7)

    def test_lpips_with_gan(self):
        # the adaptive weight measured against recon + LPIPS
        self.check(F.TINY, batch=2, seed=7, ndf=8, layers=2, disc_weight=0.75, lpips_weight=1.0)


if __name__ == "__main__":
    T.main()
