"""tools/emoji/prepare_emoji.py on a tiny fake emoji-datasource + CLDR tree (no network): records per
picture and skin tone, English and Korean captions (FE0F-less CLDR keys, derived and composed skin
tone names, English-only emoji), the held-out split by base emoji, error messages, and, when the
hwaga binary has `shards pack`, the shards it writes. Standard library only."""
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
import unittest
import zlib

SOURCE_DIR = os.environ.get("HWAGA_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(SOURCE_DIR, "tools", "emoji", "prepare_emoji.py")
HWAGA_BIN = os.environ.get("HWAGA_BIN") or os.path.join(SOURCE_DIR, "build", "hwaga")
HANGUL = re.compile("[\uac00-\ud7a3]")
N_FILLERS = 40


def tiny_png(r, g, b):
    """A valid 1x1 RGB PNG (written here with zlib, independent of hwaga's image code)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes([0, r, g, b]))) + chunk(b"IEND", b"")


def entry(unified, name, short_names, category, subcategory, skins=None, **extra):
    e = {"unified": unified, "name": name, "short_names": short_names, "category": category,
         "subcategory": subcategory, "image": unified.lower() + ".png", "non_qualified": None,
         "has_img_google": True, "has_img_twitter": True}
    if skins:
        e["skin_variations"] = {k: {"unified": u, "image": u.lower() + ".png", "has_img_google": True,
                                    "has_img_twitter": True} for k, u in skins.items()}
    e.update(extra)
    return e


def fake_emoji():
    """The fake emoji.json list: one case per rule of the script, plus fillers for the split."""
    hands = "1F9D1-200D-1F91D-200D-1F9D1"
    emoji = [
        entry("1F34E", "RED APPLE", ["apple"], "Food & Drink", "food-fruit"),
        entry("1F385", "FATHER CHRISTMAS", ["santa"], "People & Body", "person-fantasy",
              {"1F3FB": "1F385-1F3FB", "1F3FF": "1F385-1F3FF"}),
        # CLDR writes the key without U+FE0F ("❤"), the datasource with it.
        entry("2764-FE0F", "HEAVY BLACK HEART", ["heart"], "Smileys & Emotion", "heart"),
        # Newer than the CLDR data: no name in either language there.
        entry("1FAE8", "SHAKING FACE", ["shaking_face"], "Smileys & Emotion", "face-neutral-skeptical"),
        # twitter: the base picture is flagged absent, the skin tone file is missing on disk.
        entry("1F44D", "THUMBS UP SIGN", ["+1", "thumbsup"], "People & Body", "hand-fingers-closed",
              {"1F3FC": "1F44D-1F3FC"}, has_img_twitter=False),
        # Two tones in one key.
        entry(hands, "PEOPLE HOLDING HANDS", ["people_holding_hands"], "People & Body", "family",
              {"1F3FB-1F3FF": "1F9D1-1F3FB-200D-1F91D-200D-1F9D1-1F3FF"}),
    ]
    for i in range(N_FILLERS):
        emoji.append(entry("%X" % (0x1F600 + i), "FILLER %d" % i, ["filler_%d" % i], "Objects", "tool"))
    return emoji


def cldr_xml(entries):
    """entries: [(cp, tts, keywords or None)] -> an LDML annotations file like CLDR's."""
    out = ['<?xml version="1.0" encoding="UTF-8" ?>', "<ldml><annotations>"]
    for cp, tts, kw in entries:
        if kw is not None:
            out.append('<annotation cp="%s">%s</annotation>' % (cp, kw))
        if tts is not None:
            out.append('<annotation cp="%s" type="tts">%s</annotation>' % (cp, tts))
    return "\n".join(out + ["</annotations></ldml>"]) + "\n"


HANDS = "\U0001F9D1\u200d\U0001F91D\u200d\U0001F9D1"
CLDR = {
    ("annotations", "en"): [
        ("🏻", "light skin tone", "light skin tone | skin tone"), ("🏼", "medium-light skin tone", None),
        ("🏿", "dark skin tone", "dark skin tone | skin tone"),
        ("🍎", "red apple", "apple | fruit | red"), ("🎅", "Santa Claus", "Christmas | santa"),
        ("❤", "red heart", "heart"), ("👍", "thumbs up", "hand | thumb | up"), (HANDS, "people holding hands", "hand | hold"),
    ] + [(chr(0x1F600 + i), "filler %d" % i, None) for i in range(N_FILLERS)],
    ("annotationsDerived", "en"): [("🎅🏻", "Santa Claus: light skin tone", "santa | light skin tone")],
    ("annotations", "ko"): [
        ("🏻", "하얀 피부", "피부톤 | 하얀 피부"), ("🏼", "연한 갈색 피부", None), ("🏿", "검은색 피부", None),
        ("🍎", "빨간 사과", "과일 | 빨간 사과"), ("🎅", "산타클로스", "산타 | 크리스마스"),
        ("❤", "빨간색 하트", "하트"), ("👍", "좋아요", "손 | 엄지"), (HANDS, "손잡은 사람들", "손"),
        ("\U0001F600", "↑↑↑", None),  # "inherit from the parent locale": no name
    ] + [(chr(0x1F600 + i), "채움 %d" % i, None) for i in range(1, N_FILLERS)],
    ("annotationsDerived", "ko"): [("🎅🏻", "산타클로스: 하얀 피부", "산타 | 하얀 피부")],
}


def make_tree(root, reverse=False):
    """Writes ROOT/ds/emoji-datasource-{google,twitter}/ and ROOT/cldr/; returns (ds, cldr)."""
    ds, cldr = os.path.join(root, "ds"), os.path.join(root, "cldr")
    emoji = fake_emoji()
    if reverse:
        emoji = emoji[::-1]
    for n, style in enumerate(("google", "twitter")):
        pkg = os.path.join(ds, "emoji-datasource-" + style)
        img = os.path.join(pkg, "img", style, "64")
        os.makedirs(img)
        with open(os.path.join(pkg, "emoji.json"), "w", encoding="utf-8") as f:
            json.dump(emoji, f)
        for e in emoji:
            files = [e["image"]] + [v["image"] for v in (e.get("skin_variations") or {}).values()]
            for i, name in enumerate(files):
                if style == "twitter" and name == "1f44d-1f3fc.png":
                    continue
                with open(os.path.join(img, name), "wb") as f:
                    f.write(tiny_png(n * 100, i * 40, len(name)))
    for (sub, lang), entries in CLDR.items():
        os.makedirs(os.path.join(cldr, sub), exist_ok=True)
        with open(os.path.join(cldr, sub, lang + ".xml"), "w", encoding="utf-8") as f:
            f.write(cldr_xml(entries))
    return ds, cldr


def run_script(*args):
    return subprocess.run([sys.executable, SCRIPT] + [str(a) for a in args], capture_output=True,
                          encoding="utf-8", timeout=120)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def has_shards_pack():
    if not os.path.isfile(HWAGA_BIN):
        return False
    p = subprocess.run([HWAGA_BIN, "shards", "pack", "--help"], capture_output=True, timeout=60)
    return p.returncode == 0 and b"--max-count" in p.stdout + p.stderr


class EmojiPrepareTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.ds, cls.cldr = make_tree(os.path.join(cls.tmp.name, "a"))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def prepare(self, out, *extra, ds=None, check=True):
        p = run_script("--datasource-dir", ds or self.ds, "--cldr-dir", self.cldr, "--out", out, "--no-pack", *extra)
        if check:
            self.assertEqual(p.returncode, 0, p.stderr)
        return p

    def outputs(self, *extra, ds=None):
        out = tempfile.mkdtemp(dir=self.tmp.name)
        self.prepare(out, *extra, ds=ds)
        return read_jsonl(os.path.join(out, "train.jsonl")), read_jsonl(os.path.join(out, "eval.jsonl")), out

    def all_records(self):
        train, evals, out = self.outputs("--eval-fraction", "0")
        self.assertEqual(evals, [])
        return {r["key"]: r for r in train}, out

    def test_one_record_per_picture_on_disk(self):
        recs, out = self.all_records()
        # google: 40 fillers + apple + santa x3 + heart + shaking + thumbs x2 + hands x2 = 50;
        # twitter: the same less both thumbs pictures (flag false, file missing) = 48.
        self.assertEqual(len(recs), 98)
        self.assertEqual(sum(k.startswith("google/") for k in recs), 50)
        self.assertNotIn("twitter/1F44D", recs)
        self.assertNotIn("twitter/1F44D-1F3FC", recs)
        self.assertIn("google/1F44D-1F3FC", recs)
        for key, r in recs.items():
            style, cps = key.split("/")
            self.assertEqual(r["json"]["style"], style)
            self.assertTrue(os.path.isabs(r["image"]) and os.path.isfile(r["image"]), r["image"])
            self.assertTrue(r["image"].endswith(os.path.join("img", style, "64", cps.lower() + ".png")), r["image"])
            self.assertEqual(r["caption"], r["json"]["captions"][0])
            self.assertTrue(r["caption"].endswith(", %s style" % style), r["caption"])
            self.assertEqual(len(r["json"]["captions"]), len(set(c.lower() for c in r["json"]["captions"])))
        with open(os.path.join(out, "captions_summary.txt"), encoding="utf-8") as f:
            summary = f.read()
        self.assertIn("pictures: 98 (google 50, twitter 48; 7 of them skin tone variants)", summary)
        self.assertIn("skipped: skipped_missing_file_twitter 1, skipped_no_image_flag_twitter 1", summary)
        # No Korean: shaking face and filler 0 ("↑↑↑"), one picture per style each.
        self.assertIn("94 of 98 pictures (95.9%) have a Korean name; 2 base emoji have none", summary)
        self.assertIn("1FAE8 shaking face", summary)
        self.assertIn("1F600 filler 0", summary)

    def test_captions_english_and_korean(self):
        recs, _ = self.all_records()
        apple = recs["google/1F34E"]
        self.assertEqual(apple["caption"], "red apple, google style")
        self.assertEqual(apple["json"]["emoji"], "🍎")
        self.assertEqual(apple["json"]["name_en"], "red apple")
        self.assertEqual(apple["json"]["name_ko"], "빨간 사과")
        # CLDR's English name equals the datasource's, so the Korean name comes second.
        self.assertEqual(apple["json"]["captions"][:2], ["red apple, google style", "빨간 사과, 구글 스타일"])
        for c in ("apple, google style", "red apple, food & drink, food fruit, google style",
                  "apple, fruit, red, google style", "과일, 빨간 사과, 구글 스타일"):
            self.assertIn(c, apple["json"]["captions"])
        self.assertEqual(recs["twitter/1F34E"]["json"]["captions"][:2], ["red apple, twitter style", "빨간 사과, 트위터 스타일"])

        santa = recs["twitter/1F385"]["json"]["captions"]
        self.assertEqual(santa[:3], ["father christmas, twitter style", "Santa Claus, twitter style", "산타클로스, 트위터 스타일"])

        # Skin tone with its own derived CLDR entry, and one composed from the base + tone names.
        light = recs["google/1F385-1F3FB"]
        self.assertEqual(light["json"]["emoji"], "🎅🏻")
        self.assertEqual(light["json"]["captions"][:3], [
            "father christmas: light skin tone, google style", "Santa Claus: light skin tone, google style",
            "산타클로스: 하얀 피부, 구글 스타일"])
        self.assertIn("santa: light skin tone, google style", light["json"]["captions"])
        # One sampling group per base emoji and style, shared by the skin tones (hwaga train --balance).
        self.assertEqual(light["json"]["group"], "google/1F385")
        self.assertEqual(recs["google/1F385"]["json"]["group"], "google/1F385")
        self.assertEqual(recs["twitter/1F385"]["json"]["group"], "twitter/1F385")
        self.assertEqual(apple["json"]["group"], "google/1F34E")
        dark = recs["google/1F385-1F3FF"]
        self.assertEqual(dark["json"]["group"], "google/1F385")
        self.assertEqual(dark["json"]["name_ko"], "산타클로스: 검은색 피부")
        self.assertEqual(dark["json"]["captions"][:3], [
            "father christmas: dark skin tone, google style", "Santa Claus: dark skin tone, google style",
            "산타클로스: 검은색 피부, 구글 스타일"])
        self.assertIn("산타, 크리스마스, 검은색 피부, 구글 스타일", dark["json"]["captions"])

        # U+FE0F: the datasource spells "2764-FE0F", CLDR keys "❤".
        heart = recs["google/2764-FE0F"]["json"]
        self.assertEqual(heart["emoji"], "❤\ufe0f")
        self.assertEqual(heart["name_ko"], "빨간색 하트")
        self.assertIn("red heart, google style", heart["captions"])

        # Two tones in one picture.
        two = recs["twitter/1F9D1-1F3FB-200D-1F91D-200D-1F9D1-1F3FF"]["json"]
        self.assertEqual(two["name_en"], "people holding hands: light skin tone, dark skin tone")
        self.assertEqual(two["name_ko"], "손잡은 사람들: 하얀 피부, 검은색 피부")

        # English only, nothing Korean anywhere.
        for key in ("google/1FAE8", "twitter/1FAE8", "google/1F600"):
            j = recs[key]["json"]
            self.assertIsNone(j["name_ko"], key)
            self.assertFalse(any(HANGUL.search(c) for c in j["captions"]), j["captions"])
        self.assertEqual(recs["google/1FAE8"]["json"]["captions"],
                         ["shaking face, google style", "shaking face, smileys & emotion, face neutral skeptical, google style"])

    def test_split_by_base_emoji(self):
        train, evals, _ = self.outputs("--eval-fraction", "0.3", "--seed", "7")
        keys = lambda rs: [r["key"] for r in rs]
        self.assertEqual(len(train) + len(evals), 98)
        self.assertEqual(len(set(keys(train)) | set(keys(evals))), 98)

        def bases(rs):
            # the base entry's code points: drop the tone modifiers
            return {re.sub(r"-1F3F[B-F]", "", r["key"].split("/")[1]) for r in rs}
        self.assertFalse(bases(train) & bases(evals), "a base emoji is on both sides")
        self.assertEqual(len(bases(train) | bases(evals)), 46)
        # 46 base emoji at 0.3: about 14 held out; a binomial spread of +-3.1, so 5..25 is > 3 sigma.
        self.assertTrue(5 <= len(bases(evals)) <= 25, len(bases(evals)))
        # Every held-out emoji is out in both styles and all skin tones.
        for b in bases(evals):
            for r in train:
                self.assertNotEqual(re.sub(r"-1F3F[B-F]", "", r["key"].split("/")[1]), b)

        # Same seed: same split and order, whatever the datasource's order; another seed: another split.
        train2, evals2, _ = self.outputs("--eval-fraction", "0.3", "--seed", "7")
        self.assertEqual((train2, evals2), (train, evals))
        rev_ds, _ = make_tree(os.path.join(self.tmp.name, "reversed"), reverse=True)
        train3, evals3, _ = self.outputs("--eval-fraction", "0.3", "--seed", "7", ds=rev_ds)
        self.assertEqual(keys(evals3), keys(evals))
        self.assertEqual(keys(train3), keys(train))
        _, evals4, _ = self.outputs("--eval-fraction", "0.3", "--seed", "8")
        self.assertNotEqual(bases(evals4), bases(evals))
        train5, evals5, _ = self.outputs("--eval-fraction", "1")
        self.assertEqual((len(train5), len(evals5)), (0, 98))

    def test_errors(self):
        out = os.path.join(self.tmp.name, "err")
        empty = os.path.join(self.tmp.name, "empty")
        os.makedirs(empty, exist_ok=True)
        p = self.prepare(out, ds=empty, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(os.path.join(empty, "emoji-datasource-google", "emoji.json"), p.stderr)
        p = run_script("--datasource-dir", self.ds, "--cldr-dir", empty, "--out", out, "--no-pack")
        self.assertEqual(p.returncode, 1)
        self.assertIn(os.path.join(empty, "annotations", "ko.xml"), p.stderr)
        p = run_script("--datasource-dir", self.ds, "--cldr-dir", self.cldr, "--out", out, "--hwaga", os.path.join(empty, "hwaga"))
        self.assertEqual(p.returncode, 1)
        self.assertIn("no hwaga executable", p.stderr)
        self.assertFalse(os.path.exists(os.path.join(out, "train.jsonl")))
        p = self.prepare(out, "--eval-fraction", "1.5", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--eval-fraction", p.stderr)
        bad = os.path.join(self.tmp.name, "bad")
        make_tree(bad)
        with open(os.path.join(bad, "ds", "emoji-datasource-twitter", "emoji.json"), "w") as f:
            f.write('[{"unified": "1F34E"}]')
        p = self.prepare(out, ds=os.path.join(bad, "ds"), check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("entry 0 has no string field 'name'", p.stderr)

    def fake_hwaga(self, name, has_pack):
        """A stand-in executable: answers `shards pack --help` (with or without the pack command's
        option) and logs every other call's arguments as one JSON line."""
        path = os.path.join(self.tmp.name, name)
        with open(path, "w") as f:
            f.write("#!/usr/bin/python3\nimport json, sys\n"
                    "if sys.argv[-1] == '--help':\n    print(%r)\n    sys.exit(0)\n"
                    "open(%r, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                    % ("--max-count INT" if has_pack else "Usage: hwaga [OPTIONS]", path + ".log"))
        os.chmod(path, 0o755)
        return path

    def test_pack_commands(self):
        out = os.path.join(self.tmp.name, "fakepack")
        old = self.fake_hwaga("old-hwaga", False)
        p = run_script("--datasource-dir", self.ds, "--cldr-dir", self.cldr, "--out", out, "--hwaga", old)
        self.assertEqual(p.returncode, 1)
        self.assertIn("has no 'shards pack' command", p.stderr)
        self.assertFalse(os.path.exists(old + ".log"))
        new = self.fake_hwaga("new-hwaga", True)
        p = run_script("--datasource-dir", self.ds, "--cldr-dir", self.cldr, "--out", out, "--hwaga", new, "--eval-fraction", "0.3")
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(new + ".log") as f:
            calls = [json.loads(line) for line in f]
        self.assertEqual(calls, [["shards", "pack", os.path.join(out, s + ".jsonl"), "-o", os.path.join(out, s, "emoji-%05d.tar"),
                                  "--max-count", "2000"] for s in ("train", "eval")])
        self.assertTrue(os.path.isdir(os.path.join(out, "eval")))

    @unittest.skipUnless(has_shards_pack(), "hwaga has no 'shards pack' command in this build")
    def test_pack_shards(self):
        out = os.path.join(self.tmp.name, "packed")
        p = run_script("--datasource-dir", self.ds, "--cldr-dir", self.cldr, "--out", out, "--hwaga", HWAGA_BIN,
                       "--eval-fraction", "0.3", "--seed", "7")
        self.assertEqual(p.returncode, 0, p.stderr)
        for split in ("train", "eval"):
            want = {r["key"]: r for r in read_jsonl(os.path.join(out, split + ".jsonl"))}
            got = {}
            for name in sorted(os.listdir(os.path.join(out, split))):
                self.assertRegex(name, r"^emoji-\d{5}\.tar$")
                with tarfile.open(os.path.join(out, split, name)) as tar:
                    for m in tar.getmembers():
                        key, _, field = m.name.partition(".")
                        got.setdefault(key, {})[field] = tar.extractfile(m).read()
            self.assertEqual(set(got), set(want), split)
            for key, fields in got.items():
                with open(want[key]["image"], "rb") as f:
                    self.assertEqual(fields["png"], f.read(), key)
                self.assertEqual(fields["txt"].decode("utf-8").strip(), want[key]["caption"])


if __name__ == "__main__":
    unittest.main()
