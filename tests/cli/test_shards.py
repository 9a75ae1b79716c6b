"""hwaga shards pack / ls end to end (Python standard library only).

The shards are checked with Python's own tarfile module (an independent tar reader): member
names, captions, json, and image bytes identical to the source files (no re-encoding).

  HWAGA_BIN  the hwaga executable (ctest sets it)
"""
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest
import zlib

SOURCE_DIR = os.environ.get("HWAGA_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HWAGA_BIN = os.path.abspath(os.environ.get("HWAGA_BIN") or os.path.join(SOURCE_DIR, "build", "hwaga"))


def run(args, cwd=None, preexec_fn=None):
    p = subprocess.run([HWAGA_BIN] + [str(a) for a in args], capture_output=True, encoding="utf-8",
                       errors="backslashreplace", timeout=300, cwd=cwd, preexec_fn=preexec_fn)
    sanitizer = any(s in p.stderr for s in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"))
    if p.returncode < 0 or p.returncode in (86, 134, 136, 139) or sanitizer:
        raise AssertionError("crashed (rc %d): %s\nstdout:\n%s\nstderr:\n%s" % (p.returncode, args, p.stdout, p.stderr))
    return p


def png(w, h, seed, noise=False):
    """An 8-bit RGB PNG (bytes) with a deterministic pattern (noise: incompressible)."""
    rnd = random.Random(seed)
    rows = b""
    for y in range(h):
        if noise:
            rows += b"\x00" + bytes(rnd.getrandbits(8) for _ in range(3 * w))
        else:
            rows += b"\x00" + bytes(((x * 7 + seed * 40) & 255, (y * 5 + seed) & 255, (x * y) & 255)[c] for x in range(w) for c in range(3))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w", **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as f:
        f.write(data)


def read_shard(path):
    """[(key, {field: bytes})] in member order, grouped as WebDataset does."""
    out = []
    with tarfile.open(path) as t:
        for m in t.getmembers():
            base = m.name.rsplit("/", 1)[-1]
            prefix = m.name[:len(m.name) - len(base)]
            key, field = prefix + base.split(".", 1)[0], base.split(".", 1)[1]
            if not out or out[-1][0] != key:
                out.append((key, {}))
            out[-1][1][field] = t.extractfile(m).read()
    return out


class Shards(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="hwaga-shards-")
        self.d = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def p(self, *parts):
        return os.path.join(self.d, *parts)

    def test_pack_folder(self):
        src = self.p("src")
        pics = {"a": png(20, 16, 1), "sub/b": png(17, 23, 2), "sub/deep/c.v2": png(8, 8, 3)}
        for k, b in pics.items():
            write(os.path.join(src, k + ".png"), b)
            write(os.path.join(src, k + ".txt"), "  caption of %s, 사과\n" % k)
        write(os.path.join(src, "a.json"), '{"captions": ["red apple", "빨간 사과"]}')
        write(os.path.join(src, "nocap.png"), png(8, 8, 4))
        write(os.path.join(src, "junk.jpg"), b"\xff\xd8\xff not really")
        write(os.path.join(src, "junk.txt"), "junk")
        write(os.path.join(src, "notes.md"), "ignored")
        os.mkdir(self.p("out"))
        r = run(["shards", "pack", src, "-o", self.p("out", "e-%05d.tar")])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("packed 3 samples into 1 shard", r.stdout)
        self.assertIn("skipped 2: image does not decode: 1, no caption: 1", r.stdout)
        warnings = [l for l in r.stderr.splitlines() if "warning" in l]
        self.assertEqual(len(warnings), 2, r.stderr)
        self.assertTrue(any("junk.jpg" in w for w in warnings), r.stderr)
        self.assertTrue(any("nocap.png" in w for w in warnings), r.stderr)
        self.assertEqual(os.listdir(self.p("out")), ["e-00000.tar"])
        got = read_shard(self.p("out", "e-00000.tar"))
        self.assertEqual([k for k, _ in got], ["a", "sub/b", "sub/deep/c_v2"])
        for (k, f), src_key in zip(got, ["a", "sub/b", "sub/deep/c.v2"]):
            self.assertEqual(f["png"], pics[src_key])  # bytes as they were
            self.assertEqual(f["txt"].decode("utf-8"), "caption of %s, 사과" % src_key)
        self.assertEqual(json.loads(got[0][1]["json"]), {"captions": ["red apple", "빨간 사과"]})
        self.assertNotIn("json", got[1][1])

        r = run(["shards", "ls", self.p("out"), "--keys"])
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertRegex(lines[0], r"e-00000\.tar: 3 samples, \d+ bytes$")
        self.assertEqual(lines[1:], ["  a\tcaption of a, 사과", "  sub/b\tcaption of sub/b, 사과",
                                     "  sub/deep/c_v2\tcaption of sub/deep/c.v2, 사과"])

    def test_pack_tsv_relative_to_list(self):
        write(self.p("data", "img", "x.png"), png(10, 12, 5))
        write(self.p("data", "img", "y.png"), png(12, 10, 6))
        write(self.p("data", "list.tsv"), "image\tcaption\nimg/x.png\tan x\r\nimg/y.png\ta y\twith a tab\n"
              "img/missing.png\tgone\nno tab here\n\n" + self.p("data", "img", "x.png") + "\tx again, absolute\n")
        os.mkdir(self.p("out"))
        r = run(["shards", "pack", "list.tsv", "-o", self.p("out", "t.tar")], cwd=self.p("data"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("packed 3 samples into 1 shard", r.stdout)
        self.assertIn("skipped 2: bad line: 1, image missing: 1", r.stdout)
        self.assertIn("list.tsv line 4", r.stderr)
        self.assertIn("list.tsv line 5", r.stderr)
        got = read_shard(self.p("out", "t.tar"))
        self.assertEqual([f["txt"].decode() for _, f in got], ["an x", "a y\twith a tab", "x again, absolute"])
        self.assertEqual(len(set(k for k, _ in got)), 3)  # unique keys
        self.assertEqual(got[0][1]["png"], png(10, 12, 5))

    def test_pack_jsonl_keys_and_json(self):
        for i in range(4):
            write(self.p("j", "p%d.png" % i), png(9, 9, 10 + i))
        rows = [
            {"image": "p0.png", "caption": "red apple, google style", "key": "emoji/apple",
             "json": {"captions": ["red apple, google style", "빨간 사과, 구글 스타일"]}},
            {"image": "p1.png", "caption": "no key"},
            {"image": "p2.png", "caption": "same key", "key": "emoji/apple"},
            {"image": "p3.png", "caption": "bad key", "key": "../escape"},
            {"image": "p3.png"},
        ]
        with open(self.p("j", "list.jsonl"), "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.write("{not json\n")
        os.mkdir(self.p("out"))
        r = run(["shards", "pack", self.p("j", "list.jsonl"), "-o", self.p("out", "j-%d.tar")])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("packed 2 samples", r.stdout)
        self.assertIn("skipped 4: bad key: 1, bad line: 2, duplicate key: 1", r.stdout)
        got = read_shard(self.p("out", "j-0.tar"))
        self.assertEqual([k for k, _ in got], ["emoji/apple", "p1"])
        self.assertEqual(json.loads(got[0][1]["json"].decode("utf-8")),
                         {"captions": ["red apple, google style", "빨간 사과, 구글 스타일"]})

    def test_split_and_shuffle(self):
        src = self.p("src")
        for i in range(7):
            write(os.path.join(src, "%02d.png" % i), png(8, 8, 20 + i))
            write(os.path.join(src, "%02d.txt" % i), "c%d" % i)
        os.mkdir(self.p("o1"))
        os.mkdir(self.p("o2"))
        os.mkdir(self.p("o3"))
        r = run(["shards", "pack", src, "-o", self.p("o1", "s-%03d.tar"), "--max-count", "3"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(os.listdir(self.p("o1"))), ["s-000.tar", "s-001.tar", "s-002.tar"])
        self.assertEqual([len(read_shard(self.p("o1", n))) for n in ["s-000.tar", "s-001.tar", "s-002.tar"]], [3, 3, 1])
        for o in ("o2", "o3"):
            r = run(["shards", "pack", src, "-o", self.p(o, "s.tar"), "--shuffle-seed", "5"])
            self.assertEqual(r.returncode, 0, r.stderr)
        with open(self.p("o2", "s.tar"), "rb") as a, open(self.p("o3", "s.tar"), "rb") as b:
            self.assertEqual(a.read(), b.read())  # same seed: same bytes
        keys = [k for k, _ in read_shard(self.p("o2", "s.tar"))]
        self.assertEqual(sorted(keys), ["%02d" % i for i in range(7)])
        self.assertNotEqual(keys, sorted(keys))
        # a name without a number field cannot take several shards: refused before writing
        r = run(["shards", "pack", src, "-o", self.p("o3", "one.tar"), "--max-count", "3"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("number field", r.stderr)
        self.assertFalse(os.path.exists(self.p("o3", "one.tar")))

    def test_ls_problems(self):
        with tarfile.open(self.p("mixed.tar"), "w") as t:
            for name, data in [("a.png", png(8, 8, 1)), ("a.txt", b"fine"), ("b.png", png(8, 8, 2))]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, __import__("io").BytesIO(data))
            link = tarfile.TarInfo("evil.png")
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/passwd"
            t.addfile(link)
        r = run(["shards", "ls", self.p("mixed.tar")])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("mixed.tar: 1 sample,", r.stdout)
        self.assertIn("1 bad member, 1 sample without caption", r.stdout)
        self.assertIn("evil.png: symbolic link", r.stderr)
        write(self.p("text.tar"), "this is no tar " * 100)
        r = run(["shards", "ls", self.p("text.tar"), self.p("mixed.tar")])
        self.assertEqual(r.returncode, 1)
        self.assertIn("not a tar file", r.stderr)
        self.assertIn("total: 1 sample from 2 shards", r.stdout)
        r = run(["shards", "ls", self.p("nope-{0..3}.tar")])
        self.assertEqual(r.returncode, 1)
        self.assertIn("nope-0.tar does not exist", r.stderr)

    def test_bad_sources(self):
        os.mkdir(self.p("out"))
        r = run(["shards", "pack", self.p("missing"), "-o", self.p("out", "x-%d.tar")])
        self.assertEqual(r.returncode, 1)
        self.assertIn("missing does not exist", r.stderr)
        write(self.p("list.csv"), "a,b\n")
        r = run(["shards", "pack", self.p("list.csv"), "-o", self.p("out", "x-%d.tar")])
        self.assertEqual(r.returncode, 1)
        self.assertIn("neither a folder, a .tsv nor a .jsonl", r.stderr)
        write(self.p("bad", "x.png"), b"junk")
        write(self.p("bad", "x.txt"), "junk")
        r = run(["shards", "pack", self.p("bad"), "-o", self.p("out", "x-%d.tar")])
        self.assertEqual(r.returncode, 1)
        self.assertIn("nothing to pack", r.stderr)
        os.mkdir(self.p("empty"))
        r = run(["shards", "pack", self.p("empty"), "-o", self.p("out", "x-%d.tar")])
        self.assertEqual(r.returncode, 1)
        self.assertIn("no image found", r.stderr)
        r = run(["shards", "pack", self.p("bad"), "-o", self.p("out", "x-%s.tar")])
        self.assertEqual(r.returncode, 1)
        self.assertEqual(os.listdir(self.p("out")), [])

    def test_unwritable_output_leaves_nothing(self):
        src = self.p("src")
        for i in range(4):
            write(os.path.join(src, "%d.png" % i), png(8, 8, i))
            write(os.path.join(src, "%d.txt" % i), "c%d" % i)
        write(os.path.join(src, "9.png"), png(96, 96, 9, noise=True))  # ~27 KB, last in order
        write(os.path.join(src, "9.txt"), "big")
        write(self.p("afile"), "x")
        r = run(["shards", "pack", src, "-o", self.p("nodir", "x-%d.tar")])
        self.assertEqual(r.returncode, 1)
        self.assertIn("does not exist", r.stderr)
        r = run(["shards", "pack", src, "-o", self.p("afile", "x-%d.tar")])
        self.assertEqual(r.returncode, 1)
        # A write that fails part-way (file size limit: shards of the small pictures fit, the
        # big one does not): exit 1, and neither the finished shards nor a temporary remain.
        os.mkdir(self.p("out"))

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
        r = run(["shards", "pack", src, "-o", self.p("out", "x-%d.tar"), "--max-count", "1"], preexec_fn=limit)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("x-4.tar", r.stderr)
        self.assertEqual(os.listdir(self.p("out")), [])


def main():
    t0 = time.time()
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(unittest.TestLoader().loadTestsFromModule(sys.modules["__main__"]))
    failed = len(result.failures) + len(result.errors)
    print("%d passed, %d failed (%.1f s)" % (result.testsRun - failed, failed, time.time() - t0))
    sys.exit(0 if failed == 0 and result.testsRun > 0 else 1)


if __name__ == "__main__":
    main()
