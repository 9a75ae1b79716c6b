#!/usr/bin/env python3
"""Carves a small training set out of the emoji data, for quick training experiments.

    make_subset.py --data DATA --out OUT --emoji N [--seed S] [--categories A,B] [--shift-augment]
                   [--hwaga BIN]

DATA is prepare_emoji.py's output. N base emoji (no skin tone variants: the records whose name
has no tone suffix) are drawn at random (seeded) among DATA/train.jsonl's records of the given
categories (default: the object-like ones, which the data holds once per style: the hard case of
the default model, docs/quality/exposure.md), with both their styles. OUT gets:

  train.jsonl   the subset's records: eval_quality.py --split train draws its prompts from them;
  eval.jsonl    every other record of both splits, so that the retrieval pool stays all pictures;
  train/        the subset packed as shards by `hwaga shards pack` (for hwaga train --shards).

--shift-augment also packs, for every picture, 7 copies moved by 2 pixels (right, left, down,
up and three diagonals, the uncovered border transparent) with the same captions, each its own
sample (keys KEY-s1..KEY-s7; the PNGs are written under OUT/shifted/). The RQ-VAE gives a moved
picture other codes almost everywhere, so the transformer sees 8 code maps a caption. The copies
are in the shards only; train.jsonl keeps the originals, which the evaluation scores against.
numpy + the standard library; eval_quality.py's PNG decoder reads the pictures.
"""
import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_quality as E  # noqa: E402

DEFAULT_CATEGORIES = "Objects,Food & Drink,Animals & Nature,Travel & Places,Activities,Smileys & Emotion"
SHIFTS = [(2, 0), (-2, 0), (0, 2), (0, -2), (2, 2), (-2, -2), (2, -2)]  # (dx, dy) of the copies


class SubsetError(Exception):
    pass


def encode_png_rgba(img):
    """uint8 [H,W,4] -> PNG bytes (8-bit RGBA, filter 0)."""
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def shifted(img, dx, dy):
    """img moved by (dx, dy) pixels; what comes in is transparent."""
    h, w = img.shape[:2]
    out = np.zeros_like(img)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = img[max(-dy, 0):h - max(dy, 0),
                                                                     max(-dx, 0):w - max(dx, 0)]
    return out


def choose(records, n, seed, categories):
    """The records of n base emoji (both styles), drawn among those of `categories`."""
    bases = sorted({E.base_emoji(r) for r in records
                    if r["json"].get("category") in categories and E.base_emoji(r) == r["json"]["name_en"]})
    if n > len(bases):
        raise SubsetError("--emoji %d: only %d base emoji in the categories %s" % (n, len(bases), sorted(categories)))
    random.Random(seed).shuffle(bases)
    keep = set(bases[:n])
    return [r for r in records if E.base_emoji(r) in keep and E.base_emoji(r) == r["json"]["name_en"]]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepare_emoji.py's output folder (train.jsonl, eval.jsonl)")
    ap.add_argument("--out", required=True, help="folder to write (must not exist yet)")
    ap.add_argument("--emoji", type=int, required=True, help="base emoji to keep (both styles each)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--categories", default=DEFAULT_CATEGORIES, help="comma-separated json 'category' values")
    ap.add_argument("--shift-augment", action="store_true", help="also pack 7 copies of each picture moved by 2 px")
    ap.add_argument("--hwaga", default=os.environ.get("HWAGA_BIN", "./build/hwaga"), help="the hwaga executable")
    a = ap.parse_args(argv)
    made = False
    try:
        if a.emoji < 1:
            raise SubsetError("--emoji must be at least 1 (got %d)" % a.emoji)
        if os.path.exists(a.out):
            raise SubsetError("%s exists already (the subset is written to a new folder)" % a.out)
        train = E.load_records(a.data, "train")
        other = E.load_records(a.data, "eval") if os.path.isfile(os.path.join(a.data, "eval.jsonl")) else []
        sub = choose(train, a.emoji, a.seed, set(a.categories.split(",")))
        keys = {r["key"] for r in sub}
        os.makedirs(a.out)
        made = True
        write_jsonl(os.path.join(a.out, "train.jsonl"), sub)
        write_jsonl(os.path.join(a.out, "eval.jsonl"), [r for r in train if r["key"] not in keys] + other)
        packed = list(sub)
        if a.shift_augment:
            for r in sub:
                img = E.read_png(r["image"])
                for i, (dx, dy) in enumerate(SHIFTS, 1):
                    path = os.path.join(a.out, "shifted", "%s-s%d.png" % (r["key"], i))
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "wb") as f:
                        f.write(encode_png_rgba(shifted(img, dx, dy)))
                    packed.append(dict(r, image=path, key="%s-s%d" % (r["key"], i)))
        pack_list = os.path.join(a.out, "pack.jsonl")
        write_jsonl(pack_list, packed)
        cmd = [a.hwaga, "shards", "pack", pack_list, "-o", os.path.join(a.out, "train", "subset-%05d.tar"),
               "--max-count", "2000"]
        os.makedirs(os.path.join(a.out, "train"))
        p = subprocess.run(cmd, capture_output=True, encoding="utf-8")
        if p.returncode != 0:
            raise SubsetError("'%s' failed (rc %d): %s" % (" ".join(cmd), p.returncode, p.stderr.strip()))
    except (SubsetError, E.EvalError, OSError) as e:
        if made:
            shutil.rmtree(a.out, ignore_errors=True)  # no partial subset left behind
        sys.exit("make_subset: %s" % e)
    print("make_subset: %d base emoji, %d pictures, %d samples packed in %s" %
          (a.emoji, len(sub), len(packed), os.path.join(a.out, "train")))


if __name__ == "__main__":
    main()
