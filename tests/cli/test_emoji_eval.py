"""tools/emoji/eval_quality.py: its PNG decoder against pictures written by an independent encoder
here (palette + tRNS at 8 and 4 bits, RGBA, RGB, gray + alpha, 16-bit RGB, every row filter),
compositing on white, the retrieval and scoring on synthetic pictures whose answer is known, the
derangement, the base emoji and Korean caption rules, and one end-to-end run on a tiny fake emoji
folder with a tiny random-weight RQ-Transformer (32x32, CharBPE: the fixture the other CLI tests
use; the real default model is 64x64 with SentencePiece, so this checks the plumbing, not the
figures). numpy + the standard library; the model comes from tests/parity/torch_ref."""
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import t2i_testlib as t2i  # noqa: E402
from hwaga_testlib import HWAGA_BIN, PYTHON, SOURCE_DIR, main  # noqa: E402

SCRIPT = os.path.join(SOURCE_DIR, "tools", "emoji", "eval_quality.py")
sys.path.insert(0, os.path.dirname(SCRIPT))
import eval_quality as E  # noqa: E402


# ---------------------------------------------------------------- an independent PNG encoder

def _chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _filter_row(ftype, row, prev, bpp):
    """PNG filter of one row of bytes (int arrays), computed forward from the raw values."""
    a = np.zeros_like(row)
    a[bpp:] = row[:-bpp]
    b = prev
    c = np.zeros_like(row)
    c[bpp:] = prev[:-bpp]
    if ftype == 0:
        pred = 0
    elif ftype == 1:
        pred = a
    elif ftype == 2:
        pred = b
    elif ftype == 3:
        pred = (a + b) // 2
    else:
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return (row - pred) % 256


def encode_png(samples, ctype, depth=8, plte=None, trns=None, filters=(0, 1, 2, 3, 4), interlace=0):
    """samples: int [H,W,C] (C: 1 gray/palette, 2 gray+alpha, 3 RGB, 4 RGBA), values < 2**depth.
    Row y uses filters[y % len(filters)]."""
    s = np.asarray(samples, np.int64)
    h, w, ch = s.shape
    if depth == 16:
        rows = np.stack([s >> 8, s & 255], -1).reshape(h, w * ch * 2)
    elif depth == 8:
        rows = s.reshape(h, w * ch)
    else:
        per = 8 // depth
        pad = (-w) % per
        v = np.concatenate([s[:, :, 0], np.zeros((h, pad), np.int64)], 1).reshape(h, -1, per)
        rows = (v << (depth * np.arange(per - 1, -1, -1))).sum(-1)
    bpp = max(1, ch * depth // 8)
    raw, prev = b"", np.zeros(rows.shape[1], np.int64)
    for y in range(h):
        f = filters[y % len(filters)]
        raw += bytes([f]) + _filter_row(f, rows[y], prev, bpp).astype(np.uint8).tobytes()
        prev = rows[y]
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))
    if plte is not None:
        out += _chunk(b"PLTE", np.asarray(plte, np.uint8).tobytes())
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    return out + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


# ---------------------------------------------------------------- PNG decoding

class PngTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="hwaga_evalpng_")
        self.rng = np.random.RandomState(3)

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def test_rgba_every_filter(self):
        px = self.rng.randint(0, 256, size=(9, 7, 4))
        p = write(self.path("a.png"), encode_png(px, 6))
        np.testing.assert_array_equal(E.read_png(p), px)

    def test_rgb_and_gray_alpha_and_16bit(self):
        rgb = self.rng.randint(0, 256, size=(5, 6, 3))
        np.testing.assert_array_equal(E.read_png(write(self.path("rgb.png"), encode_png(rgb, 2))),
                                      np.concatenate([rgb, np.full((5, 6, 1), 255)], 2))
        ga = self.rng.randint(0, 256, size=(4, 3, 2))
        want = np.stack([ga[..., 0]] * 3 + [ga[..., 1]], -1)
        np.testing.assert_array_equal(E.read_png(write(self.path("ga.png"), encode_png(ga, 4))), want)
        s16 = self.rng.randint(0, 65536, size=(3, 5, 3))
        got = E.read_png(write(self.path("16.png"), encode_png(s16, 2, depth=16, filters=(4, 1, 3))))
        np.testing.assert_array_equal(got[..., :3], s16 >> 8)  # the high byte

    def test_palette_with_trns_8_and_4_bits(self):
        plte = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30], [200, 100, 50]]
        trns = bytes([0, 128, 255])  # entries 3, 4 have no tRNS byte: opaque
        idx = self.rng.randint(0, 5, size=(6, 5, 1))
        want = np.array([[*plte[i], ([0, 128, 255] + [255, 255])[i]] for i in range(5)])[idx[..., 0]]
        for depth, filters in ((8, (0, 1, 2, 3, 4)), (4, (4, 3, 2, 1, 0))):
            p = write(self.path("p%d.png" % depth), encode_png(idx, 3, depth, plte=plte, trns=trns, filters=filters))
            np.testing.assert_array_equal(E.read_png(p), want, "depth %d" % depth)
        # the known pixel values, spelled out: index 0 is red and fully transparent
        p = write(self.path("one.png"), encode_png([[[0], [1], [4]]], 3, 8, plte=plte, trns=trns))
        np.testing.assert_array_equal(E.read_png(p), [[[255, 0, 0, 0], [0, 255, 0, 128], [200, 100, 50, 255]]])

    def test_many_pictures_of_mixed_layouts(self):
        """read_pngs groups pictures by layout; the order and every value must survive."""
        pics, paths = [], []
        for i in range(7):
            if i % 3 == 0:
                px = self.rng.randint(0, 256, size=(8, 8, 4)); data = encode_png(px, 6, filters=(i % 5, 4))
            elif i % 3 == 1:
                px = self.rng.randint(0, 256, size=(8, 8, 3)); data = encode_png(px, 2, filters=(3, i % 5))
                px = np.concatenate([px, np.full((8, 8, 1), 255)], 2)
            else:
                px = self.rng.randint(0, 256, size=(4, 6, 4)); data = encode_png(px, 6)
            pics.append(px)
            paths.append(write(self.path("m%d.png" % i), data))
        for got, want in zip(E.read_pngs(paths), pics):
            np.testing.assert_array_equal(got, want)

    def test_errors_name_the_file(self):
        good = encode_png(np.zeros((2, 2, 3), np.int64), 2)
        bad_crc = bytearray(good)
        bad_crc[30] ^= 1  # inside IHDR's data
        cases = {"crc.png": (bytes(bad_crc), "bad CRC"), "sig.png": (b"GIF89a" + good[6:], "not a PNG"),
                 "cut.png": (good[:40], "truncated"),
                 "adam7.png": (encode_png(np.zeros((2, 2, 3), np.int64), 2, interlace=1), "interlaced"),
                 "depth.png": (encode_png(np.zeros((2, 2, 3), np.int64), 2).replace(
                     struct.pack(">IIBB", 2, 2, 8, 2), struct.pack(">IIBB", 2, 2, 4, 2)), None)}
        for name, (data, msg) in cases.items():
            p = write(self.path(name), data)
            with self.assertRaises(E.PngError, msg=name) as cm:
                E.read_png(p)
            self.assertIn(p, str(cm.exception))
            if msg:
                self.assertIn(msg, str(cm.exception))

    def test_on_white_and_pixels8(self):
        rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [100, 0, 200, 128]]], np.uint8)
        got = E.on_white(rgba)
        a = np.float32(128) / np.float32(255)
        want = [[[255, 255, 255], [10, 20, 30],
                 [np.float32(100) * a + 255 * (1 - a), 255 * (1 - a), np.float32(200) * a + 255 * (1 - a)]]]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)  # float32 as hwaga; 1e-4: float rounding
        # hwaga's writer: round half up of clamp(x/2+1/2)*255; 0 -> 127.5 -> 128, -1 -> 0, 5 -> 255
        x = np.array([0.0, -1.0, 5.0, 1.0, -0.5], np.float32).reshape(1, 1, 1, 5).repeat(3, 1)
        np.testing.assert_array_equal(E.to_pixels8(x)[0, 0, :, 0], [128, 0, 255, 255, 64])


# ---------------------------------------------------------------- retrieval and scoring

class ScoringTest(unittest.TestCase):
    def test_area_resize(self):
        img = np.arange(4 * 4 * 3, dtype=np.float64).reshape(1, 4, 4, 3)
        got = E.resize_area(img, 2)
        np.testing.assert_allclose(got[0, 1, 0], img[0, 2:4, 0:2].mean(axis=(0, 1)), atol=1e-4)
        np.testing.assert_allclose(E.resize_area(img, 3)[0].mean(axis=(0, 1)), img[0].mean(axis=(0, 1)), atol=1e-3)

    def test_identical_picture_is_a_top1_hit_and_deranged_is_not(self):
        rng = np.random.RandomState(0)
        pool = rng.randint(0, 256, size=(12, 64, 64, 3)).astype(np.float32)
        labels = [("emoji%d" % (i // 2), "google" if i % 2 else "twitter") for i in range(12)]
        pool_recs = [{"base": b, "style": s, "key": "%s/%d" % (s, i)} for i, (b, s) in enumerate(labels)]
        prompt_idx = [1, 4, 7, 10]                   # four distinct base emoji
        gen = pool[prompt_idx].repeat(2, 0)          # n = 2 pictures per prompt, both exact copies
        prompt_recs = [pool_recs[i] for i in prompt_idx]
        for feats in (E.pixel_features, E.shape_features):
            pf, gf = feats(pool), feats(gen)
            idx, dist = E.nearest(gf, pf, 5)
            np.testing.assert_array_equal(idx[:, 0], np.repeat(prompt_idx, 2))
            np.testing.assert_allclose(dist[:, 0], 0, atol=1e-3)
            r = E.faithfulness_scores(gf, 2, prompt_recs, pf, pool_recs, seed=5)
            self.assertEqual(r["hit"], {"top1": 1.0, "top5": 1.0})
            self.assertEqual(r["exact_picture_top1"], 1.0)
            self.assertEqual(r["baseline"]["hit"]["top1"], 0.0)
            perm = r["baseline"]["derangement"]
            self.assertEqual(sorted(perm), [0, 1, 2, 3])
            self.assertTrue(all(perm[i] != i for i in range(4)))
            self.assertEqual([p["top1_hits"] for p in r["per_prompt"]], [2, 2, 2, 2])
        # score_hits directly: the target set decides, at k = 1 and 5
        nn = np.array([[3, 1, 2], [0, 1, 2]])
        got = E.score_hits(nn, ["a", "b", "c", "d"], [{"d"}, {"c"}], ks=(1, 3))
        self.assertEqual(got, {"top1": 0.5, "top3": 1.0})

    def test_reconstruction_retrieval_scores_each_picture_against_its_own_record(self):
        rng = np.random.RandomState(1)
        pool = rng.randint(0, 256, size=(8, 64, 64, 3)).astype(np.float32)
        pool_recs = [{"base": "emoji%d" % (i // 2), "style": "google" if i % 2 else "twitter"} for i in range(8)]
        feats = {"pixels": E.pixel_features(pool), "shape": E.shape_features(pool)}
        # exact reconstructions of pictures 2, 5, 6: every one a hit
        got = E.reconstruction_retrieval(pool[[2, 5, 6]], [pool_recs[i] for i in (2, 5, 6)], feats, pool_recs)
        self.assertEqual(got, {"pixels": {"top1": 1.0, "top5": 1.0}, "shape": {"top1": 1.0, "top5": 1.0}})
        # the same pictures filed under other records: top-1 misses (their nearest is themselves)
        wrong = [pool_recs[0], pool_recs[0], pool_recs[1]]
        got = E.reconstruction_retrieval(pool[[2, 5, 6]], wrong, feats, pool_recs)
        self.assertEqual(got["pixels"]["top1"], 0.0)
        self.assertEqual(got["shape"]["top1"], 0.0)

    def test_nearest_ties_go_to_the_lower_index(self):
        idx, _ = E.nearest(np.zeros((1, 2)), np.array([[1.0, 0], [0, 1.0], [0, 0], [0, 0]]), 3)
        self.assertEqual(idx.tolist(), [[2, 3, 0]])

    def test_derangement(self):
        self.assertIsNone(E.derangement(1, 0))
        for n in (2, 3, 10, 101):
            for seed in range(5):
                p = E.derangement(n, seed)
                self.assertEqual(sorted(p), list(range(n)))
                self.assertTrue(all(p[i] != i for i in range(n)))
                self.assertEqual(p, E.derangement(n, seed))  # fixed by the seed
        self.assertNotEqual(E.derangement(50, 0), E.derangement(50, 1))

    def test_base_emoji_and_korean_caption(self):
        def rec(name, captions=()):
            return {"json": {"name_en": name, "captions": list(captions)}}
        self.assertEqual(E.base_emoji(rec("santa claus: light skin tone")), "santa claus")
        self.assertEqual(E.base_emoji(rec("kiss: woman, man, medium-dark skin tone, dark skin tone")), "kiss: woman, man")
        self.assertEqual(E.base_emoji(rec("handshake: light skin tone, dark skin tone")), "handshake")
        self.assertEqual(E.base_emoji(rec("red apple")), "red apple")
        self.assertEqual(E.base_emoji(rec("emoji modifier fitzpatrick type-3")), "emoji modifier fitzpatrick type-3")
        r = rec("red apple", ["red apple, google style", "apple, google style", "빨간 사과, 구글 스타일", "과일, 구글 스타일"])
        self.assertEqual(E.korean_caption(r), "빨간 사과, 구글 스타일")
        self.assertIsNone(E.korean_caption(rec("phoenix", ["phoenix, google style"])))
        for bad in ("# hash", " lead", "trail ", "two\nlines", ""):
            self.assertFalse(E.usable_prompt(bad), bad)


# ---------------------------------------------------------------- end to end

EMOJI = [  # name_en, Korean name or None, colour, shape
    ("red apple", "빨간 사과", (220, 30, 30), "disc"),
    ("green apple", "초록 사과", (40, 200, 40), "disc"),
    ("santa claus: light skin tone", "산타클로스: 하얀 피부", (240, 200, 160), "square"),
    ("phoenix", None, (250, 140, 0), "ring"),
]


def fake_picture(colour, shape, style):
    y, x = np.mgrid[0:64, 0:64] - 31.5
    r = np.hypot(x, y)
    mask = {"disc": r < 24, "square": (abs(x) < 20) & (abs(y) < 20), "ring": (r < 26) & (r > 14)}[shape]
    img = np.zeros((64, 64, 4), np.int64)
    img[mask, :3] = colour if style == "google" else [min(255, c + 20) for c in colour]
    img[mask, 3] = 255
    img[(r >= 24) & (r < 26), 3] = 128  # a soft edge
    return img


def write_fake_data(root):
    """4 emoji x 2 styles: google as RGBA, twitter as palette + tRNS; eval = the apples."""
    plte_cache = {}
    splits = {"train": [], "eval": []}
    for name, ko, colour, shape in EMOJI:
        for style in ("google", "twitter"):
            img = fake_picture(colour, shape, style)
            path = os.path.join(root, "img", "%s-%s.png" % (style, name.split(":")[0].replace(" ", "_")))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if style == "google":
                write(path, encode_png(img, 6))
            else:
                colours = sorted({tuple(v) for v in img.reshape(-1, 4).tolist()})
                plte_cache[path] = colours
                idx = np.array([colours.index(tuple(v)) for v in img.reshape(-1, 4).tolist()]).reshape(64, 64, 1)
                write(path, encode_png(idx, 3, 8, plte=[c[:3] for c in colours], trns=bytes(c[3] for c in colours)))
            style_ko = "구글 스타일" if style == "google" else "트위터 스타일"
            caps = ["%s, %s style" % (name, style)] + (["%s, %s" % (ko, style_ko)] if ko else [])
            rec = {"image": path, "caption": caps[0], "key": "%s/%s" % (style, name),
                   "json": {"captions": caps, "name_en": name, "name_ko": ko, "style": style,
                            "category": "People & Body" if "santa" in name else "Food & Drink"}}
            splits["eval" if "apple" in name else "train"].append(rec)
    for split, recs in splits.items():
        with open(os.path.join(root, split + ".jsonl"), "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    return splits


class EndToEndTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.isfile(HWAGA_BIN):
            raise unittest.SkipTest("no hwaga binary at %s" % HWAGA_BIN)
        cls.tmp = tempfile.TemporaryDirectory(prefix="hwaga_evalq_")
        cls.root = cls.tmp.name
        t2i.make_rq_dirs(cls.root)
        cls.model = t2i.convert_rq(cls.root, os.path.join(cls.root, "rq.safetensors"))
        cls.data = os.path.join(cls.root, "data")
        cls.splits = write_fake_data(cls.data)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_eval(self, *args):
        return subprocess.run([PYTHON, SCRIPT, "--hwaga", HWAGA_BIN, "--threads", "1"] + list(args),
                              capture_output=True, encoding="utf-8", timeout=300)

    def test_grow_model_paints_the_same_pixels(self):
        """tools/emoji/grow_model.py: the grown file has the new block counts and, its new blocks
        being the identity, generates exactly the pixels of the original; shrinking is refused."""
        grow = os.path.join(SOURCE_DIR, "tools", "emoji", "grow_model.py")
        out = os.path.join(self.root, "grown.safetensors")
        p = subprocess.run([PYTHON, grow, self.model, out, "--body", "3", "--head", "2", "--seed", "5"],
                           capture_output=True, encoding="utf-8", timeout=300)
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(out, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        s2 = json.loads(header["__metadata__"]["config"])["stage2"]
        with open(self.model, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            old = json.loads(json.loads(f.read(n))["__metadata__"]["config"])["stage2"]
        self.assertEqual((s2["n_layer_body"], s2["n_layer_head"]), (3, 2))
        self.assertLess(old["n_layer_body"], 3)
        self.assertIn("stage2.body_transformer.blocks.2.attn.proj.weight", header)

        def pixels(path):
            d, i, data = open(path, "rb").read(), 8, b""
            while i < len(d):
                ln, kind = struct.unpack(">I", d[i:i + 4])[0], d[i + 4:i + 8]
                if kind == b"IDAT":
                    data += d[i + 8:i + 8 + ln]
                i += 12 + ln
            return zlib.decompress(data)

        pics = []
        for m in (self.model, out):
            png = os.path.join(self.root, "grow_%d.png" % len(pics))
            g = subprocess.run([HWAGA_BIN, "generate", "-m", m, "-p", "a red apple", "--seed", "3", "--threads", "1",
                                "-o", png], capture_output=True, encoding="utf-8", timeout=300)
            self.assertEqual(g.returncode, 0, g.stderr)
            pics.append(pixels(png))
        self.assertEqual(pics[0], pics[1])

        bad = os.path.join(self.root, "shrunk.safetensors")
        p = subprocess.run([PYTHON, grow, out, bad, "--body", "1", "--head", "2"], capture_output=True,
                           encoding="utf-8", timeout=300)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("n_layer_body 1 is below", p.stderr)
        self.assertFalse(os.path.exists(bad))

    def test_make_subset(self):
        """tools/emoji/make_subset.py: the subset holds the drawn base emoji in both styles (never a
        skin tone variant), eval.jsonl every other record, the shards the pictures and, with
        --shift-augment, 7 moved copies of each (a copy is the picture moved by 2 px); bad
        requests fail with a message and leave no folder behind."""
        import tarfile
        tool = os.path.join(SOURCE_DIR, "tools", "emoji", "make_subset.py")

        def run(out, *args):
            return subprocess.run([PYTHON, tool, "--data", self.data, "--out", out, "--hwaga", HWAGA_BIN] + list(args),
                                  capture_output=True, encoding="utf-8", timeout=300)

        out = os.path.join(self.root, "subset")
        p = run(out, "--emoji", "1", "--shift-augment")
        self.assertEqual(p.returncode, 0, p.stderr)
        sub = [json.loads(line) for line in open(os.path.join(out, "train.jsonl"), encoding="utf-8")]
        rest = [json.loads(line) for line in open(os.path.join(out, "eval.jsonl"), encoding="utf-8")]
        self.assertEqual(sorted(r["key"] for r in sub), ["google/phoenix", "twitter/phoenix"])  # santa: a tone
        self.assertEqual(len(rest), len(self.splits["train"]) + len(self.splits["eval"]) - 2)
        names = []
        for shard in sorted(os.listdir(os.path.join(out, "train"))):
            with tarfile.open(os.path.join(out, "train", shard)) as t:
                names += [m.name for m in t.getmembers() if m.name.endswith(".png")]
        self.assertEqual(len(names), 2 * 8)
        orig = E.read_png(sub[0]["image"]).astype(np.int64)
        moved = E.read_png(os.path.join(out, "shifted", sub[0]["key"] + "-s1.png")).astype(np.int64)  # dx = +2
        np.testing.assert_array_equal(moved[:, 2:], orig[:, :-2])
        self.assertTrue((moved[:, :2, 3] == 0).all())

        p = run(out, "--emoji", "1")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("exists already", p.stderr)
        bad = os.path.join(self.root, "subset_bad")
        p = run(bad, "--emoji", "2")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("--emoji 2: only 1 base emoji", p.stderr)
        self.assertFalse(os.path.exists(bad))

    def test_report(self):
        out = os.path.join(self.root, "report.json")
        p = self.run_eval("--model", self.model, "--data", self.data, "--split", "eval", "--max-captions", "3",
                          "-n", "2", "--seed", "7", "--batch", "3", "--out", out)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("PSNR mean", p.stdout)
        self.assertIn("chance@1", p.stdout)
        r = json.load(open(out, encoding="utf-8"))
        for field in ("command", "model", "hwaga", "split", "pool", "hit_definition", "timings", "reconstruction",
                      "faithfulness", "hwaga_commands"):
            self.assertIn(field, r)
        self.assertEqual(r["model"]["bytes"], os.path.getsize(self.model))
        self.assertEqual(r["model"]["sha256"], hashlib.sha256(open(self.model, "rb").read()).hexdigest())
        self.assertRegex(r["hwaga"]["version"], r"^hwaga \d+\.\d+")
        self.assertEqual(r["pool"]["pictures"], 8)
        self.assertEqual(r["pool"]["base_emoji"], 4)
        cmds = [c["command"].split()[1] for c in r["hwaga_commands"]]
        self.assertEqual(cmds, ["encode", "decode", "gallery"])  # full t2i model file accepted by encode/decode
        self.assertTrue(all(c["rc"] == 0 for c in r["hwaga_commands"]))
        for k in ("reconstruction", "generation", "retrieval", "total"):
            self.assertGreaterEqual(r["timings"][k], 0.0)

        rec = r["reconstruction"]
        self.assertEqual(rec["pictures"], 4)          # the eval split: two apples x two styles
        self.assertEqual(rec["resolution"], 32)       # the tiny stage 1
        self.assertTrue(rec["reference_resized"])
        for k in ("psnr_mean", "psnr_median", "psnr_p10", "psnr_min", "psnr_of_mean_mse"):
            self.assertTrue(0.0 <= rec[k] <= 100.0, (k, rec[k]))
        self.assertLessEqual(rec["psnr_min"], rec["psnr_mean"])
        self.assertTrue(0.0 <= rec["mae_mean"] <= 255.0)
        self.assertEqual(set(rec["retrieval"]), {"pixels", "shape"})
        for v in rec["retrieval"].values():
            self.assertTrue(0.0 <= v["top1"] <= v["top5"] <= 1.0, v)
        self.assertIn("(the ceiling), pixels: top-1", p.stdout)

        g = r["faithfulness"]
        self.assertEqual((g["captions"], g["pictures_per_caption"], g["seed"]), (3, 2, 7))  # 3 of the 4 eval captions
        self.assertEqual(set(g["languages"]), {"en", "ko"})
        en, ko = g["languages"]["en"], g["languages"]["ko"]
        eval_captions = {x["caption"] for x in self.splits["eval"]}
        self.assertEqual(len(set(en["captions"])), 3)
        self.assertEqual((en["prompts"], ko["prompts"]), (3, 3))
        self.assertTrue(set(en["captions"]) <= eval_captions)
        self.assertTrue(all("사과" in c for c in ko["captions"]))
        for lang in (en, ko):
            self.assertEqual(lang["pictures"], 2 * lang["prompts"])
            for space in ("pixels", "shape"):
                s = lang["spaces"][space]
                for v in list(s["hit"].values()) + list(s["baseline"]["hit"].values()) + \
                        [s["exact_picture_top1"], s["emoji_top1"], s["style_top1"]]:
                    self.assertTrue(0.0 <= 100.0 * v <= 100.0, v)
                perm = s["baseline"]["derangement"]
                self.assertEqual(sorted(perm), list(range(lang["prompts"])))
                self.assertTrue(all(perm[i] != i for i in range(len(perm))))
                self.assertLessEqual(s["hit"]["top1"], s["hit"]["top5"])
                self.assertEqual(len(s["per_prompt"]), lang["prompts"])
                pool_keys = {x["key"] for recs in self.splits.values() for x in recs}
                self.assertTrue(all(k in pool_keys for pp in s["per_prompt"] for k in pp["nearest"]))

    def test_english_only_on_train_split_and_errors(self):
        """Korean-less records are left out of the Korean score: the train split has phoenix (no
        Korean name), so Korean gets fewer prompts than English."""
        out = os.path.join(self.root, "report2.json")
        p = self.run_eval("--model", self.model, "--data", self.data, "--split", "train", "--max-captions", "0",
                          "-n", "1", "--skip-recon", "--out", out)
        self.assertEqual(p.returncode, 0, p.stderr)
        r = json.load(open(out, encoding="utf-8"))
        self.assertNotIn("reconstruction", r)
        langs = r["faithfulness"]["languages"]
        self.assertEqual(langs["en"]["prompts"], 4)
        self.assertEqual(langs["ko"]["prompts"], 2)  # santa in two styles; phoenix has no Korean caption
        p = self.run_eval("--model", self.model, "--data", os.path.join(self.root, "nowhere"))
        self.assertEqual(p.returncode, 1)
        self.assertIn(os.path.join(self.root, "nowhere", "eval.jsonl"), p.stderr)
        p = self.run_eval("--model", os.path.join(self.root, "missing.safetensors"), "--data", self.data)
        self.assertEqual(p.returncode, 1)
        self.assertIn("missing.safetensors", p.stderr)


if __name__ == "__main__":
    main()
