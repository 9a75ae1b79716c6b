"""hwaga train / hwaga export end to end on tiny data (tests/parity/torch_ref/train_stage2_fixtures.py:
a random 32x32 RQ-VAE model file, two shards of 8 captioned pictures with English and Korean
caption variants, the tiny CharBPE vocabulary, a 2+1-layer C=32 RQ-Transformer config).

Checks: the loss falls; 2 steps + --resume 2 steps == 4 steps bit for bit (checkpoint file and
the per-step log); SIGTERM mid-run saves a loadable checkpoint, exits 143, and --resume goes on;
the code cache is reused, and rebuilt when the shards change; --text-tokenizer spm:N trains a
tokenizer that keeps Hangul; export -> generate paints a PNG; sample pictures; bad options and
mismatched configs exit 1/2 with a message naming the problem.

minDALL-E's GPT (the test_gpt_* methods; a tiny random VQGAN stage 1 with 16x16x1 codes and a
2-layer C=32 "mindalle-gpt" config from torch_ref/train_gpt_ref.py): the loss falls, export ->
generate paints, --init fine-tunes the export, 2 steps + --resume 2 steps == 4 steps bit for bit,
the recipe (betas 0.9/0.99, lr 1e-4, dropout 0) is recorded, and stage-1 / config mismatches are
refused before any shard is encoded.
"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hwaga_testlib import HWAGA_BIN, TORCH_REF, hwaga, main, read_png  # noqa: E402

sys.path.insert(0, TORCH_REF)
import train_stage2_fixtures as fx  # noqa: E402
import train_gpt_ref as gx  # noqa: E402


def losses(work):
    with open(os.path.join(work, "train.jsonl")) as f:
        return [json.loads(l) for l in f if l.strip() and '"loss"' in l]


class Stage2Fixture(unittest.TestCase):
    """The tiny stage-1 file, shards, config and CharBPE files, made once per test class."""
    PREFIX = "hwaga_train_cli_"

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix=cls.PREFIX)
        d = cls.tmp
        cls.s1 = fx.make_stage1(os.path.join(d, "s1"))
        cls.shards = os.path.join(d, "shards")
        fx.make_shards(cls.shards)
        cls.cfg = fx.write_config(os.path.join(d, "cfg.json"))
        vocab, merges = fx.write_vocab(os.path.join(d, "tok"))
        cls.bpe = "bpe16k:%s,%s" % (vocab, merges)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def work(self, name):
        return os.path.join(self.tmp, name)


class TrainCli(Stage2Fixture):
    def base(self, work, *extra, cfg=None, tok=None):
        return ["train", "--tokenizer", self.s1, "--shards", self.shards, "--config", cfg or self.cfg,
                "--text-tokenizer", tok or self.bpe, "--work-dir", work, "--batch", "4", "--threads", "2"] + list(extra)

    def test_loss_falls_and_export_generates(self):
        w = self.work("fall")
        model = os.path.join(self.tmp, "fall.safetensors")
        p = hwaga(*self.base(w, "--steps", "40", "--lr", "3e-3", "--dropout", "0", "--export", model,
                             "--sample-every", "40", "--sample-prompt", "red circle"), check=True)
        self.assertIn("step 40/40", p.stdout)
        ls = [r["loss"] for r in losses(w)]
        self.assertEqual(len(ls), 40)
        first, last = sum(ls[:5]) / 5, sum(ls[-5:]) / 5
        self.assertLess(last, first - 0.5, "the loss did not fall: %s" % ls)
        self.assertTrue(os.path.exists(os.path.join(w, "samples", "step0000040-00.png")))
        out = os.path.join(self.tmp, "fall.png")
        hwaga("generate", "-m", model, "-p", "red circle", "-o", out, "--seed", "3", check=True)
        img, text = read_png(out)
        self.assertEqual(img.shape, (32, 32, 3))
        # bf16 export loads too
        hwaga("export", "--checkpoint", os.path.join(w, "checkpoint.safetensors"), "-o",
              os.path.join(self.tmp, "fall-bf16.safetensors"), "--dtype", "bf16", check=True)
        p = hwaga("info", "-m", os.path.join(self.tmp, "fall-bf16.safetensors"), check=True)
        self.assertIn("rq-transformer", p.stdout)
        # --init fine-tunes the exported model: its weights, config and tokenizer start the run,
        # so the first loss is the trained model's (well below a fresh model's first loss).
        ft = self.work("finetune")
        p = hwaga("train", "--init", model, "--shards", self.shards, "--work-dir", ft, "--steps", "2",
                  "--batch", "4", "--threads", "2", "--dropout", "0", "--lr", "1e-4", check=True)
        self.assertIn("fine-tuning from", p.stderr)
        self.assertLess(losses(ft)[0]["loss"], ls[0] - 0.5, (losses(ft)[0], ls[0]))
        p = hwaga("train", "--init", model, "--shards", self.shards, "--work-dir", self.work("ft2"), "--steps", "2",
                  "--config", self.cfg)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("drop --config", p.stderr)
        p = hwaga("train", "--init", self.s1, "--shards", self.shards, "--work-dir", self.work("ft3"), "--steps", "2")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("image tokenizer only", p.stderr)

    def test_export_stores_sampling_defaults(self):
        """export --top-k/--top-p/--temperature/--cfg/--rerank -> metadata "sampling"; generate uses it for the
        options left out (the same codes as passing them), a given option overrides it."""
        w = self.work("sdef")
        hwaga(*self.base(w, "--steps", "2"), check=True)
        ck = os.path.join(w, "checkpoint.safetensors")
        model = os.path.join(self.tmp, "sdef.safetensors")
        p = hwaga("export", "--checkpoint", ck, "-o", model, "--top-k", "3,2,2,1", "--top-p", "0.8",
                  "--temperature", "0.7", check=True)
        self.assertIn("sampling defaults top-k 3,2,2,1, top-p 0.8, temperature 0.7", p.stdout)
        self.assertIn("sampling defaults (from the file): top-k 3,2,2,1, top-p 0.8, temperature 0.7",
                      hwaga("info", "-m", model, check=True).stdout)

        def codes(name, *flags, n=3):
            out = os.path.join(self.tmp, name)
            p = hwaga("generate", "-m", model, "-p", "red circle", "--seed", "4", "-n", str(n), "-o",
                      os.path.join(self.tmp, name + "%d.png"), "--codes-out", out, *flags, check=True)
            return np.load(out), p.stderr

        c_file, err = codes("sd_file.npy")
        self.assertIn("top-k 3,2,2,1, top-p 0.8, temperature 0.7", err)
        c_flags, _ = codes("sd_flags.npy", "--top-k", "3,2,2,1", "--top-p", "0.8", "--temperature", "0.7")
        np.testing.assert_array_equal(c_file, c_flags)
        c_family, err = codes("sd_family.npy", "--top-k", "1024", "--top-p", "0.95", "--temperature", "1")
        self.assertFalse(np.array_equal(c_file, c_family), "the file's defaults were not used")
        self.assertIn("top-k 1024, top-p 0.95, temperature 1", err)
        _, err = codes("sd_mixed.npy", "--top-k", "none")  # one option given: the rest from the file
        self.assertIn("top-k none, top-p 0.8, temperature 0.7", err)
        # a recommended rerank pool: used when -n fits in it, the kept pictures as with the flag
        rr = os.path.join(self.tmp, "sdef-rr.safetensors")
        p = hwaga("export", "--checkpoint", ck, "-o", rr, "--top-k", "3,2,2,1", "--rerank", "5", check=True)
        self.assertIn("sampling defaults top-k 3,2,2,1, rerank 5", p.stdout)
        model = rr
        c_rr, err = codes("sd_rr.npy")
        self.assertIn("kept candidates", err)
        c_rr_flag, _ = codes("sd_rr_flag.npy", "--rerank", "5")
        np.testing.assert_array_equal(c_rr, c_rr_flag)
        c_off, err = codes("sd_rr_off.npy", "--rerank", "0")
        self.assertNotIn("kept candidates", err)
        c_pool, _ = codes("sd_rr_pool.npy", "--rerank", "0", n=5)
        for row in c_rr:  # each kept picture is one of the pool's five
            self.assertTrue(any(np.array_equal(row, q) for q in c_pool))
        model = os.path.join(self.tmp, "sdef.safetensors")
        # bad recommendations are refused before anything is written
        bad = os.path.join(self.tmp, "sdef-bad.safetensors")
        for flags, code, needle in ((["--top-k", "0"], 2, "--top-k"), (["--top-p", "1.5"], 2, "--top-p"),
                                    (["--temperature", "-1"], 2, "--temperature"), (["--rerank", "-1"], 2, "--rerank"),
                                    (["--top-k", "3,2"], 1, "one per depth")):
            p = hwaga("export", "--checkpoint", ck, "-o", bad, *flags)
            self.assertEqual(p.returncode, code, (flags, p.stderr))
            self.assertIn(needle, p.stderr)
            self.assertFalse(os.path.exists(bad), flags)
        # a hand-edited file with a bad "sampling" entry names the field
        with open(model, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            data = f.read()
        for text, needle in (('{"top_k": [0]}', "top_k"), ('{"top_p": "x"}', "top_p"),
                             ('{"temprature": 1}', "unknown field \"temprature\""), ("[", "not valid JSON"),
                             ('{"top_k": [1, 2, 3]}', "one per depth")):
            header["__metadata__"]["sampling"] = text
            h = json.dumps(header).encode()
            h += b" " * (-len(h) % 8)
            with open(bad, "wb") as f:
                f.write(struct.pack("<Q", len(h)) + h + data)
            p = hwaga("generate", "-m", bad, "-p", "red circle", "-o", os.path.join(self.tmp, "bad.png"))
            self.assertEqual(p.returncode, 1, (text, p.stderr))
            self.assertIn('metadata "sampling"', p.stderr)
            self.assertIn(needle, p.stderr)
            self.assertFalse(os.path.exists(os.path.join(self.tmp, "bad.png")))

    def test_resume_is_bitwise(self):
        a, b = self.work("full"), self.work("split")
        hwaga(*self.base(a, "--steps", "4", "--lr", "2e-3"), check=True)
        hwaga(*self.base(b, "--steps", "4", "--lr", "2e-3", "--stop-after", "2"), check=True)
        self.assertEqual([r["step"] for r in losses(b)], [1, 2])
        p = hwaga("train", "--work-dir", b, "--resume", "--threads", "2", check=True)
        self.assertIn("step 4/4", p.stdout)
        with open(os.path.join(a, "checkpoint.safetensors"), "rb") as f1, \
                open(os.path.join(b, "checkpoint.safetensors"), "rb") as f2:
            self.assertTrue(f1.read() == f2.read(), "checkpoints differ")
        self.assertEqual(losses(a), losses(b))
        self.assertIn("reusing", p.stderr)  # the code cache of the first part
        # a resumed run refuses another batch size, and a fresh run refuses a used work dir
        p = hwaga("train", "--work-dir", b, "--resume", "--batch", "3")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("--batch differs from the checkpoint", p.stderr)
        p = hwaga(*self.base(b, "--steps", "4"))
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("already holds a checkpoint", p.stderr)

    def test_bf16_matmul_resumes_bitwise_and_differs_from_f32(self):
        a, b, c = self.work("bf16-full"), self.work("bf16-split"), self.work("bf16-f32")
        hwaga(*self.base(a, "--steps", "4", "--lr", "2e-3", "--matmul", "bf16"), check=True)
        p = hwaga(*self.base(b, "--steps", "4", "--lr", "2e-3", "--matmul", "bf16", "--stop-after", "2"), check=True)
        self.assertIn("matrix products in bf16", p.stderr)
        _, meta = fx.read_safetensors(os.path.join(b, "checkpoint.safetensors"))
        self.assertEqual(json.loads(meta["train"])["options"]["matmul"], "bf16")
        p = hwaga("train", "--work-dir", b, "--resume", "--threads", "2", check=True)
        self.assertIn("matrix products in bf16", p.stderr)  # kept from the checkpoint
        with open(os.path.join(a, "checkpoint.safetensors"), "rb") as f1, \
                open(os.path.join(b, "checkpoint.safetensors"), "rb") as f2:
            self.assertTrue(f1.read() == f2.read(), "bf16 checkpoints differ after resume")
        hwaga(*self.base(c, "--steps", "4", "--lr", "2e-3"), check=True)
        la, lc = [r["loss"] for r in losses(a)], [r["loss"] for r in losses(c)]
        self.assertNotEqual(la, lc)
        for x, y in zip(la, lc):  # the same run up to bf16 rounding
            self.assertAlmostEqual(x, y, delta=2e-2 * abs(y))

    def test_sigterm_saves_and_resume_continues(self):
        w = self.work("term")
        proc = subprocess.Popen([HWAGA_BIN] + self.base(w, "--steps", "100000", "--lr", "1e-3"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        log = os.path.join(w, "train.jsonl")
        deadline = time.time() + 60
        while time.time() < deadline:
            if os.path.exists(log) and len(losses(w)) >= 3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 143, err.decode())
        self.assertIn(b"interrupted at step", err)
        fx_t, meta = fx.read_safetensors(os.path.join(w, "checkpoint.safetensors"))
        step = json.loads(meta["train"])["step"]
        self.assertGreaterEqual(step, 3)
        self.assertEqual([r["step"] for r in losses(w)], list(range(1, step + 1)))
        p = hwaga("train", "--work-dir", w, "--resume", "--stop-after", "2", check=True)
        self.assertIn("step %d/100000" % (step + 2), p.stdout)
        self.assertEqual([r["step"] for r in losses(w)], list(range(1, step + 3)))

    def test_balance_draws_groups_equally_and_is_kept_on_resume(self):
        grouped = os.path.join(self.tmp, "shards-grouped")
        fx.make_shards(grouped, groups=True)
        w = self.work("balance")
        args = ["train", "--tokenizer", self.s1, "--shards", grouped, "--config", self.cfg, "--text-tokenizer", self.bpe,
                "--work-dir", w, "--batch", "4", "--threads", "2", "--steps", "4", "--balance"]
        p = hwaga(*(args + ["--stop-after", "2"]), check=True)
        self.assertIn("balanced batches: 2 groups of 8 samples drawn equally often", p.stderr)
        _, meta = fx.read_safetensors(os.path.join(w, "checkpoint.safetensors"))
        self.assertTrue(json.loads(meta["train"])["options"]["balance"])
        p = hwaga("train", "--work-dir", w, "--resume", "--threads", "2", check=True)
        self.assertIn("balanced batches", p.stderr)  # kept from the checkpoint
        self.assertIn("step 4/4", p.stdout)
        # a plain run cannot be switched to balanced batches on resume
        self.check_no_switch_on_resume("balance-plain", "--balance",
                                       "--balance: the checkpoint's run draws every sample equally often")

    def test_cfg_drop_is_recorded_and_kept_on_resume(self):
        w = self.work("cfg-drop")
        p = hwaga(*self.base(w, "--steps", "4", "--stop-after", "2", "--cfg-drop", "0.5"), check=True)
        self.assertIn("50% of the rows see the unconditional (all-PAD) text", p.stderr)
        _, meta = fx.read_safetensors(os.path.join(w, "checkpoint.safetensors"))
        self.assertEqual(json.loads(meta["train"])["options"]["cfg_drop"], 0.5)
        p = hwaga("train", "--work-dir", w, "--resume", "--threads", "2", check=True)
        self.assertIn("50% of the rows", p.stderr)  # kept from the checkpoint
        self.assertIn("step 4/4", p.stdout)
        # the unconditional rows change the loss: the same run without them differs at step 1..4
        plain = self.work("cfg-drop-plain")
        hwaga(*self.base(plain, "--steps", "4"), check=True)
        self.assertNotEqual([r["loss"] for r in losses(w)], [r["loss"] for r in losses(plain)])

    def check_no_switch_on_resume(self, name, flag, message):
        """A plain run's checkpoint cannot be resumed with `flag` (it changes the data)."""
        plain = self.work(name)
        hwaga(*self.base(plain, "--steps", "4", "--stop-after", "1"), check=True)
        p = hwaga("train", "--work-dir", plain, "--resume", flag)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(message, p.stderr)

    def check_input_option(self, name, flag, value, key, said, said_short, first_step_differs=True):
        """An option that changes the inputs of each step: recorded in the checkpoint, kept on
        resume, 2 + 2 resumed steps equal 4 straight ones (its draws are a function of the seed
        and the position), and it changes the run."""
        w = self.work(name)
        p = hwaga(*self.base(w, "--steps", "4", "--stop-after", "2", flag, value), check=True)
        self.assertIn(said, p.stderr)
        _, meta = fx.read_safetensors(os.path.join(w, "checkpoint.safetensors"))
        self.assertEqual(json.loads(meta["train"])["options"][key], float(value))
        p = hwaga("train", "--work-dir", w, "--resume", "--threads", "2", check=True)
        self.assertIn(said_short, p.stderr)  # kept from the checkpoint
        straight = self.work(name + "-straight")
        hwaga(*self.base(straight, "--steps", "4", flag, value), check=True)
        self.assertEqual([r["loss"] for r in losses(w)], [r["loss"] for r in losses(straight)])
        plain = self.work(name + "-plain")
        hwaga(*self.base(plain, "--steps", "4"), check=True)
        skip = 0 if first_step_differs else 1
        self.assertNotEqual([r["loss"] for r in losses(w)][skip:], [r["loss"] for r in losses(plain)][skip:])

    def test_code_noise_is_recorded_and_resumes_exactly(self):
        self.check_input_option("code-noise", "--code-noise", "0.25", "code_noise",
                                "input code noise: 25% of the input codes are uniform random codes",
                                "input code noise: 25%")

    def test_self_feed_is_recorded_and_resumes_exactly(self):
        self.check_input_option("self-feed", "--self-feed", "0.5", "self_feed",
                                "self-feeding: 50% of the input codes are the model's own draws", "self-feeding: 50%",
                                first_step_differs=False)

    def test_held_out_loss(self):
        # single-caption shards: a batch of all 8 samples is then exactly the held-out set, so the
        # first training loss (computed before the first update) equals the held-out loss at step 0
        import io
        import tarfile
        plain = os.path.join(self.tmp, "plain-shards")
        os.makedirs(plain, exist_ok=True)
        with tarfile.open(os.path.join(plain, "shard-00000.tar"), "w", format=tarfile.USTAR_FORMAT) as tf:
            for i, (c, s) in enumerate(fx.items()):
                for name, data in [("p/%03d.png" % i, fx.png_bytes(fx.picture(c, s))),
                                   ("p/%03d.txt" % i, ("%s %s" % (c, s)).encode())]:
                    ti = tarfile.TarInfo(name)
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
        w = self.work("eval")
        args = ["train", "--tokenizer", self.s1, "--shards", plain, "--config", self.cfg, "--text-tokenizer", self.bpe,
                "--work-dir", w, "--batch", "8", "--threads", "2", "--dropout", "0", "--lr", "3e-3",
                "--eval-shards", plain, "--eval-count", "100", "--save-every", "2"]
        p = hwaga(*(args + ["--steps", "4", "--stop-after", "2"]), check=True)
        self.assertIn("step 0: held-out loss", p.stderr)
        self.assertTrue(os.path.exists(os.path.join(w, "eval-codes.safetensors")))
        p = hwaga("train", "--work-dir", w, "--resume", "--threads", "2", check=True)  # keeps the eval shards
        self.assertIn("step 4: held-out loss", p.stderr)
        with open(os.path.join(w, "train.jsonl")) as f:
            evals = [r for r in map(json.loads, filter(str.strip, f)) if r.get("event") == "eval"]
        self.assertEqual([r["step"] for r in evals], [0, 2, 4], evals)
        for r in evals:
            self.assertEqual(r["samples"], 8)  # --eval-count 100: all the shards hold
            # weighted as training weighs it (0.9 and 0.1 as f32)
            self.assertAlmostEqual(r["loss"], 0.9 * r["image_loss"] + 0.1 * r["text_loss"], delta=1e-6 * r["loss"])
        first = losses(w)[0]
        for k in ("loss", "image_loss", "text_loss"):
            self.assertAlmostEqual(evals[0][k], first[k], delta=1e-5 * first[k], msg=k)
        self.assertLess(evals[2]["loss"], evals[0]["loss"], "4 steps on the held-out set itself lower its loss")
        # errors
        p = hwaga(*self.base(self.work("eval-bad"), "--steps", "1", "--eval-shards", os.path.join(self.tmp, "nowhere")))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("nowhere", p.stderr)
        p = hwaga(*self.base(self.work("eval-bad2"), "--steps", "1", "--eval-shards", plain, "--eval-count", "0"))
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("--eval-count must be at least 1", p.stderr)

    def test_canonical_flat_codes(self):
        # every code position of the cache is either the encoder's code of the picture (a patch
        # with more than one colour) or, for a one-colour patch, the code that `hwaga encode`
        # gives the same position of a picture filled with that colour
        import numpy as np
        w = self.work("flat")
        p = hwaga(*self.base(w, "--steps", "2", "--stop-after", "1", "--canonical-flat"), check=True)
        self.assertRegex(p.stderr, r"canonical codes for \d+ flat patches of 512 \(\d+ colours\)")
        t, _ = fx.read_safetensors(os.path.join(w, "codes.safetensors"))
        codes = t["codes"]
        raw = t["captions.bytes"].tobytes()
        off, first = t["captions.offsets"], t["captions.first"]
        caps = [raw[off[first[n]]:off[first[n] + 1]].decode() for n in range(len(codes))]
        pics = {"%s %s" % (c, s): fx.picture(c, s) for c, s in fx.items()}
        d = os.path.join(self.tmp, "flat-pngs")
        os.makedirs(d, exist_ok=True)

        def encode(rgb, name):
            path = os.path.join(d, name + ".png")
            with open(path, "wb") as f:
                f.write(fx.png_bytes(rgb))
            out = os.path.join(d, name + ".npy")
            hwaga("encode", "-m", self.s1, "-o", out, path, check=True)
            return np.load(out)[0]

        flat_seen = mixed_seen = 0
        fills = {}
        for n, cap in enumerate(caps):
            pic = pics[cap]
            own = encode(pic, "pic%d" % n)
            h, w_, _ = own.shape
            ph, pw = pic.shape[0] // h, pic.shape[1] // w_
            for y in range(h):
                for x in range(w_):
                    patch = pic[y * ph:(y + 1) * ph, x * pw:(x + 1) * pw].reshape(-1, 3)
                    if (patch == patch[0]).all():
                        key = tuple(int(v) for v in patch[0])
                        if key not in fills:
                            fills[key] = encode(np.full_like(pic, patch[0]), "fill%d" % len(fills))
                        np.testing.assert_array_equal(codes[n, y, x], fills[key][y, x], "%s (%d,%d)" % (cap, y, x))
                        flat_seen += 1
                    else:
                        np.testing.assert_array_equal(codes[n, y, x], own[y, x], "%s (%d,%d)" % (cap, y, x))
                        mixed_seen += 1
        self.assertGreater(flat_seen, 100)
        self.assertGreater(mixed_seen, 50)
        self.assertGreater(len(fills), 1)  # white and the shapes' colours
        # kept on resume; a run without it cannot switch on resume
        p = hwaga("train", "--work-dir", w, "--resume", "--threads", "2", check=True)
        self.assertIn("reusing", p.stderr)
        self.check_no_switch_on_resume("flat-plain", "--canonical-flat",
                                       "--canonical-flat: the checkpoint's run trained on the encoder's own codes")

    def test_spm_tokenizer_keeps_hangul_and_cache_rebuilds(self):
        w = self.work("spm")
        cfg = fx.write_config(os.path.join(self.tmp, "cfg-spm.json"), vocab_size_cond=30)
        p = hwaga(*self.base(w, "--steps", "2", cfg=cfg, tok="spm:30"), check=True)
        model = os.path.join(self.tmp, "spm.safetensors")
        hwaga("export", "--checkpoint", os.path.join(w, "checkpoint.safetensors"), "-o", model, check=True)
        p = hwaga("tokenize", "-m", model, "빨간 원", check=True)
        ids = json.loads(p.stdout.strip().splitlines()[-1])
        self.assertNotIn(1, ids[:3], "Hangul became [UNK]: %s" % ids)  # unk id 1 (SpmTrainOptions)
        # other shards -> the cache in the work dir is encoded again
        other = os.path.join(self.tmp, "shards3")
        fx.make_shards(other, n_shards=3)
        os.remove(os.path.join(w, "checkpoint.safetensors"))
        p = hwaga("train", "--tokenizer", self.s1, "--shards", other, "--config", cfg, "--text-tokenizer", "spm:30",
                  "--work-dir", w, "--steps", "1", "--batch", "2", check=True)
        self.assertIn("made from other shards or another stage-1 model: encoding again", p.stderr)
        self.assertNotIn("reusing", p.stderr)
        self.assertIn("encoded 8 samples", p.stderr)

    def test_bad_options(self):
        w = self.work("bad")
        cases = [
            (self.base(w, "--steps", "0"), 2, "--steps must be at least 1"),
            (self.base(w, "--steps", "1", tok="gpt2:x"), 2, "expected bpe16k:VOCAB.json,MERGES.txt or spm:VOCAB_SIZE"),
            (self.base(w, "--steps", "1", "--dropout", "1"), 2, "--dropout must be in [0, 1)"),
            (self.base(w, "--steps", "1", "--cfg-drop", "1"), 2, "--cfg-drop must be in [0, 1)"),
            (self.base(w, "--steps", "1", "--matmul", "f16"), 2, "--matmul: expected f32 or bf16"),
            (self.base(w, "--steps", "1", "--cfg-drop", "-0.1"), 2, "--cfg-drop must be in [0, 1)"),
            (self.base(w, "--steps", "1", "--code-noise", "1"), 2, "--code-noise must be in [0, 1)"),
            (self.base(w, "--steps", "1", "--code-noise", "nan"), 2, "--code-noise must be in [0, 1)"),
            (self.base(w, "--steps", "1", "--self-feed", "-1"), 2, "--self-feed must be in [0, 1)"),
            (self.base(w, "--steps", "1", "--dist-backend", "mpi"), 2, "--dist-backend: expected tcp or nccl"),
            (self.base(w, "--steps", "1", "--dist-backend", "nccl"), 2, "--dist-backend nccl sums gradients on GPUs"),
            (["train", "--work-dir", self.work("none"), "--resume"], 1, "there is no checkpoint"),
            ([a if a != self.shards else os.path.join(self.tmp, "missing-{0..3}.tar") for a in self.base(w, "--steps", "1")],
             1, "missing-0.tar"),
            (self.base(w, "--steps", "1", tok="spm:5000"), 1, "SentencePiece cannot make a vocabulary of 5000 ids"),
            (self.base(w, "--steps", "1", cfg=fx.write_config(os.path.join(self.tmp, "k32.json"), vocab_size=32)), 1,
             "vocab_size 32 differs from the codebook size"),
            (self.base(w, "--steps", "1", cfg=fx.write_config(os.path.join(self.tmp, "v9.json"), vocab_size_cond=90)),
             1, "vocab_size_cond 90 differs from the text tokenizer's vocabulary"),
            (self.base(w, "--steps", "1", cfg=fx.write_config(os.path.join(self.tmp, "bs.json"), block_size=(4, 4, 4))),
             1, "differs from the codes of"),
            (["export", "--checkpoint", self.cfg, "-o", os.path.join(self.tmp, "x.safetensors")], 1, self.cfg),
        ]
        if shutil.which("nvidia-smi") is None:  # no GPU: --device cuda says why before touching anything
            cases.append((self.base(w, "--steps", "1", "--device", "cuda"), 1, "--device cuda: "))
            # NCCL missing or no GPU: either reason, named, before anything is written
            p = hwaga(*self.base(w, "--steps", "1", "--device", "cuda", "--dist-backend", "nccl"))
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertRegex(p.stderr, r"--dist-backend nccl: |--device cuda: ")
        for args, rc, msg in cases:
            p = hwaga(*args)
            self.assertEqual(p.returncode, rc, "%s: rc %d\n%s" % (args, p.returncode, p.stderr))
            self.assertIn(msg, p.stderr, args)
        self.assertFalse(os.path.exists(os.path.join(w, "checkpoint.safetensors")))

    # ---- minDALL-E's GPT ----

    def gpt_fixture(self):
        """(VQGAN stage-1 file, GPT config), made once for all test_gpt_* methods."""
        cls = type(self)
        if not hasattr(cls, "gpt_s1"):
            cls.gpt_s1 = gx.make_vqgan_stage1(os.path.join(cls.tmp, "s1-vqgan"))
            cls.gpt_cfg = gx.write_gpt_config(os.path.join(cls.tmp, "gpt.json"))
        return cls.gpt_s1, cls.gpt_cfg

    def gpt_base(self, work, *extra, cfg=None, s1=None):
        gs1, gcfg = self.gpt_fixture()
        return ["train", "--tokenizer", s1 or gs1, "--shards", self.shards, "--config", cfg or gcfg,
                "--text-tokenizer", self.bpe, "--work-dir", work, "--batch", "4", "--threads", "2"] + list(extra)

    def test_gpt_loss_falls_and_export_generates(self):
        w = self.work("gpt-fall")
        model = os.path.join(self.tmp, "gpt-fall.safetensors")
        p = hwaga(*self.gpt_base(w, "--steps", "40", "--lr", "3e-3", "--export", model, "--sample-every", "40",
                                 "--sample-prompt", "red circle"), check=True)
        self.assertIn("step 40/40", p.stdout)
        self.assertIn("mindalle-gpt", p.stderr)
        rows = losses(w)
        ls = [r["loss"] for r in rows]
        self.assertEqual(len(ls), 40)
        first, last = sum(ls[:5]) / 5, sum(ls[-5:]) / 5
        self.assertLess(last, first - 1.0, "the loss did not fall: %s" % ls)  # ~4.0 -> ~2.0 observed
        self.assertLess(rows[-1]["image_loss"], rows[0]["image_loss"] - 1.0)
        self.assertLess(rows[-1]["text_loss"], rows[0]["text_loss"] - 0.5)
        self.assertTrue(os.path.exists(os.path.join(w, "samples", "step0000040-00.png")))
        p = hwaga("info", "-m", model, check=True)
        self.assertIn("mindalle-gpt", p.stdout)
        out = os.path.join(self.tmp, "gpt-fall.png")
        hwaga("generate", "-m", model, "-p", "red circle", "-o", out, "--seed", "3", check=True)
        img, _ = read_png(out)
        self.assertEqual(img.shape, (32, 32, 3))
        self.assertGreater(int(img.max()) - int(img.min()), 0)  # a picture, not a blank
        # --init fine-tunes the export: the first loss is the trained model's
        ft = self.work("gpt-finetune")
        p = hwaga("train", "--init", model, "--shards", self.shards, "--work-dir", ft, "--steps", "2", "--batch", "4",
                  "--threads", "2", check=True)
        self.assertIn("fine-tuning from", p.stderr)
        self.assertLess(losses(ft)[0]["loss"], ls[0] - 1.0, (losses(ft)[0], ls[0]))

    def test_gpt_resume_is_bitwise(self):
        a, b = self.work("gpt-full"), self.work("gpt-split")
        hwaga(*self.gpt_base(a, "--steps", "4"), check=True)
        hwaga(*self.gpt_base(b, "--steps", "4", "--stop-after", "2"), check=True)
        self.assertEqual([r["step"] for r in losses(b)], [1, 2])
        p = hwaga("train", "--work-dir", b, "--resume", "--threads", "2", check=True)
        self.assertIn("step 4/4", p.stdout)
        with open(os.path.join(a, "checkpoint.safetensors"), "rb") as f1, \
                open(os.path.join(b, "checkpoint.safetensors"), "rb") as f2:
            self.assertTrue(f1.read() == f2.read(), "checkpoints differ")
        self.assertEqual(losses(a), losses(b))
        _, meta = fx.read_safetensors(os.path.join(b, "checkpoint.safetensors"))
        t = json.loads(meta["train"])
        self.assertEqual(t["stage"], "mindalle-gpt")
        o = t["options"]
        self.assertEqual((o["betas"], o["lr"], o["dropout"]), ([0.9, 0.99], 1e-4, 0.0))  # §6.3 / §4.2 defaults
        self.assertAlmostEqual(losses(a)[0]["lr"], 1e-4, delta=1e-11)  # the f32 schedule's first step
        # the export of a GPT checkpoint is a loadable model
        m = os.path.join(self.tmp, "gpt-split.safetensors")
        p = hwaga("export", "--checkpoint", os.path.join(b, "checkpoint.safetensors"), "-o", m, "--dtype", "bf16",
                  check=True)
        self.assertIn("mindalle-gpt", p.stdout)

    def test_gpt_mismatches_are_refused_before_encoding(self):
        s1, _ = self.gpt_fixture()
        cases = [
            (self.gpt_base(self.work("gm1"), "--steps", "1", s1=self.s1), "takes one code per position"),
            (self.gpt_base(self.work("gm2"), "--steps", "1", cfg=self.cfg), "the RQ-Transformer needs an rq-vae"),
            (self.gpt_base(self.work("gm3"), "--steps", "1",
                           cfg=gx.write_gpt_config(os.path.join(self.tmp, "g64.json"), ctx_len_img=64)),
             "ctx_len_img 64 differs from the 16x16 codes"),
            (self.gpt_base(self.work("gm4"), "--steps", "1",
                           cfg=gx.write_gpt_config(os.path.join(self.tmp, "gk32.json"), vocab_size_img=32)),
             "vocab_size_img 32 differs from the codebook size"),
        ]
        for args, msg in cases:
            p = hwaga(*args)
            self.assertEqual(p.returncode, 1, "%s: rc %d\n%s" % (args, p.returncode, p.stderr))
            self.assertIn(msg, p.stderr, args)
            self.assertFalse(os.path.exists(os.path.join(args[args.index("--work-dir") + 1], "codes.safetensors")))
        p = hwaga(*self.gpt_base(self.work("gm5"), "--steps", "1",
                                 cfg=gx.write_gpt_config(os.path.join(self.tmp, "gv90.json"), vocab_size_txt=90)))
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("vocab_size_txt 90 differs from the text tokenizer's vocabulary", p.stderr)


if __name__ == "__main__":
    main()
