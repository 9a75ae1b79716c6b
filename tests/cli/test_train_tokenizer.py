"""hwaga train-tokenizer end to end on tiny generated shards (tests/parity/torch_ref/train_stage1_fixtures.py:
16x16 pictures, an RQ-VAE with 8x8x2 codes, K 16; a step takes ~30 ms).

  - the reconstruction loss falls; the log, the sample grid and the eval PSNR are written; the
    exported model file holds exactly the checkpoint's weights and works with encode/decode;
  - 2 steps + --resume 2 steps gives the same checkpoint, bit for bit (weights, Adam moments,
    EMA buffers, data position), as 4 steps in one run (same thread count);
  - SIGTERM in the middle of a run: exit 143 and a checkpoint that --export-only and --resume load;
  - a checkpoint write that fails (a file-size limit, as a full disk would) leaves the previous
    checkpoint as it was and no temporary file behind, and exits 1 naming the file;
  - bad options and inputs: exit 2 (option values) or 1 (files, configs) with a clear message.
Agreement of one step with PyTorch is tests/parity/test_train_stage1.py.
"""
import json
import os
import shutil
import resource
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hwaga_testlib as T  # noqa: E402

sys.path.insert(0, T.TORCH_REF)
import train_stage1_fixtures as F  # noqa: E402

THREADS = ["--threads", "2"]


def read_log(work):
    with open(os.path.join(work, "train.jsonl")) as f:
        return [json.loads(l) for l in f if l.strip()]


class TrainTokenizerCLI(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="hwaga-train-tok-")
        t = cls.tmp.name
        cls.shards = os.path.join(t, "shards")
        F.make_shards(cls.shards, 2, 8, 16)
        cls.eval = os.path.join(t, "eval")
        F.make_shards(cls.eval, 1, 4, 16, seed0=100, prefix="eval")
        cls.cfg = F.write_config(os.path.join(t, "cfg.json"))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def work(self):
        return tempfile.mkdtemp(dir=self.tmp.name)

    def train(self, work, *extra, check=True, **kw):
        return T.hwaga("train-tokenizer", "--shards", self.shards, "--config", self.cfg, "--work-dir", work,
                       "--batch", "4", "--lr", "2e-3", *THREADS, *extra, check=check, **kw)

    # ------------------------------------------------------------------ a run

    def test_loss_falls_and_outputs(self):
        w = self.work()
        model = os.path.join(w, "model.safetensors")
        p = self.train(w, "--steps", "40", "--save-every", "20", "--sample-every", "20", "--eval-shards", self.eval,
                       "-o", model)
        log = read_log(w)
        steps = [r for r in log if "event" not in r]
        self.assertEqual([r["step"] for r in steps], list(range(1, 41)))
        for key in ("loss", "recon", "commitment", "codes_used", "usage", "perplexity", "lr", "img_per_s"):
            self.assertIn(key, steps[0])
        first = np.mean([r["recon"] for r in steps[:5]])
        last = np.mean([r["recon"] for r in steps[-5:]])
        self.assertLess(last, 0.8 * first, "recon MSE %.4f -> %.4f" % (first, last))
        evals = [r for r in log if r.get("event") == "eval"]
        self.assertEqual([r["step"] for r in evals], [20, 40])
        self.assertTrue(all(np.isfinite(r["psnr"]) and r["psnr"] > 5 for r in evals), evals)
        self.assertIn("eval PSNR", p.stderr)
        for s in (20, 40):
            img, text = T.read_png(os.path.join(w, "samples", "step%07d.png" % s))
            self.assertEqual(img.shape, (32, 4 * 16, 3))  # 4 eval pictures over their reconstructions
            self.assertEqual(text.get("hwaga.step"), str(s))
        # the export: a hwaga stage-1 model file with exactly the checkpoint's weights
        ck, cmeta = F.read_safetensors(os.path.join(w, "checkpoint.safetensors"))
        m, meta = F.read_safetensors(model)
        self.assertEqual(meta["format"], "hwaga")
        self.assertEqual(json.loads(meta["config"])["stage1"]["n_embed"], 16)
        self.assertEqual(json.loads(cmeta["train"])["step"], 40)
        self.assertTrue(all(k.startswith("stage1.") for k in m))
        self.assertNotIn("stage1.quantizer.codebooks.0.embed_ema", m)
        for k, v in m.items():
            np.testing.assert_array_equal(v, ck[k], k)
        self.assertEqual(len(m), len([k for k in ck if k.startswith("stage1.")]) - 2)
        pics = T.write_test_pictures(w, 2, size=16)
        codes = os.path.join(w, "codes.npy")
        T.hwaga("encode", "-m", model, "-o", codes, *pics, *THREADS, check=True)
        c = np.load(codes)
        self.assertEqual(c.shape, (2, 8, 8, 2))
        self.assertTrue(((c >= 0) & (c < 16)).all())
        T.hwaga("decode", "-m", model, "-o", os.path.join(w, "out_%d.png"), codes, *THREADS, check=True)
        self.assertEqual(T.read_png(os.path.join(w, "out_0.png"))[0].shape, (16, 16, 3))
        # --export-only writes the same file content from the checkpoint
        again = os.path.join(w, "again.safetensors")
        T.hwaga("train-tokenizer", "--work-dir", w, "--export-only", "-o", again, *THREADS, check=True)
        m2, _ = F.read_safetensors(again)
        for k in m:
            np.testing.assert_array_equal(m[k], m2[k], k)

    # ------------------------------------------------------------------ resume

    def test_resume_is_bitwise(self):
        a, b = self.work(), self.work()
        self.train(a, "--steps", "4", "--stop-after", "2")
        self.assertEqual(json.loads(F.read_safetensors(os.path.join(a, "checkpoint.safetensors"))[1]["train"])["step"], 2)
        T.hwaga("train-tokenizer", "--work-dir", a, "--resume", *THREADS, check=True)
        self.train(b, "--steps", "4")
        ta, ma = F.read_safetensors(os.path.join(a, "checkpoint.safetensors"))
        tb, mb = F.read_safetensors(os.path.join(b, "checkpoint.safetensors"))
        self.assertEqual(sorted(ta), sorted(tb))
        self.assertTrue(any(k.startswith("optim.m.") for k in ta))
        for k in ta:
            self.assertTrue(np.array_equal(ta[k], tb[k]), "%s differs after resume" % k)
        ja, jb = json.loads(ma["train"]), json.loads(mb["train"])
        self.assertEqual(ja["step"], 4)
        self.assertEqual(ja["data"], jb["data"])
        self.assertEqual(ja["optimizer_steps"], jb["optimizer_steps"])
        # the log continues without duplicates
        self.assertEqual([r["step"] for r in read_log(a) if "event" not in r], [1, 2, 3, 4])
        # changing the batch of a checkpoint is refused
        p = T.hwaga("train-tokenizer", "--work-dir", a, "--resume", "--batch", "3", *THREADS)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("--batch", p.stderr)

    def test_sigterm_saves_a_loadable_checkpoint(self):
        w = self.work()
        cmd = [T.HWAGA_BIN, "train-tokenizer", "--shards", self.shards, "--config", self.cfg, "--work-dir", w,
               "--batch", "4", "--steps", "100000", *THREADS]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        log = os.path.join(w, "train.jsonl")
        deadline = time.time() + 120
        while time.time() < deadline:
            if os.path.exists(log) and sum(1 for l in open(log) if '"loss"' in l) >= 3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 143, err)
        self.assertIn("interrupted", err)
        _, meta = F.read_safetensors(os.path.join(w, "checkpoint.safetensors"))
        step = json.loads(meta["train"])["step"]
        self.assertGreaterEqual(step, 3)
        T.hwaga("train-tokenizer", "--work-dir", w, "--export-only", "-o", os.path.join(w, "m.safetensors"), *THREADS,
                check=True)
        T.hwaga("train-tokenizer", "--work-dir", w, "--resume", "--stop-after", "1", *THREADS, check=True)
        _, meta = F.read_safetensors(os.path.join(w, "checkpoint.safetensors"))
        self.assertEqual(json.loads(meta["train"])["step"], step + 1)

    def test_failed_checkpoint_write_keeps_the_previous_one(self):
        w = self.work()
        self.train(w, "--steps", "6", "--stop-after", "2")
        ck = os.path.join(w, "checkpoint.safetensors")
        before = open(ck, "rb").read()
        limit = len(before) // 2  # the log fits, a checkpoint does not: a full disk, as the writer sees it

        def small_disk():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        p = subprocess.run([T.HWAGA_BIN, "train-tokenizer", "--work-dir", w, "--resume", "--stop-after", "2", *THREADS],
                           capture_output=True, text=True, preexec_fn=small_disk, timeout=300)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("checkpoint.safetensors", p.stderr)
        self.assertEqual(open(ck, "rb").read(), before, "the previous checkpoint changed")
        self.assertEqual(sorted(os.listdir(w)), ["checkpoint.safetensors", "train.jsonl"], "a temporary file was left")
        # and training goes on from it
        T.hwaga("train-tokenizer", "--work-dir", w, "--resume", "--stop-after", "1", *THREADS, check=True)

    # ------------------------------------------------------------------ bad input

    def test_gan_resume_is_bitwise_and_stays_out_of_the_export(self):
        gan = ["--gan", "--disc-ndf", "8", "--disc-start", "1"]
        a, b = self.work(), self.work()
        self.train(a, "--steps", "4", "--stop-after", "2", *gan)
        T.hwaga("train-tokenizer", "--work-dir", a, "--resume", *THREADS, check=True)
        model = os.path.join(b, "model.safetensors")
        self.train(b, "--steps", "4", "-o", model, *gan)
        ta, ma = F.read_safetensors(os.path.join(a, "checkpoint.safetensors"))
        tb, mb = F.read_safetensors(os.path.join(b, "checkpoint.safetensors"))
        self.assertEqual(sorted(ta), sorted(tb))
        disc = [k for k in ta if k.startswith("discriminator.main.")]
        self.assertIn("discriminator.main.3.running_var", disc)
        self.assertIn("optim.m.discriminator.main.0.weight", ta)
        for k in ta:
            self.assertTrue(np.array_equal(ta[k], tb[k]), "%s differs after resume" % k)
        ja = json.loads(ma["train"])
        self.assertEqual(ja["disc_optimizer_steps"], 3)  # steps 2..4: the GAN starts at step index 1
        self.assertEqual(ja["options"]["disc_ndf"], 8)
        # the log: no GAN figures before --disc-start, then finite ones
        steps = [r for r in read_log(a) if "event" not in r]
        self.assertNotIn("loss_gen", steps[0])
        for r in steps[1:]:
            for k in ("loss_gen", "g_weight", "loss_disc", "logits_real", "logits_fake"):
                self.assertTrue(np.isfinite(r[k]), (k, r))
        # the exported tokenizer has no discriminator in it
        tm, _ = F.read_safetensors(model)
        self.assertFalse([k for k in tm if "discriminator" in k])
        # a resumed run keeps its discriminator; one without cannot gain one
        p = T.hwaga("train-tokenizer", "--work-dir", a, "--resume", "--disc-ndf", "4", *THREADS)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("--disc-ndf", p.stderr)
        c = self.work()
        self.train(c, "--steps", "2", "--stop-after", "1")
        p = T.hwaga("train-tokenizer", "--work-dir", c, "--resume", "--gan", *THREADS)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("no discriminator", p.stderr)

    def test_bad_options(self):
        t = self.tmp.name
        bad_json = os.path.join(t, "bad.json")
        with open(bad_json, "w") as f:
            f.write("{not json")
        bad_ch = F.write_config(os.path.join(t, "badch.json"), dict(F.TINY, ch=33))
        vq = F.write_config(os.path.join(t, "vq.json"), dict(F.TINY, type="vqvae", code_shape=[8, 8, 1]))
        cases = [
            (["--shards", os.path.join(t, "nope", "x-{00..03}.tar"), "--config", self.cfg, "--steps", "1"], 1, "nope"),
            (["--config", self.cfg, "--steps", "1"], 2, "--shards"),
            (["--shards", self.shards, "--steps", "1"], 2, "--config"),
            (["--shards", self.shards, "--config", bad_json, "--steps", "1"], 1, "bad.json"),
            (["--shards", self.shards, "--config", bad_ch, "--steps", "1"], 1, "ch"),
            (["--shards", self.shards, "--config", vq, "--steps", "1"], 1, "vqvae"),
            (["--shards", self.shards, "--config", self.cfg, "--steps", "0"], 2, "--steps"),
            (["--shards", self.shards, "--config", self.cfg, "--steps", "1", "--lr", "-1"], 2, "--lr"),
            (["--shards", self.shards, "--preset", "nope", "--steps", "1"], 2, "--preset"),
            (["--resume", "--steps", "1"], 1, "no checkpoint"),
            (["--export-only"], 1, "no checkpoint"),
            (["--shards", self.shards, "--config", self.cfg, "--steps", "1", "--disc-weight", "1"], 2, "needs --gan"),
            (["--shards", self.shards, "--config", self.cfg, "--steps", "1", "--lpips-weight", "1"], 2, "needs --lpips"),
            (["--shards", self.shards, "--config", self.cfg, "--steps", "1", "--matmul", "tf32"], 2, "--matmul"),
            (["--shards", self.shards, "--config", self.cfg, "--steps", "1", "--lpips", os.path.join(t, "no-vgg.pth")],
             1, "no-vgg.pth"),
            (["--shards", self.shards, "--config", self.cfg, "--steps", "1", "--lpips", self.cfg], 1, "cfg.json"),
            (["--shards", self.shards, "--config", self.cfg, "--steps", "1", "--gan", "--disc-layers", "4"], 2,
             "leave no logits of 16x16"),
            (["--shards", self.shards, "--config", self.cfg, "--steps", "1", "--gan", "--disc-weight", "-1"], 2,
             "--disc-weight"),
            (["--shards", self.shards, "--config", self.cfg, "--steps", "1", "--gan", "--disc-start", "-1"], 2,
             "--disc-start"),
            # the GPU loop trains the RQ-VAE with MSE + commitment in one process
            (["--shards", self.shards, "--config", self.cfg, "--steps", "1", "--device", "cuda", "--gan"], 2,
             "--device cuda: the GAN and LPIPS terms"),
            (["--shards", self.shards, "--config", self.cfg, "--steps", "1", "--device", "cuda", "--dump-step",
              os.path.join(t, "d.safetensors")], 2, "--dump-step needs --device cpu"),
        ]
        if shutil.which("nvidia-smi") is None:  # no GPU: --device cuda says why before any step
            cases.append((["--shards", self.shards, "--config", self.cfg, "--steps", "1", "--device", "cuda"], 1,
                          "--device cuda: "))
        for args, rc, word in cases:
            with self.subTest(args=args):
                w = self.work()
                p = T.hwaga("train-tokenizer", "--work-dir", w, *args, *THREADS)
                self.assertEqual(p.returncode, rc, p.stderr)
                self.assertIn(word, p.stderr)
                self.assertFalse(os.path.exists(os.path.join(w, "checkpoint.safetensors")))
        # a work dir that already holds a checkpoint needs --resume
        w = self.work()
        self.train(w, "--steps", "1")
        p = self.train(w, "--steps", "1", check=False)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("--resume", p.stderr)
        p = T.hwaga("train-tokenizer", "--work-dir", w, "--export-only", *THREADS)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("-o", p.stderr)

    # ------------------------------------------------------------------ VQGAN (type "vqgan")
    # The same loop trains minDALL-E's VQGAN (train/vqgan_trainer.h): the tiny net with an 8x8x1
    # code map, K 16. One step vs PyTorch is tests/parity/test_train_stage1_vqgan.py.

    def vq_cfg(self):
        return F.write_config(os.path.join(self.tmp.name, "vqgan.json"), dict(F.TINY, type="vqgan", code_shape=[8, 8, 1]))

    def vq_train(self, work, *extra, check=True):
        return T.hwaga("train-tokenizer", "--shards", self.shards, "--config", self.vq_cfg(), "--work-dir", work,
                       "--batch", "4", "--lr", "1e-3", *THREADS, *extra, check=check)

    def test_vqgan_loss_falls_and_export_encodes_decodes(self):
        w = self.work()
        model = os.path.join(w, "model.safetensors")
        self.vq_train(w, "--steps", "40", "--save-every", "20", "--sample-every", "40", "--eval-shards", self.eval,
                      "-o", model)
        log = read_log(w)
        steps = [r for r in log if "event" not in r]
        self.assertEqual([r["step"] for r in steps], list(range(1, 41)))
        # recon is taming's L1 here; measured 0.55 -> 0.41 (ratio 0.75) on this data
        first = np.mean([r["recon"] for r in steps[:5]])
        last = np.mean([r["recon"] for r in steps[-5:]])
        self.assertLess(last, 0.85 * first, "recon L1 %.4f -> %.4f" % (first, last))
        for r in steps:  # loss = L1 + (1 + 0.25) mean((z - e_c)^2)
            self.assertAlmostEqual(r["loss"], r["recon"] + 1.25 * r["commitment"], delta=1e-6 * r["loss"])
            self.assertEqual(r["restarted"], 0)
        self.assertGreater(max(r["codes_used"] for r in steps), 1)
        self.assertEqual([r["step"] for r in log if r.get("event") == "eval"], [20, 40])
        ck, cmeta = F.read_safetensors(os.path.join(w, "checkpoint.safetensors"))
        train = json.loads(cmeta["train"])
        self.assertEqual(train["stage"], "vqgan")
        self.assertEqual((train["options"]["recon"], train["options"]["beta"], train["options"]["legacy"]), ("l1", 0.25, True))
        self.assertIn("optim.m.stage1.quantize.embedding.weight", ck, "the codebook is trained by Adam")
        # the export: a stage-1 model file of type vqgan with exactly the checkpoint's weights
        m, meta = F.read_safetensors(model)
        self.assertEqual(json.loads(meta["config"])["stage1"]["type"], "vqgan")
        self.assertEqual(sorted(m), sorted(k for k in ck if k.startswith("stage1.")))
        self.assertEqual(m["stage1.quantize.embedding.weight"].shape, (16, 8))
        for k, v in m.items():
            np.testing.assert_array_equal(v, ck[k], k)
        # hwaga encode + decode of the model file reproduce the trainer's own reconstructions of
        # the eval pictures (the bottom row of the sample grid): same weights, same argmin; the
        # inference and training kernels round differently, so pixels may differ by 1 level
        # (an argmin flip would show as a patch of large differences)
        grid, _ = T.read_png(os.path.join(w, "samples", "step%07d.png" % 40))
        pics = []
        with tarfile.open(os.path.join(self.eval, "eval-00000.tar")) as tar:
            for mem in sorted(tar.getmembers(), key=lambda x: x.name):
                if mem.name.endswith(".png"):
                    p = os.path.join(w, os.path.basename(mem.name))
                    with open(p, "wb") as f:
                        f.write(tar.extractfile(mem).read())
                    pics.append(p)
        self.assertEqual(len(pics), 4)
        codes = os.path.join(w, "codes.npy")
        T.hwaga("encode", "-m", model, "-o", codes, *pics, *THREADS, check=True)
        c = np.load(codes)
        self.assertEqual(c.shape, (4, 8, 8, 1))
        self.assertTrue(((c >= 0) & (c < 16)).all())
        T.hwaga("decode", "-m", model, "-o", os.path.join(w, "out_%d.png"), codes, *THREADS, check=True)
        for i in range(4):
            out = T.read_png(os.path.join(w, "out_%d.png" % i))[0].astype(np.int32)
            self.assertEqual(out.shape, (16, 16, 3))
            ref = grid[16:32, 16 * i:16 * (i + 1)].astype(np.int32)
            self.assertLessEqual(np.abs(out - ref).max(), 1, "picture %d: decode(encode) differs from the trainer's" % i)
        again = os.path.join(w, "again.safetensors")
        T.hwaga("train-tokenizer", "--work-dir", w, "--export-only", "-o", again, *THREADS, check=True)
        m2, _ = F.read_safetensors(again)
        self.assertEqual(sorted(m2), sorted(m))
        for k in m:
            np.testing.assert_array_equal(m[k], m2[k], k)

    def test_vqgan_resume_is_bitwise_and_init_fine_tunes(self):
        a, b = self.work(), self.work()
        self.vq_train(a, "--steps", "4", "--stop-after", "2")
        T.hwaga("train-tokenizer", "--work-dir", a, "--resume", *THREADS, check=True)
        self.vq_train(b, "--steps", "4")
        ta, ma = F.read_safetensors(os.path.join(a, "checkpoint.safetensors"))
        tb, mb = F.read_safetensors(os.path.join(b, "checkpoint.safetensors"))
        self.assertEqual(sorted(ta), sorted(tb))
        self.assertIn("optim.v.stage1.quantize.embedding.weight", ta)
        for k in ta:
            self.assertTrue(np.array_equal(ta[k], tb[k]), "%s differs after resume" % k)
        ja, jb = json.loads(ma["train"]), json.loads(mb["train"])
        self.assertEqual((ja["step"], ja["stage"]), (4, "vqgan"))
        self.assertEqual(ja["data"], jb["data"])
        self.assertEqual(ja["optimizer_steps"], jb["optimizer_steps"])
        self.assertEqual([r["step"] for r in read_log(a) if "event" not in r], [1, 2, 3, 4])
        # --init: a new run starts from the model file's weights (all of them, the codebook too)
        model = os.path.join(b, "m.safetensors")
        T.hwaga("train-tokenizer", "--work-dir", b, "--export-only", "-o", model, *THREADS, check=True)
        c = self.work()
        dump = os.path.join(c, "dump.safetensors")
        T.hwaga("train-tokenizer", "--shards", self.shards, "--init", model, "--work-dir", os.path.join(c, "w"),
                "--steps", "1", "--batch", "2", "--dump-step", dump, *THREADS, check=True)
        m, _ = F.read_safetensors(model)
        d, _ = F.read_safetensors(dump)
        self.assertEqual(sorted(k[len("before."):] for k in d if k.startswith("before.")), sorted(m))
        for k, v in m.items():
            np.testing.assert_array_equal(d["before." + k], v, k)
        self.assertEqual(d["codes"].shape, (2, 8, 8, 1))
        # a vqgan needs depth 1
        bad = F.write_config(os.path.join(self.tmp.name, "vqd2.json"), dict(F.TINY, type="vqgan", code_shape=[8, 8, 2]))
        p = T.hwaga("train-tokenizer", "--shards", self.shards, "--config", bad, "--work-dir", self.work(), "--steps", "1",
                    *THREADS)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("vqd2.json", p.stderr)
        self.assertIn("depth", p.stderr)


if __name__ == "__main__":
    T.main()
