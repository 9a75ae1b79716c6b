"""hwaga gallery on a tiny random RQ-Transformer model: the folder layout (pictures, contact
sheets, done-markers, an HTML-escaped index.html), pictures equal to `hwaga generate` with the
recorded per-prompt seed, resuming (a rerun skips finished prompts without touching them; a run
stopped with SIGINT after its first prompt leaves no partial file and, continued, gives exactly
the pictures of an uninterrupted run), and changed settings redraw a prompt."""
import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import t2i_testlib as t2i  # noqa: E402
from hwaga_testlib import HWAGA_BIN, hwaga, main, read_png  # noqa: E402

PROMPTS = """# a comment, then a blank line

the dog
a <b>cat</b> & "friends" 'too'
   the cat and the dog
# another comment
"""


def pictures(folder):
    """{relative path: pixels} of every picture under a gallery folder."""
    out = {}
    for p in sorted(glob.glob(os.path.join(folder, "*", "*.png"))):
        out[os.path.relpath(p, folder)] = read_png(p)[0]
    return out


class GalleryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="hwaga_gal_")
        cls.root = cls.tmp.name
        t2i.make_rq_dirs(cls.root)
        cls.rq = t2i.convert_rq(cls.root, os.path.join(cls.root, "rq.safetensors"))
        cls.prompts = os.path.join(cls.root, "prompts.txt")
        with open(cls.prompts, "w") as f:
            f.write(PROMPTS)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_layout_index_and_rerun(self):
        out = os.path.join(self.root, "g1")
        p = hwaga("gallery", "-m", self.rq, self.prompts, "-o", out, "-n", "3", "--seed", "11", check=True)
        dirs = sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d)))
        self.assertEqual(dirs, ["001-the-dog", "002-a-b-cat-b-friends-too", "003-the-cat-and-the-dog"])
        for d in dirs:
            self.assertEqual(sorted(os.listdir(os.path.join(out, d))),
                             ["00.png", "01.png", "02.png", "contact.png", "done.json"])
            sheet = read_png(os.path.join(out, d, "contact.png"))[0]
            # 3 pictures of 32x32: a 2x2 grid with 4-pixel borders
            self.assertEqual(sheet.shape, (2 * 36 + 4, 2 * 36 + 4, 3))
            pic1 = read_png(os.path.join(out, d, "01.png"))[0]
            np.testing.assert_array_equal(sheet[4:36, 40:72], pic1)
            self.assertTrue((sheet[40:72, 40:72] == 255).all())  # the empty cell stays white
        html = open(os.path.join(out, "index.html"), encoding="utf-8").read()
        self.assertIn("a &lt;b&gt;cat&lt;/b&gt; &amp; &quot;friends&quot; &#39;too&#39;", html)
        self.assertNotIn("<b>cat", html)
        self.assertIn('src="001-the-dog/02.png"', html)
        self.assertNotIn("comment", html)
        self.assertEqual(html.count("<section"), 3)

        # the pictures are those of `hwaga generate` with the per-prompt seed in their text chunks
        t = t2i.png_text(os.path.join(out, "003-the-cat-and-the-dog", "02.png"))
        self.assertEqual(t["hwaga.prompt"], "the cat and the dog")
        self.assertEqual(t["hwaga.candidate"], "2")
        g = os.path.join(self.root, "gen")
        os.makedirs(g, exist_ok=True)
        hwaga("generate", "-m", self.rq, "-p", "the cat and the dog", "--seed", t["hwaga.seed"], "-n", "3", "-o",
              os.path.join(g, "x%d.png"), check=True)
        np.testing.assert_array_equal(read_png(os.path.join(g, "x2.png"))[0],
                                      read_png(os.path.join(out, "003-the-cat-and-the-dog", "02.png"))[0])
        # prompts get different seeds
        seeds = {t2i.png_text(os.path.join(out, d, "00.png"))["hwaga.seed"] for d in dirs}
        self.assertEqual(len(seeds), 3)

        # a rerun (without --seed: the recorded one is reused) skips everything and touches nothing
        mtimes = {f: os.stat(f).st_mtime_ns for f in glob.glob(os.path.join(out, "*", "*"))}
        time.sleep(0.02)
        p = hwaga("gallery", "-m", self.rq, self.prompts, "-o", out, "-n", "3", check=True)
        self.assertEqual(p.stderr.count("skipped, already done"), 3, p.stderr)
        self.assertIn("resuming with seed 11", p.stderr)
        self.assertEqual(mtimes, {f: os.stat(f).st_mtime_ns for f in glob.glob(os.path.join(out, "*", "*"))})

        # other settings: every prompt is drawn again
        p = hwaga("gallery", "-m", self.rq, self.prompts, "-o", out, "-n", "2", "--seed", "11", check=True)
        self.assertEqual(p.stderr.count("skipped"), 0, p.stderr)
        self.assertIn("3 prompts drawn", p.stdout)

    def test_interrupted_run_resumes(self):
        n = "48"
        lines = ["the dog", "the cat", "a red dog", "the end"]
        prompts = os.path.join(self.root, "p4.txt")
        with open(prompts, "w") as f:
            f.write("\n".join(lines) + "\n")
        ref = os.path.join(self.root, "ref")
        hwaga("gallery", "-m", self.rq, prompts, "-o", ref, "-n", n, "--seed", "5", "--threads", "1", check=True)

        out = os.path.join(self.root, "stopped")
        args = [HWAGA_BIN, "gallery", "-m", self.rq, prompts, "-o", out, "-n", n, "--seed", "5", "--threads", "1"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = os.path.join(out, "001-the-dog", "done.json")
        t0 = time.time()
        while not os.path.exists(first) and proc.poll() is None and time.time() - t0 < 60:
            time.sleep(0.002)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            self.skipTest("the run finished before the signal arrived (machine too fast for this check)")
        self.assertEqual(proc.returncode, 128 + signal.SIGINT, err)
        self.assertIn("interrupted", err)
        done = [d for d in os.listdir(out) if os.path.exists(os.path.join(out, d, "done.json"))]
        self.assertIn("001-the-dog", done)
        self.assertLess(len(done), 4)
        leftovers = [f for f in glob.glob(os.path.join(out, "**", "*"), recursive=True)
                     if ".hwaga-partial-" in f or ".tmp-" in f]
        self.assertEqual(leftovers, [])
        html = open(os.path.join(out, "index.html"), encoding="utf-8").read()
        self.assertIn("not drawn yet", html)

        # seed from gallery.json; the same thread count as the reference (the float summation
        # order of a matrix product may depend on it, as oneDNN's AVX2 sgemm's does)
        p = hwaga("gallery", "-m", self.rq, prompts, "-o", out, "-n", n, "--threads", "1", check=True)
        self.assertEqual(p.stderr.count("skipped, already done"), len(done), p.stderr)
        a, b = pictures(ref), pictures(out)
        self.assertEqual(sorted(a), sorted(b))
        self.assertEqual(len(a), 4 * (int(n) + 1))
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        self.assertNotIn("not drawn yet", open(os.path.join(out, "index.html"), encoding="utf-8").read())

    def test_bad_prompt_file(self):
        bad = os.path.join(self.root, "bad.txt")
        with open(bad, "wb") as f:
            f.write(b"the dog\nthe \xff cat\n")
        out = os.path.join(self.root, "gbad")
        p = hwaga("gallery", "-m", self.rq, bad, "-o", out, "--seed", "1")
        self.assertEqual(p.returncode, 1)
        self.assertIn("line 2", p.stderr)
        self.assertIn("UTF-8", p.stderr)
        self.assertEqual([d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d))], [])  # nothing drawn
        with open(bad, "w") as f:
            f.write("# only a comment\n\n")
        p = hwaga("gallery", "-m", self.rq, bad, "-o", out)
        self.assertEqual(p.returncode, 2)
        self.assertIn("no prompts", p.stderr)
        p = hwaga("gallery", "-m", self.rq, os.path.join(self.root, "missing.txt"), "-o", out)
        self.assertEqual(p.returncode, 1)


if __name__ == "__main__":
    main()
