#!/usr/bin/python3
"""Prepares hwaga's default-model training data: emoji pictures with English and Korean captions.

Data (see ../shared/data/README.md, "Text-image pairs: emoji"):
  npm emoji-datasource-google@16.0.0   img/google/64/<codepoints>.png, Apache-2.0
  npm emoji-datasource-twitter@16.0.0  img/twitter/64/<codepoints>.png, CC-BY-4.0
  Debian unicode-cldr-core             CLDR annotations/{en,ko}.xml + annotationsDerived/{en,ko}.xml

Steps:
  1. install the two npm packages into --work (and check that unicode-cldr-core is installed);
  2. one record per picture (every emoji, every skin variation, both styles) with a primary English
     caption ("red apple, google style") and a list of English and Korean caption variants, and
     a sampling group ("google/1F34E": the base emoji and style, shared by its skin tones);
  3. a fixed evaluation split by base emoji (all styles and skin tones of a held-out emoji are out
     of training), chosen from a hash of --seed and the base code points;
  4. writes OUT/train.jsonl, OUT/eval.jsonl, OUT/captions_summary.txt, then packs shards with
     `hwaga shards pack` into OUT/train/emoji-%05d.tar and OUT/eval/emoji-%05d.tar (--no-pack skips).

Python standard library only; run with /usr/bin/python3. Network use (npm, apt-get) happens only
in step 1, and only when the data is missing. See tools/emoji/README.md.
"""
import argparse
import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

DATASOURCE_VERSION = "16.0.0"
STYLES = ("google", "twitter")
STYLE_KO = {"google": "구글 스타일", "twitter": "트위터 스타일"}
CLDR_DEFAULT = "/usr/share/unicode/cldr/common"
SKIN_TONES = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")
# Used only when the CLDR English file lacks the skin tone entries (CLDR has had these since 2016).
SKIN_TONE_EN_FALLBACK = {
    "1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone",
}
VS16 = "\ufe0f"  # variation selector 16; CLDR keys are written without it


class PrepError(Exception):
    """A problem with the input data or the environment; main() prints it and exits 1."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- step 1: install

def package_dir(datasource_dir, style):
    return os.path.join(datasource_dir, "emoji-datasource-" + style)


def datasource_installed(datasource_dir):
    for style in STYLES:
        pkg = os.path.join(package_dir(datasource_dir, style), "package.json")
        try:
            with open(pkg, encoding="utf-8") as f:
                if json.load(f).get("version") != DATASOURCE_VERSION:
                    return False
        except (OSError, ValueError):
            return False
        if not os.path.isfile(os.path.join(package_dir(datasource_dir, style), "emoji.json")):
            return False
    return True


def ensure_datasource(work):
    """Installs the two npm packages under WORK unless they are there; returns WORK/node_modules."""
    datasource_dir = os.path.join(work, "node_modules")
    if datasource_installed(datasource_dir):
        return datasource_dir
    npm = shutil.which("npm")
    if npm is None:
        raise PrepError("npm not found: install Debian's npm (apt-get install -y npm) or pass --datasource-dir")
    os.makedirs(work, exist_ok=True)
    cmd = [npm, "install", "--no-audit", "--no-fund", "--prefix", work] + \
          ["emoji-datasource-%s@%s" % (s, DATASOURCE_VERSION) for s in STYLES]
    log("installing: " + " ".join(cmd))
    p = subprocess.run(cmd)
    if p.returncode != 0 or not datasource_installed(datasource_dir):
        raise PrepError("npm install failed (rc %d): %s" % (p.returncode, " ".join(cmd)))
    return datasource_dir


def ensure_cldr(cldr_dir):
    """Checks for CLDR's Korean annotations; installs unicode-cldr-core when root, else exits 1."""
    ko = os.path.join(cldr_dir, "annotations", "ko.xml")
    if os.path.isfile(ko):
        return cldr_dir
    if cldr_dir != CLDR_DEFAULT:
        raise PrepError("%s: not found (expected a CLDR 'common' folder with annotations/ko.xml)" % ko)
    cmd = ["apt-get", "install", "-y", "unicode-cldr-core"]
    if os.geteuid() != 0:
        print("CLDR annotations are missing (%s). Install them with:\n  sudo %s" % (ko, " ".join(cmd)))
        sys.exit(1)
    log("installing: " + " ".join(cmd))
    if subprocess.run(cmd).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update"])
        subprocess.run(cmd)
    if not os.path.isfile(ko):
        raise PrepError("%s: still missing after '%s'" % (ko, " ".join(cmd)))
    return cldr_dir


# ---------------------------------------------------------------- CLDR annotations

def load_cldr(cldr_dir, lang):
    """{emoji string: {"tts": name or None, "keywords": [...]}} from annotations/ then annotationsDerived/.

    annotations/ wins where both have an entry. Values "↑↑↑" (inherit from the parent locale) are
    skipped. A missing annotationsDerived file is allowed; a missing annotations file is not.
    """
    table = {}
    for sub in ("annotations", "annotationsDerived"):
        path = os.path.join(cldr_dir, sub, lang + ".xml")
        if not os.path.isfile(path):
            if sub == "annotations":
                raise PrepError("%s: not found (expected CLDR %s annotations)" % (path, lang))
            continue
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            raise PrepError("%s: not valid XML (%s)" % (path, e))
        seen = {}
        for a in root.iter("annotation"):
            cp = a.get("cp")
            text = (a.text or "").strip()
            if not cp or not text or text == "↑↑↑":
                continue
            entry = seen.setdefault(cp, {"tts": None, "keywords": []})
            if a.get("type") == "tts":
                entry["tts"] = text
            else:
                entry["keywords"] = [k.strip() for k in text.split("|") if k.strip()]
        for cp, entry in seen.items():
            have = table.setdefault(cp, {"tts": None, "keywords": []})
            if have["tts"] is None:
                have["tts"] = entry["tts"]
            if not have["keywords"]:
                have["keywords"] = entry["keywords"]
    return table


def codepoints_to_str(unified):
    """'1F34E' -> '🍎'; '2764-FE0F' -> '❤️'. Raises PrepError on a malformed code point string."""
    try:
        return "".join(chr(int(h, 16)) for h in unified.split("-"))
    except (ValueError, OverflowError):
        raise PrepError("bad code point string %r (expected hex code points joined by '-')" % unified)


def cldr_lookup(table, chars, alternates=()):
    """The CLDR entry for an emoji: as written, without U+FE0F, then any alternate spelling."""
    for key in (chars, chars.replace(VS16, "")) + tuple(alternates):
        if key and key in table:
            return table[key]
    return {"tts": None, "keywords": []}


# ---------------------------------------------------------------- step 2: records

def unique(items):
    """Drops empty items and case-insensitive repeats, keeping the first spelling and the order."""
    seen, out = set(), []
    for x in items:
        if x and x.lower() not in seen:
            seen.add(x.lower())
            out.append(x)
    return out


def with_tones(name, tones):
    """'santa' + ['light skin tone'] -> 'santa: light skin tone'; a name that already has a ':'
    (CLDR's 'kiss: man, man') gets the tones after a comma instead."""
    if not tones or not name:
        return name
    return name + (", " if ":" in name else ": ") + ", ".join(tones)


def load_emoji_json(datasource_dir, style):
    path = os.path.join(package_dir(datasource_dir, style), "emoji.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise PrepError("%s: cannot read (%s); is emoji-datasource-%s installed?" % (path, e.strerror, style))
    except ValueError as e:
        raise PrepError("%s: not valid JSON (%s)" % (path, e))
    if not isinstance(data, list):
        raise PrepError("%s: expected a JSON list of emoji, found %s" % (path, type(data).__name__))
    for i, e in enumerate(data):
        for field in ("unified", "name", "image"):
            if not isinstance(e, dict) or not isinstance(e.get(field), str):
                raise PrepError("%s: entry %d has no string field '%s'" % (path, i, field))
    return data


def tone_names(cldr, tone_codes, fallback=None):
    """['1F3FB', '1F3FF'] -> CLDR names of the tones (repeats dropped: '1F3FB-1F3FB' is one tone)."""
    names = []
    for code in tone_codes:
        name = cldr_lookup(cldr, codepoints_to_str(code))["tts"]
        if name is None and fallback:
            name = fallback.get(code)
        if name is None:
            return None
        if name not in names:
            names.append(name)
    return names


def build_records(datasource_dir, cldr_en, cldr_ko):
    """One record per picture on disk. Returns (records, stats)."""
    records = []
    stats = collections.Counter()
    missing_ko = {}  # base unified -> English name (emoji with no Korean CLDR name)
    for style in STYLES:
        pkg = package_dir(datasource_dir, style)
        for e in load_emoji_json(datasource_dir, style):
            base = e["unified"]
            base_chars = codepoints_to_str(base)
            alternates = (codepoints_to_str(e["non_qualified"]),) if e.get("non_qualified") else ()
            base_en = cldr_lookup(cldr_en, base_chars, alternates)
            base_ko = cldr_lookup(cldr_ko, base_chars, alternates)
            pictures = [(base, e, [])]
            for tone_key, var in sorted((e.get("skin_variations") or {}).items()):
                if not isinstance(var, dict) or not isinstance(var.get("unified"), str) or not isinstance(var.get("image"), str):
                    raise PrepError("%s/emoji.json: %s skin variation %s lacks 'unified' or 'image'" % (pkg, base, tone_key))
                pictures.append((var["unified"], var, tone_key.split("-")))
            for unified, entry, tones in pictures:
                image = os.path.join(pkg, "img", style, "64", entry["image"])
                if not entry.get("has_img_" + style):
                    stats["skipped_no_image_flag_" + style] += 1
                    continue
                if not os.path.isfile(image):
                    stats["skipped_missing_file_" + style] += 1
                    continue
                rec = make_record(style, e, unified, tones, image, base_en, base_ko, cldr_en, cldr_ko)
                rec["_base"] = base
                # one sampling group per base emoji and style: `hwaga train --balance` draws the
                # 1,911 emoji equally often instead of spending half the steps on skin tones
                rec["json"]["group"] = "%s/%s" % (style, base)
                records.append(rec)
                stats["pictures_" + style] += 1
                if tones:
                    stats["skin_variant_pictures"] += 1
                if rec["json"]["name_ko"] is None:
                    stats["pictures_without_korean"] += 1
                    missing_ko[base] = e["name"].lower()
                if rec["json"]["name_cldr_en"] is None:
                    stats["pictures_without_cldr_english"] += 1
    stats["base_emoji"] = len({r["_base"] for r in records})
    stats["base_emoji_without_korean"] = len(missing_ko)
    return records, stats, missing_ko


def make_record(style, e, unified, tones, image, base_en, base_ko, cldr_en, cldr_ko):
    chars = codepoints_to_str(unified)
    style_en = style + " style"
    style_ko = STYLE_KO[style]
    tones_en = tone_names(cldr_en, tones, SKIN_TONE_EN_FALLBACK) if tones else []
    tones_ko = tone_names(cldr_ko, tones) if tones else []

    name_en = with_tones(e["name"].lower(), tones_en)
    # The variant's own CLDR entry (annotationsDerived has most skin tone sequences), else the base
    # emoji's entry with the tone names appended.
    own_en = cldr_lookup(cldr_en, chars) if tones else base_en
    own_ko = cldr_lookup(cldr_ko, chars) if tones else base_ko
    tts_en = own_en["tts"] or with_tones(base_en["tts"], tones_en)
    kw_en = own_en["keywords"] or (base_en["keywords"] + tones_en if base_en["keywords"] else [])
    name_ko = own_ko["tts"]
    if name_ko is None and base_ko["tts"] and tones_ko is not None:
        name_ko = with_tones(base_ko["tts"], tones_ko)
    kw_ko = own_ko["keywords"] or (base_ko["keywords"] + (tones_ko or []) if base_ko["keywords"] else [])

    primary = "%s, %s" % (name_en, style_en)
    short = [with_tones(s.replace("_", " ").strip(), tones_en) for s in (e.get("short_names") or []) if isinstance(s, str)]
    category = ", ".join(unique([(e.get("category") or "").lower(), (e.get("subcategory") or "").replace("-", " ")]))
    # Name-based captions first (English primary, CLDR English, Korean), then the variants.
    captions = [primary]
    if tts_en:
        captions.append("%s, %s" % (tts_en, style_en))
    if name_ko:
        captions.append("%s, %s" % (name_ko, style_ko))
    captions += ["%s, %s" % (s, style_en) for s in short]
    if category:
        captions.append("%s, %s, %s" % (name_en, category, style_en))
    if kw_en:
        captions.append("%s, %s" % (", ".join(unique(kw_en)), style_en))
    if name_ko and kw_ko:
        captions.append("%s, %s" % (", ".join(unique(kw_ko)), style_ko))
    return {
        "image": os.path.abspath(image),
        "caption": primary,
        "key": "%s/%s" % (style, unified),
        "json": {
            "captions": unique(captions),
            "name_en": name_en,
            "name_cldr_en": tts_en,
            "name_ko": name_ko,
            "style": style,
            "emoji": chars,
            "codepoints": unified,
            "category": e.get("category"),
            "subcategory": e.get("subcategory"),
        },
    }


# ---------------------------------------------------------------- step 3: split

def eval_score(base_unified, seed):
    """A number in [0, 1) fixed by the seed and the base emoji's code points (SHA-256, so the split
    does not depend on Python's hash randomisation, the platform or the datasource's order)."""
    digest = hashlib.sha256(("%d:%s" % (seed, base_unified.upper())).encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def is_eval(base_unified, seed, fraction):
    return eval_score(base_unified, seed) < fraction


def shuffled(records, seed):
    """The records in a fixed pseudo-random order (SHA-256 of seed and key), so that each shard
    mixes styles, categories and skin tones instead of holding one block of the datasource."""
    return sorted(records, key=lambda r: hashlib.sha256(("%d:%s" % (seed, r["key"])).encode("ascii")).digest())


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            out = {k: v for k, v in r.items() if not k.startswith("_")}
            f.write(json.dumps(out, ensure_ascii=False) + "\n")


def summary_text(args, records, train, evals, stats, missing_ko):
    n = len(records)
    with_ko = n - stats["pictures_without_korean"]
    base_eval = len({r["_base"] for r in evals})
    lines = [
        "hwaga emoji training data (tools/emoji/prepare_emoji.py)",
        "datasource: emoji-datasource-{google,twitter}@%s; CLDR: %s" % (DATASOURCE_VERSION, args.cldr_dir),
        "seed %d, eval fraction %g" % (args.seed, args.eval_fraction),
        "",
        "pictures: %d (google %d, twitter %d; %d of them skin tone variants)" % (
            n, stats["pictures_google"], stats["pictures_twitter"], stats["skin_variant_pictures"]),
        "base emoji: %d" % stats["base_emoji"],
        "train: %d pictures, %d base emoji" % (len(train), stats["base_emoji"] - base_eval),
        "eval: %d pictures, %d base emoji" % (len(evals), base_eval),
        "captions: %d in all, %.2f per picture" % (
            sum(len(r["json"]["captions"]) for r in records), sum(len(r["json"]["captions"]) for r in records) / max(n, 1)),
        "Korean coverage: %d of %d pictures (%.1f%%) have a Korean name; %d base emoji have none (English only)" % (
            with_ko, n, 100.0 * with_ko / max(n, 1), len(missing_ko)),
        "CLDR English name missing: %d pictures" % stats["pictures_without_cldr_english"],
    ]
    skipped = {k: v for k, v in sorted(stats.items()) if k.startswith("skipped_")}
    lines.append("skipped: " + (", ".join("%s %d" % kv for kv in skipped.items()) if skipped else "none"))
    by_cat = collections.Counter(r["json"]["category"] for r in records)
    lines.append("")
    lines.append("pictures by category:")
    lines += ["  %-20s %d" % (c, k) for c, k in sorted(by_cat.items(), key=lambda x: (-x[1], str(x[0])))]
    lines.append("")
    lines.append("base emoji without a Korean name (%d):" % len(missing_ko))
    lines += ["  %s %s" % (u, name) for u, name in sorted(missing_ko.items())]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- step 4: shards

def pack(hwaga, jsonl, pattern):
    os.makedirs(os.path.dirname(pattern), exist_ok=True)
    cmd = [hwaga, "shards", "pack", jsonl, "-o", pattern, "--max-count", "2000"]
    log("packing: " + " ".join(cmd))
    p = subprocess.run(cmd)
    if p.returncode != 0:
        raise PrepError("'%s' failed (rc %d)" % (" ".join(cmd), p.returncode))


def check_hwaga(hwaga):
    if not (os.path.isfile(hwaga) and os.access(hwaga, os.X_OK)):
        raise PrepError("%s: no hwaga executable there (build it, pass --hwaga PATH, or --no-pack)" % hwaga)
    # CLI11 prints the top-level help (rc 0) for an unknown subcommand followed by --help, so
    # look for the pack command's own option in the text.
    p = subprocess.run([hwaga, "shards", "pack", "--help"], capture_output=True, text=True, errors="replace")
    if p.returncode != 0 or "--max-count" not in p.stdout + p.stderr:
        raise PrepError("%s has no 'shards pack' command (build a newer hwaga, or use --no-pack)" % hwaga)


# ---------------------------------------------------------------- main

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.path.join(os.path.expanduser("~"), ".cache", "hwaga", "emoji"),
                    help="where the npm packages are installed (default ~/.cache/hwaga/emoji)")
    ap.add_argument("--out", required=True, help="where train.jsonl, eval.jsonl, the summary and the shards go")
    ap.add_argument("--hwaga", default="./build/hwaga", help="the hwaga executable for 'shards pack'")
    ap.add_argument("--eval-fraction", type=float, default=0.05, help="share of base emoji held out (default 0.05)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the evaluation split (default 0)")
    ap.add_argument("--no-pack", action="store_true", help="write the lists only; no shards")
    ap.add_argument("--datasource-dir", help="a folder with emoji-datasource-google/ and emoji-datasource-twitter/ "
                    "(default WORK/node_modules, installed with npm when missing)")
    ap.add_argument("--cldr-dir", help="a CLDR 'common' folder with annotations/ and annotationsDerived/ "
                    "(default %s, from Debian's unicode-cldr-core)" % CLDR_DEFAULT)
    args = ap.parse_args(argv)
    if not 0.0 <= args.eval_fraction <= 1.0:
        ap.error("--eval-fraction must be between 0 and 1, got %g" % args.eval_fraction)
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if not args.no_pack:
            check_hwaga(args.hwaga)  # before the downloads, so a missing binary fails fast
        if args.datasource_dir is None:
            args.datasource_dir = ensure_datasource(args.work)
        args.cldr_dir = ensure_cldr(args.cldr_dir or CLDR_DEFAULT)
        cldr_en = load_cldr(args.cldr_dir, "en")
        cldr_ko = load_cldr(args.cldr_dir, "ko")
        records, stats, missing_ko = build_records(args.datasource_dir, cldr_en, cldr_ko)
        if not records:
            raise PrepError("%s: no pictures found (expected img/<style>/64/*.png under each package)" % args.datasource_dir)
        records = shuffled(records, args.seed)
        evals = [r for r in records if is_eval(r["_base"], args.seed, args.eval_fraction)]
        train = [r for r in records if not is_eval(r["_base"], args.seed, args.eval_fraction)]
        os.makedirs(args.out, exist_ok=True)
        write_jsonl(os.path.join(args.out, "train.jsonl"), train)
        write_jsonl(os.path.join(args.out, "eval.jsonl"), evals)
        summary = summary_text(args, records, train, evals, stats, missing_ko)
        with open(os.path.join(args.out, "captions_summary.txt"), "w", encoding="utf-8") as f:
            f.write(summary)
        print("\n".join(summary.split("\n\n")[:2]))
        if not args.no_pack:
            for split, recs in (("train", train), ("eval", evals)):
                if recs:
                    pack(args.hwaga, os.path.join(args.out, split + ".jsonl"),
                         os.path.join(args.out, split, "emoji-%05d.tar"))
    except PrepError as e:
        print("prepare_emoji: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
