"""The shipped default model (samples/models/default.safetensors, issue 6): `hwaga generate`
without -m finds it and paints 64x64 emoji from English and Korean prompts, and the pictures are
of the emoji asked for.

Faithfulness check: sixteen real emoji (tests/data/emoji: eight emoji, each in Google's and
Twitter's style) are the candidates; every prompt names one of them ("red apple, google style",
"빨간 사과, 구글 스타일") and is drawn four times with fixed seeds; a picture is a hit when its
nearest candidate (32x32 RGB on white, L2: tools/emoji/eval_quality.py's "pixels" space) shows
the same emoji, in either style. Chance is 1/8 per picture. The shipped model scores 22/96 =
0.23 here (these are objects it saw twice per epoch at most; it does much better on faces and
people: samples/models/README.md), and the test asks for MIN_HIT_RATE = 0.17 (17 of 96): a model
that ignores the prompt reaches that about one time in twelve (binomial, p = 1/8), a broken
sampler, decoder, tokenizer or model file far less often, while the exact pictures (which may
change with the float summation order of another CPU) need not be the same. Raise it when a
better model ships.
"""
import json
import os
import shutil
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from hwaga_testlib import SOURCE_DIR, hwaga, main  # noqa: E402

sys.path.insert(0, os.path.join(SOURCE_DIR, "tools", "emoji"))
import eval_quality as eq  # noqa: E402

MODEL = os.path.join(SOURCE_DIR, "samples", "models", "default.safetensors")
REFS = os.path.join(SOURCE_DIR, "tests", "data", "emoji")
KO_STYLE = {"google": "구글 스타일", "twitter": "트위터 스타일"}
PER_PROMPT = 4
MIN_HIT_RATE = 0.17


class DefaultModel(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="hwaga_default_model_")
        with open(os.path.join(REFS, "emoji.json"), encoding="utf-8") as f:
            cls.refs = json.load(f)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_the_model_ships_and_describes_itself(self):
        self.assertTrue(os.path.isfile(MODEL), "the default model %s is missing" % MODEL)
        self.assertLessEqual(os.path.getsize(MODEL), 40 * 1024 * 1024, "the default model must stay within 40 MB")
        p = hwaga("info", "-m", MODEL, check=True)
        self.assertIn("rq-transformer", p.stdout)
        self.assertIn("spm", p.stdout)

    def test_generate_without_model_option_paints_from_english_and_korean(self):
        for i, prompt in enumerate(("red apple, google style", "빨간 사과")):
            out = os.path.join(self.tmp, "plain%d.png" % i)
            p = hwaga("generate", "-p", prompt, "--seed", "1", "-o", out, "--threads", "2", check=True)
            self.assertIn("default.safetensors", p.stderr)
            rgba = eq.read_png(out)
            self.assertEqual(rgba.shape, (64, 64, 4))
            self.assertGreater(float(rgba[..., :3].astype(np.float32).std()), 10.0, "a flat picture")
        # Hangul is part of the text tokenizer: no unknown ids for a Korean prompt
        p = hwaga("tokenize", "-m", MODEL, "빨간 사과, 구글 스타일", check=True)
        self.assertNotIn("<unk>", p.stdout)
        self.assertNotIn("[UNK]", p.stdout)

    def test_pictures_show_the_prompted_emoji(self):
        pool = eq.pixel_features(np.stack([eq.on_white(eq.read_png(os.path.join(REFS, r["file"]))) for r in self.refs]))
        prompts = []
        for r in self.refs:
            prompts.append((r["name_en"] + ", " + r["style"] + " style", r["name_en"]))
        for r in self.refs[::2]:  # Korean: one style of each emoji
            prompts.append((r["name_ko"] + ", " + KO_STYLE[r["style"]], r["name_en"]))
        hits, misses = 0, []
        for i, (prompt, name) in enumerate(prompts):
            pattern = os.path.join(self.tmp, "f%02d_%%d.png" % i)
            hwaga("generate", "-p", prompt, "-n", str(PER_PROMPT), "--seed", str(100 + i), "-o", pattern, "--threads",
                  "2", check=True)
            pics = np.stack([eq.on_white(eq.read_png(pattern % j)) for j in range(PER_PROMPT)])
            idx, _ = eq.nearest(eq.pixel_features(pics), pool, 1)
            for j in idx[:, 0]:
                if self.refs[j]["name_en"] == name:
                    hits += 1
                else:
                    misses.append("%s -> %s" % (prompt, self.refs[j]["file"]))
        rate = hits / (PER_PROMPT * len(prompts))
        print("faithfulness on the 16 references: %d/%d = %.2f (chance 0.125)" % (hits, PER_PROMPT * len(prompts), rate))
        self.assertGreaterEqual(rate, MIN_HIT_RATE, "misses: %s" % misses)


if __name__ == "__main__":
    main()
