"""hwaga generate (and a bench smoke run) on tiny random RQ-Transformer and minDALL-E models.

Checks: a fixed seed gives identical pictures and codes twice, other seeds differ, picture i does
not depend on -n / --batch; the codes equal the independent PyTorch references'
(tests/parity/torch_ref/rq_transformer_ref.py and mindalle_ref.py `sample`), greedy and with the
family's default sampler (RQ: top-k 1024, top-p 0.95; minDALL-E: top-k 256 capped at K) drawn
through hwaga's Philox streams (--rng hwaga), so the defaults and the option plumbing are checked
too; the PNG text chunks carry every setting; every bad input gives its exit code and leaves no
file; the default model is found next to the executable.

Codes are compared exactly: both sides compute f32 logits (max |diff| ~1e-5 on these models,
see tests/unit/test_stage2_models.cpp), far below the gaps between the top logits that decide
argmax / the draws on these seeds.
"""
import json
import os
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import t2i_testlib as t2i  # noqa: E402
from hwaga_testlib import HWAGA_BIN, hwaga, main, read_png, run, torch_ref  # noqa: E402

PROMPT = "the dog and the cat"


class GenerateTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="hwaga_gen_")
        cls.root = cls.tmp.name
        cls.rq, cls.md = t2i.build_models(cls.root)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def out_dir(self, name):
        d = os.path.join(self.root, name)
        os.makedirs(d, exist_ok=True)
        return d

    def generate(self, model, *args, out="out", check=True, **kw):
        d = self.out_dir(out)
        p = hwaga("generate", "-m", model, *args, check=check, **kw)
        return d, p

    def text_ids(self, model, prompt):
        p = hwaga("tokenize", "-m", model, prompt, check=True)
        ids = json.loads(p.stdout.splitlines()[0])
        path = os.path.join(self.root, "ids.json")
        with open(path, "w") as f:
            json.dump(ids, f)
        return path

    # ---- determinism ----

    def test_same_seed_same_pictures(self):
        outs = []
        for run_i in range(2):
            d = self.out_dir("same%d" % run_i)
            hwaga("generate", "-m", self.rq, "-p", PROMPT, "-n", "2", "--seed", "42", "-o",
                  os.path.join(d, "p_%d.png"), "--codes-out", os.path.join(d, "c.npy"), check=True)
            outs.append(d)
        for i in range(2):
            a, ta = read_png(os.path.join(outs[0], "p_%d.png" % i))
            b, tb = read_png(os.path.join(outs[1], "p_%d.png" % i))
            self.assertEqual(a.shape, (32, 32, 3))
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.load(os.path.join(outs[0], "c.npy")), np.load(os.path.join(outs[1], "c.npy")))
        # the two candidates of one run differ (their own streams)
        c = np.load(os.path.join(outs[0], "c.npy"))
        self.assertEqual(c.shape, (2, 8, 8, 4))
        self.assertEqual(c.dtype, np.int32)
        self.assertFalse(np.array_equal(c[0], c[1]))

    def test_other_seed_differs(self):
        codes = []
        for seed in ("1", "2"):
            d = self.out_dir("seed" + seed)
            hwaga("generate", "-m", self.md, "-p", PROMPT, "--seed", seed, "-o", os.path.join(d, "x.png"),
                  "--codes-out", os.path.join(d, "c.npy"), check=True)
            codes.append(np.load(os.path.join(d, "c.npy")))
        self.assertEqual(codes[0].shape, (1, 16, 16, 1))
        self.assertGreater(int((codes[0] != codes[1]).sum()), 50)  # of 256 codes, K = 64

    def test_candidate_independent_of_n_and_batch(self):
        d = self.out_dir("indep")
        hwaga("generate", "-m", self.rq, "-p", PROMPT, "-n", "3", "--seed", "9", "-o", os.path.join(d, "a%d.png"),
              "--codes-out", os.path.join(d, "a.npy"), check=True)
        hwaga("generate", "-m", self.rq, "-p", PROMPT, "-n", "3", "--seed", "9", "--batch", "2", "--threads", "1",
              "-o", os.path.join(d, "b%d.png"), "--codes-out", os.path.join(d, "b.npy"), check=True)
        hwaga("generate", "-m", self.rq, "-p", PROMPT, "-n", "2", "--seed", "9", "-o", os.path.join(d, "c%d.png"),
              "--codes-out", os.path.join(d, "c.npy"), check=True)
        a, b, c = (np.load(os.path.join(d, x + ".npy")) for x in "abc")
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a[:2], c)
        # the reproduce line of picture 2 ("-n 3, the last picture") is what the test above did
        t = t2i.png_text(os.path.join(d, "a2.png"))
        self.assertIn("--seed 9 -n 3", t["hwaga.reproduce"])

    # ---- against the PyTorch references ----

    def test_rq_codes_match_reference(self):
        ids = self.text_ids(self.rq, PROMPT)
        stage1, stage2 = os.path.join(self.root, "rq", "stage1"), os.path.join(self.root, "rq", "stage2")
        d = self.out_dir("rqref")
        # greedy
        hwaga("generate", "-m", self.rq, "-p", PROMPT, "--greedy", "-n", "2", "-o", os.path.join(d, "g%d.png"),
              "--codes-out", os.path.join(d, "g.npy"), check=True)
        torch_ref("rq_transformer_ref.py", "sample", "--ckpt", stage2, "--stage1", stage1, "--text-ids", ids,
                  "--greedy", "--n", "1", "--out", os.path.join(d, "g_ref.npy"))
        g, g_ref = np.load(os.path.join(d, "g.npy")), np.load(os.path.join(d, "g_ref.npy"))
        np.testing.assert_array_equal(g[0], g_ref[0])
        np.testing.assert_array_equal(g[1], g_ref[0])  # greedy: every candidate is the same
        # the family defaults (top-k 1024 capped at K, top-p 0.95, temperature 1), seed 5
        hwaga("generate", "-m", self.rq, "-p", PROMPT, "--seed", "5", "-n", "2", "-o", os.path.join(d, "s%d.png"),
              "--codes-out", os.path.join(d, "s.npy"), check=True)
        torch_ref("rq_transformer_ref.py", "sample", "--ckpt", stage2, "--stage1", stage1, "--text-ids", ids,
                  "--top-k", "1024", "--top-p", "0.95", "--temperature", "1.0", "--seed", "5", "--n", "2",
                  "--rng", "hwaga", "--out", os.path.join(d, "s_ref.npy"))
        np.testing.assert_array_equal(np.load(os.path.join(d, "s.npy")), np.load(os.path.join(d, "s_ref.npy")))
        # per-depth top-k and a temperature through the command line
        hwaga("generate", "-m", self.rq, "-p", PROMPT, "--seed", "6", "--top-k", "8,4,2,1", "--top-p", "0.9",
              "--temperature", "0.7", "-o", os.path.join(d, "k.png"), "--codes-out", os.path.join(d, "k.npy"),
              check=True)
        torch_ref("rq_transformer_ref.py", "sample", "--ckpt", stage2, "--stage1", stage1, "--text-ids", ids,
                  "--top-k", "8,4,2,1", "--top-p", "0.9", "--temperature", "0.7", "--seed", "6", "--n", "1",
                  "--rng", "hwaga", "--out", os.path.join(d, "k_ref.npy"))
        np.testing.assert_array_equal(np.load(os.path.join(d, "k.npy")), np.load(os.path.join(d, "k_ref.npy")))
        self.assertTrue((np.load(os.path.join(d, "k.npy"))[..., 3] >= 0).all())

    def test_class_and_unconditional_models(self):
        """generate --class N on a class-conditional RQ model, and no condition on an unconditional
        one: sampled codes equal the reference's (the condition id is the class, or 0)."""
        for cond in ("class", "none"):
            s1 = os.path.join(self.root, "rq", "stage1")
            s2 = os.path.join(self.root, "rq-" + cond)
            torch_ref("make_stage2_checkpoint.py", "--kind", "rq", "--size", "tiny", "--cond", cond, "--seed", "3",
                      "--codebook-from", s1, "--out", s2, timeout=300)
            model = os.path.join(self.root, "rq-%s.safetensors" % cond)
            hwaga("convert", "rq", "--stage1", s1, "--stage2", s2, "-o", model, check=True)
            d = self.out_dir("cond-" + cond)
            args = ["--class", "7"] if cond == "class" else []
            p = hwaga("generate", "-m", model, *args, "--seed", "9", "-n", "2", "--top-k", "8", "--top-p", "0.9",
                      "-o", os.path.join(d, "c%d.png"), "--codes-out", os.path.join(d, "c.npy"), check=True)
            self.assertIn("class 7" if cond == "class" else "unconditional", p.stderr)
            ids = os.path.join(d, "ids.json")
            with open(ids, "w") as f:
                json.dump([7 if cond == "class" else 0], f)
            torch_ref("rq_transformer_ref.py", "sample", "--ckpt", s2, "--stage1", s1, "--text-ids", ids,
                      "--top-k", "8", "--top-p", "0.9", "--temperature", "1.0", "--seed", "9", "--n", "2",
                      "--rng", "hwaga", "--out", os.path.join(d, "c_ref.npy"))
            np.testing.assert_array_equal(np.load(os.path.join(d, "c.npy")), np.load(os.path.join(d, "c_ref.npy")))
            text = t2i.png_text(os.path.join(d, "c1.png"))
            if cond == "class":
                self.assertEqual(text["hwaga.class"], "7")
                self.assertIn("--class 7", text["hwaga.reproduce"])
            self.assertNotIn("hwaga.prompt", text)
            # what each model takes is checked: exit 2 naming the option
            bad = [(["-p", PROMPT], "takes no text"), ([], "--class N is needed"), (["--class", "10"], "classes 0..9")]
            if cond == "none":
                bad = [(["-p", PROMPT], "takes no text"), (["--class", "1"], "unconditional")]
            for extra, needle in bad:
                p = hwaga("generate", "-m", model, *extra, "-o", os.path.join(d, "bad.png"))
                self.assertEqual(p.returncode, 2, (cond, extra, p.stderr))
                self.assertIn(needle, p.stderr)
                self.assertFalse(os.path.exists(os.path.join(d, "bad.png")))
            prompts = os.path.join(d, "prompts.txt")
            with open(prompts, "w") as f:
                f.write("a red circle\n")
            p = hwaga("gallery", "-m", model, prompts, "-o", os.path.join(d, "gal"))
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn("gallery needs a text-to-image model", p.stderr)
        # a text model wants -p and refuses --class
        p = hwaga("generate", "-m", self.rq, "-o", os.path.join(self.root, "nop.png"))
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("-p PROMPT is needed", p.stderr)
        p = hwaga("generate", "-m", self.rq, "--class", "1", "-o", os.path.join(self.root, "nop.png"))
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("text-to-image model", p.stderr)

    def test_mindalle_codes_match_reference(self):
        ids = self.text_ids(self.md, PROMPT)
        ckpt = os.path.join(self.root, "md")
        d = self.out_dir("mdref")
        hwaga("generate", "-m", self.md, "-p", PROMPT, "--greedy", "-o", os.path.join(d, "g.png"),
              "--codes-out", os.path.join(d, "g.npy"), check=True)
        torch_ref("mindalle_ref.py", "sample", "--ckpt", ckpt, "--text-ids", ids, "--greedy", "--n", "1",
                  "--out", os.path.join(d, "g_ref.npy"))
        np.testing.assert_array_equal(np.load(os.path.join(d, "g.npy")).reshape(-1),
                                      np.load(os.path.join(d, "g_ref.npy")).reshape(-1))
        # defaults: top-k 256 capped at K = 64, no top-p
        p = hwaga("generate", "-m", self.md, "-p", PROMPT, "--seed", "3", "-n", "2", "-o", os.path.join(d, "s%d.png"),
                  "--codes-out", os.path.join(d, "s.npy"), check=True)
        self.assertIn("top-k 64, top-p none", p.stderr)
        torch_ref("mindalle_ref.py", "sample", "--ckpt", ckpt, "--text-ids", ids, "--top-k", "64", "--seed", "3",
                  "--n", "2", "--rng", "hwaga", "--out", os.path.join(d, "s_ref.npy"))
        np.testing.assert_array_equal(np.load(os.path.join(d, "s.npy")).reshape(2, -1),
                                      np.load(os.path.join(d, "s_ref.npy")).reshape(2, -1))

    # ---- provenance ----

    def test_png_text_carries_settings(self):
        d = self.out_dir("text")
        prompt = "the dog é 犬"
        p = hwaga("generate", "-m", self.rq, "-p", prompt, "-n", "2", "--seed", "77", "--top-k", "32",
                  "--top-p", "0.8", "--temperature", "0.9", "--cfg", "1.5", "-o", os.path.join(d, "t_%02d.png"),
                  check=True)
        self.assertIn("steps in", p.stderr)  # the progress line
        self.assertEqual(p.stdout.split(), [os.path.join(d, "t_00.png"), os.path.join(d, "t_01.png")])
        t = t2i.png_text(os.path.join(d, "t_01.png"))
        self.assertEqual(t["hwaga.prompt"], prompt)
        self.assertEqual(t["Description"], prompt)
        self.assertEqual(t["hwaga.model"], self.rq)
        self.assertEqual(t["hwaga.seed"], "77")
        self.assertEqual(t["hwaga.candidate"], "1")
        self.assertEqual(t["hwaga.top_k"], "32")
        self.assertEqual(t["hwaga.top_p"], "0.8")
        self.assertEqual(t["hwaga.temperature"], "0.9")
        self.assertEqual(t["hwaga.cfg"], "1.5")
        self.assertEqual(t["hwaga.greedy"], "false")
        self.assertTrue(t["Software"].startswith("hwaga "))
        self.assertEqual(t["hwaga.version"], t["Software"].split(" ", 1)[1])
        self.assertIn("--top-p 0.8", t["hwaga.command"])
        self.assertIn("generate", t["hwaga.command"])
        self.assertIn("--cfg 1.5", t["hwaga.reproduce"])

    def test_rerank_keeps_the_best_prompt_scores(self):
        """--rerank M: the -n kept pictures are the pool's best by the prompt's pointwise mutual
        information, Σ log p(code | prompt) − Σ log p(code | all-PAD), computed here from the PyTorch
        reference's teacher-forced logits. Tolerance: f32 logits agree to ~1e-5, so the sums over
        the 256 codes to ~3e-3; 1e-2 is used, and the fixture checks that the kept and the dropped
        candidates are further apart than that."""
        d = self.out_dir("rerank")
        hwaga("generate", "-m", self.rq, "-p", PROMPT, "--seed", "3", "-n", "6", "-o", os.path.join(d, "p%d.png"),
              "--codes-out", os.path.join(d, "pool.npy"), check=True)
        p = hwaga("generate", "-m", self.rq, "-p", PROMPT, "--seed", "3", "-n", "2", "--rerank", "6", "-o",
                  os.path.join(d, "k%d.png"), "--codes-out", os.path.join(d, "kept.npy"), check=True)
        self.assertIn("kept candidates", p.stderr)
        pool, kept = np.load(os.path.join(d, "pool.npy")), np.load(os.path.join(d, "kept.npy"))
        ids_path = self.text_ids(self.rq, PROMPT)
        ids = json.load(open(ids_path))
        none_path = os.path.join(d, "none.json")
        with open(none_path, "w") as f:
            json.dump([ids[-1]] * len(ids), f)  # the short prompt ends in padding: all-PAD
        stage1, stage2 = os.path.join(self.root, "rq", "stage1"), os.path.join(self.root, "rq", "stage2")
        lp = []
        for name, cond in (("c", ids_path), ("u", none_path)):
            out = os.path.join(d, name + ".npy")
            torch_ref("rq_transformer_ref.py", "logits", "--ckpt", stage2, "--stage1", stage1, "--text-ids", cond,
                      "--codes", os.path.join(d, "pool.npy"), "--out", out)
            z = np.load(out).astype(np.float64)  # [6,h,w,D,K]
            z = z - z.max(-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            lp.append(np.take_along_axis(logp, pool[..., None].astype(np.int64), -1)[..., 0].sum(axis=(1, 2, 3)))
        score = lp[0] - lp[1]
        order = sorted(range(len(score)), key=lambda i: (-score[i], i))
        self.assertGreater(score[order[1]] - score[order[2]], 2e-2, score)  # the fixture separates kept/dropped
        self.assertEqual(kept.shape, (2,) + pool.shape[1:])
        for i in range(2):
            np.testing.assert_array_equal(kept[i], pool[order[i]])
            t = t2i.png_text(os.path.join(d, "k%d.png" % i))
            self.assertEqual(t["hwaga.candidate"], str(order[i]))
            self.assertEqual(t["hwaga.rerank"], "6")
            self.assertAlmostEqual(float(t["hwaga.prompt_score"]), score[order[i]], delta=1e-2)
            self.assertIn("-n %d --rerank 0" % (order[i] + 1), t["hwaga.reproduce"])
            a, _ = read_png(os.path.join(d, "k%d.png" % i))
            b, _ = read_png(os.path.join(d, "p%d.png" % order[i]))
            np.testing.assert_array_equal(a, b)
        self.check_bad(["-p", PROMPT, "-n", "2", "--rerank", "1"], 2, "--rerank 1: must be at least -n 2")
        self.check_bad(["-p", PROMPT, "--rerank", "-3"], 2, "--rerank -3")

    def test_random_seed_is_printed_and_reproduces(self):
        d = self.out_dir("rand")
        p = hwaga("generate", "-m", self.md, "-p", PROMPT, "-o", os.path.join(d, "r.png"), "--codes-out",
                  os.path.join(d, "r.npy"), check=True)
        seed = t2i.png_text(os.path.join(d, "r.png"))["hwaga.seed"]
        self.assertIn("seed %s (random" % seed, p.stderr)
        hwaga("generate", "-m", self.md, "-p", PROMPT, "--seed", seed, "-o", os.path.join(d, "s.png"), "--codes-out",
              os.path.join(d, "s.npy"), check=True)
        np.testing.assert_array_equal(np.load(os.path.join(d, "r.npy")), np.load(os.path.join(d, "s.npy")))

    # ---- bad input: exit code, message, and no file left ----

    def check_bad(self, args, rc, needle, model=None):
        d = os.path.join(self.root, "bad")
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            os.remove(os.path.join(d, f))
        m = ["-m", model or self.rq]
        p = run([HWAGA_BIN, "generate"] + m + list(args) + ["--codes-out", os.path.join(d, "c.npy")]
                + ([] if "-o" in args else ["-o", os.path.join(d, "o%d.png")]))
        self.assertEqual(p.returncode, rc, "%s: %s" % (args, p.stderr))
        self.assertIn(needle, p.stderr, args)
        self.assertEqual(os.listdir(d), [], args)

    def test_bad_inputs(self):
        self.check_bad(["-p", ""], 2, "empty")
        self.check_bad(["-p", "  \t "], 2, "empty")
        self.check_bad(["-p", PROMPT, "--top-p", "0"], 2, "--top-p")
        self.check_bad(["-p", PROMPT, "--top-p", "1.5"], 2, "(0, 1]")
        self.check_bad(["-p", PROMPT, "--top-p", "abc"], 2, "--top-p")
        self.check_bad(["-p", PROMPT, "--top-k", "0"], 2, "at least 1")
        self.check_bad(["-p", PROMPT, "--top-k", "4,4,4"], 2, "top")  # 3 values for depth 4
        self.check_bad(["-p", PROMPT, "-n", "0"], 2, "-n 0")
        self.check_bad(["-p", PROMPT, "--temperature", "0"], 2, "--temperature")
        self.check_bad(["-p", PROMPT, "--temperature", "-1"], 2, "--temperature")
        d = os.path.join(self.root, "bad")
        self.check_bad(["-p", PROMPT, "-n", "2", "-o", os.path.join(d, "fixed.png")], 2, "%d")
        self.check_bad(["-p", PROMPT, "-o", os.path.join(self.root, "no", "such", "dir", "x.png")], 1, "does not exist")
        # a model file without a text stage (stage 1 only)
        s1_only = os.path.join(self.root, "s1.safetensors")
        if not os.path.exists(s1_only):
            hwaga("convert", "rq-vae", os.path.join(self.root, "rq", "stage1"), "-o", s1_only, check=True)
        self.check_bad(["-p", PROMPT], 1, "no text-to-image stage", model=s1_only)
        self.check_bad(["-p", PROMPT], 1, "such", model=os.path.join(self.root, "missing.safetensors"))

    def test_invalid_utf8(self):
        d = os.path.join(self.root, "utf8")
        os.makedirs(d, exist_ok=True)
        import subprocess
        p = subprocess.run([HWAGA_BIN.encode(), b"generate", b"-m", self.rq.encode(), b"-p", b"the \xff\xfe dog",
                            b"-o", os.path.join(d, "x.png").encode()], capture_output=True)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"UTF-8", p.stderr)
        self.assertEqual(os.listdir(d), [])

    def test_long_prompt_is_truncated_with_warning(self):
        d = self.out_dir("long")
        p = hwaga("generate", "-m", self.rq, "-p", "the dog " * 20, "--seed", "1", "-o", os.path.join(d, "l.png"),
                  "--codes-out", os.path.join(d, "l.npy"))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("warning", p.stderr)
        self.assertIn("cut off", p.stderr)
        # the same as the prompt cut to its first 8 tokens ("the dog" = 2 tokens)
        hwaga("generate", "-m", self.rq, "-p", "the dog " * 4, "--seed", "1", "-o", os.path.join(d, "s.png"),
              "--codes-out", os.path.join(d, "s.npy"), check=True)
        np.testing.assert_array_equal(np.load(os.path.join(d, "l.npy")), np.load(os.path.join(d, "s.npy")))

    def test_default_model_next_to_executable(self):
        base = os.path.join(self.root, "install")
        exe = t2i.copy_binary(HWAGA_BIN, os.path.join(base, "bin"))
        d = self.out_dir("default")
        env = {k: v for k, v in os.environ.items() if k != "HWAGA_MODEL"}
        import subprocess
        args = [exe, "generate", "-p", PROMPT, "--seed", "4", "-o", os.path.join(d, "x.png")]
        p = subprocess.run(args, capture_output=True, text=True, env=env)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("default model", p.stderr)
        self.assertIn("-m", p.stderr)
        self.assertIn(os.path.join(base, "samples", "models", "default.safetensors"), p.stderr)
        self.assertEqual(os.listdir(d), [])
        os.makedirs(os.path.join(base, "samples", "models"))
        os.symlink(self.rq, os.path.join(base, "samples", "models", "default.safetensors"))
        p = subprocess.run(args, capture_output=True, text=True, env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(os.path.exists(os.path.join(d, "x.png")))

    # ---- bench smoke run ----

    def test_bench_smoke(self):
        p = hwaga("bench", "-m", self.rq, "-n", "2", "--steps", "40", "--decode", check=True)
        for needle in ("steps/s", "GB/s", "sgemm", "per picture", "decode:", "40 of 256 steps"):
            self.assertIn(needle, p.stdout)
        p = hwaga("bench", "--preset", "rq-cc3m-654m")  # no --random-weights
        self.assertEqual(p.returncode, 2)


if __name__ == "__main__":
    main()
