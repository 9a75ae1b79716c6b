"""hwaga train / train-tokenizer --world W --rank R --dist-addr HOST:PORT: data-parallel training
over TCP, on the tiny fixtures of test_train.py (tests/parity/torch_ref/train_stage2_fixtures.py)
and test_train_tokenizer.py (train_stage1_fixtures.py), two ranks as two processes here.

Checks:
- two ranks with 2 rows each take the step of one process with the whole batch of 4: the first
  step's summed gradients (--dump-step, written by rank 0) equal the single process's to float
  summation order (relative 1e-5 of each tensor's largest gradient), and the 4-step loss curve
  agrees to 1e-4 (relative); the same first step for minDALL-E's GPT, and with a SentencePiece
  tokenizer that rank 0 trains and sends to rank 1;
- rank 0 alone writes the work dir (checkpoint, log); a --resume of the 2-rank run continues it;
- SIGTERM to rank 1 stops both ranks at the same step: rank 0 saves and exits 130, rank 1 exits
  143, and the run resumes;
- a rank killed outright makes rank 0 exit 1 naming it;
- a rank started with other settings is refused, with the reason on both sides; a connection
  that is not a rank is turned away and the run goes on;
- bad --world/--rank/--dist-addr/--batch values exit 2 with a message;
- stage 1: two ranks take the one-process step of the RQ-VAE (gradients, losses, the restart
  candidates drawn from the global batch's residuals, the EMA buffers after the step) and of the
  VQGAN, follow its 3-step loss curve, and train with --gan (whose adaptive weight and BatchNorm
  statistics are each rank's own, so only that it runs and saves is checked).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hwaga_testlib import HWAGA_BIN, TORCH_REF, hwaga, main  # noqa: E402

sys.path.insert(0, TORCH_REF)
import train_stage2_fixtures as fx  # noqa: E402
import train_gpt_ref as gx  # noqa: E402
import train_stage1_fixtures as sx  # noqa: E402
from test_train import Stage2Fixture, losses  # noqa: E402


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




class TrainDataParallel(Stage2Fixture):
    PREFIX = "hwaga_train_dp_"

    def base(self, work, *extra):
        return ["train", "--tokenizer", self.s1, "--shards", self.shards, "--config", self.cfg,
                "--text-tokenizer", self.bpe, "--work-dir", work, "--batch", "4", "--threads", "1",
                "--dropout", "0", "--lr", "2e-3"] + list(extra)

    def ranks(self, args_of_rank, world=2, timeout=300):
        """Starts one process per rank (args_of_rank(r, addr) -> argv tail) and waits for all."""
        addr = "127.0.0.1:%d" % free_port()
        procs = [subprocess.Popen([HWAGA_BIN] + args_of_rank(r, addr), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for r in range(world)]
        out = []
        for p in procs:
            o, e = p.communicate(timeout=timeout)
            out.append((p.returncode, o, e))
        return out

    def start_long_run(self, w):
        """Two ranks of an endless run, returned once rank 0 has logged 2 steps."""
        addr = "127.0.0.1:%d" % free_port()
        args = self.dp_args(w, "--steps", "100000")
        procs = [subprocess.Popen([HWAGA_BIN] + args(r, addr), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for r in range(2)]
        log = os.path.join(w, "train.jsonl")
        deadline = time.time() + 120
        while time.time() < deadline and not (os.path.exists(log) and len(losses(w)) >= 2):
            time.sleep(0.05)
        return procs

    def dp_args(self, work, *extra, world=2):
        return lambda r, addr: self.base(work, *extra) + ["--world", str(world), "--rank", str(r),
                                                          "--dist-addr", addr]

    def test_two_ranks_take_the_single_process_step(self):
        one, two = self.work("one"), self.work("two")
        d1, d2 = self.work("one.dump"), self.work("two.dump")
        hwaga(*self.base(one, "--steps", "4", "--dump-step", d1), check=True)
        res = self.ranks(self.dp_args(two, "--steps", "4", "--dump-step", d2))
        for r, (rc, o, e) in enumerate(res):
            self.assertEqual(rc, 0, "rank %d: %s" % (r, e))
        self.assertIn("data parallel: rank 0 of 2", res[0][2])
        self.assertIn("rank 1 of 2 connected", res[1][2])
        self.assertIn("step 4/4", res[0][1])
        self.assert_same_step(d1, d2)
        l1, l2 = losses(one), losses(two)
        self.assertEqual([r["step"] for r in l2], [1, 2, 3, 4])
        for a, b in zip(l1, l2):
            self.assertAlmostEqual(a["loss"], b["loss"], delta=1e-4 * abs(a["loss"]))
        self.assertLess(l2[-1]["loss"], l2[0]["loss"])
        # rank 0 wrote the work dir once; a 2-rank resume continues it
        self.assertTrue(os.path.exists(os.path.join(two, "checkpoint.safetensors")))
        res = self.ranks(lambda r, addr: ["train", "--work-dir", two, "--resume", "--steps", "6", "--threads", "1",
                                          "--world", "2", "--rank", str(r), "--dist-addr", addr])
        for r, (rc, o, e) in enumerate(res):
            self.assertEqual(rc, 0, "rank %d: %s" % (r, e))
        self.assertEqual([r["step"] for r in losses(two)], [1, 2, 3, 4, 5, 6])

    def assert_same_step(self, d1, d2):
        g1, _ = fx.read_safetensors(d1)
        g2, _ = fx.read_safetensors(d2)
        self.assertEqual(sorted(g1), sorted(g2))
        np.testing.assert_array_equal(g1["text"], g2["text"])  # the same global batch
        np.testing.assert_array_equal(g1["codes"], g2["codes"])
        np.testing.assert_allclose(g2["loss"], g1["loss"], rtol=1e-5)
        grads = [k for k in g1 if k.startswith("grad.")]
        self.assertGreater(len(grads), 10)
        # (attention key biases have an exactly zero gradient, softmax being blind to them: what
        # is there is rounding, so each tensor's scale is at least 1e-3 of the largest gradient)
        top = max(float(np.abs(g1[k]).max()) for k in grads)
        for k in grads:
            scale = max(float(np.abs(g1[k]).max()), 1e-3 * top)
            err = float(np.abs(g1[k] - g2[k]).max()) / scale
            self.assertLess(err, 1e-5, "%s: relative difference %.2e" % (k, err))

    def test_gpt_two_ranks_take_the_single_process_step(self):
        s1 = gx.make_vqgan_stage1(os.path.join(self.tmp, "s1-vqgan"))
        cfg = gx.write_gpt_config(os.path.join(self.tmp, "gpt.json"))
        one, two = self.work("gpt-one"), self.work("gpt-two")
        d1, d2 = self.work("gpt-one.dump"), self.work("gpt-two.dump")

        def args(work, dump):
            return ["train", "--tokenizer", s1, "--shards", self.shards, "--config", cfg, "--text-tokenizer",
                    self.bpe, "--work-dir", work, "--batch", "4", "--threads", "1", "--steps", "1",
                    "--dump-step", dump]
        hwaga(*args(one, d1), check=True)
        res = self.ranks(lambda r, addr: args(two, d2) + ["--world", "2", "--rank", str(r), "--dist-addr", addr])
        self.assertEqual([rc for rc, _, _ in res], [0, 0], res[0][2] + res[1][2])
        self.assert_same_step(d1, d2)

    def test_spm_tokenizer_is_rank0s(self):
        cfg = fx.write_config(os.path.join(self.tmp, "cfg-spm.json"), vocab_size_cond=30)
        one, two = self.work("spm-one"), self.work("spm-two")
        d1, d2 = self.work("spm-one.dump"), self.work("spm-two.dump")

        def args(work, dump):
            return ["train", "--tokenizer", self.s1, "--shards", self.shards, "--config", cfg, "--text-tokenizer",
                    "spm:30", "--work-dir", work, "--batch", "4", "--threads", "1", "--steps", "1",
                    "--dropout", "0", "--dump-step", dump]
        hwaga(*args(one, d1), check=True)
        res = self.ranks(lambda r, addr: args(two, d2) + ["--world", "2", "--rank", str(r), "--dist-addr", addr])
        self.assertEqual([rc for rc, _, _ in res], [0, 0], res[0][2] + res[1][2])
        self.assertIn("training a SentencePiece tokenizer", res[0][2])
        self.assertNotIn("training a SentencePiece tokenizer", res[1][2])
        self.assert_same_step(d1, d2)

    def test_sigterm_to_one_rank_stops_both_and_rank0_saves(self):
        w = self.work("term")
        procs = self.start_long_run(w)
        procs[1].send_signal(signal.SIGTERM)
        out = [p.communicate(timeout=120) for p in procs]
        self.assertEqual(procs[1].returncode, 143, out[1][1])
        self.assertEqual(procs[0].returncode, 130, out[0][1])
        self.assertIn("another rank was interrupted", out[0][1])
        _, meta = fx.read_safetensors(os.path.join(w, "checkpoint.safetensors"))
        step = json.loads(meta["train"])["step"]
        self.assertGreaterEqual(step, 2)
        self.assertEqual([r["step"] for r in losses(w)], list(range(1, step + 1)))
        res = self.ranks(lambda r, a: ["train", "--work-dir", w, "--resume", "--stop-after", "1", "--threads", "1",
                                       "--world", "2", "--rank", str(r), "--dist-addr", a])
        self.assertEqual([rc for rc, _, _ in res], [0, 0], res[0][2] + res[1][2])
        self.assertEqual(losses(w)[-1]["step"], step + 1)

    def test_a_killed_rank_is_named(self):
        w = self.work("kill")
        procs = self.start_long_run(w)
        procs[1].kill()
        _, err = procs[0].communicate(timeout=120)
        procs[1].communicate(timeout=60)
        self.assertEqual(procs[0].returncode, 1, err)
        self.assertIn("rank 1", err)

    def test_a_stranger_on_the_port_is_turned_away(self):
        w = self.work("stranger")
        addr = "127.0.0.1:%d" % free_port()
        args = self.dp_args(w, "--steps", "2")
        rank0 = subprocess.Popen([HWAGA_BIN] + args(0, addr), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        deadline = time.time() + 60
        while True:  # once rank 0 listens: a connection with a wrong greeting
            try:
                with socket.create_connection(("127.0.0.1", int(addr.split(":")[1])), timeout=5) as c:
                    c.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(8))
                    c.recv(64)  # rank 0 answers with a refusal and closes
                break
            except OSError:
                self.assertLess(time.time(), deadline, "rank 0 never listened")
                time.sleep(0.05)
        rank1 = subprocess.run([HWAGA_BIN] + args(1, addr), capture_output=True, text=True, timeout=120)
        _, err = rank0.communicate(timeout=120)
        self.assertEqual((rank0.returncode, rank1.returncode), (0, 0), err + rank1.stderr)
        self.assertEqual(losses(w)[-1]["step"], 2)

    def test_other_settings_are_refused(self):
        w = self.work("mismatch")
        res = self.ranks(lambda r, addr: self.base(w, "--steps", "2", "--seed", str(r)) +
                         ["--world", "2", "--rank", str(r), "--dist-addr", addr])
        self.assertEqual([rc for rc, _, _ in res], [1, 1], res)
        self.assertIn("refused rank 1", res[0][2])
        self.assertIn("settings", res[1][2])
        self.assertFalse(os.path.exists(os.path.join(w, "checkpoint.safetensors")))

    def test_bad_options(self):
        w = self.work("bad")
        for extra, msg in [(["--world", "0"], "--world must be at least 1"),
                           (["--world", "2", "--rank", "2", "--dist-addr", "127.0.0.1:1"], "--rank 2 is outside 0..1"),
                           (["--world", "2", "--rank", "-1", "--dist-addr", "127.0.0.1:1"], "--rank -1"),
                           (["--world", "2", "--rank", "0"], "needs --dist-addr"),
                           (["--world", "2", "--rank", "0", "--dist-addr", "localhost"], "expected HOST:PORT"),
                           (["--world", "2", "--rank", "0", "--dist-addr", "127.0.0.1:70000"], "1..65535"),
                           (["--world", "3", "--rank", "0", "--dist-addr", "127.0.0.1:1"], "not a multiple of --world"),
                           (["--world", "2", "--rank", "1", "--dist-addr", "127.0.0.1:1", "--dist-timeout", "0"],
                            "--dist-timeout must be positive")]:
            p = hwaga(*self.base(w, "--steps", "2", *extra))
            self.assertEqual(p.returncode, 2, "%s: %s" % (extra, p.stderr))
            self.assertIn(msg, p.stderr)
        # nobody listens: rank 1 gives up after --dist-timeout, naming the address
        p = hwaga(*self.base(w, "--steps", "2", "--world", "2", "--rank", "1",
                             "--dist-addr", "127.0.0.1:%d" % free_port(), "--dist-timeout", "1"))
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("could not reach rank 0", p.stderr)
        self.assertFalse(os.path.exists(os.path.join(w, "checkpoint.safetensors")))


def assert_close_tensors(tc, a, b, keys, rtol):
    """Each tensor of `keys`: max |a - b| <= rtol x (its largest |a|, at least 1e-3 of the largest
    of all), the floor covering gradients that are exactly zero up to rounding."""
    top = max(float(np.abs(a[k]).max()) for k in keys)
    for k in keys:
        scale = max(float(np.abs(a[k]).max()), 1e-3 * top)
        err = float(np.abs(a[k] - b[k]).max()) / scale
        tc.assertLess(err, rtol, "%s: relative difference %.2e" % (k, err))


class TrainTokenizerDataParallel(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="hwaga_train_tok_dp_")
        cls.s1_shards = os.path.join(cls.tmp, "s1-shards")
        sx.make_shards(cls.s1_shards, 2, 8, 16)
        cls.rq_cfg = sx.write_config(os.path.join(cls.tmp, "rq.json"))
        cls.vq_cfg = sx.write_config(os.path.join(cls.tmp, "vq.json"), dict(sx.TINY, type="vqgan", code_shape=[8, 8, 1]))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def work(self, name):
        return os.path.join(self.tmp, name)

    def args(self, work, cfg, *extra):
        return ["train-tokenizer", "--shards", self.s1_shards, "--config", cfg, "--work-dir", work, "--batch", "4",
                "--lr", "2e-3", "--threads", "1"] + list(extra)

    def one_and_two(self, name, cfg, *extra):
        """The same run as one process and as two ranks; -> (dump 1, dump 2, log 1, log 2)."""
        one, two = self.work(name + "-one"), self.work(name + "-two")
        d1, d2 = one + ".dump", two + ".dump"
        hwaga(*self.args(one, cfg, "--dump-step", d1, *extra), check=True)
        addr = "127.0.0.1:%d" % free_port()
        procs = [subprocess.Popen([HWAGA_BIN] + self.args(two, cfg, "--dump-step", d2, *extra) +
                                  ["--world", "2", "--rank", str(r), "--dist-addr", addr],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
        out = [p.communicate(timeout=300) for p in procs]
        for r, p in enumerate(procs):
            self.assertEqual(p.returncode, 0, "rank %d: %s" % (r, out[r][1]))
        self.assertIn("data parallel: rank 0 of 2", out[0][1])
        g1, _ = sx.read_safetensors(d1)
        g2, _ = sx.read_safetensors(d2)
        return g1, g2, losses(one), losses(two)

    def check_step(self, g1, g2, lg1, lg2):
        np.testing.assert_array_equal(g1["input"], g2["input"])  # the same global batch
        np.testing.assert_allclose(g2["loss"], g1["loss"], rtol=1e-5)
        grads = [k for k in g1 if k.startswith("grad.")]
        self.assertGreater(len(grads), 10)
        assert_close_tensors(self, g1, g2, grads, 1e-5)
        # the codes of rank 0's pictures (the first half of the batch)
        c1, c2 = g1["codes"], g2["codes"]
        self.assertEqual(c2.shape[0] * 2, c1.shape[0])
        self.assertGreaterEqual(float(np.mean(c1[:c2.shape[0]] == c2)), 0.99)
        self.assertEqual(len(lg1), len(lg2))
        for a, b in zip(lg1, lg2):
            self.assertAlmostEqual(a["loss"], b["loss"], delta=1e-3 * abs(a["loss"]))
            self.assertEqual(a["codes_used"], b["codes_used"])  # the global batch's histogram

    def test_rqvae_two_ranks_take_the_single_process_step(self):
        g1, g2, lg1, lg2 = self.one_and_two("rq", self.rq_cfg, "--steps", "3")
        self.check_step(g1, g2, lg1, lg2)
        restarts = [k for k in g1 if k.startswith("restart.")]
        self.assertEqual(len(restarts), 2)  # one set per depth, drawn from the global residuals
        assert_close_tensors(self, g1, g2, restarts, 1e-5)
        ema = [k for k in g1 if k.startswith("after.") and ("_ema" in k or "codebook" in k)]
        self.assertGreaterEqual(len(ema), 3)
        assert_close_tensors(self, g1, g2, ema, 1e-5)

    def test_vqgan_two_ranks_take_the_single_process_step(self):
        self.check_step(*self.one_and_two("vq", self.vq_cfg, "--steps", "3"))

    def test_gan_trains_on_two_ranks(self):
        w = self.work("gan")
        addr = "127.0.0.1:%d" % free_port()
        res = [subprocess.Popen([HWAGA_BIN] + self.args(w, self.rq_cfg, "--steps", "3", "--gan") +
                                ["--world", "2", "--rank", str(r), "--dist-addr", addr],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
        out = [p.communicate(timeout=300) for p in res]
        self.assertEqual([p.returncode for p in res], [0, 0], out[0][1] + out[1][1])
        log = losses(w)
        self.assertEqual([r["step"] for r in log], [1, 2, 3])
        self.assertTrue(all(np.isfinite(r["loss_disc"]) for r in log))
        t, _ = sx.read_safetensors(os.path.join(w, "checkpoint.safetensors"))
        self.assertTrue(any(k.startswith("discriminator.") for k in t), sorted(t)[:5])


if __name__ == "__main__":
    main()
